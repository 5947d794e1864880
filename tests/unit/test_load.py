"""Unit: the load benchmark's figures — route names, percentiles, the `bench/load.json`
shape (no timings are asserted: they are the machine's)."""

from __future__ import annotations

import json

import pytest

from smartapp.load import (
    EHR,
    LEVEL_KEYS,
    PAUSES_PER_SESSION,
    THINK_CAP,
    Timing,
    _Clinician,
    build_level,
    build_report,
    parse_timings,
    plan_levels,
    route_figures,
    spread,
)
from smartapp.observability import RequestTimingLog, route_label


@pytest.mark.parametrize(
    ("method", "rule", "label"),
    [
        ("GET", "/api/suggestions", "GET /api/suggestions"),
        (
            "POST",
            "/api/suggestions/<suggestion_id>/feedback",
            "POST /api/suggestions/{id}/feedback",
        ),
        (
            "GET",
            "/api/resources/<resource_type>/<path:resource_id>",
            "GET /api/resources/{id}/{id}",
        ),
        ("GET", "/admin/api/engines/<int:version_id>", "GET /admin/api/engines/{id}"),
        ("GET", None, "GET unmatched"),
    ],
)
def test_route_names_put_every_path_parameter_as_id(method, rule, label):
    assert route_label(method, rule) == label


def test_spread_gives_p50_p95_p99_by_interpolation():
    values = [float(n) for n in range(1, 101)]  # 1..100
    assert spread(values) == {"p50": 50.5, "p95": 95.0, "p99": 99.0}
    assert spread([7.0]) == {"p50": 7.0, "p95": 7.0, "p99": 7.0}
    assert spread([10.0, 20.0]) == {"p50": 15.0, "p95": 19.5, "p99": 19.9}


def _timing(route: str, ms: float, request_id: str, status: int = 200) -> Timing:
    return Timing(route=route, status=status, ms=ms, cpu_ms=ms / 2, request_id=request_id)


def test_route_figures_group_by_route_with_counts():
    figures = route_figures(
        [
            _timing("GET /api/suggestions", 10, "a.first"),
            _timing("GET /api/suggestions", 30, "a.warm"),
            _timing("POST /api/note", 5, "b"),
        ]
    )
    assert list(figures) == ["GET /api/suggestions", "POST /api/note"]
    assert figures["GET /api/suggestions"]["count"] == 2
    assert figures["GET /api/suggestions"]["p50"] == 20.0
    assert figures["GET /api/suggestions"]["cpu_ms_p50"] == 10.0


def test_the_timing_log_round_trips_and_torn_lines_are_skipped(tmp_path):
    path = tmp_path / "timings.jsonl"
    log = RequestTimingLog(path)
    log.write(route="GET /api/context", status=200, ms=1.23456, cpu_ms=0.5, request_id="x-1")
    log.write(route="POST /api/note", status=503, ms=9, cpu_ms=1, request_id=None)
    log.close()
    lines = path.read_text(encoding="utf-8").splitlines() + ['{"route": "GET /api/no', ""]
    parsed = parse_timings(lines)
    assert [(t.route, t.status, t.request_id) for t in parsed] == [
        ("GET /api/context", 200, "x-1"),
        ("POST /api/note", 503, None),
    ]
    assert parsed[0].ms == 1.235


def test_a_level_and_the_report_have_the_contract_shape():
    level = build_level(
        clinicians=32,
        processes=2,
        store="postgresql",
        llm="none",
        sessions=32,
        errors=["GET /api/context: HTTP 503"],
        timings=[
            _timing("GET /api/suggestions", 400, "load-x-c0-s0-5.first"),
            _timing("GET /api/suggestions", 20, "load-x-c0-s0-9.warm"),
            _timing("GET /api/context", 3, "load-x-c0-s0-1", status=503),
        ],
        app_cpu_ms=6400,
        rss_mb=300.04,
        wall_s=12.34,
    )
    report = build_report(machine={"cpus": 2}, levels=[level])
    assert set(report) >= {"machine", "levels"}
    [shown] = json.loads(json.dumps(report))["levels"]
    for key in LEVEL_KEYS:
        assert key in shown
    assert shown["errors"] == 1 and shown["server_errors"] == 1
    assert shown["app_cpu_ms_per_session"] == 200.0
    assert set(shown["routes"]["GET /api/suggestions"]) >= {"p50", "p95", "p99"}
    assert shown["first_suggestions"] == {"p50": 400.0, "p95": 400.0, "p99": 400.0}
    assert shown["warm_suggestions"]["p95"] == 20.0


def test_the_report_refuses_a_level_without_the_contract_keys():
    with pytest.raises(ValueError, match="lacks"):
        build_report(machine={}, levels=[{"clinicians": 1}])


