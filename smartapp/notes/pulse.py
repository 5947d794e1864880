"""The clinician pulse: two one-tap questions after a sampled saved note, skippable.

"Did this draft save you time?" and "How much checking did it need?", each on a 1–5
scale. It is asked after at most one note in `pulse_every` (site configuration) per
clinician at a site — every Nth note they save — so it measures experience without
becoming a chore. Answers are aggregates for governance; no note text is stored here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Integer, String, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from smartapp.db import Base, UTCDateTime, utcnow
from smartapp.errors import BadRequest, NotFound
from smartapp.feedback.models import new_id
from smartapp.notes.models import CLINICAL_NOTE, SavedNote

QUESTIONS = {
    "savedTime": "Did this draft save you time?",
    "checking": "How much checking did it need?",
}
#: What the ends of each scale mean, shown beside the buttons.
SCALES = {
    "savedTime": ("1 = no, it cost me time", "5 = yes, a lot"),
    "checking": ("1 = almost none", "5 = I checked every line"),
}


class PulseResponse(Base):
    """One pulse: asked when the note was saved; answered or skipped by the clinician."""

    __tablename__ = "pulse_response"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    note_id: Mapped[str] = mapped_column(String(32), ForeignKey("saved_note.id"), unique=True)
    site: Mapped[str] = mapped_column(String(512))
    fhir_user: Mapped[str | None] = mapped_column(String(512))
    asked_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    saved_time: Mapped[int | None] = mapped_column(Integer)
    checking: Mapped[int | None] = mapped_column(Integer)
    skipped: Mapped[bool] = mapped_column(Boolean, default=False)


@dataclass(frozen=True, kw_only=True)
class PulseQuestion:
    note_id: str

    def to_json(self) -> dict[str, Any]:
        return {
            "note": self.note_id,
            "questions": [
                {"id": key, "text": text, "low": SCALES[key][0], "high": SCALES[key][1]}
                for key, text in QUESTIONS.items()
            ],
        }


def maybe_ask(
    session: Session, note: SavedNote, *, every: int, now: datetime
) -> PulseQuestion | None:
    """Ask after this clinician's every `every`-th note at this site (first save only)."""
    if every <= 0 or not note.fhir_user:
        return None
    existing = session.scalar(select(PulseResponse).where(PulseResponse.note_id == note.id))
    if existing is not None:
        return PulseQuestion(note_id=note.id) if existing.answered_at is None else None
    if note.revision != 1:
        return None
    count = session.scalar(
        select(func.count(SavedNote.id)).where(
            SavedNote.site == note.site,
            SavedNote.fhir_user == note.fhir_user,
            SavedNote.document_kind == CLINICAL_NOTE,
        )
    )
    if not count or count % every != 0:
        return None
    session.add(
        PulseResponse(note_id=note.id, site=note.site, fhir_user=note.fhir_user, asked_at=now)
    )
    session.flush()
    return PulseQuestion(note_id=note.id)


def _score(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
        raise BadRequest(f"{key}: a whole number from 1 to 5, or leave it out.")
    return value


def answer(
    session: Session,
    body: dict[str, Any],
    *,
    site: str,
    fhir_user: str | None,
    now: datetime,
) -> PulseResponse:
    """Record an answer (or a skip) to a pulse this clinician was asked."""
    note_id = body.get("note")
    if not isinstance(note_id, str) or not note_id:
        raise BadRequest("note: the id of the saved note the pulse was asked about.")
    row = session.scalar(select(PulseResponse).where(PulseResponse.note_id == note_id))
    # Only the clinician who was asked may answer: anyone else is told it does not exist.
    if row is None or row.site != site or row.fhir_user != fhir_user:
        raise NotFound("No pulse was asked about this note.")
    skipped = body.get("skipped", False)
    if not isinstance(skipped, bool):
        raise BadRequest("skipped: true or false.")
    saved_time, checking = _score(body, "savedTime"), _score(body, "checking")
    if not skipped and saved_time is None and checking is None:
        raise BadRequest("Answer at least one question, or skip.")
    row.skipped = skipped
    row.saved_time = None if skipped else saved_time
    row.checking = None if skipped else checking
    row.answered_at = now
    session.flush()
    return row
