"""Charts read for a hook, waiting for the launch that the card's link starts.

https://cds-hooks.hl7.org/2.0/#link (appContext) and
https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html (token response)

The hook stores its snapshot in the app's snapshot cache (PHI: encrypted, with the
cache's TTL) under a key derived from a random token AND the issuer and patient. The
token travels in the card's `appContext`; the EHR hands it back in the launch's token
response. A launch finds the snapshot only with the token and the same issuer and
patient (any other pair derives another key), and only once (claiming deletes it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from dataclasses import replace

from smartapp import audit
from smartapp.db import Database
from smartapp.fhir.cache import SnapshotCache
from smartapp.fhir.chart import READABLE_TYPES
from smartapp.fhir.snapshot import ChartSnapshot
from smartapp.identity import bound_identity
from smartapp.smart.session import LaunchContext

log = logging.getLogger(__name__)

#: The appContext key naming the warmed chart ({"smartapp.chart": "<token>"}).
APP_CONTEXT_KEY = "smartapp.chart"
_KEY_PREFIX = "cdshooks:"
_MAX_APP_CONTEXT = 4096


class WarmCharts:
    def __init__(self, cache: SnapshotCache) -> None:
        self._cache = cache

    @staticmethod
    def _key(token: str, *, iss: str, patient_id: str) -> str:
        digest = hashlib.sha256(f"{iss}\n{patient_id}\n{token}".encode()).hexdigest()
        return _KEY_PREFIX + digest

    def put(self, snapshot: ChartSnapshot, *, iss: str) -> str:
        """Keep `snapshot` for a launch at `iss` for its patient; returns the appContext."""
        token = secrets.token_urlsafe(32)
        self._cache.put(self._key(token, iss=iss, patient_id=snapshot.patient_id), snapshot)
        return json.dumps({APP_CONTEXT_KEY: token}, separators=(",", ":"))

    def claim(self, app_context: str | None, *, iss: str, patient_id: str) -> ChartSnapshot | None:
        """The warmed snapshot for this issuer and patient, once; None otherwise."""
        token = token_of(app_context)
        if token is None:
            return None
        key = self._key(token, iss=iss, patient_id=patient_id)
        snapshot = self._cache.get(key, reread=True)
        if snapshot is None:
            return None
        self._cache.invalidate(key)
        # Derived keys make a mismatch unreachable; the check says so again, cheaply.
        return snapshot if snapshot.patient_id == patient_id else None

    def adopt(self, launch: LaunchContext, app_context: str | None, *, db: Database) -> bool:
        """Give a new launch the chart its card's hook read, if it may have it.

        Only for the same issuer and patient (and encounter, when both name one), and only
        when the launch's scopes read no type the hook's chart lacks; types the launch may
        not read are dropped from it. True when the launch now has its chart.
        """
        if launch.purpose != "clinician" or not launch.patient_id:
            return False
        snapshot = self.claim(app_context, iss=launch.iss, patient_id=launch.patient_id)
        if snapshot is None:
            return False
        encounter_id = (snapshot.encounter or {}).get("id")
        if launch.encounter_id != encounter_id and launch.encounter_id is not None:
            log.info("warmed chart not used: the launch is for another encounter")
            return False
        fitted = fit_to_scopes(snapshot, launch.scopes.readable_types())
        if fitted is None:
            log.info("warmed chart not used: the launch may read types the hook did not")
            return False
        self._cache.put(launch.session_id, fitted)
        audit.record(
            db,
            actor=bound_identity(launch.iss, launch.fhir_user),
            action=audit.Action.CHART_READ,
            site=launch.iss,
            patient=launch.patient_id,
            detail={"requests": 0, "source": "cds-hooks prefetch", "types": len(fitted.resources)},
        )
        return True


def token_of(app_context: str | None) -> str | None:
    if not app_context or len(app_context) > _MAX_APP_CONTEXT:
        return None
    try:
        data = json.loads(app_context)
    except ValueError:
        return None
    token = data.get(APP_CONTEXT_KEY) if isinstance(data, dict) else None
    if not isinstance(token, str) or not 16 <= len(token) <= 128:
        return None
    return token


def fit_to_scopes(snapshot: ChartSnapshot, readable: frozenset[str]) -> ChartSnapshot | None:
    """The snapshot as a launch with these scopes would have read it, or None when the
    launch may read a type the snapshot left out (then the sidebar reads the chart)."""
    if "*" in readable:
        allowed = set(READABLE_TYPES)
    else:
        allowed = set(readable)
    if "Patient" not in allowed:
        return None
    if any(t in allowed for t in snapshot.not_granted):
        return None
    not_granted = tuple(t for t in READABLE_TYPES if t not in allowed)
    resources = {t: items for t, items in snapshot.resources.items() if t in allowed}
    encounter = snapshot.encounter if "Encounter" in allowed else None
    return replace(
        snapshot,
        resources=resources,
        encounter=encounter,
        not_granted=tuple(dict.fromkeys((*snapshot.not_granted, *not_granted))),
    )
