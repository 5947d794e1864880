"""The review workflow for flagged suggestions: triage, assign, comment, close, reopen.

A flag opens a review (lazily: the first time the governance team acts on it or lists it).
Closing needs an action — engine fix, site configuration, training, or no action — and
may link the engine version or rollout rule that changed because of it, so that a CMIO
can follow a safety report to its fix. Every step is an append-only event with its actor.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from smartapp.admin.metrics import aware
from smartapp.errors import BadRequest
from smartapp.governance.models import (
    CLOSE_ACTIONS,
    SEVERITIES,
    EngineVersion,
    FlagReview,
    FlagReviewEvent,
    RolloutRule,
)

STEPS = ("triage", "assign", "comment", "close", "reopen")
MAX_COMMENT = 4000


@dataclass(frozen=True, kw_only=True)
class ReviewStep:
    step: str
    comment: str | None = None
    severity: str | None = None
    assignee: str | None = None
    close_action: str | None = None
    linked_change: str | None = None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> ReviewStep:
        def text(name: str, limit: int = 512) -> str | None:
            value = body.get(name)
            if value is None or value == "":
                return None
            if not isinstance(value, str):
                raise BadRequest(f"{name}: must be text.")
            value = value.strip()
            if len(value) > limit:
                raise BadRequest(f"{name}: at most {limit} characters.")
            return value or None

        step = text("step", 16)
        if step not in STEPS:
            raise BadRequest(f"step: one of {', '.join(STEPS)}.")
        return cls(
            step=step,
            comment=text("comment", MAX_COMMENT),
            severity=text("severity", 16),
            assignee=text("assignee"),
            close_action=text("close_action", 32),
            linked_change=text("linked_change", 64),
        )


def review_of(session: Session, suggestion_id: str, *, now: datetime) -> FlagReview:
    """The review of a flagged suggestion, opened on first use."""
    review = session.get(FlagReview, suggestion_id)
    if review is None:
        review = FlagReview(
            suggestion_id=suggestion_id, status="open", opened_at=now, updated_at=now
        )
        session.add(review)
        session.flush()
    return review


def apply_step(
    session: Session, suggestion_id: str, step: ReviewStep, *, actor: str, now: datetime
) -> FlagReview:
    """One step of the workflow; refused (400) when it does not fit the review's state."""
    review = review_of(session, suggestion_id, now=now)
    detail: dict[str, Any] = {}
    if review.status == "closed" and step.step not in ("reopen", "comment"):
        raise BadRequest("This review is closed: reopen it first.")
    if step.step == "triage":
        if step.severity not in SEVERITIES:
            raise BadRequest(f"severity: one of {', '.join(SEVERITIES)}.")
        review.severity = step.severity
        if review.status == "open":
            review.status = "triaged"
        detail["severity"] = step.severity
    elif step.step == "assign":
        if not step.assignee:
            raise BadRequest("assignee: name who reviews it.")
        review.assignee = step.assignee
        review.status = "assigned"
        detail["assignee"] = step.assignee
    elif step.step == "comment":
        if not step.comment:
            raise BadRequest("comment: write the comment.")
    elif step.step == "close":
        if step.close_action not in CLOSE_ACTIONS:
            raise BadRequest(f"close_action: one of {', '.join(CLOSE_ACTIONS)}.")
        if step.linked_change and not _change_exists(session, step.linked_change):
            raise BadRequest("linked_change: no engine version or rollout rule has this id.")
        review.status = "closed"
        review.close_action = step.close_action
        review.linked_change = step.linked_change
        review.closed_at = now
        detail = {"close_action": step.close_action, "linked_change": step.linked_change}
    elif step.step == "reopen":
        if review.status != "closed":
            raise BadRequest("Only a closed review can be reopened.")
        review.status = "assigned" if review.assignee else "open"
        review.closed_at = None
    review.updated_at = now
    seq = (
        session.scalar(
            select(func.max(FlagReviewEvent.seq)).where(
                FlagReviewEvent.suggestion_id == suggestion_id
            )
        )
        or 0
    ) + 1
    session.add(
        FlagReviewEvent(
            suggestion_id=suggestion_id,
            seq=seq,
            actor=actor,
            step=step.step,
            comment=step.comment,
            detail=detail,
            at=now,
        )
    )
    session.flush()
    return review


def _change_exists(session: Session, change_id: str) -> bool:
    return (
        session.get(EngineVersion, change_id) is not None
        or session.get(RolloutRule, change_id) is not None
    )


def reviews_for(session: Session, ids: Iterable[str]) -> dict[str, FlagReview]:
    wanted = list(ids)
    if not wanted:
        return {}
    rows = session.scalars(select(FlagReview).where(FlagReview.suggestion_id.in_(wanted)))
    return {r.suggestion_id: r for r in rows}


def review_json(
    review: FlagReview | None, *, flagged_at: datetime, now: datetime, events: bool = False
) -> dict[str, Any]:
    """The review's state for the list (no clinical text) or the detail (with its events)."""
    opened = aware(review.opened_at) if review else aware(flagged_at)
    closed = aware(review.closed_at) if review and review.closed_at else None
    data: dict[str, Any] = {
        "status": review.status if review else "open",
        "severity": review.severity if review else None,
        "assignee": review.assignee if review else None,
        "close_action": review.close_action if review else None,
        "linked_change": review.linked_change if review else None,
        # Age counts from the flag while open, and stops when the review is closed.
        "age_days": round(((closed or now) - aware(flagged_at)).total_seconds() / 86400, 1),
        "opened_at": opened.isoformat(),
        "closed_at": closed.isoformat() if closed else None,
    }
    if events:
        data["events"] = [e.to_json() for e in review.events] if review else []
    return data
