"""smartapp: a SMART on FHIR sidebar that drafts cited documentation for clinicians."""

from __future__ import annotations

from flask import Flask

from smartapp.config import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """The clinician-facing app. Settings come from the environment unless given."""
    from smartapp import admin, db, errors, logging_setup, security, web

    settings = settings or Settings.from_env()
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
        JSON_SORT_KEYS=False,
    )
    app.extensions["smartapp.settings"] = settings

    logging_setup.init_app(app)
    db.init_app(app, db.Database(settings.database_url))
    errors.init_app(app)
    security.init_app(app)
    web.init_app(app)
    admin.init_app(app)
    return app
