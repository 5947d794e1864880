"""Unit (store): governance metrics on seeded feedback equal hand-computed values.

Runs on SQLite, and on PostgreSQL when SMARTAPP_TEST_DATABASE_URL is set. The seed and
each suggestion's outcome are listed in seed.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from smartapp.admin.metrics import (
    compare_periods,
    compute_metrics,
    notes_written,
    week_key,
)
from tests.unit.admin.seed import SITE_A, SITE_B, W48, seed_feedback


@pytest.fixture
def seeded(database):
    with database.session() as s:
        seed_feedback(s)
    return database


def as_rows(groups):
    return {g.key: g.to_json() for g in groups}


def test_metrics_by_kind(seeded):
    with seeded.session() as s:
        rows = as_rows(compute_metrics(s, group_by="kind", start=None, end=None))
    assert list(rows) == ["care_gaps", "problem_list", "summary"]
    # care_gaps: #5 flag (accepted first, then flagged 60 s after shown), #6 none, #7 edit.
    assert rows["care_gaps"] == {
        "key": "care_gaps",
        "shown": 3,
        "accepted": 0,
        "edited": 1,
        "rejected": 0,
        "flagged": 1,
        "acceptance_rate": pytest.approx(0.3333),
        "median_edit_distance": 2.0,
        "median_seconds_to_decision": 36.0,  # median(60, 12)
        # One note drew on care gaps (#7): launched 2 min before it was saved.
        "notes": 1,
        "median_seconds_launch_to_note": 120.0,
        "median_seconds_in_sidebar": 30.0,
        "ai_share_of_note_chars": 0.2,
        "accepted_share_of_note_chars": 0.0,
        "edited_share_of_note_chars": 0.2,
        "typed_share_of_note_chars": 0.8,
        "edits_per_note": 1.0,
    }
    assert rows["problem_list"] == {
        "key": "problem_list",
        "shown": 1,
        "accepted": 0,
        "edited": 0,
        "rejected": 1,
        "flagged": 0,
        "acceptance_rate": 0.0,
        "median_edit_distance": None,
        "median_seconds_to_decision": 8.0,
        "notes": 0,
        "median_seconds_launch_to_note": None,
        "median_seconds_in_sidebar": None,
        "ai_share_of_note_chars": None,
        "accepted_share_of_note_chars": None,
        "edited_share_of_note_chars": None,
        "typed_share_of_note_chars": None,
        "edits_per_note": None,
    }
    assert rows["summary"] == {
        "key": "summary",
        "shown": 4,
        "accepted": 1,
        "edited": 2,
        "rejected": 1,
        "flagged": 0,
        "acceptance_rate": 0.75,
        "median_edit_distance": 10.0,  # median(5, 15)
        "median_seconds_to_decision": 25.0,  # median(10, 20, 30, 40)
        "notes": 2,
        "median_seconds_launch_to_note": 180.0,  # median(240, 120)
        "median_seconds_in_sidebar": 60.0,  # median(90, 30): visible, not launch to note
        "ai_share_of_note_chars": 0.64,  # (250 + 50 + 0 + 20) / (400 + 100)
        "accepted_share_of_note_chars": 0.5,  # 250 / 500
        "edited_share_of_note_chars": 0.14,  # (50 + 20) / 500
        "typed_share_of_note_chars": 0.36,  # the other 180 characters
        "edits_per_note": 1.5,  # (2 + 1) / 2 notes
    }


def test_metrics_by_site(seeded):
    with seeded.session() as s:
        rows = as_rows(compute_metrics(s, group_by="site"))
    assert list(rows) == [SITE_A, SITE_B]
    a, b = rows[SITE_A], rows[SITE_B]
    assert (a["shown"], a["accepted"], a["edited"], a["rejected"], a["flagged"]) == (4, 1, 1, 0, 1)
    assert a["acceptance_rate"] == 0.5
    assert a["median_edit_distance"] == 5.0
    assert a["median_seconds_to_decision"] == 20.0  # median(10, 20, 60)
    assert (b["shown"], b["accepted"], b["edited"], b["rejected"], b["flagged"]) == (4, 0, 2, 2, 0)
    assert b["acceptance_rate"] == 0.5
    assert b["median_edit_distance"] == 8.5  # median(15, 2)
    assert b["median_seconds_to_decision"] == 21.0  # median(30, 40, 12, 8)


def test_metrics_by_engine_key_is_name_and_version(seeded):
    with seeded.session() as s:
        rows = as_rows(compute_metrics(s, group_by="engine"))
    assert list(rows) == ["builtin-rules 1.0.0", "llm m@2"]
    rules, llm = rows["builtin-rules 1.0.0"], rows["llm m@2"]
    assert (rules["shown"], rules["accepted"], rules["edited"]) == (4, 1, 2)
    assert rules["acceptance_rate"] == 0.75
    assert rules["median_edit_distance"] == 3.5  # median(5, 2)
    assert rules["median_seconds_to_decision"] == 12.0  # median(10, 20, 12)
    assert (llm["shown"], llm["edited"], llm["rejected"], llm["flagged"]) == (4, 1, 2, 1)
    assert llm["acceptance_rate"] == 0.25
    assert llm["median_seconds_to_decision"] == 35.0  # median(30, 40, 60, 8)


def test_metrics_by_iso_week(seeded):
    with seeded.session() as s:
        rows = as_rows(compute_metrics(s, group_by="week"))
    assert list(rows) == ["2026-W47", "2026-W48"]
    assert rows["2026-W47"]["shown"] == 3
    assert rows["2026-W47"]["acceptance_rate"] == 1.0
    assert rows["2026-W47"]["median_seconds_to_decision"] == 20.0
    w48 = rows["2026-W48"]
    assert (w48["shown"], w48["edited"], w48["rejected"], w48["flagged"]) == (5, 1, 2, 1)
    assert w48["acceptance_rate"] == 0.2
    assert w48["median_edit_distance"] == 2.0
    assert w48["median_seconds_to_decision"] == 26.0  # median(40, 60, 12, 8)


def test_period_filter_counts_by_shown_time(seeded):
    with seeded.session() as s:
        rows = as_rows(compute_metrics(s, group_by="kind", start=W48, end=W48 + timedelta(days=7)))
        # [from, to): the end is exclusive.
        none = compute_metrics(
            s,
            group_by="kind",
            start=W48 - timedelta(days=1),
            end=W48 - timedelta(days=1, seconds=-1),
        )
    assert rows["summary"]["shown"] == 1 and rows["summary"]["rejected"] == 1
    assert rows["care_gaps"]["shown"] == 3
    assert none == []


def test_week_key_uses_utc_whatever_the_zone():
    east = timezone(timedelta(hours=5))
    # Monday 01:00 at UTC+5 is Sunday 20:00 UTC: still the earlier ISO week.
    assert week_key(datetime(2026, 11, 23, 1, 0, tzinfo=east)) == "2026-W47"
    assert week_key(datetime(2026, 11, 23, 0, 0, tzinfo=UTC)) == "2026-W48"
    assert week_key(datetime(2027, 1, 1, tzinfo=UTC)) == "2026-W53"


def test_notes_written_per_group(seeded):
    with seeded.session() as s:
        by_kind = {n.key: (n.saved, n.in_chart) for n in notes_written(s, group_by="kind")}
        by_site = {n.key: (n.saved, n.in_chart) for n in notes_written(s, group_by="site")}
        by_engine = {n.key: (n.saved, n.in_chart) for n in notes_written(s, group_by="engine")}
        by_week = {n.key: (n.saved, n.in_chart) for n in notes_written(s, group_by="week")}
    assert by_kind == {"summary": (2, 1), "care_gaps": (1, 0)}
    assert by_site == {SITE_A: (1, 1), SITE_B: (1, 0)}
    assert by_engine == {"builtin-rules 1.0.0": (2, 1), "llm m@2": (1, 0)}
    assert by_week == {"2026-W47": (1, 1), "2026-W48": (1, 0)}


def test_before_and_after_a_rollout_date(seeded):
    with seeded.session() as s:
        rows = {c.key: c for c in compare_periods(s, pivot=W48.replace(hour=0), group_by="kind")}
    summary = rows["summary"]
    assert summary.before is not None and summary.after is not None
    assert (summary.before.shown, summary.before.acceptance_rate) == (3, 1.0)
    assert (summary.after.shown, summary.after.acceptance_rate) == (1, 0.0)
    assert summary.change == -1.0
    # pooled 3/4, se = sqrt(0.75 * 0.25 * (1/1 + 1/3)) = 0.5, z = (0 - 1) / 0.5
    assert summary.z == pytest.approx(-2.0)
    assert summary.significant
    # Kinds only seen after the date have nothing to compare with.
    assert rows["care_gaps"].before is None and rows["care_gaps"].z is None
    assert not rows["care_gaps"].significant


def test_compare_window_limits_each_side(seeded):
    with seeded.session() as s:
        rows = compare_periods(
            s,
            pivot=datetime(2026, 11, 16, 11, 0, tzinfo=UTC),
            group_by="site",
            window=timedelta(hours=1),
        )
    # Only W47's 10:00 suggestions fall in [10:00, 11:00); nothing in the hour after.
    assert [(c.key, c.before.shown if c.before else 0, c.after) for c in rows] == [
        (SITE_A, 2, None),
        (SITE_B, 1, None),
    ]


def test_unknown_group_by_is_refused(seeded):
    with seeded.session() as s, pytest.raises(ValueError, match="group_by"):
        compute_metrics(s, group_by="patient")
