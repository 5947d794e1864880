"""The note a clinician saved, kept here first so that a failed write-back is never lost.

A note row is written before anything is sent to the EHR. Its `status` tells the
sidebar where it is: `pending` (saved here, not yet in the chart), `in_chart` (the EHR
holds the DocumentReference and its Provenance) or `failed` (the EHR refused it; a
person must look).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from smartapp.db import Base, EncryptedText, UTCDateTime, utcnow
from smartapp.errors import note_message
from smartapp.feedback.models import new_id

NOTE_STATUSES = ("pending", "in_chart", "failed")
#: What a saved note is: the clinician's note, or the patient's after-visit summary.
CLINICAL_NOTE = "note"
AFTER_VISIT_SUMMARY = "after_visit_summary"


class SavedNote(Base):
    __tablename__ = "saved_note"
    __table_args__ = (
        Index("ix_note_launch", "launch_session_id"),
        # One draft per visit: two tabs saving at once cannot make two notes.
        UniqueConstraint("visit_key", name="uq_note_visit"),
        Index("ix_note_status", "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    #: The visit's key (smartapp.notes.visits): its one draft, whatever launch saves it.
    #: An after-visit summary has a key derived from its visit's (one per visit too).
    visit_key: Mapped[str] = mapped_column(String(64))
    #: CLINICAL_NOTE or AFTER_VISIT_SUMMARY (a patient-facing document of its own).
    document_kind: Mapped[str] = mapped_column(
        String(32), default=CLINICAL_NOTE, server_default=CLINICAL_NOTE
    )
    #: The launch that saved it last: the outbox sends it with that launch's token.
    launch_session_id: Mapped[str] = mapped_column(String(64))
    site: Mapped[str] = mapped_column(String(512))
    patient_id: Mapped[str] = mapped_column(String(128))
    encounter_id: Mapped[str | None] = mapped_column(String(128))
    fhir_user: Mapped[str | None] = mapped_column(String(256))
    #: The note as saved (the clinician's text): PHI, encrypted at rest.
    text: Mapped[str] = mapped_column(EncryptedText())
    suggestion_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    engines: Mapped[list[list[str]]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    #: Saving again (in any launch of the visit) revises this note: the same draft in the chart.
    revision: Mapped[int] = mapped_column(Integer, default=1)
    #: The revision whose DocumentReference (and then Provenance) the EHR has.
    document_revision: Mapped[int] = mapped_column(Integer, default=0)
    chart_revision: Mapped[int] = mapped_column(Integer, default=0)
    #: A delivery in progress holds the note until then: the worker, a request and
    #: `smartapp outbox retry` never send the same note at the same time.
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Which process holds the claim (smartapp.leases), and since when; it renews
    #: `claimed_until` while it works, so a dead owner's claim lapses within seconds.
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    document_reference: Mapped[str | None] = mapped_column(String(256))
    provenance: Mapped[str | None] = mapped_column(String(256))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    #: When the clinician last saved it (updated_at also moves as the outbox delivers it).
    saved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: When the launch that saved it began: "launch to saved note" in the metrics.
    launched_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Where the note's characters came from (smartapp.notes.composition), at the last save.
    chars_total: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    chars_accepted: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    chars_edited: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    edits: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: Seconds the sidebar page was visible (Page Visibility API) before the saves of this
    #: note, summed over its saves and launches, never more than launch to last save. NULL
    #: for notes saved before 0019 and by clients that do not report it.
    seconds_in_sidebar: Mapped[float | None] = mapped_column(Float)
    #: The clinician's arm in each kind's partial rollout at the last save, {kind: "inside" |
    #: "outside"} (notes.drafting): the concurrent control of admin.control. {} when no
    #: partial rollout applied; NULL for notes saved before it was recorded.
    rollout_arms: Mapped[dict[str, str] | None] = mapped_column(JSON)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.document_kind,
            "status": self.status,
            "documentReference": self.document_reference,
            "provenance": self.provenance,
            "attempts": self.attempts,
            "revision": self.revision,
            # A failed or delayed write, said as smartapp.errors.WORDING says it (no PHI).
            "error": note_message(self.last_error),
            "createdAt": self.created_at.isoformat(),
            "updatedAt": self.updated_at.isoformat() if self.updated_at else None,
            "savedAt": (self.saved_at or self.created_at).isoformat(),
        }
