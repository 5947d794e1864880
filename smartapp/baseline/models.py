"""The baseline's tables: aggregates per clinician and ISO week, and one row per run.

Nothing here identifies a patient or holds note text: a clinician (issuer, "Practitioner/id"),
a week, counts and medians. A run replaces the weeks it read for its issuer.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, Date, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from smartapp.db import Base, UTCDateTime, utcnow


class BaselineRun(Base):
    """One `smartapp baseline` run: what it read and what it stored (counts only)."""

    __tablename__ = "baseline_run"
    __table_args__ = (Index("ix_baseline_run_issuer", "issuer", "finished_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    issuer: Mapped[str] = mapped_column(String(512))
    since: Mapped[date] = mapped_column(Date())
    #: The app's go-live at this site: weeks before it are "before", weeks after "after".
    go_live: Mapped[date | None] = mapped_column(Date())
    #: "system", "patient" or "group:ID" (the `$export` level).
    level: Mapped[str] = mapped_column(String(160))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: The export's transactionTime, as the server gave it.
    transaction_time: Mapped[str] = mapped_column(String(64), default="")
    encounters_read: Mapped[int] = mapped_column(Integer)
    notes_read: Mapped[int] = mapped_column(Integer)
    notes_counted: Mapped[int] = mapped_column(Integer)
    clinicians: Mapped[int] = mapped_column(Integer)
    weeks_stored: Mapped[int] = mapped_column(Integer)
    #: Why notes were left out: {"not_final": 3, ...}.
    skipped: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class BaselineWeek(Base):
    """One clinician's notes in one ISO week at one site."""

    __tablename__ = "baseline_week"

    issuer: Mapped[str] = mapped_column(String(512), primary_key=True)
    fhir_user: Mapped[str] = mapped_column(String(256), primary_key=True)
    week: Mapped[str] = mapped_column(String(8), primary_key=True)  # "2026-W41"
    week_start: Mapped[date] = mapped_column(Date())
    notes: Mapped[int] = mapped_column(Integer)
    notes_with_lag: Mapped[int] = mapped_column(Integer)
    median_lag_hours: Mapped[float | None] = mapped_column(Float())
    notes_with_length: Mapped[int] = mapped_column(Integer)
    median_note_chars: Mapped[float | None] = mapped_column(Float())
    run_id: Mapped[str] = mapped_column(ForeignKey("baseline_run.id", ondelete="CASCADE"))
