"""Writing and searching the audit trail (every PHI access, every admin action).

The vocabulary of actions and the FHIR codes they export as live in `export.py`;
https://hl7.org/fhir/R4/auditevent.html
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Callable, Mapping
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
        _appender(session_or_db).append(event)
    else:
        chain.append(session_or_db, event)
    return event


class GroupAppender:
    """Events recorded at once by a process's threads, appended in one transaction.

    Every append takes the chain head's row lock until it commits, so concurrent audited
    requests wait for each other there (on PostgreSQL at 64 saturating clinicians, 3 of the
    app's backends on average, 17 at most). Here the first thread to arrive writes what is
    queued, its own event included, in one transaction; those arriving meanwhile queue, and
    one of them writes the next batch. Each caller returns once its event is committed (or
    raises what the write raised), as when it wrote alone: group commit. The head is then
    locked once per batch, and by at most one writer per process.
    """

    def __init__(self, write: Callable[[list[AuditEvent]], None]) -> None:
        self._write = write
        self._ready = threading.Condition()
        self._queue: list[_Pending] = []
        self._writing = False

    def append(self, event: AuditEvent) -> None:
        mine = _Pending(event)
        with self._ready:
            self._queue.append(mine)
            while not mine.done and self._writing:
                self._ready.wait()
            if mine.done:
                if mine.error is not None:
                    raise mine.error
                return
            self._writing = True
            batch, self._queue = self._queue, []
        error: BaseException | None = None
        try:
            self._write([p.event for p in batch])
        except BaseException as exc:  # noqa: BLE001 - handed to every caller of the batch
            error = exc
        with self._ready:
            for pending in batch:
                pending.done, pending.error = True, error
            self._writing = False
            self._ready.notify_all()
        if error is not None:
            raise error


@dataclass(eq=False)
class _Pending:
    event: AuditEvent
    done: bool = False
    error: BaseException | None = None


_appenders: weakref.WeakKeyDictionary[Database, GroupAppender] = weakref.WeakKeyDictionary()
_appenders_lock = threading.Lock()


def _appender(database: Database) -> GroupAppender:
    with _appenders_lock:
        appender = _appenders.get(database)
        if appender is None:

            def write(events: list[AuditEvent]) -> None:
                with database.session() as session:
                    chain.append_many(session, events)

            appender = _appenders[database] = GroupAppender(write)
        return appender


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
