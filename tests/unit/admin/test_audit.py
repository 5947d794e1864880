"""Unit (store): the audit trail is append-only, searchable, scrubbed of tokens and exports
as CSV and as FHIR R4 AuditEvent (validated with fhir.resources.R4B)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from fhir.resources.R4B.auditevent import AuditEvent as FHIRAuditEvent
from fhir.resources.R4B.bundle import Bundle
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from smartapp.audit import Action, AuditQuery, record, search
from smartapp.audit.export import CSV_FIELDS, to_csv, to_fhir, to_fhir_bundle
from smartapp.audit.models import AppendOnlyError, AuditEvent

SITE = "https://a.example/fhir"
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def seed(db):
    record(
        db,
        actor="Practitioner/1",
        action=Action.LAUNCH,
        site=SITE,
        patient="p1",
        detail={"purpose": "clinician"},
        at=T0,
    )
    record(
        db,
        actor="Practitioner/1",
        action=Action.CHART_READ,
        site=SITE,
        patient="Patient/p1",
        detail={"resources": 42},
        at=T0 + timedelta(minutes=1),
    )
    record(
        db,
        actor="Practitioner/2",
        action=Action.NOTE_WRITE,
        site=SITE,
        patient=f"{SITE}/Patient/p2",
        detail={"documentReference": "DocumentReference/9"},
        at=T0 + timedelta(days=1),
    )
    with db.session() as s:
        record(
            s,
            actor="Practitioner/admin1",
            action=Action.ENGINE_APPROVE,
            site=None,
            patient=None,
            detail={"engine_version": {"id": "v1"}},
            at=T0 + timedelta(days=2),
        )
        record(
            s,
            actor="admin-api-token",
            action=Action.KILL_SWITCH,
            site=None,
            patient=None,
            detail={"scope": "kind", "target": "summary"},
            outcome="failure",
            at=T0 + timedelta(days=3),
        )


def test_search_by_actor_action_patient_and_dates(database):
    seed(database)
    with database.session() as s:

        def keys(**criteria):
            events, total = search(s, AuditQuery(**criteria))
            assert total == len(events)
            return [e.action for e in events]

        assert keys() == ["killswitch.set", "engine.approve", "note.write", "chart.read", "launch"]
        assert keys(actor="Practitioner/1") == ["chart.read", "launch"]
        assert keys(action="chart.read") == ["chart.read"]
        assert keys(action="engine.") == ["engine.approve"]  # a prefix
        assert keys(patient="p1") == ["chart.read", "launch"]
        assert keys(patient="Patient/p2") == ["note.write"]
        assert keys(start=T0 + timedelta(days=1), end=T0 + timedelta(days=3)) == [
            "engine.approve",
            "note.write",
        ]
        events, total = search(s, AuditQuery(limit=2, offset=1))
        assert total == 5 and [e.action for e in events] == ["engine.approve", "note.write"]


def test_the_audit_table_refuses_update_and_delete(database):
    seed(database)
    for statement in ("UPDATE audit_event SET actor = 'x'", "DELETE FROM audit_event"):
        with pytest.raises(DBAPIError), database.engine.begin() as conn:
            conn.execute(text(statement))
    with database.session() as s:
        event = s.query(AuditEvent).first()
        event.actor = "rewritten"
        with pytest.raises(AppendOnlyError):
            s.flush()
        s.rollback()
    with database.session() as s:
        assert s.query(AuditEvent).count() == 5
        assert "rewritten" not in {e.actor for e in s.query(AuditEvent)}


def test_tokens_never_reach_the_audit_detail(database):
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlLXZhbHVl"
    event = record(
        database,
        actor="Practitioner/1",
        action=Action.LAUNCH,
        site=SITE,
        patient=None,
        detail={
            "access_token": "at-123",
            "nested": {"refresh_token": "rt-456", "Authorization": "Bearer xyz", "ok": 1},
            "client_secret": "s3cret",
            "note": f"token was {jwt}",
            "scopes": ["openid", "fhirUser"],
        },
    )
    assert event.detail == {
        "access_token": "[redacted]",
        "nested": {"refresh_token": "[redacted]", "Authorization": "[redacted]", "ok": 1},
        "client_secret": "[redacted]",
        "note": "token was [redacted]",
        "scopes": ["openid", "fhirUser"],
    }
    with database.session() as s:
        stored = s.get(AuditEvent, event.id)
        blob = str(stored.detail)
    for secret in ("at-123", "rt-456", "xyz", "s3cret", jwt):
        assert secret not in blob


def test_bad_outcome_is_refused(database):
    with pytest.raises(ValueError, match="outcome"):
        record(database, actor=None, action="x", site=None, patient=None, outcome="meh")


def test_fhir_export_is_valid_r4_audit_events(database):
    seed(database)
    with database.session() as s:
        events, _ = search(s, AuditQuery())
    bundle = to_fhir_bundle(events)
    Bundle.model_validate(bundle)  # raises on an invalid resource
    resources = {r["resource"]["outcomeDesc"].split(":")[0]: r["resource"] for r in bundle["entry"]}

    note = FHIRAuditEvent.model_validate(resources["note.write"])
    assert note.type.system == "http://dicom.nema.org/resources/ontology/DCM"
    assert note.type.code == "110110"
    assert note.subtype[0].system == "http://hl7.org/fhir/restful-interaction"
    assert note.subtype[0].code == "create"
    assert note.action == "C" and note.outcome == "0"
    assert note.agent[0].who.reference == "Practitioner/2" and note.agent[0].requestor is True
    assert note.entity[0].what.reference == f"{SITE}/Patient/p2"
    assert note.entity[0].role.code == "1"  # Patient

    launch = resources["launch"]
    assert (launch["type"]["code"], launch["subtype"][0]["code"]) == ("110114", "110122")
    kill = resources["killswitch.set"]
    assert (kill["type"]["code"], kill["subtype"][0]["code"]) == ("110113", "110131")
    assert kill["outcome"] == "4"
    assert kill["agent"][0]["who"] == {"display": "admin-api-token"}
    assert "entity" in kill and all("what" not in e for e in kill["entity"])


def test_unknown_action_still_exports_validly(database):
    event = record(database, actor=None, action="custom.thing", site=None, patient=None)
    FHIRAuditEvent.model_validate(to_fhir(event))


def test_csv_export_has_a_header_and_defuses_formulas(database):
    record(
        database,
        actor='=HYPERLINK("http://x")',
        action=Action.ROLLOUT_SET,
        site=None,
        patient=None,
        detail={"reason": "x"},
        at=T0,
    )
    with database.session() as s:
        events, _ = search(s, AuditQuery())
    rows = list(csv.reader(io.StringIO(to_csv(events))))
    assert tuple(rows[0]) == CSV_FIELDS
    assert rows[1][2] == '\'=HYPERLINK("http://x")'
    assert rows[1][3] == "rollout.set"
    assert rows[1][7] == '{"reason": "x"}'
