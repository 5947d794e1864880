"""The outbox: notes and feedback that could not be delivered are retried until they arrive.

Everything to deliver is in the store before the first attempt, so nothing is lost when
the EHR is down or the process restarts; deliveries are idempotent (conditional creates,
CDS Hooks feedback tolerating duplicates), so nothing arrives twice. A background thread
runs `run_once` periodically; `smartapp outbox retry` runs it once from the shell.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import select

from smartapp.db import Database, utcnow
from smartapp.errors import AppError
from smartapp.feedback.forwarding import FeedbackForwarder
from smartapp.notes.models import SavedNote

if TYPE_CHECKING:
    from smartapp.fhir.client import FHIRClient
    from smartapp.notes.service import SidebarService

log = logging.getLogger(__name__)


class NoteClients(Protocol):
    def client_for_note(
        self, *, launch_session_id: str, site: str, fhir_user: str | None, patient_id: str
    ) -> FHIRClient | None:
        """A FHIR client allowed to write this note, or None while no launch can."""
        ...


@dataclass(frozen=True, kw_only=True)
class OutboxReport:
    notes_delivered: int = 0
    notes_waiting: int = 0
    notes_failed: int = 0
    #: Due notes another live process is delivering now (its lease renewed).
    notes_held: int = 0
    feedback_sent: int = 0


class Outbox:
    def __init__(
        self,
        *,
        database: Database,
        sidebar: SidebarService,
        clients: NoteClients,
        forwarder: FeedbackForwarder | None = None,
    ) -> None:
        self._db = database
        self._sidebar = sidebar
        self._clients = clients
        self._forwarder = forwarder

    def due_notes(self, now: datetime) -> list[SavedNote]:
        with self._db.session() as session:
            rows = session.scalars(
                select(SavedNote)
                .where(
                    SavedNote.status == "pending",
                    (SavedNote.next_attempt_at.is_(None)) | (SavedNote.next_attempt_at <= now),
                )
                .order_by(SavedNote.created_at)
                .limit(100)
            )
            return list(rows)

    def recover(self) -> int:
        """Free what processes of this host that died (kill -9) held, without waiting for
        their leases to lapse: run at start-up. How many notes and forwards were freed."""
        freed = self._sidebar.leases.release_dead()
        if self._forwarder is not None:
            freed += self._forwarder.leases.release_dead()
        return freed

    def run_once(self, *, now: datetime | None = None, force: bool = False) -> OutboxReport:
        """Deliver what is due (everything pending when `force`), claiming each note first.

        A note another process holds is left to it; one whose holder stopped renewing its
        lease (it died) is taken over (smartapp.leases).
        """
        now = now or utcnow()
        delivered = waiting = failed = 0
        horizon = now + timedelta(days=365 * 100) if force else now
        leases = self._sidebar.leases
        due = (SavedNote.status == "pending") & (
            SavedNote.next_attempt_at.is_(None) | (SavedNote.next_attempt_at <= horizon)
        )
        claimed = leases.claim_due(due, order_by=SavedNote.created_at, limit=100, now=now)
        for note_id in claimed:
            try:
                with self._db.session() as session:
                    note = session.get(SavedNote, note_id)
                    who = (
                        None
                        if note is None
                        else (note.launch_session_id, note.site, note.fhir_user, note.patient_id)
                    )
                client = None
                if who is not None:
                    try:
                        launch, site, fhir_user, patient = who
                        client = self._clients.client_for_note(
                            launch_session_id=launch,
                            site=site,
                            fhir_user=fhir_user,
                            patient_id=patient,
                        )
                    except AppError:
                        client = None
                if client is None:
                    # Its launch has ended and cannot be refreshed: it waits for the next launch.
                    waiting += 1
                    continue
                try:
                    written = self._sidebar.deliver(note_id, client=client, claimed=True)
                except AppError:
                    failed += 1
                    continue
                if written is None:
                    waiting += 1
                else:
                    delivered += 1
            finally:
                leases.release([note_id])  # deliver released it already; a no-op then
        held = leases.held_elsewhere(due, now=now) if force else 0
        sent = self._forwarder.deliver_due(now=now) if self._forwarder else 0
        if delivered or failed or sent:
            log.info(
                "outbox: %d note(s) delivered, %d waiting, %d failed, %d feedback sent",
                delivered,
                waiting,
                failed,
                sent,
            )
        return OutboxReport(
            notes_delivered=delivered,
            notes_waiting=waiting,
            notes_failed=failed,
            notes_held=held,
            feedback_sent=sent,
        )


class OutboxWorker:
    """A daemon thread that runs the outbox every `interval` seconds until stopped.

    It starts by freeing what a dead predecessor on this host held (`Outbox.recover`) and
    running at once, so that a restart sends what the killed process left within seconds.
    `housekeeping` tasks run on the same beat (e.g. deleting expired chart snapshots,
    which are PHI and must not outlive their TTL in the store).
    """

    def __init__(
        self,
        outbox: Outbox,
        *,
        interval: float = 10.0,
        housekeeping: Sequence[Callable[[], object]] = (),
    ) -> None:
        self._outbox = outbox
        self._interval = interval
        self._housekeeping = tuple(housekeeping)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="smartapp-outbox", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        recover = getattr(self._outbox, "recover", None)
        tasks = (*((recover,) if recover else ()), self._outbox.run_once, *self._housekeeping)
        while True:
            for task in tasks:
                try:
                    task()
                except Exception as exc:  # the worker must outlive any one bad run
                    log.error("background task failed: %s", type(exc).__name__)
            if self._stop.wait(self._interval):
                return
            tasks = (self._outbox.run_once, *self._housekeeping)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
