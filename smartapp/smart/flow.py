"""The authorization-code flow, from the allow-list check to the new launch session.

Knows no Flask request: the views pass in what the browser sent (iss, launch, state,
code, the binding cookie) and set the cookies this returns.
https://hl7.org/fhir/smart-app-launch/app-launch.html
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from sqlalchemy import delete, func, select

from smartapp.config import normalize_issuer
from smartapp.db import utcnow
from smartapp.errors import (
    AuthorizationFailed,
    InvalidLaunch,
    InvalidState,
    LaunchError,
    UnknownIssuer,
    UpstreamError,
)
from smartapp.smart.client import TokenResponse
from smartapp.smart.crypto import DecryptionFailed, hash_secret, random_secret, same_secret
from smartapp.smart.idtoken import IDTokenClaims, IDTokenInvalid, validate_id_token
from smartapp.smart.models import PendingAuthorization
from smartapp.smart.pkce import make_verifier
from smartapp.smart.scopes import GrantedScopes
from smartapp.smart.services import SMARTServices
from smartapp.smart.session import PURPOSES, LaunchContext, create_session

log = logging.getLogger(__name__)

#: An authorize request must come back within this time.
PENDING_TTL = timedelta(minutes=10)
#: Sign-ins under way at once, across every browser: past it, /launch answers 503 until
#: some complete or expire (anonymous launches must not fill the store).
MAX_PENDING = 5000
#: Sign-ins under way in one browser (one binding cookie); the oldest go first.
MAX_PENDING_PER_BROWSER = 10

#: FHIR ids (R4 `id`): the context ids end up in FHIR URLs, so nothing else is accepted.
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_BINDING = re.compile(r"^[A-Za-z0-9_\-]{43,128}$")
_MAX_PARAM = 4096

#: OAuth `error` codes (RFC 6749 §4.1.2.1) the authorization server may send back: each is
#: the reason of the AuthorizationFailed raised (its wording is smartapp.errors.WORDING's).
_AUTHORIZE_ERRORS = frozenset(
    {
        "invalid_scope",
        "unauthorized_client",
        "invalid_request",
        "server_error",
        "temporarily_unavailable",
    }
)


class TooManyPending(LaunchError):
    """The store holds as many sign-ins under way as it will: try again shortly."""

    code = "too_many_sign_ins"
    default_message = "the store holds MAX_PENDING sign-ins under way"


class AccessDenied(AuthorizationFailed):
    """The user (or the EHR's policy) declined the authorization."""

    code = "access_denied"
    default_message = "the user or the EHR declined the authorization (access_denied)"


@dataclass(frozen=True)
class AuthorizationStart:
    """Where to send the browser, and the browser-binding cookie value to set with it."""

    url: str
    binding: str


@dataclass(frozen=True)
class CompletedLaunch:
    #: The session's secret: the cookie value, or the window token when carrier is "window".
    cookie_value: str
    launch: LaunchContext
    carrier: str = "cookie"
    #: The token response's `appContext` (a CDS Hooks card's link), for SESSION_STARTED hooks.
    app_context: str | None = None


def check_issuer(services: SMARTServices, iss: str | None) -> str:
    """The normalised `iss`, if it is on the allow-list. Runs BEFORE any outbound request:
    a rogue `iss` naming a real authorization server is a token-harvesting attack."""
    if not iss or not iss.strip():
        raise InvalidLaunch("no iss: the address was opened directly", reason="not_from_ehr")
    if len(iss) > _MAX_PARAM:
        raise UnknownIssuer()
    normalized = normalize_issuer(iss)
    if normalized not in services.settings.allowed_issuers:
        log.warning("launch refused: issuer not on the allow-list (host %s)", _host(normalized))
        raise UnknownIssuer(
            f"iss (host {_host(normalized)}) is not on SMARTAPP_ALLOWED_ISSUERS: add its FHIR "
            "base URL there to allow it"
        )
    return normalized


def begin(
    services: SMARTServices,
    *,
    iss: str,
    launch: str | None,
    purpose: str,
    scope: str,
    redirect_uri: str,
    binding: str | None,
) -> AuthorizationStart:
    """Check the issuer, discover its endpoints, store a pending authorization, build the URL.

    `binding` is the browser's existing binding cookie (reused so that two launches in
    flight in one browser both complete), or None for a fresh one.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}")
    iss = check_issuer(services, iss)
    if launch is not None and (not launch or len(launch) > _MAX_PARAM or not launch.isprintable()):
        # Stored with the pending row: a NUL or a control character has no place in it.
        raise InvalidLaunch(
            "the launch parameter is missing, too long or has control characters",
            reason="bad_launch_parameter",
        )
    scope = " ".join(scope.split())
    if not scope:
        raise ValueError("an authorization request needs a scope")

    config = services.discover(iss)
    methods = config.token_endpoint_auth_methods_supported
    if methods and services.client.auth.method not in methods:
        # Not fatal: servers often leave "none" out of the list and accept it anyway.
        log.warning(
            "issuer host %s does not list client authentication %s",
            _host(iss),
            services.client.auth.method,
        )

    state = random_secret(32)  # 256 bits; SMART asks for at least 122
    verifier = make_verifier()
    nonce = random_secret(24) if "openid" in scope.split() else None
    if binding is None or not _BINDING.match(binding):
        binding = random_secret(32)
    now = utcnow()
    binding_hash = hash_secret(binding)
    with services.db.session() as s:
        s.execute(delete(PendingAuthorization).where(PendingAuthorization.expires_at <= now))
        live = s.scalar(select(func.count()).select_from(PendingAuthorization)) or 0
        if live >= MAX_PENDING:
            log.warning("launch refused: %d sign-ins under way (MAX_PENDING)", live)
            raise TooManyPending()
        # One browser keeps its newest few: a page reloaded in a loop cannot grow the table.
        stale = s.scalars(
            select(PendingAuthorization.state_hash)
            .where(PendingAuthorization.binding_hash == binding_hash)
            .order_by(PendingAuthorization.created_at.desc())
            .offset(MAX_PENDING_PER_BROWSER - 1)
        ).all()
        if stale:
            s.execute(
                delete(PendingAuthorization).where(PendingAuthorization.state_hash.in_(stale))
            )
        s.add(
            PendingAuthorization(
                state_hash=hash_secret(state),
                binding_hash=binding_hash,
                iss=iss,
                launch=launch,
                code_verifier_enc=services.cipher.encrypt(verifier),
                nonce=nonce,
                requested_scope=scope,
                redirect_uri=redirect_uri,
                issuer=config.issuer,
                authorization_endpoint=config.authorization_endpoint,
                token_endpoint=config.token_endpoint,
                jwks_uri=config.jwks_uri,
                purpose=purpose,
                created_at=now,
                expires_at=now + PENDING_TTL,
            )
        )
    url = services.client.authorization_url(
        config.authorization_endpoint,
        redirect_uri=redirect_uri,
        scope=scope,
        state=state,
        code_verifier=verifier,
        aud=iss,
        launch=launch,
        nonce=nonce,
    )
    log.info("authorization started (purpose %s, issuer host %s)", purpose, _host(iss))
    return AuthorizationStart(url=url, binding=binding)


def purge_expired(services: SMARTServices) -> int:
    """Delete the sign-ins that were never completed in time; returns how many."""
    with services.db.session() as s:
        result = s.execute(
            delete(PendingAuthorization).where(PendingAuthorization.expires_at <= utcnow())
        )
    return int(getattr(result, "rowcount", 0) or 0)


def consume_pending(
    services: SMARTServices, *, state: str | None, binding: str | None, unbound: bool = False
) -> PendingAuthorization:
    """The pending authorization for `state`, deleted so it can never be used again.

    Raises InvalidState when the state is missing, unknown (forged), already used,
    expired, or was started in another browser (the binding cookie does not match). A
    callback from another browser leaves the row alone: whoever learnt a `state` cannot
    spend it and so break the real sign-in.

    `unbound`: the callback of a window whose browser sends no cookies at all, so no
    binding cookie can come back; the single-use state is then the only binding (a
    mismatched binding cookie is still refused). docs/SECURITY.md weighs this.
    """
    if not state or len(state) > _MAX_PARAM:
        raise InvalidState("the callback has no state, or one too long", reason="no_state")
    state_hash = hash_secret(state)
    with services.db.session() as s:
        pending = s.get(PendingAuthorization, state_hash)
        if pending is None:
            raise InvalidState()
        if utcnow() >= pending.expires_at:
            s.delete(pending)
            raise InvalidState("the pending sign-in expired (PENDING_TTL)", reason="expired")
        if binding is None and unbound:
            log.info("callback without a binding cookie: a window that blocks cookies")
        elif not binding or not same_secret(binding, pending.binding_hash):
            log.warning("callback refused: state bound to another browser")
            raise InvalidState(
                "the state is bound to another browser (binding cookie)", reason="other_browser"
            )
        # Delete first and count: of two concurrent callbacks with one state, one wins.
        result = s.execute(
            delete(PendingAuthorization).where(PendingAuthorization.state_hash == state_hash)
        )
        deleted = getattr(result, "rowcount", 0)
        if deleted != 1:
            raise InvalidState()
    return pending


def restore_pending(services: SMARTServices, pending: PendingAuthorization) -> None:
    """Put back a pending authorization whose code the token endpoint refused.

    A callback with a forged or stale code spends nothing at the EHR; the real callback,
    with the real code, must still find its state.
    """
    columns = {c.key: getattr(pending, c.key) for c in PendingAuthorization.__table__.columns}
    with services.db.session() as s:
        if s.get(PendingAuthorization, pending.state_hash) is None:
            s.add(PendingAuthorization(**columns))


def fail_authorization(
    services: SMARTServices, *, state: str | None, binding: str | None, error: str
) -> AuthorizationFailed:
    """The error for an authorization server's `error=` redirect.

    The state is spent only by the browser that started the sign-in (the EHR's refusal
    ends it); an `error=` sent from anywhere else leaves it for the real callback.
    """
    try:
        consume_pending(services, state=state, binding=binding)
    except InvalidState:
        pass  # the error page says the same either way
    code = error if error in _AUTHORIZE_ERRORS else None
    log.info("authorization refused by the EHR: %s", code or "unknown")
    if error == "access_denied":
        return AccessDenied()
    return AuthorizationFailed(
        f"the authorization server redirected with error={code or 'unknown'}", reason=code
    )


def complete(
    services: SMARTServices,
    *,
    state: str | None,
    code: str | None,
    binding: str | None,
    previous_sessions: Mapping[str, str] | None = None,
    carrier: str = "cookie",
) -> CompletedLaunch:
    """Redeem the code, validate the id_token, and create the launch session.

    `previous_sessions` are the browser's session cookies by purpose: the one this launch
    replaces is deleted with its tokens. `carrier="window"`: the browser sent no binding
    cookie (it blocks cookies in the EHR's frame); the session's secret becomes a
    per-window token, for clinician launches only.
    """
    window = carrier == "window"
    pending = consume_pending(services, state=state, binding=binding, unbound=window)
    if window and pending.purpose != "clinician":
        # An admin signs in at the top level, where the app's cookies are first-party.
        raise InvalidState(
            "an admin sign-in came back without its binding cookie", reason="cookies_needed"
        )
    if not code or len(code) > _MAX_PARAM:
        restore_pending(services, pending)
        raise InvalidLaunch("the callback has no code, or one too long", reason="no_code")
    try:
        verifier = services.cipher.decrypt(pending.code_verifier_enc)
    except DecryptionFailed as exc:
        # SMARTAPP_SECRET_KEY changed while this sign-in was under way.
        raise InvalidState() from exc
    try:
        token = services.client.exchange_code(
            pending.token_endpoint,
            code=code,
            redirect_uri=pending.redirect_uri,
            code_verifier=verifier,
            requested_scope=pending.requested_scope,
        )
    except (AuthorizationFailed, UpstreamError):
        # No token was issued for this code: a forged callback must not cost the real one.
        restore_pending(services, pending)
        raise
    id_claims = _identity(services, pending, token)
    _check_context(pending, token)
    granted = GrantedScopes(token.scope)
    missing = granted.missing(GrantedScopes(pending.requested_scope))
    if missing:
        # Scope names only: they say what the app may do, nothing about the patient.
        log.info("the EHR granted less than asked; not granted: %s", " ".join(missing))
    cookie_value, launch = create_session(
        services,
        pending=pending,
        token=token,
        id_claims=id_claims,
        replaces=None if window else (previous_sessions or {}).get(pending.purpose),
        carrier=carrier,
    )
    log.info(
        "launch session created (purpose %s, issuer host %s)", pending.purpose, _host(pending.iss)
    )
    return CompletedLaunch(
        cookie_value=cookie_value, launch=launch, carrier=carrier, app_context=token.app_context
    )


def _identity(
    services: SMARTServices, pending: PendingAuthorization, token: TokenResponse
) -> IDTokenClaims | None:
    requested = GrantedScopes(pending.requested_scope)
    if "openid" not in requested:
        return None
    if token.id_token is None:
        if "openid" in GrantedScopes(token.scope):
            raise IDTokenInvalid("The EHR granted openid but sent no identity token.")
        return None  # identity not granted: the session has no fhirUser
    with services.http_session() as http:
        return validate_id_token(
            token.id_token,
            # OIDC: iss must equal the discovered issuer; without one, the FHIR base.
            issuer=pending.issuer or pending.iss,
            client_id=services.client.client_id,
            nonce=pending.nonce,
            jwks_uri=pending.jwks_uri,
            jwks=services.jwks_cache,
            http=http,
            timeout=services.timeout,
        )


def _check_context(pending: PendingAuthorization, token: TokenResponse) -> None:
    if token.patient is not None and not _FHIR_ID.match(token.patient):
        raise AuthorizationFailed(
            "the token response's patient is not a valid FHIR id", reason="bad_context"
        )
    if token.encounter is not None and not _FHIR_ID.match(token.encounter):
        raise AuthorizationFailed(
            "the token response's encounter is not a valid FHIR id", reason="bad_context"
        )
    if pending.purpose == "clinician" and token.patient is None:
        # An EHR launch is bound to one patient; without one the sidebar has nothing to show.
        raise AuthorizationFailed(
            "an EHR launch's token response names no patient", code="no_patient_context"
        )


def _host(url: str) -> str:
    return urlsplit(url).netloc
