"""A CDS Hooks 2.0 service: the EHR's hook opens a door into the sidebar, chart already read.

https://cds-hooks.hl7.org/2.0/ — `GET /cds-services` (discovery), `POST /cds-services/{id}`
(`patient-view`, `encounter-start`: one card with a `smart` link), `POST
/cds-services/{id}/feedback`. The EHR authenticates with a signed JWT (`trust.py`).
"""

from __future__ import annotations

import logging

from flask import Flask

from smartapp.config import Settings
from smartapp.fhir.cache import SnapshotCache
from smartapp.governance.signal import ChangeSignal
from smartapp.suggestions.registry import SuggestionService

log = logging.getLogger(__name__)


def init_app(
    app: Flask,
    *,
    settings: Settings,
    cache: SnapshotCache,
    engines: SuggestionService,
    signal: ChangeSignal | None = None,
) -> None:
    from smartapp.cdshooks import views
    from smartapp.cdshooks.service import CDSHooksService
    from smartapp.cdshooks.trust import JTIStore, TrustRegistry, load_clients
    from smartapp.cdshooks.warm import WarmCharts
    from smartapp.db import get_database
    from smartapp.httplimits import limited_session
    from smartapp.smart.session import LaunchContext
    from smartapp.smart.views import SESSION_STARTED_EXT

    database = get_database(app)
    jti = JTIStore(database)
    trust = TrustRegistry(
        load_clients(settings.cds_clients_path, allowed_issuers=settings.allowed_issuers),
        jti_store=jti,
        http=lambda: limited_session(deadline=10.0, max_bytes=256 * 1024),
    )
    warm = WarmCharts(cache)
    service = CDSHooksService(
        settings=settings,
        database=database,
        warm=warm,
        engines=engines,
        http=limited_session(),
        signal=signal,
    )
    app.extensions[views.EXTENSION] = (settings, trust, service)
    app.extensions["smartapp.cdshooks.trust"] = trust
    app.register_blueprint(views.bp)

    def adopt(launch: LaunchContext, app_context: str | None) -> None:
        if app_context:
            warm.adopt(launch, app_context, db=database)

    app.extensions.setdefault(SESSION_STARTED_EXT, []).append(adopt)
    app.extensions.setdefault("smartapp.housekeeping", []).append(jti.purge_expired)
    if trust.clients:
        log.info(
            "CDS Hooks: %d EHR(s) registered to call the service: %s",
            len(trust.clients),
            ", ".join(c.iss for c in trust.clients),
        )
    else:
        log.info("CDS Hooks: no EHR registered (SMARTAPP_CDS_CLIENTS): hook calls are refused")
