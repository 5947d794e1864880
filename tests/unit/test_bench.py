"""Unit: the benchmark's arithmetic and results shape; a tiny real run checks both sides
read the same resources (speed is never asserted)."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from smartapp.bench import (
    COMPARED_TYPES,
    BenchmarkError,
    Sample,
    Series,
    add_honest_baselines,
    build_results,
    compare_ids,
    ehr_in_child_process,
    ehr_in_process,
    format_request_cost,
    format_table,
    percentile,
    run_benchmark,
    run_cli,
    warm_request_cost,
)
from smartapp.fhir.chart import medication_history_since

CONTRACT_FIELDS = {
    "rtt_ms",
    "app_ms_p50",
    "baseline_ms_p50",
    "ratio",
    "app_requests",
    "baseline_requests",
}


def series(name: str, times: list[float], requests: int, waiting: float = 0.0) -> Series:
    return Series(
        name=name,
        samples=[
            Sample(ms=t, requests=requests, client_requests=requests, waiting_ms=waiting)
            for t in times
        ],
    )


def test_percentile_interpolates_between_ranks():
    assert percentile([4, 1, 3, 2], 50) == 2.5
    assert percentile([1, 2, 3, 4], 90) == pytest.approx(3.7)
    assert percentile([1, 2, 3, 4], 0) == 1
    assert percentile([1, 2, 3, 4], 100) == 4
    assert percentile([7.5], 90) == 7.5
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1], 101)


def test_results_carry_the_contract_fields_and_the_derived_ones():
    results = build_results(
        rtt_ms=50,
        app=series("app", [130, 140, 150, 500], 2, waiting=120),
        app_cold=series("app_cold", [160, 170, 180], 3),
        baseline=series("baseline", [3000, 3100, 3200], 56),
        resources={"Patient": 1, "Observation": 399},
        repetitions=3,
        warmup=1,
        extra={"patient": "bench-large"},
    )
    assert CONTRACT_FIELDS <= set(results)
    assert results["rtt_ms"] == 50
    assert results["app_ms_p50"] == 145.0
    assert results["baseline_ms_p50"] == 3100.0
    assert results["ratio"] == round(3100 / 145, 2)
    assert results["app_requests"] == 2
    assert results["baseline_requests"] == 56
    assert results["floor_ms"] == 50
    # (145 - 50) / 50 round trips above one round trip.
    assert results["app_round_trips_over_floor"] == 1.9
    assert results["app_cold_ms_p50"] == 170.0
    assert results["app_cold_requests"] == 3
    assert results["resources_total"] == 400
    assert results["targets"] == {
        "ratio_min": 5.0,
        "app_requests_max": 3,
        "round_trips_over_floor_max": 2.0,
        "ratio_met": True,
        "app_requests_met": True,
        "floor_met": True,
    }
    # Where the time went: waiting beyond the round trips is the server's, the rest ours.
    assert results["summary"]["app"]["network_ms"] == 100
    assert results["summary"]["app"]["server_ms_p50"] == 20.0  # 120 - 2 x 50
    assert results["summary"]["app"]["client_ms_p50"] == 25.0  # median of 10, 20, 30, 380
    assert results["patient"] == "bench-large"
    assert json.loads(json.dumps(results)) == results


def test_the_honest_baselines_are_ratios_to_the_same_runs_app():
    results = build_results(
        rtt_ms=50,
        app=series("app", [100, 100, 100], 2),
        app_cold=series("app_cold", [150], 3),
        baseline=series("baseline", [3000], 56),
        resources={"Patient": 1},
        repetitions=3,
        warmup=0,
    )
    add_honest_baselines(
        results,
        rtt_ms=50,
        baseline_count=series("baseline_count", [300, 310, 320], 9),
        parallel=series("parallel", [80, 90, 100], 9),
    )
    assert results["ratio_count"] == 3.1
    assert results["ratio_parallel"] == 0.9  # the plain client was faster
    assert results["baseline_count_requests"] == 9
    assert set(results["summary"]) >= {"baseline_count", "parallel"}
    assert "parallel GETs" in format_table(results)
    assert json.loads(json.dumps(results)) == results


def test_a_missed_target_is_reported_as_missed():
    results = build_results(
        rtt_ms=50,
        app=series("app", [400], 4),
        app_cold=series("app_cold", [450], 5),
        baseline=series("baseline", [1000], 20),
        resources={},
        repetitions=1,
        warmup=0,
    )
    assert results["ratio"] == 2.5
    targets = results["targets"]
    assert not targets["ratio_met"]
    assert not targets["app_requests_met"]
    assert not targets["floor_met"]
    assert "MISSED" in format_table(results)


def test_at_zero_latency_there_is_no_floor_distance():
    results = build_results(
        rtt_ms=0,
        app=series("app", [10], 2),
        app_cold=series("app_cold", [12], 3),
        baseline=series("baseline", [90], 56),
        resources={},
        repetitions=1,
        warmup=0,
    )
    assert results["app_round_trips_over_floor"] is None
    assert not results["targets"]["floor_met"]
    assert "ratio baseline/app: 9.0x" in format_table(results)


def test_the_table_has_a_row_per_side():
    results = build_results(
        rtt_ms=50,
        app=series("app", [150], 2),
        app_cold=series("app_cold", [200], 3),
        baseline=series("baseline", [3000], 56),
        resources={"Observation": 399},
        repetitions=1,
        warmup=0,
    )
    table = format_table(results)
    for label in ("floor: one round trip", "app (CapabilityStatement cached)", "app, cold"):
        assert label in table
    assert "baseline: fhirclient, sequential" in table
    assert "Observation 399" in table


def test_compare_ids_names_each_type_that_differs():
    app = {"Observation": ["a", "b"], "Condition": ["c"]}
    assert compare_ids(app, dict(app)) == []
    differences = compare_ids(app, {"Observation": ["a"], "Condition": ["c"]})
    assert differences == [
        "Observation: app 2, baseline 1 (1 only in the app, 0 only in the baseline)"
    ]


@pytest.mark.parametrize("options", [{"repetitions": 0}, {"latency_ms": -1}, {"warmup": -1}])
def test_bad_options_are_bad_usage(options, tmp_path, capsys):
    args = argparse.Namespace(
        latency_ms=50, repetitions=3, warmup=1, out=tmp_path / "r.json", in_process=True, quiet=True
    )
    for name, value in options.items():
        setattr(args, name, value)
    assert run_cli(args) == 2
    assert "bench:" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.integration
def test_a_tiny_run_reads_the_same_resources_on_both_sides(sandbox_template: Path):
    with ehr_in_process(latency_ms=0, sandbox_data_dir=sandbox_template) as ehr:
        results = run_benchmark(ehr, latency_ms=0, repetitions=1, warmup=0)
        holds = {
            rtype: requests.get(
                f"{ehr.ehr_url}/_sandbox/resources/{rtype}",
                params={"patient": "bench-large"},
                timeout=30,
            ).json()
            for rtype in ("Observation", "Condition", "MedicationRequest")
        }
    assert CONTRACT_FIELDS <= set(results)
    assert results["same_resources"] is True
    assert results["request_count_mismatches"] == []
    resources = results["resources"]
    assert set(resources) == set(COMPARED_TYPES)
    # Both sides read the whole large chart, not a page of it.
    assert resources["Observation"] == len(holds["Observation"]) >= 300
    assert resources["Condition"] == len(holds["Condition"]) >= 20
    since = medication_history_since(datetime.now(UTC).date()).isoformat()
    assert resources["MedicationRequest"] == sum(
        1
        for r in holds["MedicationRequest"]
        if r["status"] == "active"
        or (r["status"] in ("stopped", "completed") and r["authoredOn"] >= since)
    )
    assert resources["Medication"] >= 1
    # The app's batches against one request per page and per Medication.
    assert results["app_requests"] <= 3 < results["baseline_requests"]
    assert results["app_cold_requests"] == results["app_requests"] + 1  # + /metadata
    assert len(results["samples_ms"]["app"]) == 1


def test_the_warm_request_cost_counts_one_store_session_and_few_statements(
    sandbox_template: Path,
):
    with ehr_in_process(latency_ms=0, sandbox_data_dir=sandbox_template) as ehr:
        cost = warm_request_cost(ehr, repetitions=3)
    assert cost["route"] == "GET /api/suggestions"
    assert cost["suggestions"] > 0  # the large chart gives the engines something to draft
    assert cost["statements"] <= cost["targets"]["statements_max"] == 5
    assert cost["checkouts"] == 1 and cost["transactions"] == 1
    assert cost["cpu_ms_p95"] >= cost["cpu_ms_p50"] > 0  # measured, never judged here
    assert "warm GET /api/suggestions (sqlite" in format_request_cost(cost)


@pytest.mark.integration
def test_the_ehr_child_process_serves_and_stops(sandbox_template: Path):
    with ehr_in_child_process(latency_ms=0, sandbox_data_dir=sandbox_template) as ehr:
        config = requests.get(f"{ehr.fhir_base}/.well-known/smart-configuration", timeout=30).json()
        assert config["authorization_endpoint"].startswith(ehr.ehr_url)
        assert ehr.where == "child process"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{ehr.fhir_base}/metadata", timeout=5)


def test_an_ehr_that_does_not_answer_is_a_benchmark_error():
    import socket

    from smartapp.bench import RunningEHR

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nowhere = RunningEHR(
        ehr_url=f"http://127.0.0.1:{port}",
        fhir_base=f"http://127.0.0.1:{port}/fhir",
        client_id="smartapp",
        redirect_uri="http://127.0.0.1:1/callback",
        scope="launch",
        where="nowhere",
    )
    with pytest.raises(BenchmarkError, match="stopped answering"):
        run_benchmark(nowhere, latency_ms=0, repetitions=1, warmup=0)


def test_the_large_chart_has_exactly_the_observations_asked_for_with_a_history():
    from smartapp.bench import large_chart

    source = [
        {"resourceType": "Patient", "id": "p1"},
        {
            "resourceType": "Observation",
            "id": "p1-obs-1",
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2026-10-12T09:00:00Z",
        },
        {
            "resourceType": "Observation",
            "id": "p1-obs-2",
            "subject": {"reference": "Patient/p1"},
            "effectivePeriod": {"start": "2026-10-01", "end": "2026-10-02"},
        },
    ]
    chart = large_chart(source, source_patient="p1", patient="p9", observations=5)
    observations = [r for r in chart if r["resourceType"] == "Observation"]
    assert len(observations) == 5 and len({o["id"] for o in observations}) == 5
    assert {r["id"] for r in chart if r["resourceType"] == "Patient"} == {"p9"}
    assert all(o["subject"]["reference"] == "Patient/p9" for o in observations)
    by_id = {o["id"]: o for o in observations}
    assert by_id["p9-obs-1-h2"]["effectiveDateTime"] == "2024-08-03T09:00:00Z"  # 800 days back
    assert by_id["p9-obs-2-h1"]["effectivePeriod"] == {"start": "2025-08-27", "end": "2025-08-28"}
    assert source[1]["id"] == "p1-obs-1"  # the source is left as it was
