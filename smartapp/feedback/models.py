"""Tables for what was shown to clinicians and what they decided.

A `ShownSuggestion` is written when a suggestion is first shown; every decision on it
(accept, edit, reject, flag) is a `Decision` row. The metrics read the latest decision
per suggestion. Rows carry the site (issuer), the engine and version, and timings; the
suggestion text is clinical content and stays in this server-side store.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from smartapp.db import Base, EncryptedText, UTCDateTime, utcnow

ACTIONS = ("accept", "edit", "reject", "flag")
#: Coded override reasons (CDS Hooks style): https://cds-hooks.hl7.org/2.0/#overridereason
REJECT_REASONS = ("not_relevant", "inaccurate", "incomplete", "unsafe", "other")


def new_id() -> str:
    return uuid.uuid4().hex


class ShownSuggestion(Base):
    __tablename__ = "shown_suggestion"
    __table_args__ = (
        # Two concurrent first loads of the sidebar must not both record the same set.
        UniqueConstraint("launch_session_id", "snapshot_key", "position"),
        Index("ix_shown_launch", "launch_session_id"),
        Index("ix_shown_visit", "visit_key", "snapshot_key"),
        Index("ix_shown_site_time", "site", "shown_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    #: The launch that last drafted it (a later launch of the visit carries it over).
    launch_session_id: Mapped[str] = mapped_column(String(64))
    #: The visit it belongs to (smartapp.notes.visits): every launch of it sees this row.
    visit_key: Mapped[str] = mapped_column(String(64))
    #: The snapshot this suggestion was drafted from (its fetch time), to regenerate on refresh.
    snapshot_key: Mapped[str] = mapped_column(String(64))
    site: Mapped[str] = mapped_column(String(512))  # the issuer (FHIR base URL)
    fhir_user: Mapped[str | None] = mapped_column(String(256))
    patient_id: Mapped[str] = mapped_column(String(128))
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(256))
    text: Mapped[str] = mapped_column(Text)
    statements: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    citations: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    #: The engine choice governance made for this kind when it was drafted (see notes.drafting).
    choice: Mapped[str] = mapped_column(String(160), default="", server_default="")
    engine_name: Mapped[str] = mapped_column(String(64))
    engine_version: Mapped[str] = mapped_column(String(128))
    engine_extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    verification: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    #: The patient's age band and administrative sex when first shown (feedback.demographics:
    #: no birth date, no identifier), and its statements that are medication safety-check
    #: hits: the safety measures by age band and sex. NULL on rows shown before 0017.
    age_band: Mapped[str | None] = mapped_column(String(16))
    sex: Mapped[str | None] = mapped_column(String(16))
    safety_hits: Mapped[int | None] = mapped_column(Integer)
    shown_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: When the clinician last decided on it: set in the same statement that checks the row
    #: is still there, so a draft replaced by the LLM's never loses a decision made meanwhile.
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    decisions: Mapped[list[Decision]] = relationship(
        back_populates="suggestion", order_by="Decision.decided_at", cascade="all, delete-orphan"
    )

    def latest_decision(self) -> Decision | None:
        return self.decisions[-1] if self.decisions else None


class Decision(Base):
    __tablename__ = "decision"
    __table_args__ = (Index("ix_decision_suggestion", "suggestion_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    suggestion_id: Mapped[str] = mapped_column(
        ForeignKey("shown_suggestion.id", ondelete="CASCADE")
    )
    action: Mapped[str] = mapped_column(String(16))
    #: The clinician's edit and comment: PHI, encrypted at rest (`smartapp.atrest`).
    final_text: Mapped[str | None] = mapped_column(EncryptedText())
    reason: Mapped[str | None] = mapped_column(String(32))
    comment: Mapped[str | None] = mapped_column(EncryptedText())
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    seconds_to_decision: Mapped[float] = mapped_column()
    #: Clicks/keys the clinician spent on this suggestion (reported by the sidebar).
    action_count: Mapped[int] = mapped_column(Integer, default=1)
    #: Levenshtein distance between the suggested and the final text (0 for accept).
    edit_distance: Mapped[int | None] = mapped_column(Integer)

    suggestion: Mapped[ShownSuggestion] = relationship(back_populates="decisions")


class DraftedKind(Base):
    """A kind drafted for a launch's snapshot with a given engine choice, even if it produced
    nothing: so that a kind with no suggestions is not drafted again on every request."""

    __tablename__ = "drafted_kind"
    __table_args__ = (Index("ix_drafted_visit", "visit_key", "drafted_at"),)

    launch_session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    visit_key: Mapped[str] = mapped_column(String(64))
    snapshot_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64), primary_key=True)
    choice: Mapped[str] = mapped_column(String(160), primary_key=True)
    drafted_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: Set while the LLM's draft of this kind is on its way (the rules stand in until then):
    #: the latest it can arrive. Cleared when it has.
    pending_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
