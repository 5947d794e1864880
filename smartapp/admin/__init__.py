"""The admin area: metrics, the rollout control, safety, the flagged-suggestion review, and
the dashboard's pages and API. The store it governs is `smartapp.governance`; the audit
trail is `smartapp.audit.record(session_or_db, *, actor, action, site, patient, detail, outcome)`.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask

from smartapp.governance.registry import DEFAULT_MIN_GROUNDING_RATE, ChangeControl


def init_app(app: Flask, *, min_grounding_rate: float | Callable[[], float] | None = None) -> None:
    """Register the admin area. `min_grounding_rate` (a number, or a callable read at each
    evaluation so that a reloaded site configuration applies) gates engine evaluations."""
    from smartapp.admin import auth, views

    auth.init_app(app)
    app.extensions[views.CHANGE_CONTROL_EXT] = ChangeControl(
        min_grounding_rate=DEFAULT_MIN_GROUNDING_RATE
        if min_grounding_rate is None
        else min_grounding_rate
    )
    app.register_blueprint(views.bp)
