"""Browser-facing security: response headers, the cross-site iframe cookie, and CSRF.

- CSP `frame-ancestors` lists the EHR origins allowed to embed the sidebar.
- Cookies are `Secure; SameSite=None; Partitioned; HttpOnly`: Chromium blocks
  third-party cookies in a cross-site iframe unless they are partitioned (CHIPS), and
  treats http://127.0.0.1 and localhost as secure contexts.
- Every state-changing request must carry `X-CSRF-Token` equal to the token bound to the
  launch session (see `smart/session.py`, which registers the lookup).
- `Cache-Control: no-store` on every answer but static files: pages and API answers may
  hold PHI.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from flask import Flask, Response, current_app, request

from smartapp.config import Settings
from smartapp.errors import CSRFError

CSRF_HEADER = "X-CSRF-Token"
_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Paths whose answers hold no patient data and may be cached.
_CACHEABLE_PREFIXES = ("/static/",)

#: Looks up the CSRF token bound to the current browser session, or None without one.
CSRFLookup = Callable[[], str | None]


def set_cookie(response: Response, name: str, value: str, *, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        secure=True,
        httponly=True,
        samesite="None",
        partitioned=True,
    )


def clear_cookie(response: Response, name: str) -> None:
    response.set_cookie(
        name, "", max_age=0, path="/", secure=True, httponly=True, samesite="None", partitioned=True
    )


def check_csrf(expected: str | None) -> None:
    supplied = request.headers.get(CSRF_HEADER, "")
    # Compared as bytes: compare_digest raises TypeError on non-ASCII str (a 500, not a 403).
    if not expected or not supplied:
        raise CSRFError()
    if not _same(supplied, expected):
        # A token, but another launch's: in the sidebar, a panel left open after this
        # browser's launch was replaced (a forged cross-site request carries no header).
        raise CSRFError(reason=None if request.path.startswith("/admin") else "earlier_launch")


def _same(supplied: str, expected: str) -> bool:
    return hmac.compare_digest(
        supplied.encode("utf-8", "surrogateescape"), expected.encode("utf-8")
    )


def register_csrf_lookup(app: Flask, lookup: CSRFLookup) -> None:
    app.extensions["smartapp.csrf_lookup"] = lookup


def _csrf_exempt() -> bool:
    # The CDS Hooks endpoints never read a cookie (the EHR's signed JWT is their only
    # credential), so a forged cross-site request carries nothing they believe.
    if request.path.startswith("/cds-services/"):
        return True
    # Bearer-token API calls carry no cookie, so a forged cross-site request gains nothing.
    return request.path.startswith("/admin/api/") and request.headers.get(
        "Authorization", ""
    ).startswith("Bearer ")


def init_app(app: Flask) -> None:
    settings: Settings = app.extensions["smartapp.settings"]
    ancestors = " ".join(("'self'", *settings.frame_ancestors))

    @app.before_request
    def enforce_csrf() -> None:
        if request.method not in _UNSAFE_METHODS or _csrf_exempt():
            return
        lookup: CSRFLookup | None = current_app.extensions.get("smartapp.csrf_lookup")
        check_csrf(lookup() if lookup else None)

    @app.after_request
    def security_headers(response: Response) -> Response:
        style_src = "'self'"
        # smart_style_url may point at the EHR's stylesheet host; fonts likewise.
        extra = " ".join(settings.frame_ancestors)
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; "
            f"script-src 'self'; style-src {style_src} {extra}; font-src 'self' {extra}; "
            "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
            f"form-action 'self' {extra}; frame-ancestors {ancestors}",
        )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        # Launch and callback URLs carry one-time codes: never leak them in a Referer.
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        # Every page and API answer may hold PHI (the sidebar, /admin, an error page naming
        # the launch): no cache, shared or the browser's, keeps a copy. Static files hold
        # none; a view that knows better (the JWKS) sets its own.
        if not request.path.startswith(_CACHEABLE_PREFIXES):
            response.headers.setdefault("Cache-Control", "no-store")
        return response
