"""Rate limits on what anyone can call without a session: the launch, the callback, admin sign-in.

Each of `/launch`, `/callback` and `/admin/signin` stores or spends a pending
authorization, and the admin API's bearer token can be guessed at: all are limited per
client address (Flask-Limiter, https://flask-limiter.readthedocs.io). Counters live in
the process by default; with SMARTAPP_REDIS_URL they live in Redis, so that every
process of the app shares them. A breach is `429 too_many_requests` with `Retry-After`.

Behind reverse proxies the client is the address SMARTAPP_PROXY_HOPS proxies from the
right of `X-Forwarded-For` (what the nearest trusted proxy saw); without the setting,
the connection's own address.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, request
from flask_limiter import Limiter, RequestLimit

from smartapp.config import Settings

log = logging.getLogger(__name__)

EXTENSION_KEY = "smartapp.limiter"
#: Endpoints that start or finish a sign-in (each stores or spends a pending row).
SIGN_IN_ENDPOINTS = ("smart.launch", "smart.callback", "admin.signin")


#: Shown to whoever hit a limit (the app's HTTP error handler answers 429 with it).
TOO_MANY = "Too many requests from this address. Wait a minute and try again."


def client_address(settings: Settings) -> str:
    """The address a limit counts against (see the module docstring)."""
    hops = settings.proxy_hops
    if hops > 0:
        forwarded = [
            part.strip()
            for part in request.headers.get("X-Forwarded-For", "").split(",")
            if part.strip()
        ]
        if len(forwarded) >= hops:
            return forwarded[-hops]
    return request.remote_addr or "unknown"


def _breach(limit: RequestLimit) -> Response | None:
    # Flask-Limiter then raises its 429, which the app's one error handler renders (JSON
    # on the APIs, the HTML page elsewhere) with TOO_MANY as the message.
    log.warning("rate limit reached on %s (%s)", request.endpoint, limit.limit)
    return None


def init_app(app: Flask, settings: Settings) -> Limiter:
    """Attach the limits; call after every blueprint is registered."""
    limiter = Limiter(
        key_func=lambda: client_address(settings),
        app=app,
        storage_uri=settings.redis_url or "memory://",
        strategy="moving-window",
        headers_enabled=True,
        key_prefix="smartapp",
        on_breach=_breach,
        # A store that is down must not take the sign-in down with it; the next process
        # restart finds it again.
        swallow_errors=True,
    )
    for endpoint in SIGN_IN_ENDPOINTS:
        # Any: Flask's view type and Flask-Limiter's overloads do not meet.
        view: Any = app.view_functions.get(endpoint)
        if view is not None:
            app.view_functions[endpoint] = limiter.limit(
                settings.sign_in_rate_limit, error_message=TOO_MANY
            )(view)
    admin: Any = app.blueprints.get("admin")
    if admin is not None:
        # Only refused credentials count (a bearer token that is not the admin token):
        # an admin at work, or a page asking someone to sign in, is never locked out.
        limiter.limit(
            settings.admin_auth_rate_limit,
            error_message=TOO_MANY,
            deduct_when=lambda response: (
                response.status_code == 401 and "Authorization" in request.headers
            ),
        )(admin)
    app.extensions[EXTENSION_KEY] = limiter
    return limiter
