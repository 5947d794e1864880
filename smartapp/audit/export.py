"""The audit trail as CSV and as a Bundle of FHIR R4 AuditEvent resources.

Codes: event types and subtypes from DICOM (http://dicom.nema.org/resources/ontology/DCM)
and FHIR's RESTful interactions (http://hl7.org/fhir/restful-interaction), as the R4
value sets audit-event-type and audit-event-sub-type list them:
https://hl7.org/fhir/R4/auditevent.html
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from smartapp.audit.log import Action
from smartapp.audit.models import AuditEvent
from smartapp.db import utcnow

DCM = "http://dicom.nema.org/resources/ontology/DCM"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"


@dataclass(frozen=True)
class _Codes:
    type: tuple[str, str]  # DCM event ID
    subtype: tuple[str, str, str] | None  # (system, code, display)
    action: str  # AuditEvent.action: C R U D E


_PATIENT_RECORD = ("110110", "Patient Record")
_SECURITY_ALERT = ("110113", "Security Alert")
_SOFTWARE_CONFIGURATION = (DCM, "110131", "Software Configuration")
_READ = (RESTFUL, "read", "read")
_SEARCH = (RESTFUL, "search-type", "search-type")

#: How each known action exports. Configuration changes follow IHE ATNA: a Security Alert
#: whose subtype says what kind of configuration changed.
CODES: dict[str, _Codes] = {
    Action.LAUNCH: _Codes(("110114", "User Authentication"), (DCM, "110122", "Login"), "E"),
    Action.ADMIN_SIGNIN: _Codes(("110114", "User Authentication"), (DCM, "110122", "Login"), "E"),
    Action.ADMIN_DENIED: _Codes(
        ("110113", "Security Alert"), (DCM, "110132", "Use of Restricted Function"), "E"
    ),
    Action.CHART_READ: _Codes(_PATIENT_RECORD, _SEARCH, "R"),
    Action.SUGGESTIONS_VIEW: _Codes(_PATIENT_RECORD, _READ, "R"),
    Action.FLAGGED_VIEW: _Codes(_PATIENT_RECORD, _READ, "R"),
    Action.NOTE_WRITE: _Codes(_PATIENT_RECORD, (RESTFUL, "create", "create"), "C"),
    Action.AUDIT_SEARCH: _Codes(("110101", "Audit Log Used"), _SEARCH, "R"),
    Action.AUDIT_EXPORT: _Codes(("110106", "Export"), None, "R"),
    Action.ROLLOUT_SET: _Codes(_SECURITY_ALERT, _SOFTWARE_CONFIGURATION, "U"),
    Action.ROLLOUT_REMOVE: _Codes(_SECURITY_ALERT, _SOFTWARE_CONFIGURATION, "D"),
    Action.ENGINE_PROPOSE: _Codes(_SECURITY_ALERT, _SOFTWARE_CONFIGURATION, "C"),
    Action.ENGINE_EVALUATE: _Codes(_SECURITY_ALERT, _SOFTWARE_CONFIGURATION, "U"),
    Action.ENGINE_APPROVE: _Codes(_SECURITY_ALERT, _SOFTWARE_CONFIGURATION, "U"),
    Action.ENGINE_ACTIVATE: _Codes(_SECURITY_ALERT, _SOFTWARE_CONFIGURATION, "U"),
    Action.ENGINE_ROLLBACK: _Codes(_SECURITY_ALERT, _SOFTWARE_CONFIGURATION, "U"),
    Action.KILL_SWITCH: _Codes(_SECURITY_ALERT, _SOFTWARE_CONFIGURATION, "U"),
}
_FALLBACK = _Codes(("110100", "Application Activity"), None, "E")

#: AuditEvent.outcome: 0 success, 4 minor failure (refused, bad request), 8 serious failure.
OUTCOME_CODES = {"success": "0", "failure": "4", "error": "8"}

CSV_FIELDS = ("id", "recorded", "actor", "action", "site", "patient", "outcome", "detail")


def to_csv(events: Iterable[AuditEvent]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_FIELDS)
    for e in events:
        writer.writerow(
            [
                cell(str(v))
                for v in (
                    e.id,
                    e.recorded.isoformat(),
                    e.actor or "",
                    e.action,
                    e.site or "",
                    e.patient or "",
                    e.outcome,
                    json.dumps(e.detail or {}, sort_keys=True, ensure_ascii=False),
                )
            ]
        )
    return out.getvalue()


def cell(value: str) -> str:
    """A cell a spreadsheet will not run as a formula (=, +, -, @ at the start)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _agent_who(actor: str | None) -> dict[str, Any]:
    if not actor:
        return {"display": "unknown"}
    head = actor.split("/", 1)[0]
    if "/" in actor and head[:1].isupper() and head.isalpha():
        return {"reference": actor}
    return {"display": actor}


def _patient_what(event: AuditEvent) -> dict[str, Any]:
    assert event.patient is not None
    # Several EHRs feed one app: an absolute reference says whose Patient this is.
    if event.site:
        return {"reference": f"{event.site.rstrip('/')}/{event.patient}"}
    return {"reference": event.patient}


def to_fhir(event: AuditEvent) -> dict[str, Any]:
    codes = CODES.get(event.action, _FALLBACK)
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": event.id,
        "type": {"system": DCM, "code": codes.type[0], "display": codes.type[1]},
        "action": codes.action,
        "recorded": event.recorded.isoformat(),
        "outcome": OUTCOME_CODES.get(event.outcome, "4"),
        "outcomeDesc": event.action
        if event.outcome == "success"
        else f"{event.action}: {event.outcome}",
        "agent": [{"who": _agent_who(event.actor), "requestor": True}],
        "source": {
            "site": event.site or "smartapp",
            "observer": {"display": "smartapp"},
            "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
        },
    }
    if codes.subtype:
        system, code, display = codes.subtype
        resource["subtype"] = [{"system": system, "code": code, "display": display}]
    entities: list[dict[str, Any]] = []
    if event.patient:
        entities.append(
            {
                "what": _patient_what(event),
                "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
            }
        )
    if event.detail:
        entities.append(
            {
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                "description": event.action,
                "detail": [
                    {
                        "type": str(key),
                        "valueString": value
                        if isinstance(value, str)
                        else json.dumps(value, sort_keys=True, ensure_ascii=False),
                    }
                    for key, value in sorted(event.detail.items())
                ],
            }
        )
    if entities:
        resource["entity"] = entities
    return resource


def to_fhir_bundle(events: Iterable[AuditEvent]) -> dict[str, Any]:
    entries = [{"fullUrl": f"urn:uuid:{_uuid(e.id)}", "resource": to_fhir(e)} for e in events]
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": utcnow().isoformat(),
        "entry": entries,
    }


def _uuid(hex_id: str) -> str:
    try:
        return str(uuid.UUID(hex=hex_id))
    except ValueError:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, hex_id))
