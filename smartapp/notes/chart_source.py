"""Where the sidebar's chart comes from: the launch's snapshot, cached per launch.

The glue between the SMART session (which owns the tokens) and the FHIR client (which
knows nothing of OAuth): a FHIR client for a launch, and its snapshot loaded once per TTL.
"""

from __future__ import annotations

import requests

from smartapp.config import Settings
from smartapp.fhir.cache import SnapshotCache
from smartapp.fhir.chart import load_snapshot
from smartapp.fhir.client import FHIRClient
from smartapp.fhir.snapshot import ChartSnapshot
from smartapp.smart.session import LaunchContext, token_provider


class LaunchChartSource:
    def __init__(self, *, settings: Settings, cache: SnapshotCache, http: requests.Session) -> None:
        self._settings = settings
        self._cache = cache
        # One connection pool for every launch: keep-alive saves a handshake per request.
        self._http = http

    def client_for(self, launch: LaunchContext) -> FHIRClient:
        return FHIRClient(launch.iss, tokens=token_provider(launch), session=self._http)

    def snapshot(self, launch: LaunchContext, *, refresh: bool = False) -> ChartSnapshot:
        def load() -> ChartSnapshot:
            return load_snapshot(
                self.client_for(launch),
                patient_id=launch.patient_id or "",
                encounter_id=launch.encounter_id,
                readable_types=launch.scopes.readable_types(),
                max_pages=self._settings.max_pages,
            )

        return self._cache.get_or_load(launch.session_id, load, refresh=refresh)
