"""The CDS Hooks service's rows: seen request JWTs (replay), issued cards, their feedback.

https://cds-hooks.hl7.org/2.0/#trusting-cds-clients and
https://cds-hooks.hl7.org/2.0/#feedback
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from smartapp.db import Base, EncryptedText, UTCDateTime, utcnow


class SeenRequestToken(Base):
    """A request JWT's `jti`, kept until the JWT expires: the same token twice is a replay."""

    __tablename__ = "cds_seen_jti"
    __table_args__ = (Index("ix_cds_seen_jti_expiry", "expires_at"),)

    #: SHA-256 hex of "<iss> <jti>" (a jti is unique per issuer only).
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class IssuedCard(Base):
    """A card this service returned: what feedback on its uuid is about."""

    __tablename__ = "cds_card"

    uuid: Mapped[str] = mapped_column(String(64), primary_key=True)
    service_id: Mapped[str] = mapped_column(String(64))
    #: The EHR (the JWT's `iss`) that asked, and the FHIR base (`fhirServer`) it spoke for.
    client: Mapped[str] = mapped_column(Text)
    site: Mapped[str] = mapped_column(Text)
    patient_id: Mapped[str] = mapped_column(String(128))
    hook_instance: Mapped[str] = mapped_column(String(128))
    #: Counts shown on the card ({"care_gaps": 3, "medication_hints": 2, ...}); no PHI.
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class CardFeedback(Base):
    """One feedback item; a repeat of the same (card, outcome, time) is the same item."""

    __tablename__ = "cds_card_feedback"
    __table_args__ = (
        UniqueConstraint("card_uuid", "outcome", "outcome_timestamp", name="uq_cds_feedback"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    card_uuid: Mapped[str] = mapped_column(String(64), index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    #: As the EHR sent it (an instant string), which is what makes a repeat a repeat.
    outcome_timestamp: Mapped[str] = mapped_column(String(64))
    #: The override reason's Coding ({"system", "code", "display"}) and no comment text.
    override_reason: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    #: The clinician's comment on the override: free text, so encrypted like other comments.
    user_comment: Mapped[str | None] = mapped_column(EncryptedText(), default=None)
    accepted_suggestions: Mapped[list[str]] = mapped_column(JSON, default=list)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
