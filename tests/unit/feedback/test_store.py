"""Unit: recording shown suggestions and decisions (SQLite, or PostgreSQL when configured)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from smartapp.db import Database, utcnow
from smartapp.errors import BadRequest, NotFound
from smartapp.feedback.store import FeedbackStore, ShownBy
from smartapp.suggestions.interfaces import Citation, EngineInfo, Statement, Suggestion
from tests.conftest import test_database_url

ENGINE = EngineInfo(name="builtin-rules", version="1.0.0", rule_based=True)
BY = ShownBy(
    launch_session_id="s1",
    visit_key="s1",
    snapshot_key="k1",
    site="http://ehr/fhir",
    fhir_user="Practitioner/1",
    patient_id="p1",
)


def suggestion(text: str = "Type 2 diabetes since 2019") -> Suggestion:
    return Suggestion(
        kind="problem_summary",
        title="Problems",
        statements=(
            Statement(text=text, citations=(Citation(reference="Condition/c1", display="T2DM"),)),
        ),
        engine=ENGINE,
    )


def record(store, suggestions):
    """Record one drafted set as the sidebar does, and return its rows in order."""
    store.record_draft(BY, {s.kind: "" for s in suggestions}, suggestions)
    return store.shown(BY)


@pytest.fixture
def store(tmp_path):
    db = Database(test_database_url(tmp_path))
    db.drop_all()
    db.upgrade()
    yield FeedbackStore(db)
    db.dispose()


def test_a_kind_is_drafted_once_per_snapshot_and_choice(store):
    first = record(store, [suggestion(), suggestion("Hypertension")])
    again = record(store, [suggestion("something else")])  # a racing request: discarded
    assert [r.id for r in again] == [r.id for r in first]
    assert [r.text for r in store.shown(BY)] == ["- Type 2 diabetes since 2019", "- Hypertension"]
    assert store.drafted(BY) == {("problem_summary", "")}


def test_a_kind_drafted_under_another_choice_is_added_not_replaced(store):
    record(store, [suggestion()])
    store.record_draft(BY, {"problem_summary": "builtin|||switched off"}, [suggestion("rules")])
    rows = store.shown(BY)
    assert [(r.choice, r.position) for r in rows] == [("", 0), ("builtin|||switched off", 1)]


def test_a_kind_with_no_suggestions_is_still_recorded_as_drafted(store):
    store.record_draft(BY, {"care_gaps": ""}, [])
    assert store.drafted(BY) == {("care_gaps", "")}
    assert store.shown(BY) == []


def test_edit_records_distance_and_time_to_decision(store):
    row = record(store, [suggestion("abc")])[0]
    decision = store.decide(
        "s1", row.id, action="edit", text="- abd", now=row.shown_at + timedelta(seconds=12)
    )
    assert decision.edit_distance == 1
    assert decision.seconds_to_decision == pytest.approx(12)
    assert store.get("s1", row.id).latest_decision().final_text == "- abd"


def test_accept_has_zero_distance_and_reject_none(store):
    a, b = record(store, [suggestion("one"), suggestion("two")])
    assert store.decide("s1", a.id, action="accept").edit_distance == 0
    rejected = store.decide(
        "s1", b.id, action="reject", reason="Not relevant", comment="old problem"
    )
    assert (rejected.edit_distance, rejected.reason, rejected.comment) == (
        None,
        "not_relevant",
        "old problem",
    )


def test_free_text_reason_becomes_other(store):
    row = record(store, [suggestion()])[0]
    decision = store.decide("s1", row.id, action="reject", reason="patient declined")
    assert (decision.reason, decision.comment) == ("other", "patient declined")


def test_bad_decisions_are_refused(store):
    row = record(store, [suggestion()])[0]
    with pytest.raises(BadRequest, match="action must be one of"):
        store.decide("s1", row.id, action="approve")
    with pytest.raises(BadRequest, match="edited text"):
        store.decide("s1", row.id, action="edit", text="  ")
    with pytest.raises(NotFound):
        store.decide("another-launch", row.id, action="accept")


def test_timestamps_are_utc(store):
    row = record(store, [suggestion()])[0]
    assert abs((store.get("s1", row.id).shown_at - utcnow()).total_seconds()) < 60


def test_an_unchanged_suggestion_keeps_its_row_and_decision_across_snapshots(store):
    [row] = record(store, [suggestion("same text")])
    store.decide("s1", row.id, action="accept")
    newer = ShownBy(**{**BY.__dict__, "snapshot_key": "k2"})
    store.record_draft(newer, {"problem_summary": ""}, [suggestion("same text"), suggestion("new")])
    rows = store.shown(newer)
    assert rows[0].id == row.id
    assert rows[0].latest_decision().action == "accept"
    assert rows[1].id != row.id and rows[1].decisions == []
    assert store.shown(BY) == []
    assert store.latest_snapshot_key("s1") == "k2"


def test_a_decision_and_what_its_hook_records_commit_together(tmp_path):
    """The forwarding hook runs in the decision's transaction: if it fails, the decision is
    not recorded either (and the clinician is told so), never the one without the other."""
    db = Database(test_database_url(tmp_path))
    db.drop_all()
    db.upgrade()
    seen: list[str] = []

    def failing_hook(session, decision_id, row):
        seen.append(decision_id)
        raise RuntimeError("the forward could not be stored")

    try:
        failing = FeedbackStore(db, on_decision=failing_hook)
        row = record(failing, [suggestion("abc")])[0]
        with pytest.raises(RuntimeError):
            failing.decide("s1", row.id, action="accept")
        assert seen and failing.get("s1", row.id).latest_decision() is None
        kept = FeedbackStore(db, on_decision=lambda session, decision_id, row: None)
        kept.decide("s1", row.id, action="accept")
        assert kept.get("s1", row.id).latest_decision().action == "accept"
    finally:
        db.dispose()
