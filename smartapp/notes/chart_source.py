"""Where the sidebar's chart comes from, and the FHIR client for each launch.

The glue between the SMART session (which owns the tokens) and the FHIR client (which
knows nothing of OAuth): a FHIR client for a launch, and its snapshot loaded once per TTL.

A clinician's launch has its chart read ahead (`prefetch`, SMARTAPP_PREFETCH_CHART): the
callback hands the new launch to a few background threads of this process, which read the
chart into the snapshot cache while the browser loads the sidebar page, its context and
notes. The sidebar's first `/api/suggestions` then waits for that read if it is under way
(never reads the chart a second time beside it), takes it from the cache if it is done, and
reads the chart itself if the read ahead has not started yet (it is cancelled) or failed (the
request then meets the error itself). A request served by another process sees a read under
way here through the store (`fhir.cache.ChartReads`: the read's lease, renewed while it
runs) and waits for its snapshot, up to SMARTAPP_FHIR_DEADLINE; it reads the chart
itself once that read ended without one, its lease lapsed, or its process is gone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import requests
from sqlalchemy import delete, exists

from smartapp import audit
from smartapp.config import Settings
from smartapp.db import utcnow
from smartapp.fhir.auth import TokenProvider
from smartapp.fhir.cache import SnapshotCache
from smartapp.fhir.chart import load_snapshot
from smartapp.fhir.client import FHIRClient
from smartapp.fhir.snapshot import ChartSnapshot
from smartapp.identity import bound_identity
from smartapp.notes.models import SavedNote
from smartapp.smart.models import HeldGrant
from smartapp.smart.services import SMARTServices
from smartapp.smart.session import (
    HeldTokenProvider,
    LaunchContext,
    SessionTokenProvider,
    held_grant_usable,
    hold_grant,
    stored_launch,
    successor_launch,
)

log = logging.getLogger(__name__)

#: Charts one process reads ahead at once; the launches beyond wait their turn (or their
#: sidebar's own request reads the chart first).
PREFETCH_THREADS = 4


class LaunchChartSource:
    def __init__(
        self,
        *,
        settings: Settings,
        services: SMARTServices,
        cache: SnapshotCache,
        http: requests.Session,
        on_chart_loaded: Callable[[float, int], None] | None = None,
        quirks_for: Callable[[str], str | None] | None = None,
        prefetch_threads: int = PREFETCH_THREADS,
    ) -> None:
        self._settings = settings
        self._prefetch_threads = prefetch_threads
        self._prefetch_pool: ThreadPoolExecutor | None = None
        #: Reads ahead by launch session id, queued or under way.
        self._reading_ahead: dict[str, Future[None]] = {}
        self._lock = threading.Lock()
        #: The site file's quirks profile for an issuer (None: detect it).
        self._quirks_for = quirks_for
        #: Told (seconds, round trips) of every chart read from the EHR: the app's metrics.
        self._on_chart_loaded = on_chart_loaded
        self._services = services
        self._cache = cache
        # One connection pool for every launch: keep-alive saves a handshake per request.
        self._http = http

    def client_for(self, launch: LaunchContext) -> FHIRClient:
        return self._client(launch.iss, SessionTokenProvider(self._services, launch.session_id))

    def _client(self, iss: str, tokens: TokenProvider) -> FHIRClient:
        return FHIRClient(
            iss,
            tokens=tokens,
            session=self._http,
            deadline=float(self._settings.fhir_deadline_seconds),
            max_response_bytes=self._settings.fhir_max_response_mb * 1024 * 1024,
        )

    def client_for_note(
        self, *, launch_session_id: str, site: str, fhir_user: str | None, patient_id: str
    ) -> FHIRClient | None:
        """A client that may write this note: its own launch's while it lasts, then the
        tokens held for it (`hold_for_note`), then the clinician's newer launch for this
        patient; None while none can."""
        launch = stored_launch(self._services, launch_session_id)
        if launch is not None:
            return self.client_for(launch)
        if held_grant_usable(self._services, launch_session_id, iss=site):
            return self._client(site, HeldTokenProvider(self._services, launch_session_id))
        launch = successor_launch(self._services, iss=site, fhir_user=fhir_user, patient=patient_id)
        return self.client_for(launch) if launch is not None else None

    def hold_for_note(self, launch: LaunchContext) -> None:
        """Keep this launch's tokens for the note it is saving, until it is delivered."""
        hold_grant(self._services, launch.session_id)

    def release_for_notes(self, launch_session_id: str | None = None) -> int:
        """Drop held tokens no pending note needs (this launch's only, when named), and
        expired ones; how many went."""
        needed = exists().where(
            SavedNote.launch_session_id == HeldGrant.id, SavedNote.status == "pending"
        )
        where = ~needed | (HeldGrant.absolute_expires_at <= utcnow())
        if launch_session_id is not None:
            where = where & (HeldGrant.id == launch_session_id)
        with self._services.db.session() as s:
            result = s.execute(
                delete(HeldGrant).where(where).execution_options(synchronize_session=False)
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def prefetch(self, launch: LaunchContext) -> None:
        """Read a clinician launch's chart in the background, into the cache (see above)."""
        if launch.purpose != "clinician" or not launch.patient_id:
            return
        with self._lock:
            if launch.session_id in self._reading_ahead:
                return
            if self._prefetch_pool is None:
                self._prefetch_pool = ThreadPoolExecutor(
                    max_workers=self._prefetch_threads, thread_name_prefix="chart-ahead"
                )
            future = self._prefetch_pool.submit(self._read_ahead, launch)
            self._reading_ahead[launch.session_id] = future
        future.add_done_callback(lambda _f: self._done_ahead(launch.session_id, future))

    def close(self) -> None:
        """Stop reading ahead: reads not started are dropped, running ones finish (before
        the store they write to is disposed; an orphaned connection would leak)."""
        with self._lock:
            pool, self._prefetch_pool = self._prefetch_pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _done_ahead(self, session_id: str, future: Future[None]) -> None:
        with self._lock:
            if self._reading_ahead.get(session_id) is future:
                del self._reading_ahead[session_id]

    def _read_ahead(self, launch: LaunchContext) -> None:
        try:
            self._cache.get_or_load(launch.session_id, self._loader(launch))
        except Exception as exc:  # noqa: BLE001 - a background thread: the sidebar's request meets it
            log.warning("reading the chart ahead failed: %s", type(exc).__name__)

    def _await_ahead(self, session_id: str) -> None:
        """Wait for this launch's read ahead if it is under way; cancel it if still queued."""
        with self._lock:
            future = self._reading_ahead.get(session_id)
        if future is None or future.cancel():
            return
        self._services.db.release()  # the wait may take seconds: hold no store connection
        try:
            # The read's own requests have deadlines; this only bounds a wait gone wrong.
            future.result(timeout=2.0 * self._settings.fhir_deadline_seconds)
        except Exception:  # noqa: BLE001 - logged by the read; this request reads it again
            return

    def snapshot(
        self, launch: LaunchContext, *, refresh: bool = False, reread: bool = False
    ) -> ChartSnapshot:
        """The launch's chart: this process's parsed copy, else the store's, else the EHR's.

        `reread` skips the parsed copy (another process has read the chart again). A read
        ahead under way for this launch is waited for first (a refresh's read comes after it)."""
        self._await_ahead(launch.session_id)
        return self._cache.get_or_load(
            launch.session_id, self._loader(launch), refresh=refresh, reread=reread
        )

    def _loader(self, launch: LaunchContext) -> Callable[[], ChartSnapshot]:
        def load() -> ChartSnapshot:
            started = time.perf_counter()
            snapshot = load_snapshot(
                self.client_for(launch),
                patient_id=launch.patient_id or "",
                encounter_id=launch.encounter_id,
                readable_types=launch.scopes.readable_types(),
                max_pages=self._settings.max_pages,
                configured_quirks=self._quirks_for(launch.iss) if self._quirks_for else None,
            )
            if self._on_chart_loaded is not None:
                self._on_chart_loaded(time.perf_counter() - started, snapshot.request_count)
            # A read from the EHR (not from the cache) is the PHI access to record.
            audit.record(
                self._services.db,
                actor=bound_identity(launch.iss, launch.fhir_user),
                action=audit.Action.CHART_READ,
                site=launch.iss,
                patient=launch.patient_id,
                detail={"requests": snapshot.request_count, "problems": len(snapshot.problems)},
            )
            return snapshot

        return load

    def cached(self, launch: LaunchContext) -> ChartSnapshot | None:
        """The launch's chart if it has been read already; never reads it from the EHR."""
        return self._cache.get(launch.session_id)

    def patient(self, launch: LaunchContext) -> dict[str, Any]:
        """The launch's Patient alone (one read), for a context asked before the chart."""
        if not launch.patient_id:
            return {}
        self._services.db.release()  # an EHR read: hold no store connection meanwhile
        resource = self.client_for(launch).read("Patient", launch.patient_id)
        audit.record(
            self._services.db,
            actor=bound_identity(launch.iss, launch.fhir_user),
            action=audit.Action.CHART_READ,
            site=launch.iss,
            patient=launch.patient_id,
            detail={"requests": 1, "types": ["Patient"]},
        )
        # Chart data is untrusted: anything but a Patient reads as an unnamed one.
        return resource if resource.get("resourceType") == "Patient" else {}

    def invalidate(self, launch: LaunchContext) -> None:
        self._cache.invalidate(launch.session_id)
