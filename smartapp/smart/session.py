"""The launch session: an opaque secret naming a server-side row with the context and tokens.

The browser holds 256 random bits; the store holds their SHA-256, the launch context
and the tokens encrypted. Tokens never reach the browser. The secret travels in the
session cookie, or, in a sidebar whose cookies the browser blocks, as a per-window token
that the page's script sends in the `X-Window-Token` header (see docs/SECURITY.md).
https://hl7.org/fhir/smart-app-launch/app-launch.html#response-5
"""

from __future__ import annotations

import hmac
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import Flask, g, request
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from smartapp.db import utcnow
from smartapp.errors import (
    NotAuthenticated,
    RelaunchRequired,
    TemporaryUpstreamError,
)
from smartapp.fhir.auth import TokenProvider
from smartapp.security import CSRF_HEADER, register_csrf_lookup
from smartapp.smart.client import RefreshRefused, TokenResponse
from smartapp.smart.crypto import DecryptionFailed, hash_secret, random_secret
from smartapp.smart.idtoken import IDTokenClaims
from smartapp.smart.models import HeldGrant, LaunchSession, PendingAuthorization
from smartapp.smart.scopes import GrantedScopes
from smartapp.smart.services import SMARTServices, get_services

log = logging.getLogger(__name__)

PURPOSES = ("clinician", "admin")
#: One cookie per purpose, so an admin sign-in never replaces a clinician's launch.
SESSION_COOKIES = {"clinician": "smartapp_session", "admin": "smartapp_admin"}

#: A session unused this long ends (the clinician relaunches from the EHR).
IDLE_TIMEOUT = timedelta(hours=1)
#: A session ends this long after the launch, however busy.
ABSOLUTE_LIFETIME = timedelta(hours=12)
#: Refresh the access token this long before it expires, at most...
REFRESH_MARGIN = timedelta(seconds=60)
#: ...and at most this share of its lifetime: a 60-second token (some EHRs issue them)
#: would otherwise need a refresh from the moment it is issued, on every FHIR request.
REFRESH_MARGIN_SHARE = 0.25
#: A launch's tokens are held for the notes it saved this long after the last one (they
#: go out with them once the EHR answers, whether or not the launch still exists).
HOLD_LIFETIME = ABSOLUTE_LIFETIME
#: last_seen_at is written at most this often (not on every request).
TOUCH_INTERVAL = timedelta(seconds=60)

#: How a session's secret travels: the session cookie, or the per-window token header.
CARRIERS = ("cookie", "window")
#: The per-window token's header: only ever a header (never a cookie, a query or a body).
WINDOW_HEADER = "X-Window-Token"
#: Hashed in with a window token, so that a window token and a cookie value never name
#: the same row: each is accepted only the way it was handed out.
_WINDOW_DOMAIN = "smartapp-window-token:"
_MAX_SECRET = 200


def session_id_for(secret: str, *, carrier: str) -> str:
    """The store's key for a session secret presented through `carrier`."""
    if carrier not in CARRIERS:
        raise ValueError(f"carrier must be one of {CARRIERS}")
    return hash_secret(_WINDOW_DOMAIN + secret if carrier == "window" else secret)


@dataclass(frozen=True, kw_only=True)
class LaunchContext:
    session_id: str  # the DB key (hash), never the cookie value
    iss: str
    patient_id: str | None
    encounter_id: str | None
    fhir_user: str | None  # normalized relative "Practitioner/123" (None without openid fhirUser)
    fhir_user_raw: str | None
    need_patient_banner: bool
    smart_style_url: str | None
    scopes: GrantedScopes
    csrf_token: str
    purpose: str  # "clinician" | "admin"
    created_at: datetime
    tenant: str | None = None
    intent: str | None = None
    fhir_context: tuple[dict[str, Any], ...] = ()


