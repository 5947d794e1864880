"""The clinician's flow behind the sidebar: read the chart, draft, decide, save the note.

Views call one method each; collaborators come in through the constructor so that the
service never sees the request.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from smartapp import audit
from smartapp.db import Database, utcnow
from smartapp.errors import (
    AppError,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    RelaunchRequired,
    TemporaryUpstreamError,
    UpstreamError,
)
from smartapp.feedback.demographics import Demographics, of_snapshot
from smartapp.feedback.models import ShownSuggestion
from smartapp.feedback.store import DecisionHook, FeedbackStore, ShownBy
from smartapp.fhir.snapshot import ChartSnapshot
from smartapp.governance.model_cards import card_for
from smartapp.governance.state import version_column
from smartapp.identity import bound_identity
from smartapp.kinds import KIND_LABELS
from smartapp.leases import Leases
from smartapp.note_layout import AfterVisitSummary, NoteLayout
from smartapp.notes.composer import (
    ComposedNote,
    Decided,
    Document,
    as_written,
    compose,
    has_unverified_marker,
)
from smartapp.notes.composition import composition
from smartapp.notes.documents import NoteDraft
from smartapp.notes.drafting import DraftPlan, Drafts, NotEnabled
from smartapp.notes.models import AFTER_VISIT_SUMMARY, CLINICAL_NOTE, SavedNote
from smartapp.notes.pulse import PulseQuestion, answer, maybe_ask
from smartapp.notes.visits import Visit, visit_of
from smartapp.notes.writeback import (
    WrittenNote,
    draft_is_editable,
    revise_document,
    write_note,
    write_revision_provenance,
)
from smartapp.suggestions.changes import Changes, changes_since
from smartapp.suggestions.interfaces import Suggestion

if TYPE_CHECKING:
    from smartapp.fhir.client import FHIRClient
    from smartapp.smart.session import LaunchContext

log = logging.getLogger(__name__)

MAX_NOTE_CHARS = 50_000


def _time_in_sidebar(
    stored: float | None, reported: float | None, launched_at: datetime, now: datetime
) -> float | None:
    """The note's time in the sidebar after a save that reported `reported` more seconds.

    The browser reports it, so it is held to what can be true: never more than the time
    from the launch to this save (the sidebar cannot be visible before its launch began).
    """
    if reported is None:
        return stored
    ceiling = max(0.0, (now - launched_at).total_seconds())
    return min((stored or 0.0) + reported, ceiling)


#: Saves of one visit's note that may collide (tabs saving at once) before giving up.
SAVE_ATTEMPTS = 5
#: The first retry of a note the EHR could not take waits this long, then twice as long
#: each time, up to RETRY_CAP_SECONDS (SMARTAPP_OUTBOX_RETRY_SECONDS sets the first).
RETRY_SECONDS = 15.0
RETRY_CAP_SECONDS = 3600.0


class _SavedMeanwhile(Exception):
    """The visit's note was revised between reading it and writing this revision."""


class NoteGrants(Protocol):
    """Keeps a launch's tokens for the notes it saves, so they outlive the launch."""

    def hold_for_note(self, launch: LaunchContext) -> None: ...

    def release_for_notes(self, launch_session_id: str | None = None) -> int: ...


class SnapshotSource(Protocol):
    def snapshot(
        self, launch: LaunchContext, *, refresh: bool = False, reread: bool = False
    ) -> ChartSnapshot: ...

    def cached(self, launch: LaunchContext) -> ChartSnapshot | None: ...

    def patient(self, launch: LaunchContext) -> dict[str, Any]: ...


class Drafter(Protocol):
    def plan(
        self, *, iss: str, fhir_user: str | None, governance_version: int | None = None
    ) -> DraftPlan: ...

    def draft(self, snapshot: ChartSnapshot, *, iss: str, plan: DraftPlan) -> Drafts: ...