def test_levels_are_sqlite_on_one_process_then_postgresql_on_two_then_the_slow_llm():
    plans = plan_levels((1, 8), postgres=True, llm_delay_s=35)
    assert [(p.store, p.processes, p.clinicians, p.llm_delay_s) for p in plans] == [
        ("sqlite", 1, 1, None),
        ("sqlite", 1, 8, None),
        ("postgresql", 2, 1, None),
        ("postgresql", 2, 8, None),
        ("postgresql", 2, 32, 35),
    ]
    without = plan_levels((1,), postgres=False, llm_delay_s=None)
    assert [(p.store, p.processes) for p in without] == [("sqlite", 1)]


def test_think_time_levels_come_first_then_the_saturation_levels_without_it():
    plans = plan_levels(
        (1, 64), postgres=True, llm_delay_s=35, think_s=4, saturation=(32,), stores=("postgresql",)
    )
    assert [(p.store, p.processes, p.clinicians, p.llm_delay_s, p.think_s) for p in plans] == [
        ("postgresql", 2, 1, None, 4),
        ("postgresql", 2, 64, None, 4),
        ("postgresql", 2, 32, 35, 4),
        ("postgresql", 2, 32, None, 0),
    ]
    assert plans[-1].name == "postgresql-p2-c32-sat" and plans[0].name == "postgresql-p2-c1-t4"
    # Asked for the saturation mode itself: nothing is run twice.
    assert [
        p.think_s
        for p in plan_levels((8,), postgres=False, llm_delay_s=None, think_s=0, saturation=(32,))
    ] == [0]


def test_a_level_says_its_think_time_and_mode():
    level = build_level(
        clinicians=1,
        processes=1,
        store="sqlite",
        llm="none",
        sessions=1,
        errors=[],
        timings=[],
        app_cpu_ms=1,
        rss_mb=1,
        wall_s=1,
        think_s=4.0,
    )
    assert (level["think_s"], level["mode"], level["lock_waits"]) == (4.0, "think", None)
    assert (
        build_level(
            clinicians=1,
            processes=1,
            store="sqlite",
            llm="none",
            sessions=1,
            errors=[],
            timings=[],
            app_cpu_ms=1,
            rss_mb=1,
            wall_s=1,
        )["mode"]
        == "saturation"
    )


def test_pauses_are_seeded_exponential_with_the_stated_mean_and_capped(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr("smartapp.load.time.sleep", slept.append)
    ehr = EHR(ehr_url="http://ehr", fhir_base="http://ehr/fhir")

    def pauses(seed: int, number: int) -> list[float]:
        slept.clear()
        person = _Clinician(
            number=number, level="x", app_url="http://app", ehr=ehr, think_s=4.0, seed=seed
        )
        for _ in range(4000):
            person.think()
        return list(slept)

    first = pauses(14, 0)
    assert first == pauses(14, 0)  # a run repeats
    assert first != pauses(14, 1) and first != pauses(15, 0)
    assert max(first) <= THINK_CAP * 4.0
    assert 3.6 < sum(first) / len(first) < 4.2  # the cut tail lowers the mean a little
    slept.clear()
    _Clinician(number=0, level="x", app_url="http://app", ehr=ehr, think_s=0).think()
    assert slept == []  # the saturation mode never pauses


def test_the_first_launch_waits_uniformly_over_one_sessions_think_time(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr("smartapp.load.time.sleep", slept.append)
    ehr = EHR(ehr_url="http://ehr", fhir_base="http://ehr/fhir")
    for number in range(400):
        _Clinician(number=number, level="x", app_url="http://a", ehr=ehr, think_s=4.0).join()
    assert 0 <= min(slept) and max(slept) <= PAUSES_PER_SESSION * 4.0
    assert 0.4 < sum(slept) / len(slept) / (PAUSES_PER_SESSION * 4.0) < 0.6
    slept.clear()
    _Clinician(number=0, level="x", app_url="http://a", ehr=ehr, think_s=0).join()
    assert slept == []  # the saturation mode starts everyone at once


def test_no_two_clinicians_of_a_round_open_one_patient_as_one_practitioner():
    ehr = EHR(ehr_url="http://e", fhir_base="http://e/fhir", practitioners=("a", "b", "c", "d"))
    for clinicians in (1, 8, 32, 64):
        people = [
            _Clinician(number=n, level="x", app_url="http://a", ehr=ehr, clinicians=clinicians)
            for n in range(clinicians)
        ]
        for session_no in range(3):
            pairs = [p.chart(session_no) for p in people]
            assert len(set(pairs)) == clinicians
            assert {user for _, user in pairs} <= {"a", "b", "c", "d"}
    alone = EHR(ehr_url="http://e", fhir_base="http://e/fhir")
    assert _Clinician(number=0, level="x", app_url="http://a", ehr=alone).chart(0)[1] is None