def _context_from_row(row: LaunchSession) -> LaunchContext:
    try:
        fhir_context = tuple(json.loads(row.fhir_context)) if row.fhir_context else ()
    except ValueError:
        fhir_context = ()
    return LaunchContext(
        session_id=row.id,
        iss=row.iss,
        patient_id=row.patient,
        encounter_id=row.encounter,
        fhir_user=row.fhir_user,
        fhir_user_raw=row.fhir_user_raw,
        need_patient_banner=row.need_patient_banner,
        smart_style_url=row.smart_style_url,
        scopes=GrantedScopes(row.scope),
        csrf_token=row.csrf_token,
        purpose=row.purpose,
        created_at=row.created_at,
        tenant=row.tenant,
        intent=row.intent,
        fhir_context=fhir_context,
    )


def session_is_live(row: LaunchSession, settings_issuers: tuple[str, ...], now: datetime) -> bool:
    return (
        now < row.absolute_expires_at
        and now < row.last_seen_at + IDLE_TIMEOUT
        # An issuer taken off the allow-list ends its sessions at once.
        and row.iss in settings_issuers
    )


def create_session(
    services: SMARTServices,
    *,
    pending: PendingAuthorization,
    token: TokenResponse,
    id_claims: IDTokenClaims | None,
    replaces: str | None = None,
    carrier: str = "cookie",
) -> tuple[str, LaunchContext]:
    """Store a new launch session; returns (its secret, context). `replaces` is the old
    cookie value of this browser, whose session (and tokens) are deleted. A window
    session (`carrier="window"`) replaces nothing: other windows keep their launches."""
    secret = random_secret(32)
    now = utcnow()
    cipher = services.cipher
    row = LaunchSession(
        id=session_id_for(secret, carrier=carrier),
        iss=pending.iss,
        purpose=pending.purpose,
        token_endpoint=pending.token_endpoint,
        access_token_enc=cipher.encrypt(token.access_token),
        refresh_token_enc=cipher.encrypt(token.refresh_token) if token.refresh_token else None,
        access_expires_at=token.expires_at,
        scope=token.scope,
        patient=token.patient,
        encounter=token.encounter,
        fhir_user=id_claims.fhir_user if id_claims else None,
        fhir_user_raw=id_claims.fhir_user_raw if id_claims else None,
        id_token_sub=id_claims.sub if id_claims else None,
        need_patient_banner=token.need_patient_banner,
        smart_style_url=token.smart_style_url,
        tenant=token.tenant,
        intent=token.intent,
        fhir_context=json.dumps(list(token.fhir_context)) if token.fhir_context else None,
        csrf_token=random_secret(32),
        created_at=now,
        last_seen_at=now,
        absolute_expires_at=now + ABSOLUTE_LIFETIME,
    )
    with services.db.session() as s:
        if replaces and carrier == "cookie":
            s.execute(delete(LaunchSession).where(LaunchSession.id == hash_secret(replaces)))
        # Opportunistic clean-up: expired sessions take their tokens with them.
        s.execute(
            delete(LaunchSession).where(
                (LaunchSession.absolute_expires_at <= now)
                | (LaunchSession.last_seen_at <= now - IDLE_TIMEOUT)
            )
        )
        s.add(row)
    return secret, _context_from_row(row)


def load_session(
    services: SMARTServices, secret: str, *, purpose: str, carrier: str = "cookie"
) -> LaunchSession | None:
    """The live session named by a secret (a cookie value or a window token), touching
    last_seen_at; None when there is none."""
    if not secret or len(secret) > _MAX_SECRET:
        return None
    now = utcnow()
    session_id = session_id_for(secret, carrier=carrier)
    with services.db.session() as s:
        row = s.get(LaunchSession, session_id)
        if row is None or row.purpose != purpose:
            return None
        if not session_is_live(row, services.settings.allowed_issuers, now):
            s.delete(row)
            return None
        if now - row.last_seen_at >= TOUCH_INTERVAL:
            row.last_seen_at = now
    return row