@dataclass(frozen=True, kw_only=True)
class SuggestionsView:
    snapshot: ChartSnapshot
    rows: list[ShownSuggestion]
    #: What changed since the last note or visit (shown above the cards).
    changes: Changes
    #: Kinds this clinician does not get here (rollout, kill switch), and why.
    not_enabled: tuple[NotEnabled, ...] = ()
    #: Kinds whose LLM draft is on its way (the rules stand in for them meanwhile).
    pending: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class SaveResult:
    note: SavedNote
    written: WrittenNote | None
    #: The after-visit summary saved beside the note, when the clinician chose to.
    summary: SaveResult | None = None
    #: The code of why the after-visit summary could not be put in the chart (it is kept
    #: here); the web layer words it.
    summary_error: str | None = None


def summary_key(visit_key: str) -> str:
    """The after-visit summary's own key, derived from its visit's (one per visit)."""
    return hashlib.sha256(f"after-visit-summary|{visit_key}".encode()).hexdigest()


def _revision_id(note_id: str, revision: int) -> str:
    """A stable identifier for one revision written as a new draft (the old one was signed)."""
    return uuid.uuid5(uuid.UUID(hex=note_id), f"revision-{revision}").hex


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
        on_decision: DecisionHook | None = None,
        pulse_every: Callable[[str], int] = lambda _iss: 0,
        note_layout: Callable[[str], NoteLayout] = lambda _iss: NoteLayout(),
        summary_config: Callable[[str], AfterVisitSummary] = lambda _iss: AfterVisitSummary(),
        visit_timezone: Callable[[str], tzinfo] = lambda _iss: UTC,
        grants: NoteGrants | None = None,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self._db = database
        self._grants = grants
        self._retry_seconds = retry_seconds
        self._note_layout = note_layout
        self._summary_config = summary_config
        self._visit_timezone = visit_timezone
        self._pulse_every = pulse_every
        self._snapshots = snapshots
        self._drafter = drafter
        self._fhir_for = fhir_for
        #: (launch, document, revision) -> signed in the EHR: read once per launch and save.
        self._signed: dict[tuple[str, str, int], bool] = {}
        self.feedback = FeedbackStore(database, on_decision=on_decision)
        self.leases = Leases(database, SavedNote)

    # -- reading -------------------------------------------------------------------

    def visit(self, launch: LaunchContext) -> Visit:
        """The visit this launch works on: its decisions and draft are the visit's."""
        return visit_of(launch, timezone=self._visit_timezone(launch.iss))

    def chart(self, launch: LaunchContext) -> ChartSnapshot:
        return self._snapshots.snapshot(launch)

    def context(self, launch: LaunchContext) -> tuple[dict[str, Any], ChartSnapshot | None]:
        """The Patient and the chart if already read: the context never waits on the chart."""
        snapshot = self._snapshots.cached(launch)
        if snapshot is not None:
            return snapshot.patient, snapshot
        return self._snapshots.patient(launch), None

    def suggestions(self, launch: LaunchContext, *, refresh: bool = False) -> SuggestionsView:
        """The suggestions for the current snapshot: drafted once, then the same rows (and ids).

        What may be shown is worked out on every request (rollout, kill switches, the
        active engine version, from governance's cached state): a kind whose engine choice
        changed is drafted again from the chart already read; the others keep their
        suggestions and decisions. A warm request costs five statements: the launch, the
        drafted kinds with the governance version, the shown rows with their decisions,
        and the audit event (two).
        """
        snapshot = self._snapshots.snapshot(launch, refresh=refresh)
        visit = self.visit(launch)
        # Governance's counter rides along: a warm request's statements are few.
        drafted_by_key, governance_version = self.feedback.drafted_by_snapshot_with(
            visit.key, version_column()
        )
        newest = max((k for k in drafted_by_key if k != "unknown"), default=None)
        key = snapshot_key(snapshot)
        if not refresh and newest is not None and key != "unknown" and newest > key:
            # Another process read the chart again for this launch: use its snapshot.
            snapshot = self._snapshots.snapshot(launch, reread=True)
            key = snapshot_key(snapshot)
            if newest > key:
                # Another launch of this visit (a second tab) read the chart later: show
                # its suggestions, so that both tabs decide on the same rows.
                key = newest
        plan = self._drafter.plan(
            iss=launch.iss, fhir_user=launch.fhir_user, governance_version=governance_version
        )
        by = self._shown_by(launch, visit, key, demographics=of_snapshot(snapshot))
        drafted = drafted_by_key.get(key, {})
        now = utcnow()
        pending = {
            k for k in plan.kinds if (until := drafted.get((k, plan.token(k)))) and until > now
        }
        missing = tuple(k for k in plan.kinds if (k, plan.token(k)) not in drafted)
        if missing:
            partial = plan.only(missing)
            # Drafting takes a CPU's while: the request's store connection goes back meanwhile.
            self._db.release()
            drafts = self._drafter.draft(snapshot, iss=launch.iss, plan=partial)
            tokens = {k: partial.token(k) for k in missing}
            until = drafts.pending_until or now
            recorded = self.feedback.record_draft(
                by, tokens, drafts.suggestions, pending_until={k: until for k in drafts.pending}
            )
            for kind, future in drafts.pending.items():
                if not recorded:
                    future.cancel()  # another request's drafts (and LLM calls) stand
                    continue
                pending.add(kind)
                # Attached only now that the stand-ins are stored, so an answer that is
                # already in replaces them rather than racing them.
                future.add_done_callback(functools.partial(self._arrived, by, kind, tokens[kind]))
            if not recorded:
                # Another request of this visit drafted (or carried its rows) first: show
                # what it recorded, the newest set of the visit, not an empty list.
                # (When this launch read the newer chart, its next request drafts it again.)
                latest = self.feedback.latest_snapshot_key(visit.key)
                if latest is not None and latest != key:
                    by = self._shown_by(launch, visit, latest, demographics=of_snapshot(snapshot))
        rows = self._visible(self.feedback.shown(by), plan)
        audit.record(
            self._db,
            actor=bound_identity(launch.iss, launch.fhir_user),
            action=audit.Action.SUGGESTIONS_VIEW,
            site=launch.iss,
            patient=launch.patient_id,
            detail={"suggestions": [r.id for r in rows], "kinds": sorted({r.kind for r in rows})},
        )
        return SuggestionsView(
            snapshot=snapshot,
            rows=rows,
            # A function of the chart alone (as of its own date): once per snapshot.
            changes=snapshot.derived("changes_since", lambda: changes_since(snapshot)),
            not_enabled=plan.not_enabled,
            pending=tuple(k for k in plan.kinds if k in pending),
        )

    def _arrived(
        self, by: ShownBy, kind: str, choice: str, future: Future[list[Suggestion]]
    ) -> None:
        """An LLM kind's drafts are in (on the LLM thread): they replace the stand-ins."""
        suggestions: list[Suggestion] | None
        if future.cancelled():
            suggestions = None
        elif future.exception() is not None:
            log.error("the LLM run of %s failed: %s", kind, type(future.exception()).__name__)
            suggestions = None
        else:
            suggestions = future.result()
        try:
            self.feedback.replace_drafted(by, kind, choice, suggestions)
        except Exception as exc:  # noqa: BLE001 - a background thread: log, never raise
            log.error("storing the LLM's drafts of %s failed: %s", kind, type(exc).__name__)

    def pending(self, launch: LaunchContext) -> tuple[str, ...]:
        """The kinds of this visit's newest drafts whose LLM draft is still on its way.

        One statement beside the launch's: the sidebar asks this while it waits, and
        reads the suggestions again only when something arrived.
        """
        drafted = self.feedback.drafted_by_snapshot(self.visit(launch).key)
        newest = max((k for k in drafted if k != "unknown"), default=None)
        if newest is None:
            return ()
        now = utcnow()
        return tuple(
            sorted({kind for (kind, _), until in drafted[newest].items() if until and until > now})
        )

    @staticmethod
    def _shown_by(
        launch: LaunchContext, visit: Visit, key: str, *, demographics: Demographics | None = None
    ) -> ShownBy:
        return ShownBy(
            launch_session_id=launch.session_id,
            visit_key=visit.key,
            snapshot_key=key,
            site=launch.iss,
            fhir_user=launch.fhir_user,
            patient_id=launch.patient_id or "",
            age_band=demographics.age_band if demographics else None,
            sex=demographics.sex if demographics else None,
        )

    @staticmethod
    def _visible(rows: list[ShownSuggestion], plan: DraftPlan) -> list[ShownSuggestion]:
        """The rows drafted under the plan's current choices, in the configured kind order."""
        order = {kind: i for i, kind in enumerate(plan.kinds)}
        current = [r for r in rows if r.kind in order and r.choice == plan.token(r.kind)]
        return sorted(current, key=lambda r: (order[r.kind], r.position))

    # -- saving the note -------------------------------------------------------------

    def note_layout(self, iss: str) -> NoteLayout:
        return self._note_layout(iss)

    def summary_config(self, iss: str) -> AfterVisitSummary:
        return self._summary_config(iss)

    def current_rows(
        self, launch: LaunchContext, *, plan: DraftPlan | None = None
    ) -> list[ShownSuggestion]:
        """The visit's suggestions now shown (its latest snapshot, governance's current plan)."""
        visit = self.visit(launch)
        latest_key = self.feedback.latest_snapshot_key(visit.key)
        if latest_key is None:
            return []
        if plan is None:
            plan = self._drafter.plan(iss=launch.iss, fhir_user=launch.fhir_user)
        return self._visible(self.feedback.shown(self._shown_by(launch, visit, latest_key)), plan)

    def about(self, launch: LaunchContext, kind: str) -> dict[str, Any]:
        """ "About this suggestion": the source attributes of the engine version that drafted
        this visit's suggestions of `kind` now shown (ONC HTI-1; admin.model_cards)."""
        row = next((r for r in self.current_rows(launch) if r.kind == kind), None)
        if row is None:
            raise NotFound("No suggestion of this kind is shown for this visit.")
        with self._db.session() as session:
            card = card_for(session, engine=row.engine_name, version=row.engine_version)
        return {
            "kind": kind,
            "title": KIND_LABELS.get(kind, kind),
            "engine": {"name": row.engine_name, "version": row.engine_version},
            "card": card,
        }

    def decide(self, launch: LaunchContext, suggestion_id: str, **decision: Any) -> None:
        """Record a decision on one of this visit's suggestions (any launch of it may)."""
        self.feedback.decide(self.visit(launch).key, suggestion_id, **decision)

    def compose_note(self, launch: LaunchContext, *, plan: DraftPlan | None = None) -> ComposedNote:
        """The note from the accepted and edited suggestions now shown, in the site's sections.

        The sidebar's preview and the saved note both come from here (one composer).
        Suggestions governance has since withdrawn (a kill switch) stay out of the note.
        """
        return compose(
            _decided(self.current_rows(launch, plan=plan)), self._note_layout(launch.iss)
        )

    def save_note(
        self,
        launch: LaunchContext,
        *,
        text: str | None = None,
        after_visit_summary: bool = False,
        seconds_in_sidebar: float | None = None,
    ) -> SaveResult:
        """Keep the note here, then try to put it in the chart.

        `seconds_in_sidebar`: how long the sidebar was visible since this page's last save
        (the sidebar measures it); added to the note's time in the sidebar.

        Saving again, in this launch or any later one of the same visit (another tab, the
        chart reopened), revises the visit's one note: one draft in the chart, updated in
        place until it is signed, so a clinician who accepts one more suggestion does not
        get two notes. Two saves at once are serialised by the store (see _store_note).
        """
        if not launch.scopes.allows("DocumentReference", "c"):
            raise Forbidden(
                "The EHR did not grant this app permission to write notes "
                "(patient/DocumentReference.c). Ask IT to grant it, then relaunch."
            )
        if not launch.patient_id:
            raise BadRequest("This launch has no patient in context.")
        # One plan for the note and its record of the clinician's rollout arms.
        plan = self._drafter.plan(iss=launch.iss, fhir_user=launch.fhir_user)
        composed = self.compose_note(launch, plan=plan)
        content: Document = composed.note
        if text is not None:
            if not isinstance(text, str):
                raise BadRequest("text must be a string.")
            if has_unverified_marker(text):
                raise BadRequest(
                    "The note still holds a statement marked [unverified]: check it against "
                    "the chart, then remove the marker or the statement."
                )
            # The clinician's own text: labelled by the suggestion lines it still holds.
            content = as_written(text.strip(), composed.note)
        body = content.text
        if not body:
            raise BadRequest(
                "Nothing to save: accept or edit a suggestion, or write the note text."
            )
        if len(body) > MAX_NOTE_CHARS:
            raise BadRequest(f"The note is longer than {MAX_NOTE_CHARS} characters.")
        if after_visit_summary:
            if not self._summary_config(launch.iss).offer:
                raise BadRequest("This site does not save after-visit summaries from the app.")
            if not composed.patient.text:
                raise BadRequest(
                    "No patient instructions to save as an after-visit summary: accept or "
                    "edit the patient instructions first."
                )
        visit = self.visit(launch)
        result = self._save_document(
            launch, visit, content, CLINICAL_NOTE, arms=plan.arms, seconds=seconds_in_sidebar
        )
        if not after_visit_summary:
            return result
        # The patient's instructions: a document of their own, never inside the note.
        summary_visit = replace(visit, key=summary_key(visit.key))
        try:
            summary = self._save_document(
                launch, summary_visit, composed.patient, AFTER_VISIT_SUMMARY, arms=plan.arms
            )
        except UpstreamError as exc:
            # The note is in; the summary is kept here with its error for the clinician.
            log.info("the after-visit summary was not written: %s: %s", exc.code, exc.message)
            return replace(result, summary_error=exc.code)
        return replace(result, summary=summary)

    def _save_document(
        self,
        launch: LaunchContext,
        visit: Visit,
        content: Document,
        kind: str,
        *,
        arms: Mapping[str, str],
        seconds: float | None = None,
    ) -> SaveResult:
        """Store one document of the visit (created or revised), then try to deliver it."""
        # Only the engines whose text is in it: they label it (and its Provenance).
        engines = [list(e) for e in content.engines]
        if self._grants is not None:
            # Before the note is stored: it must never wait on a launch that has ended
            # (the next launch in this browser deletes it) while the EHR is away.
            self._grants.hold_for_note(launch)
        for _ in range(SAVE_ATTEMPTS):
            try:
                stored, unchanged = self._store_note(
                    launch, visit, content.text, content, engines, kind, arms=arms, seconds=seconds
                )
                break
            except (IntegrityError, _SavedMeanwhile):
                # Another tab saved this visit's note between our read and our write:
                # read it again and revise it (never a second note for the visit).
                continue
        else:
            raise Conflict("The note is being saved from another window; save again.")
        if unchanged is not None:
            return SaveResult(note=unchanged, written=self._written(unchanged))
        note_id = stored.id
        try:
            written = self.deliver(note_id, client=self._fhir_for(launch))
            with self._db.session() as session:
                refreshed = session.get(SavedNote, note_id)
                assert refreshed is not None
        except SQLAlchemyError as exc:
            # The note is committed: the answer says so ("saved here, will be sent"), never
            # "not recorded", whatever failed after: the outbox finishes what was begun,
            # and the note's create is conditional on its identifier (never a second one).
            log.error("the store failed after a note was saved: %s", type(exc).__name__)
            return SaveResult(note=stored, written=None)
        return SaveResult(note=refreshed, written=written)

    def _store_note(
        self,
        launch: LaunchContext,
        visit: Visit,
        body: str,
        content: Document,
        engines: list[list[str]],
        kind: str = CLINICAL_NOTE,
        *,
        arms: Mapping[str, str],
        seconds: float | None = None,
    ) -> tuple[SavedNote, SavedNote | None]:
        """Create the visit's note or revise it; (the note as committed, the note if
        nothing changed).

        The revision is a compare-and-set on the revision read, and the first note of a
        visit is held to one by `uq_note_visit`: a concurrent save makes this one raise,
        and the caller reads the note again.
        """
        measured = composition(body, content.contributions)
        now = utcnow()
        values: dict[str, Any] = {
            "text": body,
            "launch_session_id": launch.session_id,
            "chars_total": measured.total,
            "chars_accepted": measured.accepted,
            "chars_edited": measured.edited,
            "edits": measured.edits,
            "rollout_arms": dict(arms),
            "suggestion_ids": list(content.used),
            "engines": engines,
            "document_kind": kind,
            "status": "pending",
            "next_attempt_at": None,
            "saved_at": now,
        }
        with self._db.session() as session:
            note = session.scalars(
                select(SavedNote).where(SavedNote.visit_key == visit.key)
            ).first()
            if note is None:
                note = SavedNote(
                    visit_key=visit.key,
                    site=launch.iss,
                    patient_id=launch.patient_id or "",
                    encounter_id=launch.encounter_id,
                    fhir_user=launch.fhir_user,
                    created_at=now,
                    revision=1,
                    launched_at=launch.created_at,
                    seconds_in_sidebar=_time_in_sidebar(None, seconds, launch.created_at, now),
                    **values,
                )
                session.add(note)
                session.flush()
                return note, None
            if note.text == body and note.chart_revision == note.revision:
                # Nothing changed since the chart got it: no new version, no new Provenance
                # (and the time in the sidebar stays that of the last save that changed it).
                return note, note
            launched_at = note.launched_at or launch.created_at
            in_sidebar = _time_in_sidebar(note.seconds_in_sidebar, seconds, launched_at, now)
            revised: CursorResult[Any] = session.execute(  # type: ignore[assignment]
                update(SavedNote)
                .where(SavedNote.id == note.id, SavedNote.revision == note.revision)
                .values(
                    revision=note.revision + 1,
                    launched_at=launched_at,
                    seconds_in_sidebar=in_sidebar,
                    updated_at=now,
                    **values,
                )
                .execution_options(synchronize_session=False)
            )
            if revised.rowcount != 1:
                raise _SavedMeanwhile
            # What was committed, as the answer shows it (detached: changing it writes nothing).
            session.expunge(note)
            note.revision += 1
            note.seconds_in_sidebar = in_sidebar
            for name, value in values.items():
                setattr(note, name, value)
            return note, None

    @staticmethod
    def _written(note: SavedNote) -> WrittenNote | None:
        if note.status != "in_chart" or not note.document_reference or not note.provenance:
            return None
        return WrittenNote(document_reference=note.document_reference, provenance=note.provenance)

    def deliver(
        self, note_id: str, *, client: FHIRClient, claimed: bool = False
    ) -> WrittenNote | None:
        """Try to put one saved note (its latest revision) in the chart.

        Returns where it is, or None when it is kept for a retry (the EHR is unavailable,
        or another delivery of it is under way). Each step is recorded as it completes, so
        a retry resumes where the last attempt stopped and repeats nothing.
        """
        # A lease (smartapp.leases), renewed while the EHR is asked: the worker, a request
        # and `smartapp outbox retry`, in any process, never send the same note at once,
        # and a process that dies holding it lets it go within seconds. `claimed`: the
        # outbox took it already.
        if not claimed and not self.leases.claim(note_id):
            return None
        try:
            with self.leases.heartbeat([note_id]):
                return self._deliver_claimed(note_id, client)
        finally:
            self.leases.release([note_id])

    def _deliver_claimed(self, note_id: str, client: FHIRClient) -> WrittenNote | None:
        with self._db.session() as session:
            note = session.get(SavedNote, note_id)
            if note is None:
                raise NotFound("No such note.")
            if note.chart_revision >= note.revision:
                return self._written(note)
            revision = note.revision
            if note.document_kind == AFTER_VISIT_SUMMARY:
                summary = self._summary_config(note.site)
                doc_type, title = summary.type, summary.title
            else:
                doc_type = self._note_layout(note.site).type
                title = doc_type.display
            draft = NoteDraft(
                note_id=note.id,
                text=note.text,
                patient_id=note.patient_id,
                encounter_id=note.encounter_id,
                author=note.fhir_user,
                engines=[(n, v) for n, v in note.engines],
                created_at=note.updated_at if revision > 1 and note.updated_at else note.created_at,
                ai_assisted=bool(note.engines),
                doc_type=doc_type.coding(),
                title=title,
            )
            document, document_revision = note.document_reference, note.document_revision
            held_by = note.launch_session_id
        try:
            written = self._write(client, draft, note_id, revision, document, document_revision)
        except TemporaryUpstreamError as exc:
            self._record_failure(note_id, exc, retry=True)
            return None
        except RelaunchRequired:
            # The EHR ended the launch's tokens: the note can still be sent, with the
            # clinician's next launch for this patient (the outbox picks that up).
            self._record_waiting_for_launch(note_id)
            return None
        except UpstreamError as exc:
            self._record_failure(note_id, exc, retry=False)
            self._release_grant(held_by)
            raise
        self._record_step(
            note_id, revision, document=written.document_reference, provenance=written.provenance
        )
        self._release_grant(held_by)
        return written

    def _release_grant(self, launch_session_id: str) -> None:
        """The held tokens go once no pending note needs them (housekeeping retries)."""
        if self._grants is None:
            return
        try:
            self._grants.release_for_notes(launch_session_id)
        except SQLAlchemyError as exc:  # the note's outcome is recorded: that is what counts
            log.warning("releasing a note's held tokens failed: %s", type(exc).__name__)

    def _write(
        self,
        client: FHIRClient,
        draft: NoteDraft,
        note_id: str,
        revision: int,
        document: str | None,
        document_revision: int,
    ) -> WrittenNote:
        """Put this revision in the chart: create it, or update the draft and add a Provenance."""
        if document is None:
            written = write_note(client, draft)
            if revision == 1:
                return written
            # An earlier attempt's lost response: the EHR may hold an older text under this
            # identifier (the conditional create found it). Revise it to this one.
            document, document_revision = written.document_reference, 0
        if document_revision < revision:
            revised = revise_document(client, draft, reference=document)
            if revised is None:
                # Signed, removed or not updatable in the EHR: a new draft that replaces it.
                replacing = replace(
                    draft, note_id=_revision_id(note_id, revision), replaces=document
                )
                return write_note(client, replacing)
            self._record_step(note_id, revision, document=revised)
            document = revised
        provenance = write_revision_provenance(client, draft, reference=document, revision=revision)
        return WrittenNote(document_reference=document, provenance=provenance)

    def _record_step(
        self, note_id: str, revision: int, *, document: str, provenance: str | None = None
    ) -> None:
        with self._db.session() as session:
            note = session.get(SavedNote, note_id)
            assert note is not None
            note.document_reference = document
            note.document_revision = revision
            note.attempts += 1
            note.last_error = None
            if provenance is not None:
                note.provenance = provenance
                note.chart_revision = revision
                audit.record(
                    session,
                    actor=bound_identity(note.site, note.fhir_user),
                    action=audit.Action.NOTE_WRITE,
                    site=note.site,
                    patient=note.patient_id,
                    detail={
                        "documentReference": document,
                        "provenance": provenance,
                        "revision": revision,
                    },
                )
                # A newer revision saved meanwhile keeps the note pending for its own delivery.
                note.status = "in_chart" if note.revision == revision else "pending"
                note.next_attempt_at = None

    def _record_waiting_for_launch(self, note_id: str) -> None:
        log.warning("note write-back waits for a new launch (relaunch_required)")
        with self._db.session() as session:
            note = session.get(SavedNote, note_id)
            if note is None:
                return
            note.attempts += 1
            note.last_error = RelaunchRequired.code
            note.status = "pending"
            note.next_attempt_at = None

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
                backoff = self._retry_seconds * 2 ** min(note.attempts - 1, 12)
                delay = min(RETRY_CAP_SECONDS, backoff)
                note.next_attempt_at = utcnow() + timedelta(seconds=delay)
            else:
                note.status = "failed"
                note.next_attempt_at = None
                audit.record(
                    session,
                    actor=bound_identity(note.site, note.fhir_user),
                    action=audit.Action.NOTE_WRITE,
                    site=note.site,
                    patient=note.patient_id,
                    detail={"error": exc.code},
                    outcome="failure",
                )

    def pulse_for(self, launch: LaunchContext, note_id: str) -> PulseQuestion | None:
        """The pulse to ask after this save, if this note is one of the sampled ones."""
        with self._db.session() as session:
            note = session.get(SavedNote, note_id)
            if note is None or note.launch_session_id != launch.session_id:
                return None
            return maybe_ask(session, note, every=self._pulse_every(launch.iss), now=utcnow())

    def answer_pulse(self, launch: LaunchContext, body: dict[str, Any]) -> None:
        with self._db.session() as session:
            answer(session, body, site=launch.iss, fhir_user=launch.fhir_user, now=utcnow())

    def notes(self, launch: LaunchContext) -> list[dict[str, Any]]:
        visit_key = self.visit(launch).key
        with self._db.session() as session:
            # This visit's note, and this clinician's notes for this patient that an
            # earlier launch left waiting (sent with this one by the outbox), still waiting
            # or delivered since this launch began.
            earlier_waiting = (
                (
                    (SavedNote.status == "pending")
                    | (
                        (SavedNote.status == "in_chart")
                        & (SavedNote.updated_at >= launch.created_at)
                    )
                )
                & (SavedNote.site == launch.iss)
                & (SavedNote.patient_id == (launch.patient_id or ""))
                & (SavedNote.fhir_user == launch.fhir_user)
            )
            rows = session.scalars(
                select(SavedNote)
                .where((SavedNote.visit_key == visit_key) | earlier_waiting)
                .order_by(SavedNote.created_at)
            )
            return [r.to_json() for r in rows]

    def visit_state(self, launch: LaunchContext) -> dict[str, Any]:
        """The visit, its saved draft, and what changed in the suggestions since it was saved.

        `changes.new`: suggestions shown after the draft was saved and not decided yet (the
        chart changed, or governance turned a kind on); `changes.removed`: suggestions the
        draft used that the chart no longer gives (their text changed or they are gone).
        """
        visit = self.visit(launch)
        state: dict[str, Any] = {**visit.to_json(), "draft": None, "changes": None}
        with self._db.session() as session:
            note = session.scalars(
                select(SavedNote).where(SavedNote.visit_key == visit.key)
            ).first()
        if note is None:
            return state
        saved_at = note.saved_at or note.created_at
        current = self.current_rows(launch)
        current_ids = {r.id for r in current}
        used = {r.id: r for r in self.feedback.rows(visit.key, note.suggestion_ids)}
        state["draft"] = {
            **note.to_json(),
            "text": note.text,
            "sections": [
                {"suggestion": sid, "title": used[sid].title}
                for sid in note.suggestion_ids
                if sid in used
            ],
            "signed": self._signed_in_ehr(launch, note),
        }
        state["changes"] = {
            "new": [r.id for r in current if r.latest_decision() is None and r.shown_at > saved_at],
            "removed": [
                {"id": sid, "kind": used[sid].kind, "title": used[sid].title}
                for sid in note.suggestion_ids
                if sid in used and sid not in current_ids
            ],
        }
        return state

    def _signed_in_ehr(self, launch: LaunchContext, note: SavedNote) -> bool | None:
        """Whether the clinician has signed the draft in the EHR (None: not known).

        Read from the EHR once per launch and revision, so that a reopened chart says the
        next save writes a new draft rather than "for you to sign".
        """
        if note.status != "in_chart" or not note.document_reference:
            return None
        key = (launch.session_id, note.document_reference, note.revision)
        if key not in self._signed:
            rtype, _, rid = note.document_reference.partition("/")
            try:
                document = self._fhir_for(launch).read(rtype, rid)
            except AppError:
                return None  # the EHR is not answering, or does not let the app read it
            if len(self._signed) > 4096:
                self._signed.clear()
            self._signed[key] = not draft_is_editable(document)
        return self._signed[key]


def _decided(rows: list[ShownSuggestion]) -> list[Decided]:
    """The suggestions the clinician accepted or edited (latest decision), in order."""
    found = []
    for row in rows:
        decision = row.latest_decision()
        if decision is None or decision.action not in ("accept", "edit"):
            continue
        found.append(
            Decided(
                id=row.id,
                kind=row.kind,
                title=row.title,
                text=row.text,
                statements=row.statements or [],
                engine=(row.engine_name, row.engine_version),
                action=decision.action,
                final_text=decision.final_text,
            )
        )
    return found
