"""Who may use the admin area: admins signed in through the EHR, or the API's bearer token.

Admins sign in with a standalone SMART launch asking `openid fhirUser`
(https://hl7.org/fhir/smart-app-launch/app-launch.html#launch-app-standalone-launch); the
`fhirUser` must be listed in SMARTAPP_ADMIN_USERS. The JSON API also takes
`Authorization: Bearer $SMARTAPP_ADMIN_TOKEN` (RFC 6750), compared in constant time.

Two seams, both in `app.extensions`, so tests and the integration replace them without
patching internals:
- `IDENTITY_EXT`: a callable returning the `SignedInUser` of this browser's admin session,
  or None. The default asks `smartapp.smart.session.current_launch(purpose="admin")`.
- `SIGNIN_EXT`: a callable `(iss) -> Response` starting the sign-in at that EHR. The default
  calls `smartapp.smart.views.start_authorization(..., purpose="admin", scope="openid fhirUser")`.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from flask import Flask, Response, current_app, request

from smartapp.config import Settings
from smartapp.errors import AppError, Forbidden, NotAuthenticated
from smartapp.identity import (
    TOKEN_ACTOR,
    admin_entries,
    bound_identity,
    normalize_fhir_user,
    unbound_entries,
)

IDENTITY_EXT = "smartapp.admin.identity"
SIGNIN_EXT = "smartapp.admin.start_signin"
ADMIN_SCOPE = "openid fhirUser"
_log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SignedInUser:
    """Whoever holds this browser's admin session, admin or not."""

    fhir_user: str | None
    site: str | None
    csrf_token: str | None


@dataclass(frozen=True, kw_only=True)
class AdminUser:
    """An authorized admin caller: a person (session) or the API token."""

    #: "ISS|Practitioner/id" for a person, TOKEN_ACTOR for the token.
    actor: str
    via: Literal["session", "token"]
    site: str | None = None
    csrf_token: str | None = None


IdentityProvider = Callable[[], SignedInUser | None]
SignInStarter = Callable[[str], Response]


class InvalidToken(AppError):
    code = "invalid_token"
    default_message = "The bearer token is not the admin API token."
    about_the_request = True


def smart_session_identity() -> SignedInUser | None:
    """The admin session kept by the SMART package, or None when there is none."""
    try:
        from smartapp.smart.session import current_launch
    except ImportError:  # the SMART package is not installed in this build
        return None
    try:
        launch = current_launch(purpose="admin")
    except NotAuthenticated:
        return None
    return SignedInUser(fhir_user=launch.fhir_user, site=launch.iss, csrf_token=launch.csrf_token)


def smart_signin(iss: str) -> Response:
    from smartapp.smart.views import start_authorization

    response: Response = start_authorization(
        iss=iss, launch=None, purpose="admin", scope=ADMIN_SCOPE
    )
    return response


def init_app(app: Flask) -> None:
    settings: Settings | None = app.extensions.get("smartapp.settings")
    if settings is not None and settings.admin_users:
        _log_admin_binding(settings)
    app.extensions.setdefault(IDENTITY_EXT, smart_session_identity)
    app.extensions.setdefault(SIGNIN_EXT, smart_signin)


def _log_admin_binding(settings: Settings) -> None:
    """Say at start-up how SMARTAPP_ADMIN_USERS entries are bound to issuers."""
    relative = [u for u in settings.admin_users if "|" not in u and "://" not in u]
    if relative and len(settings.allowed_issuers) == 1:
        _log.info(
            "SMARTAPP_ADMIN_USERS: %d relative entr(y/ies) bound to the only allowed issuer %s",
            len(relative),
            settings.allowed_issuers[0],
        )
    for entry in unbound_entries(settings.admin_users, settings.allowed_issuers):
        _log.warning(
            "SMARTAPP_ADMIN_USERS entry %r is ignored: name its issuer as ISS|Practitioner/id "
            "or an absolute fhirUser URL on an allowed issuer's base",
            entry,
        )


def set_identity_provider(app: Flask, provider: IdentityProvider) -> None:
    app.extensions[IDENTITY_EXT] = provider


def _settings() -> Settings:
    settings: Settings = current_app.extensions["smartapp.settings"]
    return settings


def signed_in_user() -> SignedInUser | None:
    provider: IdentityProvider = current_app.extensions.get(IDENTITY_EXT, smart_session_identity)
    return provider()


def is_admin(settings: Settings, fhir_user: str | None, iss: str | None) -> bool:
    """Whether (iss, fhirUser) is on SMARTAPP_ADMIN_USERS: the id alone is not enough."""
    user = normalize_fhir_user(fhir_user)
    if user is None or not iss:
        return False
    issuer = iss.strip().rstrip("/")
    if fhir_user is not None and "://" in fhir_user:
        # An absolute fhirUser must sit on the issuer that signed it in.
        if fhir_user.strip().rstrip("/")[: -len(user)].rstrip("/") != issuer:
            return False
    return (issuer, user) in admin_entries(settings.admin_users, settings.allowed_issuers)


def admin_from(user: SignedInUser) -> AdminUser:
    """The admin behind a session; Forbidden when the user is not on SMARTAPP_ADMIN_USERS."""
    if not is_admin(_settings(), user.fhir_user, user.site):
        raise Forbidden("Your EHR account is not on this app's list of administrators.")
    return AdminUser(
        # Issuer-bound: the audit trail and change control tell A's admin from B's same id.
        actor=bound_identity(user.site, user.fhir_user) or "",
        via="session",
        site=user.site,
        csrf_token=user.csrf_token,
    )


def api_caller() -> AdminUser:
    """The caller of /admin/api/*: the bearer token if one is sent, else an admin session."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise NotAuthenticated(
                "the Authorization header is not a bearer token", code="invalid_request"
            )
        expected = _settings().admin_token
        if not expected:
            raise Forbidden(
                "The admin API is closed: SMARTAPP_ADMIN_TOKEN is not set on the server.",
                code="api_closed",
            )
        if not hmac.compare_digest(token.encode("utf-8"), expected.encode("utf-8")):
            raise InvalidToken()
        return AdminUser(actor=TOKEN_ACTOR, via="token")
    user = signed_in_user()
    if user is None:
        raise NotAuthenticated("no bearer token and no admin session", reason="admin")
    return admin_from(user)
