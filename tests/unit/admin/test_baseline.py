"""Unit: the dashboard's EHR baseline — weeks split at go-live (its own week left out), app
users vs the others, note-weighted clinician medians, bootstrap intervals, and the
`baseline` section of /admin/api/metrics and of the page."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from smartapp.admin.baseline import _weighted_median, baseline_summary, bootstrap_ci, period_of
from smartapp.baseline.models import BaselineRun, BaselineWeek
from tests.unit.admin.conftest import ISS, bearer
from tests.unit.admin.seed import Seeded, add_suggestion

GO_LIVE = date(2026, 8, 12)  # a Wednesday: the week of 2026-08-10 is neither side


def week_row(user, monday, *, lag, chars, notes=4):
    year, number, _ = monday.isocalendar()
    return BaselineWeek(
        issuer=ISS,
        fhir_user=user,
        week=f"{year}-W{number:02d}",
        week_start=monday,
        notes=notes,
        notes_with_lag=notes,
        median_lag_hours=lag,
        notes_with_length=notes,
        median_note_chars=chars,
        run_id="r1",
    )


def seed_baseline(s):
    s.add(
        BaselineRun(
            id="r1",
            issuer=ISS,
            since=date(2026, 7, 1),
            go_live=GO_LIVE,
            level="system",
            encounters_read=0,
            notes_read=0,
            notes_counted=0,
            clinicians=3,
            weeks_stored=0,
            skipped={},
        )
    )
    s.flush()
    before, during, after = date(2026, 8, 3), date(2026, 8, 10), date(2026, 8, 17)
    # Two app users who halve their lag; one clinician who does not use the app.
    for user, lag in (("Practitioner/a", 20.0), ("Practitioner/b", 30.0)):
        s.add(week_row(user, before, lag=lag, chars=1000))
        s.add(week_row(user, during, lag=999.0, chars=1))
        s.add(week_row(user, after, lag=lag / 2, chars=1200))
    s.add(week_row("Practitioner/c", before, lag=10.0, chars=800))
    s.add(week_row("Practitioner/c", after, lag=10.0, chars=800))
    for number, user in ((1, "Practitioner/a"), (2, "Practitioner/b")):
        row = add_suggestion(
            s,
            Seeded(
                site=ISS,
                kind="problem_summary",
                engine=("builtin", "1"),
                shown_at=datetime(2026, 8, 20, tzinfo=UTC),
                decisions=(("accept", 5.0, 0),),
            ),
            number=number,
        )
        row.fhir_user = user


@pytest.fixture
def seeded(database):
    with database.session() as s:
        seed_baseline(s)
    return database


def test_weeks_split_at_go_live_and_the_go_live_week_is_left_out():
    assert period_of(date(2026, 8, 3), GO_LIVE) == "before"
    assert period_of(date(2026, 8, 10), GO_LIVE) is None
    assert period_of(date(2026, 8, 17), GO_LIVE) == "after"
    assert period_of(date(2026, 8, 10), date(2026, 8, 10)) == "after"
    assert period_of(date(2026, 8, 10), None) == "before"


def test_app_users_and_the_others_before_and_after(seeded):
    with seeded.session() as s:
        [site] = baseline_summary(s)["sites"]
    assert site["goLive"] == "2026-08-12"
    users, others = site["groups"]
    assert (users["group"], users["clinicians"]) == ("app_users", 2)
    assert users["before"]["median_lag_hours"] == 25.0
    assert users["after"]["median_lag_hours"] == 12.5
    assert users["before"]["notes"] == 8  # the go-live week's notes are in neither
    assert users["change"]["median_lag_hours"] == -12.5
    assert users["change"]["median_note_chars"] == 200.0
    low, high = users["before"]["lag_hours_ci95"]
    assert 20.0 <= low <= 25.0 <= high <= 30.0
    assert (others["group"], others["clinicians"]) == ("non_users", 1)
    assert others["change"]["median_lag_hours"] == 0.0
    # One clinician: a median, no interval.
    assert others["before"]["lag_hours_ci95"] is None


def test_bootstrap_interval_is_reproducible_and_brackets_the_median():
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    first = bootstrap_ci(values)
    assert first == bootstrap_ci(values)
    assert first is not None and first[0] <= 5.0 <= first[1]
    assert bootstrap_ci([3.0]) is None


def test_clinician_values_weight_weeks_by_their_notes():
    assert _weighted_median([(10.0, 1), (20.0, 5)]) == 20.0
    assert _weighted_median([(10.0, 2), (20.0, 2)]) == 15.0
    assert _weighted_median([(10.0, 0)]) is None


def test_metrics_api_has_the_baseline_section(admin_app, api):
    with admin_app.extensions["smartapp.db"].session() as s:
        seed_baseline(s)
    body = api.get("/admin/api/metrics", headers=bearer()).get_json()
    assert "groups" in body
    [site] = body["baseline"]["sites"]
    assert site["issuer"] == ISS
    assert [g["group"] for g in site["groups"]] == ["app_users", "non_users"]
    assert body["baseline"]["interval"].startswith("95% percentile bootstrap")


def test_dashboard_shows_the_baseline_section(admin_app, identity):
    with admin_app.extensions["smartapp.db"].session() as s:
        seed_baseline(s)
    identity.sign_in("Practitioner/admin1")
    page = admin_app.test_client().get("/admin").get_data(as_text=True)
    assert "Baseline from the EHR: before and after go-live" in page
    assert "App users (2)" in page
    assert "12.5 h" in page


def test_without_a_baseline_the_section_says_how_to_make_one(admin_app, identity):
    identity.sign_in("Practitioner/admin1")
    page = admin_app.test_client().get("/admin").get_data(as_text=True)
    assert "smartapp baseline --since" in page