def presented_secret(purpose: str) -> tuple[str, str]:
    """(secret, carrier) this request presents for `purpose`.

    The window header when the request carries it (clinician launches only), and then
    never the cookie: a cookie may name another tab's launch, and falling back to it
    would show this window another patient. Else the session cookie. Never the query
    string: URLs are logged by proxies and servers, and kept in the browser's history.
    """
    if purpose == "clinician" and WINDOW_HEADER in request.headers:
        return request.headers.get(WINDOW_HEADER, ""), "window"
    return request.cookies.get(SESSION_COOKIES[purpose], ""), "cookie"


def current_launch(*, purpose: str = "clinician") -> LaunchContext:
    """The launch of this request's window: its window token, else its session cookie.

    Raises NotAuthenticated without a live session. When the request carries
    `X-CSRF-Token` (the sidebar sends it on every API call, GET included) it must match
    this session: a second launch in the same browser (another patient in another tab)
    replaces the cookie, and the older tab then gets a clear error instead of the other
    patient's data.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}")
    cache: dict[str, LaunchContext] = g.setdefault("smartapp_launch", {})
    launch = cache.get(purpose)
    if launch is None:
        secret, carrier = presented_secret(purpose)
        row = load_session(get_services(), secret, purpose=purpose, carrier=carrier)
        if row is None:
            raise NotAuthenticated()
        launch = _context_from_row(row)
        cache[purpose] = launch
    supplied = request.headers.get(CSRF_HEADER)
    if supplied is not None and not hmac.compare_digest(
        supplied.encode("utf-8", "surrogateescape"), launch.csrf_token.encode("utf-8")
    ):
        raise NotAuthenticated(
            "the panel's launch was replaced by a newer one", reason="earlier_launch"
        )
    return launch


def _csrf_lookup() -> str | None:
    purpose = "admin" if request.path.startswith("/admin") else "clinician"
    secret, carrier = presented_secret(purpose)
    row = load_session(get_services(), secret, purpose=purpose, carrier=carrier)
    return row.csrf_token if row else None


def init_csrf(app: Flask) -> None:
    """Every POST/PUT/PATCH/DELETE must carry the X-CSRF-Token of the browser's session."""
    register_csrf_lookup(app, _csrf_lookup)


def stored_launch(services: SMARTServices, session_id: str) -> LaunchContext | None:
    """A launch by its session id, outside any request (the outbox worker)."""
    with services.db.session() as s:
        row = s.get(LaunchSession, session_id)
        if row is None or row.access_token_enc is None or utcnow() >= row.absolute_expires_at:
            return None
        return _context_from_row(row)


def successor_launch(
    services: SMARTServices, *, iss: str, fhir_user: str | None, patient: str
) -> LaunchContext | None:
    """The newest live launch of this clinician for this patient at this site.

    A note saved in a launch that has since ended is delivered with it: its token may
    write to that patient's chart, and to no other's.
    """
    if fhir_user is None:
        return None
    with services.db.session() as s:
        row = s.scalars(
            select(LaunchSession)
            .where(
                LaunchSession.iss == iss,
                LaunchSession.fhir_user == fhir_user,
                LaunchSession.patient == patient,
                LaunchSession.purpose == "clinician",
                LaunchSession.absolute_expires_at > utcnow(),
                LaunchSession.access_token_enc.is_not(None),
            )
            .order_by(LaunchSession.created_at.desc())
            .limit(1)
        ).first()
        return _context_from_row(row) if row is not None else None


def end_session(services: SMARTServices, session_id: str) -> None:
    with services.db.session() as s:
        s.execute(delete(LaunchSession).where(LaunchSession.id == session_id))


#: Where a token provider finds its tokens: a launch session, or the copy held for its notes.
_TokenRow = LaunchSession | HeldGrant

#: The token columns a held grant copies from its launch session (and keeps in step).
_GRANT_COLUMNS = (
    "iss",
    "token_endpoint",
    "access_token_enc",
    "refresh_token_enc",
    "access_expires_at",
    "scope",
    "created_at",
    "last_refreshed_at",
)


