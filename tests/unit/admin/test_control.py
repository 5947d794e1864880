"""Unit (store): inside vs outside a partial rollout, from the arms saved notes record."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from smartapp.admin import control
from smartapp.admin.control import rollout_control
from smartapp.notes.models import AFTER_VISIT_SUMMARY, SavedNote

SITE = "https://a.example/fhir"
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
KIND = "problem_summary"


def _note(s, n: int, *, user: str | None, arms, seconds: float | None, edits: int, **kw) -> None:
    s.add(
        SavedNote(
            id=f"n{n:03d}",
            visit_key=f"v{n}",
            launch_session_id=f"l{n}",
            site=kw.get("site", SITE),
            patient_id="p1",
            fhir_user=user,
            text="note",
            created_at=kw.get("created_at", T0),
            launched_at=None
            if seconds is None
            else kw.get("created_at", T0) - timedelta(seconds=seconds),
            edits=edits,
            chars_total=kw.get("chars", (0, 0, 0))[0],
            chars_accepted=kw.get("chars", (0, 0, 0))[1],
            chars_edited=kw.get("chars", (0, 0, 0))[2],
            rollout_arms=arms,
            document_kind=kw.get("document_kind", "note"),
        )
    )


@pytest.fixture
def seeded(database):
    """Inside: 3 clinicians, 4 notes; outside: 2 clinicians, 3 notes; plus notes in no arm."""
    inside, outside = {KIND: "inside"}, {KIND: "outside"}
    rows = [
        ("Practitioner/1", inside, 100, 0),
        ("Practitioner/1", inside, 140, 2),
        ("Practitioner/2", inside, 200, 1),
        ("Practitioner/3", inside, None, 1),  # no launch time: counts for edits only
        ("Practitioner/4", outside, 300, 3),
        ("Practitioner/4", outside, 500, 2),
        ("Practitioner/5", outside, 400, 4),
    ]
    with database.session() as s:
        for n, (user, arms, seconds, edits) in enumerate(rows):
            _note(s, n, user=user, arms=arms, seconds=seconds, edits=edits)
        # In no arm: saved before arms were recorded, no partial rollout, no fhirUser, and
        # an after-visit summary (the patient's document, not a note).
        _note(s, 20, user="Practitioner/6", arms=None, seconds=10, edits=9)
        _note(s, 21, user="Practitioner/6", arms={}, seconds=10, edits=9)
        _note(s, 22, user=None, arms=outside, seconds=10, edits=9)
        _note(
            s,
            23,
            user="Practitioner/1",
            arms=inside,
            seconds=10,
            edits=9,
            document_kind=AFTER_VISIT_SUMMARY,
        )
    return database


def test_inside_and_outside_counts_medians_and_edits_per_note(seeded):
    with seeded.session() as s:
        [group] = rollout_control(s, resamples=200)["groups"]
    assert (group["site"], group["kind"]) == (SITE, KIND)
    inside, outside, difference = group["inside"], group["outside"], group["difference"]
    assert (inside["clinicians"], inside["notes"]) == (3, 4)
    assert (outside["clinicians"], outside["notes"]) == (2, 3)
    assert inside["median_seconds_launch_to_note"] == 140.0  # median(100, 140, 200)
    assert outside["median_seconds_launch_to_note"] == 400.0  # median(300, 400, 500)
    assert inside["edits_per_note"] == 1.0  # 4 / 4
    assert outside["edits_per_note"] == 3.0  # 9 / 3
    assert difference["median_seconds_launch_to_note"] == -260.0
    assert difference["edits_per_note"] == -2.0


def test_intervals_hold_the_estimate_and_are_the_same_every_time(seeded):
    with seeded.session() as s:
        first = rollout_control(s, resamples=300)
        again = rollout_control(s, resamples=300)
    assert first == again  # a fixed seed: the page and the API agree
    assert first["interval"] == (
        "95% percentile bootstrap over clinicians (300 resamples, each arm)"
    )
    [group] = first["groups"]
    for part in ("inside", "outside", "difference"):
        for measure in ("median_seconds_launch_to_note", "edits_per_note"):
            low, high = group[part][f"{measure}_ci95"]
            assert low <= group[part][measure] <= high, (part, measure)
    # Resampling clinicians: the outside arm's edits per note is 2.5 (Practitioner/4) or 4
    # (Practitioner/5) alone, or 3 for both; never a value a single note would give.
    low, high = group["outside"]["edits_per_note_ci95"]
    assert 2.5 <= low and high <= 4.0


def test_note_composition_by_arm_pools_characters_with_clinician_intervals(database):
    """Shares are the arm's characters from accepted / edited suggestions and typed, over
    all its notes' characters (as /admin/api/metrics pools them), each with its interval."""
    inside, outside = {KIND: "inside"}, {KIND: "outside"}
    notes = [
        # (user, arms, (total, accepted, edited))
        ("Practitioner/1", inside, (1000, 600, 200)),
        ("Practitioner/1", inside, (1000, 500, 100)),
        ("Practitioner/2", inside, (2000, 1000, 600)),
        ("Practitioner/3", outside, (1000, 100, 0)),
        ("Practitioner/4", outside, (1000, 0, 300)),
        ("Practitioner/4", outside, (0, 0, 0)),  # saved before composition was recorded
    ]
    with database.session() as s:
        for n, (user, arms, chars) in enumerate(notes):
            _note(s, n, user=user, arms=arms, seconds=60, edits=1, chars=chars)
    with database.session() as s:
        [group] = rollout_control(s, resamples=400)["groups"]
    a, b, d = group["inside"], group["outside"], group["difference"]
    assert a["accepted_share_of_note_chars"] == 0.525  # 2100 / 4000
    assert a["edited_share_of_note_chars"] == 0.225  # 900 / 4000
    assert a["typed_share_of_note_chars"] == 0.25  # 1000 / 4000
    assert b["accepted_share_of_note_chars"] == 0.05  # 100 / 2000
    assert b["edited_share_of_note_chars"] == 0.15
    assert b["typed_share_of_note_chars"] == 0.8
    assert d["accepted_share_of_note_chars"] == 0.475
    assert d["typed_share_of_note_chars"] == -0.55
    assert b["edits_per_note"] == 1.0
    for part in (a, b, d):
        for measure in control.MEASURES:
            low, high = part[f"{measure}_ci95"]
            assert low <= part[measure] <= high, measure
    # Resampling clinicians: outside is Practitioner/3 alone (accepted 0.1), /4 alone (0),
    # or both (0.05); the interval is within those.
    low, high = b["accepted_share_of_note_chars_ci95"]
    assert 0.0 <= low <= 0.05 <= high <= 0.1
    # A note of no recorded characters leaves the shares None, not 0.
    with database.session() as s:
        s.query(SavedNote).update({SavedNote.chars_total: 0, SavedNote.chars_accepted: 0})
    with database.session() as s:
        [group] = rollout_control(s, resamples=50)["groups"]
    assert group["inside"]["typed_share_of_note_chars"] is None
    assert group["difference"]["typed_share_of_note_chars_ci95"] is None


