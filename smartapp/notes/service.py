"""The clinician's flow behind the sidebar: read the chart, draft, decide, save the note.

Views call one method each; collaborators come in through the constructor so that the
service never sees the request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import select

from smartapp.db import Database, utcnow
from smartapp.errors import BadRequest, Forbidden, NotFound, TemporaryUpstreamError, UpstreamError
from smartapp.feedback.models import ShownSuggestion
from smartapp.feedback.store import FeedbackStore, ShownBy
from smartapp.fhir.snapshot import ChartSnapshot
from smartapp.notes.documents import NoteDraft
from smartapp.notes.models import SavedNote
from smartapp.notes.writeback import WrittenNote, write_note
from smartapp.suggestions.interfaces import Suggestion

if TYPE_CHECKING:
    from smartapp.fhir.client import FHIRClient
    from smartapp.smart.session import LaunchContext

log = logging.getLogger(__name__)

MAX_NOTE_CHARS = 50_000


class SnapshotSource(Protocol):
    def snapshot(self, launch: LaunchContext, *, refresh: bool = False) -> ChartSnapshot: ...


class Drafter(Protocol):
    def draft(self, snapshot: ChartSnapshot, *, iss: str) -> list[Suggestion]: ...


@dataclass(frozen=True, kw_only=True)
class SuggestionsView:
    snapshot: ChartSnapshot
    rows: list[ShownSuggestion]


@dataclass(frozen=True, kw_only=True)
class SaveResult:
    note: SavedNote
    written: WrittenNote | None


def snapshot_key(snapshot: ChartSnapshot) -> str:
    return snapshot.fetched_at.isoformat() if snapshot.fetched_at else "unknown"


class SidebarService:
    def __init__(
        self,
        *,
        database: Database,
        snapshots: SnapshotSource,
        drafter: Drafter,
        fhir_for: Callable[[LaunchContext], FHIRClient],
    ) -> None:
        self._db = database
        self._snapshots = snapshots
        self._drafter = drafter
        self._fhir_for = fhir_for
        self.feedback = FeedbackStore(database)

    # -- reading -------------------------------------------------------------------

    def chart(self, launch: LaunchContext) -> ChartSnapshot:
        return self._snapshots.snapshot(launch)

    def suggestions(self, launch: LaunchContext, *, refresh: bool = False) -> SuggestionsView:
        """The suggestions for the current snapshot: drafted once, then the same rows (and ids)."""
        snapshot = self._snapshots.snapshot(launch, refresh=refresh)
        by = ShownBy(
            launch_session_id=launch.session_id,
            snapshot_key=snapshot_key(snapshot),
            site=launch.iss,
            fhir_user=launch.fhir_user,
            patient_id=launch.patient_id or snapshot.patient_id,
        )
        rows = self.feedback.shown(by)
        if not rows:
            drafted = self._drafter.draft(snapshot, iss=launch.iss)
            rows = self.feedback.record_shown(by, drafted)
        return SuggestionsView(snapshot=snapshot, rows=rows)

    # -- saving the note -------------------------------------------------------------

    def assemble_note(self, launch: LaunchContext) -> tuple[str, list[ShownSuggestion]]:
        """The note from the accepted and edited suggestions of the latest draft, in order."""
        with self._db.session() as session:
            latest_key = session.scalars(
                select(ShownSuggestion.snapshot_key)
                .where(ShownSuggestion.launch_session_id == launch.session_id)
                .order_by(ShownSuggestion.shown_at.desc())
                .limit(1)
            ).first()
        if latest_key is None:
            return "", []
        rows = self.feedback.shown(
            ShownBy(
                launch_session_id=launch.session_id,
                snapshot_key=latest_key,
                site=launch.iss,
                fhir_user=launch.fhir_user,
                patient_id=launch.patient_id or "",
            )
        )
        sections: list[str] = []
        used: list[ShownSuggestion] = []
        for row in rows:
            decision = row.latest_decision()
            if decision is None or decision.action not in ("accept", "edit"):
                continue
            body = decision.final_text if decision.final_text is not None else row.text
            sections.append(f"{row.title}\n{body.strip()}")
            used.append(row)
        return "\n\n".join(sections), used

    def save_note(self, launch: LaunchContext, *, text: str | None = None) -> SaveResult:
        if not launch.scopes.allows("DocumentReference", "c"):
            raise Forbidden(
                "The EHR did not grant this app permission to write notes "
                "(patient/DocumentReference.c). Ask IT to grant it, then relaunch."
            )
        if not launch.patient_id:
            raise BadRequest("This launch has no patient in context.")
        assembled, used = self.assemble_note(launch)
        if text is not None:
            if not isinstance(text, str):
                raise BadRequest("text must be a string.")
            body = text.strip()
        else:
            body = assembled
        if not body:
            raise BadRequest(
                "Nothing to save: accept or edit a suggestion, or write the note text."
            )
        if len(body) > MAX_NOTE_CHARS:
            raise BadRequest(f"The note is longer than {MAX_NOTE_CHARS} characters.")
        engines = sorted({(r.engine_name, r.engine_version) for r in used})
        with self._db.session() as session:
            note = SavedNote(
                launch_session_id=launch.session_id,
                site=launch.iss,
                patient_id=launch.patient_id,
                encounter_id=launch.encounter_id,
                fhir_user=launch.fhir_user,
                text=body,
                suggestion_ids=[r.id for r in used],
                engines=[list(e) for e in engines],
                status="pending",
                created_at=utcnow(),
            )
            session.add(note)
        written = self.deliver(note.id, client=self._fhir_for(launch))
        with self._db.session() as session:
            refreshed = session.get(SavedNote, note.id)
            assert refreshed is not None
        return SaveResult(note=refreshed, written=written)

    def deliver(self, note_id: str, *, client: FHIRClient) -> WrittenNote | None:
        """Try to write one saved note to the EHR; on a temporary failure keep it for a retry."""
        with self._db.session() as session:
            note = session.get(SavedNote, note_id)
            if note is None:
                raise NotFound("No such note.")
            if note.status == "in_chart":
                return WrittenNote(
                    document_reference=note.document_reference or "",
                    provenance=note.provenance or "",
                )
            draft = NoteDraft(
                note_id=note.id,
                text=note.text,
                patient_id=note.patient_id,
                encounter_id=note.encounter_id,
                author=note.fhir_user,
                engines=[(n, v) for n, v in note.engines],
                created_at=note.created_at,
                ai_assisted=bool(note.engines),
            )
        try:
            written = write_note(client, draft)
        except TemporaryUpstreamError as exc:
            self._record_failure(note_id, exc, retry=True)
            return None
        except UpstreamError as exc:
            self._record_failure(note_id, exc, retry=False)
            raise
        with self._db.session() as session:
            note = session.get(SavedNote, note_id)
            assert note is not None
            note.status = "in_chart"
            note.document_reference = written.document_reference
            note.provenance = written.provenance
            note.attempts += 1
            note.last_error = None
            note.next_attempt_at = None
        return written

    def _record_failure(self, note_id: str, exc: UpstreamError, *, retry: bool) -> None:
        log.warning(
            "note write-back failed (%s); %s", exc.code, "will retry" if retry else "gave up"
        )
        with self._db.session() as session:
            note = session.get(SavedNote, note_id)
            if note is None:
                return
            note.attempts += 1
            note.last_error = exc.code
            if retry:
                note.status = "pending"
                delay = min(3600, 15 * 2 ** min(note.attempts, 8))
                note.next_attempt_at = utcnow() + timedelta(seconds=delay)
            else:
                note.status = "failed"
                note.next_attempt_at = None

    def notes(self, launch: LaunchContext) -> list[dict[str, Any]]:
        with self._db.session() as session:
            rows = session.scalars(
                select(SavedNote)
                .where(SavedNote.launch_session_id == launch.session_id)
                .order_by(SavedNote.created_at)
            )
            return [r.to_json() for r in rows]
