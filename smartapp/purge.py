"""`smartapp purge`: remove the PHI the app no longer needs, and say what was removed.

What goes, and when (README "What the app stores"):
- chart snapshots past their time to live (`SMARTAPP_SNAPSHOT_TTL`);
- launch sessions (tokens, launch context) past their idle or absolute lifetime, and
  authorizations that were never completed;
- after `SMARTAPP_PHI_RETENTION_DAYS` (default 30): the clinicians' edited texts and comments
  on decisions (the counts, timings and edit distances the metrics use stay), the text of
  notes the EHR has (the EHR keeps the note), and delivered or failed feedback forwards.
Decisions that flag a suggestion as unsafe keep their text and comment until the flag's
review is closed: the governance team needs them.
Audit events and flag-review steps are append-only and are not purged here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Text, delete, or_, select, type_coerce, update

from smartapp.db import Database, utcnow


@dataclass(frozen=True, kw_only=True)
class PurgeReport:
    """How many of each were removed."""

    snapshots: int
    launch_sessions: int
    pending_authorizations: int
    decision_texts: int
    note_texts: int
    feedback_forwards: int

    def lines(self) -> list[str]:
        return [
            f"chart snapshots past their time to live: {self.snapshots}",
            f"launch sessions ended (tokens and context): {self.launch_sessions}",
            f"authorizations never completed: {self.pending_authorizations}",
            f"decisions whose edited text and comment were cleared: {self.decision_texts}",
            f"notes in the chart whose text was cleared: {self.note_texts}",
            f"feedback forwards removed (delivered or failed): {self.feedback_forwards}",
        ]


def _count(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount or 0)


def purge(database: Database, *, retention: timedelta, now: datetime | None = None) -> PurgeReport:
    """Remove what has expired (one transaction); the counts, for the operator's log."""
    from smartapp.feedback.forwarding import FeedbackForward
    from smartapp.feedback.models import Decision
    from smartapp.fhir.cache import CachedSnapshot
    from smartapp.governance.models import FlagReview
    from smartapp.notes.models import SavedNote
    from smartapp.smart.models import LaunchSession, PendingAuthorization
    from smartapp.smart.session import IDLE_TIMEOUT

    now = now or utcnow()
    cutoff = now - retention
    with database.session() as s:
        snapshots = _count(
            s.execute(delete(CachedSnapshot).where(CachedSnapshot.expires_at <= now))
        )
        sessions = _count(
            s.execute(
                delete(LaunchSession).where(
                    or_(
                        LaunchSession.absolute_expires_at <= now,
                        LaunchSession.last_seen_at <= now - IDLE_TIMEOUT,
                    )
                )
            )
        )
        pending = _count(
            s.execute(delete(PendingAuthorization).where(PendingAuthorization.expires_at <= now))
        )
        reviewed = select(FlagReview.suggestion_id).where(FlagReview.closed_at.is_not(None))
        decisions = _count(
            s.execute(
                update(Decision)
                .where(
                    Decision.decided_at <= cutoff,
                    or_(Decision.final_text.is_not(None), Decision.comment.is_not(None)),
                    # A flag keeps its words until its review is closed.
                    or_(Decision.action != "flag", Decision.suggestion_id.in_(reviewed)),
                )
                .values(final_text=None, comment=None)
                .execution_options(synchronize_session=False)
            )
        )
        notes = _count(
            s.execute(
                update(SavedNote)
                .where(
                    SavedNote.status == "in_chart",
                    SavedNote.updated_at <= cutoff,
                    # Raw comparison: the encrypted form of "" differs each time.
                    type_coerce(SavedNote.text, Text) != "",
                )
                .values(text=type_coerce("", Text))
                .execution_options(synchronize_session=False)
            )
        )
        forwards = _count(
            s.execute(
                delete(FeedbackForward).where(
                    FeedbackForward.status.in_(("sent", "failed")),
                    FeedbackForward.created_at <= cutoff,
                )
            )
        )
    return PurgeReport(
        snapshots=snapshots,
        launch_sessions=sessions,
        pending_authorizations=pending,
        decision_texts=decisions,
        note_texts=notes,
        feedback_forwards=forwards,
    )


def run_cli(args: Any, *, environ: Mapping[str, str] | None = None) -> int:
    """`smartapp purge [--json]`: exit 0, and print what was removed."""
    from smartapp.config import Settings

    settings = Settings.from_env(environ)
    database = Database.from_settings(settings)
    try:
        database.upgrade()
        report = purge(database, retention=timedelta(days=settings.phi_retention_days))
    finally:
        database.dispose()
    if args.json:
        print(json.dumps({**asdict(report), "retentionDays": settings.phi_retention_days}))
    else:
        print(f"smartapp purge (PHI retention {settings.phi_retention_days} days):")
        for line in report.lines():
            print(f"  {line}")
    return 0
