"""Suggestions whose latest decision is a flag: the list (no clinical text) and one in full.

The list carries no suggestion text, comment or patient, so that browsing it is not a PHI
access; opening one shows the text, and the view audits that.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session, selectinload

from smartapp.admin.metrics import aware
from smartapp.errors import NotFound
from smartapp.feedback.models import Decision, ShownSuggestion


@dataclass(frozen=True, kw_only=True)
class FlaggedItem:
    id: str
    site: str
    kind: str
    title: str
    engine: str
    shown_at: datetime
    flagged_at: datetime
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "site": self.site,
            "kind": self.kind,
            "title": self.title,
            "engine": self.engine,
            "shown_at": self.shown_at.isoformat(),
            "flagged_at": self.flagged_at.isoformat(),
            "reason": self.reason,
        }


def flagged_suggestions(
    session: Session,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    site: str | None = None,
    kind: str | None = None,
    limit: int = 200,
) -> list[FlaggedItem]:
    """Flagged suggestions shown in [start, end), newest flag first."""
    ranked = select(
        Decision.suggestion_id,
        Decision.action,
        Decision.reason,
        Decision.decided_at,
        func.row_number()
        .over(
            partition_by=Decision.suggestion_id,
            order_by=(Decision.decided_at.desc(), Decision.id.desc()),
        )
        .label("rank"),
    ).subquery()
    stmt = (
        select(
            ShownSuggestion.id,
            ShownSuggestion.site,
            ShownSuggestion.kind,
            ShownSuggestion.title,
            ShownSuggestion.engine_name,
            ShownSuggestion.engine_version,
            ShownSuggestion.shown_at,
            ranked.c.decided_at,
            ranked.c.reason,
        )
        .join(ranked, and_(ranked.c.suggestion_id == ShownSuggestion.id, ranked.c.rank == 1))
        .where(ranked.c.action == "flag")
        .order_by(ranked.c.decided_at.desc())
        .limit(max(1, min(limit, 1000)))
    )
    if start is not None:
        stmt = stmt.where(ShownSuggestion.shown_at >= start)
    if end is not None:
        stmt = stmt.where(ShownSuggestion.shown_at < end)
    if site:
        stmt = stmt.where(ShownSuggestion.site == site)
    if kind:
        stmt = stmt.where(ShownSuggestion.kind == kind)
    return [
        FlaggedItem(
            id=sid,
            site=s,
            kind=k,
            title=title,
            engine=f"{name} {version}",
            shown_at=aware(shown_at),
            flagged_at=aware(decided_at),
            reason=reason,
        )
        for sid, s, k, title, name, version, shown_at, decided_at, reason in session.execute(stmt)
    ]


def flagged_suggestion(session: Session, suggestion_id: str) -> ShownSuggestion:
    """One flagged suggestion with its decisions (clinical content: audit the view)."""
    row = session.scalars(
        select(ShownSuggestion)
        .where(ShownSuggestion.id == suggestion_id)
        .options(selectinload(ShownSuggestion.decisions))
    ).first()
    decision = row.latest_decision() if row else None
    # Only flagged suggestions are open to review here; others are reported as absent.
    if row is None or decision is None or decision.action != "flag":
        raise NotFound("No flagged suggestion with this id.")
    return row


def detail_json(row: ShownSuggestion) -> dict[str, Any]:
    return {
        "id": row.id,
        "site": row.site,
        "patient": f"Patient/{row.patient_id}",
        "fhirUser": row.fhir_user,
        "kind": row.kind,
        "title": row.title,
        "text": row.text,
        "statements": row.statements,
        "citations": row.citations,
        "engine": {"name": row.engine_name, "version": row.engine_version},
        "verification": row.verification,
        "shown_at": row.shown_at.isoformat(),
        "decisions": [
            {
                "action": d.action,
                "reason": d.reason,
                "comment": d.comment,
                "decided_at": d.decided_at.isoformat(),
                "seconds_to_decision": d.seconds_to_decision,
            }
            for d in row.decisions
        ],
    }
