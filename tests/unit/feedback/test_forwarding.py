"""Unit: decisions forwarded as CDS Hooks 2.0 feedback, durably and idempotently."""

from __future__ import annotations

import json
import uuid

import pytest
import responses

from smartapp.db import Database
from smartapp.feedback.forwarding import FeedbackForward, FeedbackForwarder, card_suggestion_id
from smartapp.feedback.store import FeedbackStore, ShownBy
from smartapp.suggestions.interfaces import Citation, EngineInfo, Statement, Suggestion
from tests.conftest import test_database_url

ENDPOINT = "http://engine.test/cds-services/smartapp-drafts/feedback"
BY = ShownBy(
    launch_session_id="s1",
    visit_key="s1",
    snapshot_key="k",
    site="http://ehr/fhir",
    fhir_user=None,
    patient_id="p1",
)


def record(store, suggestions):
    """Record one drafted set as the sidebar does, and return its rows in order."""
    store.record_draft(BY, {s.kind: "" for s in suggestions}, suggestions)
    return store.shown(BY)


@pytest.fixture
def db(tmp_path):
    database = Database(test_database_url(tmp_path))
    database.drop_all()
    database.upgrade()
    yield database
    database.dispose()


def shown(db):
    suggestion = Suggestion(
        kind="medications",
        title="Medications",
        statements=(
            Statement(
                text="metformin 500 mg",
                citations=(Citation(reference="MedicationRequest/m", display="metformin"),),
            ),
        ),
        engine=EngineInfo(name="llm", version="m@1"),
    )
    return FeedbackStore(db), record(FeedbackStore(db), [suggestion])[0]


@responses.activate
def test_accepted_edit_is_forwarded_once_in_cds_hooks_shape(db):
    store, row = shown(db)
    decision = store.decide("s1", row.id, action="edit", text="metformin 1 g")
    responses.post(ENDPOINT, json={})
    forwarder = FeedbackForwarder(db)
    forwarder.enqueue(decision.id, ENDPOINT)
    forwarder.enqueue(decision.id, ENDPOINT)  # a second enqueue of the same decision is a no-op
    assert forwarder.deliver_due() == 1
    assert forwarder.deliver_due() == 0
    assert len(responses.calls) == 1
    item = json.loads(responses.calls[0].request.body)["feedback"][0]
    assert item["card"] == str(uuid.UUID(hex=row.id))
    assert item["outcome"] == "accepted"
    assert item["acceptedSuggestions"] == [{"id": card_suggestion_id(row.id)}]
    assert item["extension"]["smartapp-final-text"] == "metformin 1 g"


@responses.activate
def test_rejection_carries_a_coded_override_reason(db):
    store, row = shown(db)
    decision = store.decide(
        "s1", row.id, action="reject", reason="inaccurate", comment="dose is wrong"
    )
    responses.post(ENDPOINT, json={})
    forwarder = FeedbackForwarder(db)
    forwarder.enqueue(decision.id, ENDPOINT)
    forwarder.deliver_due()
    item = json.loads(responses.calls[0].request.body)["feedback"][0]
    assert item["outcome"] == "overridden"
    assert item["overrideReason"]["reason"]["code"] == "inaccurate"
    assert item["overrideReason"]["userComment"] == "dose is wrong"
    assert "acceptedSuggestions" not in item


@responses.activate
def test_a_down_endpoint_keeps_the_forward_for_a_retry(db):
    store, row = shown(db)
    decision = store.decide("s1", row.id, action="accept")
    responses.post(ENDPOINT, status=503)
    forwarder = FeedbackForwarder(db)
    forwarder.enqueue(decision.id, ENDPOINT)
    assert forwarder.deliver_due() == 0
    with db.session() as session:
        forward = session.query(FeedbackForward).one()
        assert (forward.status, forward.attempts, forward.last_error) == ("pending", 1, "HTTP 503")
        forward.next_attempt_at = forward.created_at  # due again now
    responses.replace(responses.POST, ENDPOINT, json={})
    assert forwarder.deliver_due() == 1