def test_one_clinician_in_an_arm_gives_no_interval(database):
    with database.session() as s:
        _note(s, 1, user="Practitioner/1", arms={KIND: "inside"}, seconds=60, edits=1)
        _note(s, 2, user="Practitioner/1", arms={KIND: "inside"}, seconds=80, edits=1)
        _note(s, 3, user="Practitioner/2", arms={KIND: "outside"}, seconds=90, edits=0)
        _note(s, 4, user="Practitioner/3", arms={KIND: "outside"}, seconds=95, edits=2)
    with database.session() as s:
        [group] = rollout_control(s, resamples=100)["groups"]
    assert group["inside"]["median_seconds_launch_to_note"] == 70.0
    assert group["inside"]["median_seconds_launch_to_note_ci95"] is None
    assert group["outside"]["median_seconds_launch_to_note_ci95"] is not None
    assert group["difference"]["median_seconds_launch_to_note"] == -22.5
    assert group["difference"]["median_seconds_launch_to_note_ci95"] is None


@pytest.fixture
def bootstraps(monkeypatch) -> list[tuple[int, int]]:
    """Every bootstrap actually run (its arms' clinician counts), on an empty cache."""
    control._cached_comparison.cache_clear()
    runs: list[tuple[int, int]] = []
    real = control.compare_arms

    def counted(inside, outside, **options):
        runs.append((len(inside), len(outside)))
        return real(inside, outside, **options)

    monkeypatch.setattr(control, "compare_arms", counted)
    yield runs
    control._cached_comparison.cache_clear()


def test_the_bootstrap_runs_once_per_data_and_again_for_the_group_a_new_note_joins(
    seeded, bootstraps
):
    other = "https://b.example/fhir"
    with seeded.session() as s:
        for n, arm in ((30, "inside"), (31, "outside"), (32, "inside"), (33, "outside")):
            _note(s, n, user=f"Practitioner/{n}", arms={KIND: arm}, seconds=50, edits=0, site=other)
    with seeded.session() as s:
        first = rollout_control(s, resamples=200)
    assert sorted(bootstraps) == [(2, 2), (3, 2)]  # one per (site, kind)
    with seeded.session() as s:
        again = rollout_control(s, resamples=200)
    assert again == first and len(bootstraps) == 2  # the same data: nothing recomputed
    # A cached result handed out is a copy: a caller changing it changes no later answer.
    again["groups"][0]["inside"]["notes"] = -1
    with seeded.session() as s:
        assert rollout_control(s, resamples=200) == first
    with seeded.session() as s:
        _note(s, 40, user="Practitioner/9", arms={KIND: "outside"}, seconds=900, edits=5)
    with seeded.session() as s:
        after = rollout_control(s, resamples=200)
    assert bootstraps[2:] == [(3, 3)]  # only the group the note joined
    mine = next(g for g in after["groups"] if g["site"] == SITE)
    assert mine["outside"]["clinicians"] == 3 and mine["outside"]["notes"] == 4
    assert next(g for g in after["groups"] if g["site"] == other) == next(
        g for g in first["groups"] if g["site"] == other
    )
    with seeded.session() as s:
        rollout_control(s, resamples=100)  # another number of resamples is another answer
    assert len(bootstraps) == 5