def hold_grant(services: SMARTServices, session_id: str) -> bool:
    """Hold this launch's tokens for work it leaves pending (a note to deliver).

    The copy outlives the launch session (the next launch in this browser deletes it) and
    is kept in step with it while both exist; it lasts HOLD_LIFETIME from now. False when
    the launch has no token to hold (ended, or refused by the EHR).
    """
    for _ in range(2):  # two saves of one launch at once: the second updates the first's
        try:
            with services.refresh_locks.get(session_id), services.db.session() as s:
                row = s.execute(
                    select(LaunchSession).where(LaunchSession.id == session_id).with_for_update()
                ).scalar_one_or_none()
                if row is None or row.access_token_enc is None:
                    return False
                held = s.get(HeldGrant, session_id)
                if held is None:
                    held = HeldGrant(id=session_id)
                    s.add(held)
                for column in _GRANT_COLUMNS:
                    setattr(held, column, getattr(row, column))
                held.absolute_expires_at = utcnow() + HOLD_LIFETIME
            return True
        except IntegrityError:
            continue
    return False


def held_grant_usable(services: SMARTServices, session_id: str, *, iss: str) -> bool:
    """Whether a held grant for this launch can still be tried (see `HeldTokenProvider`)."""
    with services.db.session() as s:
        held = s.get(HeldGrant, session_id)
        return (
            held is not None
            and held.iss == iss
            # An issuer taken off the allow-list gets nothing more from the app.
            and iss in services.settings.allowed_issuers
            and held.access_token_enc is not None
            and utcnow() < held.absolute_expires_at
        )


def drop_held_grant(services: SMARTServices, session_id: str) -> None:
    """Forget a launch's held tokens (logout: the clinician ended the grant)."""
    with services.db.session() as s:
        s.execute(delete(HeldGrant).where(HeldGrant.id == session_id))


