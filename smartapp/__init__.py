"""smartapp: a SMART on FHIR sidebar that drafts cited documentation for clinicians."""

from __future__ import annotations

from typing import TYPE_CHECKING

# Nothing is imported at the package's import: `import smartapp.fhir` (or any other
# subpackage) must not load Flask and the whole app with it.
if TYPE_CHECKING:
    from flask import Flask

    from smartapp.config import Settings
    from smartapp.suggestions.registry import SuggestionService


def create_app(settings: Settings | None = None) -> Flask:
    """The clinician-facing app. Settings come from the environment unless given."""
    from flask import Flask

    from smartapp import (
        admin,
        db,
        errors,
        instance,
        jsonbody,
        logging_setup,
        observability,
        ratelimit,
        security,
        web,
    )
    from smartapp.config import Settings

    # PHI and the secret key are written below: owner-only from the first byte.
    instance.private_umask()
    settings = settings or Settings.from_env()
    settings.require_public_url()
    app = Flask(
        __name__,
        instance_path=str(settings.instance_path),
        static_folder=str(settings.static_folder),
        static_url_path="/static",
    )
    app.config.update(
        SECRET_KEY=settings.secret_key,
        SMARTAPP_SETTINGS=settings,
        MAX_CONTENT_LENGTH=2 * 1024 * 1024,
    )
    app.extensions["smartapp.settings"] = settings

    logging_setup.init_app(app, log_format=settings.log_format)
    instance.secure_instance(settings)
    db.init_app(app, db.Database.from_settings(settings), migrate=settings.migrate_on_start)
    observability.init_app(app)
    errors.init_app(app)
    jsonbody.init_app(app)
    security.init_app(app)
    web.init_app(app)

    from smartapp.smart import views as smart_views

    smart_views.init_app(app)
    engines = _init_sidebar(app, settings)
    admin.init_app(app, min_grounding_rate=lambda: engines.config.default.min_grounding_rate)
    ratelimit.init_app(app, settings)
    return app


def _init_sidebar(app: Flask, settings: Settings) -> SuggestionService:
    """Compose the clinician's flow: chart source, engines, feedback, outbox."""
    from zoneinfo import ZoneInfo

    from sqlalchemy.orm import Session

    from smartapp.db import get_database
    from smartapp.feedback.forwarding import FeedbackForwarder
    from smartapp.feedback.models import ShownSuggestion
    from smartapp.fhir.cache import ChartReads, SnapshotCache
    from smartapp.fhir.parsing import warm_up
    from smartapp.httplimits import limited_session
    from smartapp.notes import views as notes_views
    from smartapp.notes.chart_source import LaunchChartSource
    from smartapp.notes.drafting import GovernedDrafter
    from smartapp.notes.outbox import Outbox
    from smartapp.notes.service import SidebarService
    from smartapp.observability import get_metrics
    from smartapp.smart.flow import purge_expired as purge_expired_sign_ins
    from smartapp.smart.services import get_services

    database = get_database(app)
    # With Redis, a governance change reaches every process's cached policy through it.
    from smartapp.governance.signal import RedisSignal, attach

    signal = RedisSignal(settings.redis_url) if settings.redis_url else None
    attach(database, signal)
    # Processes serving one launch see each other's chart reads (a read ahead on one, the
    # sidebar's request on another) and wait for them, as long as a read may take.
    cache = SnapshotCache(
        database,
        ttl_seconds=settings.snapshot_ttl_seconds,
        reads=ChartReads(database, wait_seconds=float(settings.fhir_deadline_seconds)),
    )
    app.extensions["smartapp.snapshot_cache"] = cache
    metrics = get_metrics(app)
    chart = LaunchChartSource(
        settings=settings,
        services=get_services(app),
        cache=cache,
        http=limited_session(),
        on_chart_loaded=lambda seconds, trips: metrics.chart_loaded(
            seconds=seconds, round_trips=trips
        ),
        # `engines` is bound below; the site file's [sites."<iss>".ehr] quirks, if any.
        quirks_for=lambda iss: engines.config.for_issuer(iss).quirks,
    )
    from smartapp.suggestions.registry import SuggestionService

    engines = SuggestionService.from_settings(settings)
    engines.on_kinds_drafted = metrics.kinds_drafted
    app.extensions["smartapp.engines"] = engines
    engines.announce()
    forwarder = FeedbackForwarder(database)

    def forward_decision(session: Session, decision_id: str, suggestion: ShownSuggestion) -> None:
        # Only an engine with a feedback endpoint hears about decisions (the LLM service).
        if suggestion.engine_name != "llm":
            return
        endpoint = engines.config.for_issuer(suggestion.site).llm.feedback_url
        if endpoint:
            forwarder.enqueue(decision_id, endpoint, session=session)

    sidebar = SidebarService(
        database=database,
        snapshots=chart,
        drafter=GovernedDrafter(engines=engines, database=database, signal=signal),
        fhir_for=chart.client_for,
        on_decision=forward_decision,
        pulse_every=lambda iss: engines.config.for_issuer(iss).pulse_every,
        note_layout=lambda iss: engines.config.for_issuer(iss).note,
        summary_config=lambda iss: engines.config.for_issuer(iss).after_visit_summary,
        visit_timezone=lambda iss: ZoneInfo(engines.config.for_issuer(iss).visit_timezone),
        # A note keeps its launch's tokens until delivered: the launch may end first.
        grants=chart,
        retry_seconds=float(settings.outbox_retry_seconds),
    )
    notes_views.init_app(app, sidebar)
    app.extensions["smartapp.outbox"] = Outbox(
        database=database, sidebar=sidebar, clients=chart, forwarder=forwarder
    )
    # Run beside the outbox by the background worker (`smartapp serve`, `smartapp sandbox`).
    app.extensions["smartapp.housekeeping"] = [
        cache.purge_expired,
        chart.release_for_notes,
        lambda: purge_expired_sign_ins(get_services(app)),
    ]
    # Logout ends a launch: its chart copy goes with it, not at the end of its TTL.
    app.extensions.setdefault("smartapp.session_ended", []).append(cache.invalidate)
    from smartapp import cdshooks

    # The hook reads charts into the same cache the sidebar reads them from.
    cdshooks.init_app(app, settings=settings, cache=cache, engines=engines, signal=signal)
    if settings.prefetch_chart:
        from smartapp.smart.views import SESSION_STARTED_EXT

        # After the CDS Hooks one: a chart its card's hook read is in the cache, not read again.
        app.extensions.setdefault(SESSION_STARTED_EXT, []).append(
            lambda launch, _app_context: chart.prefetch(launch)
        )
    # Run before the store is disposed (Stack.stop, graceful shutdown): nothing of theirs
    # may touch the store after it is closed.
    app.extensions.setdefault("smartapp.on_shutdown", []).extend([chart.close, engines.close])
    # Pay the FHIR models' first-use cost at start-up, not in the first clinician's wait.
    warm_up()
    return engines