def test_each_site_and_kind_is_its_own_comparison_within_the_period(database):
    with database.session() as s:
        _note(
            s,
            1,
            user="Practitioner/1",
            arms={KIND: "inside", "care_gaps": "outside"},
            seconds=60,
            edits=1,
        )
        _note(
            s,
            2,
            user="Practitioner/1",
            arms={KIND: "inside"},
            seconds=60,
            edits=1,
            site="https://b.example/fhir",
        )
        _note(
            s,
            3,
            user="Practitioner/1",
            arms={KIND: "inside"},
            seconds=60,
            edits=1,
            created_at=T0 + timedelta(days=30),
        )
    with database.session() as s:
        groups = rollout_control(s, start=T0, end=T0 + timedelta(days=1), resamples=10)["groups"]
    assert [(g["site"], g["kind"]) for g in groups] == [
        (SITE, "care_gaps"),
        (SITE, KIND),
        ("https://b.example/fhir", KIND),
    ]
    care_gaps = groups[0]
    assert care_gaps["inside"]["notes"] == 0 and care_gaps["outside"]["notes"] == 1
    assert care_gaps["inside"]["median_seconds_launch_to_note"] is None
    assert care_gaps["difference"]["median_seconds_launch_to_note"] is None


def _seed_app(admin_app) -> None:
    with admin_app.extensions["smartapp.db"].session() as s:
        for n, (user, arm, seconds) in enumerate(
            [
                ("Practitioner/1", "inside", 100),
                ("Practitioner/2", "inside", 120),
                ("Practitioner/3", "outside", 300),
                ("Practitioner/4", "outside", 340),
            ]
        ):
            _note(s, n, user=user, arms={KIND: arm}, seconds=seconds, edits=1)


def test_metrics_api_has_the_rollout_control_section(admin_app, api):
    from tests.unit.admin.conftest import bearer

    _seed_app(admin_app)
    body = api.get("/admin/api/metrics?from=2026-11-01", headers=bearer()).get_json()
    [group] = body["rollout_control"]["groups"]
    assert group["inside"]["median_seconds_launch_to_note"] == 110.0
    assert group["difference"]["median_seconds_launch_to_note"] == -210.0
    assert body["rollout_control"]["interval"].startswith("95% percentile bootstrap")
    later = api.get("/admin/api/metrics?from=2026-12-01", headers=bearer()).get_json()
    assert later["rollout_control"]["groups"] == []  # the period applies


def test_dashboard_shows_inside_vs_outside(admin_app, identity):
    _seed_app(admin_app)
    identity.sign_in("Practitioner/admin1")
    page = admin_app.test_client().get("/admin").get_data(as_text=True)
    assert "Inside vs outside a rollout" in page
    assert "problem_summary" in page and "-210 s" in page
    assert 'data-measure="typed_share_of_note_chars"' in page


def test_dashboard_shows_the_note_composition_by_arm_in_percent(admin_app, identity):
    with admin_app.extensions["smartapp.db"].session() as s:
        for n, (user, arm, chars) in enumerate(
            [
                ("Practitioner/1", "inside", (1000, 600, 200)),
                ("Practitioner/2", "inside", (1000, 400, 200)),
                ("Practitioner/3", "outside", (1000, 0, 100)),
                ("Practitioner/4", "outside", (1000, 100, 100)),
            ]
        ):
            _note(s, n, user=user, arms={KIND: arm}, seconds=60, edits=1, chars=chars)
    identity.sign_in("Practitioner/admin1")
    page = admin_app.test_client().get("/admin").get_data(as_text=True)
    assert "note chars from accepted suggestions" in page
    assert "50.0%" in page and "5.0%" in page  # accepted: inside 1000/2000, outside 100/2000
    assert "+45.0 pts" in page  # the difference, in percentage points


def test_without_a_partial_rollout_the_dashboard_says_how_to_start_one(admin_app, identity):
    identity.sign_in("Practitioner/admin1")
    page = admin_app.test_client().get("/admin").get_data(as_text=True)
    assert "No notes in a partial rollout in this period" in page