class SessionTokenProvider:
    """The FHIR client's bearer token for one launch session (see `smartapp.fhir.auth`).

    Safe to use from worker threads: it holds the services, not the Flask app context.
    Refreshes are serialised per session (a lock here, SELECT … FOR UPDATE where the
    database has it) because refresh tokens rotate: two refreshes must not both spend
    the same one.
    """

    #: Where the tokens are: the launch session (and then its held copy is kept in step).
    model: type[LaunchSession] | type[HeldGrant] = LaunchSession

    def __init__(self, services: SMARTServices, session_id: str) -> None:
        self._services = services
        self._session_id = session_id
        self._last_token: str | None = None

    def access_token(self) -> str:
        row = self._read()
        now = utcnow()
        token = self._decrypt(row.access_token_enc)
        if _expired(row, now) and row.refresh_token_enc is None:
            raise RelaunchRequired()
        if not _needs_refresh(row, now) or row.refresh_token_enc is None:
            # Fresh, or about to expire with nothing to renew it: still good for now.
            return self._remember(token)
        try:
            return self._remember(self._refresh(force=False))
        except (TemporaryUpstreamError, RelaunchRequired):
            # An early refresh failed (server away, refresh token refused or already
            # spent) but the access token has not expired: the launch goes on until it does.
            if not _expired(row, utcnow()):
                log.info("early refresh failed; the access token is still valid, using it")
                return self._remember(token)
            raise

    def refresh(self) -> str:
        try:
            return self._remember(self._refresh(force=True))
        except RelaunchRequired:
            # The FHIR server refused the access token and nothing can renew it: the
            # launch is over, so a note waiting on it goes with the clinician's next one.
            self._forget_access_token()
            raise

    def _forget_access_token(self) -> None:
        with self._services.db.session() as s:
            row: _TokenRow | None = s.get(self.model, self._session_id)  # type: ignore[assignment]
            if row is not None:
                row.access_token_enc = None
                self._mirror(s, access_token_enc=None)

    def _mirror(self, s: Any, **values: Any) -> None:
        """Keep the held copy (if any) of a launch session's tokens in step with it: a
        rotated refresh token spends the old one, which the copy would otherwise keep."""
        if self.model is LaunchSession:
            s.execute(update(HeldGrant).where(HeldGrant.id == self._session_id).values(**values))

    def _remember(self, token: str) -> str:
        self._last_token = token
        return token

    def _read(self) -> _TokenRow:
        with self._services.db.session() as s:
            row: _TokenRow | None = s.get(self.model, self._session_id)  # type: ignore[assignment]
        if row is None or row.access_token_enc is None:
            raise RelaunchRequired()
        if utcnow() >= row.absolute_expires_at:
            raise RelaunchRequired()
        return row

    def _decrypt(self, ciphertext: str | None) -> str:
        if ciphertext is None:
            raise RelaunchRequired()
        try:
            return self._services.cipher.decrypt(ciphertext)
        except DecryptionFailed as exc:
            # The secret key changed since the launch: the stored tokens are unreadable.
            raise RelaunchRequired() from exc

    def _refresh(self, *, force: bool) -> str:
        services = self._services
        refused: RefreshRefused | None = None
        with services.refresh_locks.get(self._session_id), services.db.session() as s:
            model = self.model
            row: _TokenRow | None = s.execute(  # type: ignore[assignment]
                select(model).where(model.id == self._session_id).with_for_update()
            ).scalar_one_or_none()
            if row is None or row.access_token_enc is None or utcnow() >= row.absolute_expires_at:
                raise RelaunchRequired()
            current = self._decrypt(row.access_token_enc)
            # Another request refreshed while this one waited for the lock: use its token.
            if force and self._last_token is not None and current != self._last_token:
                return current
            if not force and not _needs_refresh(row, utcnow()):
                return current
            if row.refresh_token_enc is None:
                raise RelaunchRequired()
            try:
                fresh = services.client.refresh(
                    row.token_endpoint,
                    refresh_token=self._decrypt(row.refresh_token_enc),
                    current_scope=row.scope,
                )
            except RefreshRefused as exc:
                # Spent or revoked: forget it so that later calls fail fast, and commit that.
                row.refresh_token_enc = None
                self._mirror(s, refresh_token_enc=None)
                refused = exc
            else:
                row.access_token_enc = services.cipher.encrypt(fresh.access_token)
                if fresh.refresh_token:
                    row.refresh_token_enc = services.cipher.encrypt(fresh.refresh_token)
                row.access_expires_at = fresh.expires_at
                row.scope = fresh.scope
                row.last_refreshed_at = utcnow()
                self._mirror(
                    s,
                    access_token_enc=row.access_token_enc,
                    refresh_token_enc=row.refresh_token_enc,
                    access_expires_at=row.access_expires_at,
                    scope=row.scope,
                    last_refreshed_at=row.last_refreshed_at,
                )
                return fresh.access_token
        assert refused is not None
        raise refused


class HeldTokenProvider(SessionTokenProvider):
    """The bearer token of a launch that has ended, from the copy held for its notes.

    Used by the outbox only once the launch session itself is gone; it refreshes the copy
    as the session would have (one refresh at a time, rotation kept).
    """

    model = HeldGrant


def _needs_refresh(row: LaunchSession | HeldGrant, now: datetime) -> bool:
    if row.access_expires_at is None:
        return False
    issued = row.last_refreshed_at or row.created_at
    lifetime = max(row.access_expires_at - issued, timedelta(0))
    margin = min(REFRESH_MARGIN, lifetime * REFRESH_MARGIN_SHARE)
    return now >= row.access_expires_at - margin


def _expired(row: LaunchSession | HeldGrant, now: datetime) -> bool:
    return row.access_expires_at is not None and now >= row.access_expires_at


def token_provider(launch: LaunchContext) -> TokenProvider:
    """A TokenProvider for the FHIR client, bound to this launch's session."""
    return SessionTokenProvider(get_services(), launch.session_id)
