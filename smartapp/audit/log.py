"""Writing and searching the audit trail (every PHI access, every admin action).

The vocabulary of actions and the FHIR codes they export as live in `export.py`;
https://hl7.org/fhir/R4/auditevent.html
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from smartapp.audit import chain
from smartapp.audit.models import OUTCOMES, AuditEvent
from smartapp.db import Database, utcnow


class Action:
    """The audited actions. Callers may use other dotted names; these export with exact codes."""

    # PHI access, recorded by the clinician flow.
    LAUNCH = "launch"
    CHART_READ = "chart.read"
    SUGGESTIONS_VIEW = "suggestions.view"
    NOTE_WRITE = "note.write"
    # Governance, recorded by the admin area.
    ADMIN_SIGNIN = "admin.signin"
    ADMIN_DENIED = "admin.denied"
    FLAGGED_VIEW = "admin.flagged.view"
    FLAGGED_REVIEW = "admin.flagged.review"
    AUDIT_SEARCH = "audit.search"
    AUDIT_EXPORT = "audit.export"
    ROLLOUT_SET = "rollout.set"
    ROLLOUT_REMOVE = "rollout.remove"
    ENGINE_PROPOSE = "engine.propose"
    ENGINE_EVALUATE = "engine.evaluate"
    ENGINE_APPROVE = "engine.approve"
    ENGINE_ACTIVATE = "engine.activate"
    ENGINE_ROLLBACK = "engine.rollback"
    KILL_SWITCH = "killswitch.set"


#: Detail keys whose values are dropped: a token must never reach the audit trail.
_SECRET_KEY = re.compile(
    r"token|secret|password|passwd|authorization|cookie|code_verifier|assertion|api_key|apikey",
    re.IGNORECASE,
)
#: Values that look like bearer credentials (JWTs) are dropped wherever they appear.
_JWT_LIKE = re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
REDACTED = "[redacted]"
MAX_DETAIL_STRING = 2_000


def scrub(value: Any, *, _depth: int = 0) -> Any:
    """A JSON-safe copy of `value` with credentials removed and long strings cut."""
    if _depth > 8:
        return "[nested too deep]"
    if isinstance(value, Mapping):
        return {
            str(k): REDACTED if _SECRET_KEY.search(str(k)) else scrub(v, _depth=_depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub(v, _depth=_depth + 1) for v in value]
    if isinstance(value, str):
        text = _JWT_LIKE.sub(REDACTED, value)
        return text if len(text) <= MAX_DETAIL_STRING else text[:MAX_DETAIL_STRING] + "…"
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return scrub(str(value), _depth=_depth + 1)


def patient_reference(patient: str | None) -> str | None:
    """A bare id ("123") becomes "Patient/123"; an absolute URL keeps its type and id."""
    if patient is None or not str(patient).strip():
        return None
    parts = [p for p in str(patient).strip().split("/") if p]
    if len(parts) >= 2:
        return f"{parts[-2]}/{parts[-1]}"[:256]
    return f"Patient/{parts[0]}"[:256]


def record(
    session_or_db: Session | Database,
    *,
    actor: str | None,
    action: str,
    site: str | None,
    patient: str | None,
    detail: Mapping[str, Any] | None = None,
    outcome: str = "success",
    at: datetime | None = None,
) -> AuditEvent:
    """Append one event. With a Session the event commits with the caller's change (or not at
    all); with a Database it is written in its own transaction at once."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
    if not action or len(action) > 64:
        raise ValueError("action must be a short dotted name such as 'chart.read'")
    event = AuditEvent(
        recorded=at or utcnow(),
        actor=(actor or None) and str(actor)[:256],
        action=action,
        site=(site or None) and str(site)[:512],
        patient=patient_reference(patient),
        outcome=outcome,
        detail=scrub(dict(detail or {})),
    )
    if isinstance(session_or_db, Database):
        with session_or_db.session() as session:
            chain.append(session, event)
    else:
        chain.append(session_or_db, event)
    return event


@dataclass(frozen=True, kw_only=True)
class AuditQuery:
    """Search criteria; every field narrows the result. `action` ending in "." is a prefix."""

    actor: str | None = None
    action: str | None = None
    patient: str | None = None
    site: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    limit: int = 100
    offset: int = 0

    def describe(self) -> dict[str, Any]:
        """The criteria, for the audit event that records this search."""
        return {
            k: (v.isoformat() if isinstance(v, datetime) else v)
            for k, v in (
                ("actor", self.actor),
                ("action", self.action),
                ("patient", self.patient),
                ("site", self.site),
                ("from", self.start),
                ("to", self.end),
            )
            if v is not None
        }


def _filtered(query: AuditQuery, stmt: Select[Any]) -> Select[Any]:
    if query.actor:
        stmt = stmt.where(AuditEvent.actor == query.actor)
    if query.action:
        if query.action.endswith("."):
            stmt = stmt.where(AuditEvent.action.startswith(query.action, autoescape=True))
        else:
            stmt = stmt.where(AuditEvent.action == query.action)
    if query.patient:
        stmt = stmt.where(AuditEvent.patient == patient_reference(query.patient))
    if query.site:
        stmt = stmt.where(AuditEvent.site == query.site)
    if query.start:
        stmt = stmt.where(AuditEvent.recorded >= query.start)
    if query.end:
        stmt = stmt.where(AuditEvent.recorded < query.end)
    return stmt


def search(session: Session, query: AuditQuery) -> tuple[list[AuditEvent], int]:
    """Matching events, newest first, and how many match in all."""
    total = session.scalar(_filtered(query, select(func.count()).select_from(AuditEvent))) or 0
    rows = session.scalars(
        _filtered(query, select(AuditEvent))
        .order_by(AuditEvent.recorded.desc(), AuditEvent.id.desc())
        .limit(max(1, query.limit))
        .offset(max(0, query.offset))
    )
    return list(rows), int(total)
