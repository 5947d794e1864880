"""Forwarding each decision to the engine's feedback endpoint, shaped as CDS Hooks 2.0 feedback.

https://cds-hooks.hl7.org/2.0/#feedback — a suggestion is a card; accepting it (as is,
or edited) is outcome `accepted` with the card's one suggestion; rejecting or flagging it
is `overridden` with a coded reason. Edits carry the final text in an extension. A
forward is written to the store with the decision and sent by the outbox worker, so a
down endpoint loses nothing; CDS services must tolerate duplicates, and each forward
carries the same card and timestamp on every retry.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

import requests
from sqlalchemy import ForeignKey, Index, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from smartapp.db import Base, Database, EncryptedJSON, UTCDateTime, utcnow
from smartapp.feedback.models import Decision, ShownSuggestion, new_id
from smartapp.httplimits import limited_session
from smartapp.leases import Leases

log = logging.getLogger(__name__)

OVERRIDE_REASON_SYSTEM = "https://smartapp.example.org/CodeSystem/override-reason"
OVERRIDE_REASON_DISPLAY = {
    "not_relevant": "Not relevant",
    "inaccurate": "Inaccurate",
    "incomplete": "Incomplete",
    "unsafe": "Unsafe",
    "other": "Other",
}
FINAL_TEXT_EXTENSION = "smartapp-final-text"
MAX_ATTEMPTS = 12


class FeedbackForward(Base):
    __tablename__ = "feedback_forward"
    __table_args__ = (Index("ix_forward_due", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    decision_id: Mapped[str] = mapped_column(
        ForeignKey("decision.id", ondelete="CASCADE"), unique=True
    )
    endpoint: Mapped[str] = mapped_column(String(1024))
    #: The CDS Hooks feedback, which carries the clinician's edit and comment: encrypted.
    payload: Mapped[dict[str, Any]] = mapped_column(EncryptedJSON())
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|sent|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: The process sending it now (smartapp.leases): one sender at a time, any process.
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())


def as_uuid(hex_id: str) -> str:
    return str(uuid.UUID(hex=hex_id))


def card_suggestion_id(suggestion_id: str) -> str:
    """The id of the card's one suggestion: stable, derived from the card's id."""
    return str(uuid.uuid5(uuid.UUID(hex=suggestion_id), "suggestion"))


def cds_feedback(suggestion: ShownSuggestion, decision: Decision) -> dict[str, Any]:
    """One CDS Hooks 2.0 feedback entry for a decision."""
    item: dict[str, Any] = {
        "card": as_uuid(suggestion.id),
        "outcomeTimestamp": decision.decided_at.isoformat(timespec="seconds"),
    }
    if decision.action in ("accept", "edit"):
        item["outcome"] = "accepted"
        item["acceptedSuggestions"] = [{"id": card_suggestion_id(suggestion.id)}]
        if decision.action == "edit" and decision.final_text is not None:
            item["extension"] = {
                FINAL_TEXT_EXTENSION: decision.final_text,
                "smartapp-edit-distance": decision.edit_distance,
            }
    else:
        code = decision.reason or ("unsafe" if decision.action == "flag" else "other")
        reason: dict[str, Any] = {
            "reason": {
                "system": OVERRIDE_REASON_SYSTEM,
                "code": code,
                "display": OVERRIDE_REASON_DISPLAY.get(code, code),
            }
        }
        if decision.comment:
            reason["userComment"] = decision.comment
        item["outcome"] = "overridden"
        item["overrideReason"] = reason
        if decision.action == "flag":
            item["extension"] = {"smartapp-flagged-unsafe": True}
    return {"feedback": [item]}


class FeedbackForwarder:
    def __init__(
        self, database: Database, *, http: requests.Session | None = None, timeout: float = 10.0
    ) -> None:
        self._db = database
        self._http = http or limited_session(deadline=max(timeout, 1.0) * 2)
        self._timeout = timeout
        self.leases = Leases(database, FeedbackForward)

    def enqueue(self, decision_id: str, endpoint: str, *, session: Session | None = None) -> None:
        """Queue the decision's forward: in `session` (the decision's own transaction, so
        both commit or neither does), else in a transaction of its own."""
        if session is None:
            with self._db.session() as own:
                self._enqueue(own, decision_id, endpoint)
        else:
            self._enqueue(session, decision_id, endpoint)

    def _enqueue(self, session: Session, decision_id: str, endpoint: str) -> None:
        decision = session.get(Decision, decision_id)
        if decision is None:
            return
        existing = session.scalars(
            select(FeedbackForward).where(FeedbackForward.decision_id == decision_id)
        ).first()
        if existing is not None:
            return
        session.add(
            FeedbackForward(
                decision_id=decision_id,
                endpoint=endpoint,
                payload=cds_feedback(decision.suggestion, decision),
                status="pending",
                next_attempt_at=utcnow(),
            )
        )

    def deliver_due(self, *, now: datetime | None = None, limit: int = 50) -> int:
        """Send the forwards that are due; returns how many were sent."""
        now = now or utcnow()
        # Claimed, not just read: another process's worker sends the others.
        due = self.leases.claim_due(
            (FeedbackForward.status == "pending") & (FeedbackForward.next_attempt_at <= now),
            order_by=FeedbackForward.created_at,
            limit=limit,
            now=now,
        )
        sent = 0
        for forward_id in due:
            try:
                with self.leases.heartbeat([forward_id]):
                    sent += self._send(forward_id)
            finally:
                self.leases.release([forward_id])
        return sent

    def _send(self, forward_id: str) -> int:
        with self._db.session() as session:
            forward = session.get(FeedbackForward, forward_id)
            if forward is None or forward.status != "pending":
                return 0
            endpoint, payload = forward.endpoint, forward.payload
        error: str | None = None
        try:
            response = self._http.post(endpoint, json=payload, timeout=self._timeout)
            if response.status_code >= 400:
                error = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            error = type(exc).__name__
        with self._db.session() as session:
            forward = session.get(FeedbackForward, forward_id)
            assert forward is not None
            forward.attempts += 1
            if error is None:
                forward.status, forward.sent_at, forward.last_error = "sent", utcnow(), None
                return 1
            log.warning("feedback forward failed (%s), attempt %d", error, forward.attempts)
            forward.last_error = error
            if forward.attempts >= MAX_ATTEMPTS:
                forward.status = "failed"
            else:
                forward.next_attempt_at = utcnow() + timedelta(
                    seconds=min(3600, 5 * 2**forward.attempts)
                )
        return 0
