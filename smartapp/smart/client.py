"""The OAuth 2.0 client of a SMART App Launch: authorize URL, code exchange, refresh.

Built on authlib's requests `OAuth2Session` (PKCE S256); client authentication is
public (`none`), symmetric (`client_secret_basic`) or asymmetric (`private_key_jwt`).
https://hl7.org/fhir/smart-app-launch/app-launch.html
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote_plus, urljoin, urlsplit

import requests
from authlib.common.urls import add_params_to_qs
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session

from smartapp.config import Settings
from smartapp.db import utcnow
from smartapp.errors import (
    AuthorizationFailed,
    RelaunchRequired,
    TemporaryUpstreamError,
)
from smartapp.httplimits import LimitedAdapter
from smartapp.redirects import REDIRECT_STATUSES, RedirectRefused
from smartapp.smart.keys import ASSERTION_TYPE, SigningKey, client_assertion

log = logging.getLogger(__name__)

#: (connect, read) seconds for every request to the authorization server.
DEFAULT_TIMEOUT: tuple[float, float] = (5.0, 20.0)
#: The whole of one exchange with the authorization server (SMARTAPP_FHIR_DEADLINE).
DEFAULT_DEADLINE = 30.0
#: A token response, a SMART configuration or a JWKS is a few kilobytes.
AUTH_MAX_BYTES = 1024 * 1024

CLIENT_AUTH_METHODS = ("none", "client_secret_basic", "private_key_jwt")

_ERROR_CODE = re.compile(r"^[a-z_]{1,64}$")


class RefreshRefused(RelaunchRequired):
    """The authorization server refused the refresh token (expired, revoked, rotated)."""

    code = "relaunch_required"


@dataclass(frozen=True, kw_only=True)
class ClientAuthentication:
    """How the app proves who it is at the token endpoint."""

    client_id: str
    method: str = "none"
    client_secret: str | None = field(default=None, repr=False)
    signing_key: SigningKey | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.method not in CLIENT_AUTH_METHODS:
            raise ValueError(f"unknown client authentication method {self.method!r}")
        if self.method == "client_secret_basic" and not self.client_secret:
            raise ValueError("client_secret_basic needs a client secret")
        if self.method == "private_key_jwt" and self.signing_key is None:
            raise ValueError("private_key_jwt needs a signing key")

    @classmethod
    def from_settings(
        cls, settings: Settings, signing_key: SigningKey | None
    ) -> ClientAuthentication:
        """A private key makes the app confidential-asymmetric; else a secret, symmetric."""
        if signing_key is not None:
            return cls(
                client_id=settings.client_id, method="private_key_jwt", signing_key=signing_key
            )
        if settings.client_secret:
            return cls(
                client_id=settings.client_id,
                method="client_secret_basic",
                client_secret=settings.client_secret,
            )
        return cls(client_id=settings.client_id, method="none")


@dataclass(frozen=True, kw_only=True)
class TokenResponse:
    """A parsed token response. Tokens are kept out of repr() so they cannot reach a log."""

    access_token: str = field(repr=False)
    token_type: str
    expires_in: int | None
    expires_at: datetime | None
    #: The scopes GRANTED: the response's `scope`, or the requested one if it had none.
    scope: str
    scope_from_server: bool
    refresh_token: str | None = field(default=None, repr=False)
    id_token: str | None = field(default=None, repr=False)
    patient: str | None = None
    encounter: str | None = None
    need_patient_banner: bool = False
    smart_style_url: str | None = None
    intent: str | None = None
    tenant: str | None = None
    fhir_context: tuple[dict[str, Any], ...] = ()
    #: CDS Hooks: the card link's `appContext`, which the EHR passes through (opaque).
    app_context: str | None = None

    @classmethod
    def parse(
        cls, data: Mapping[str, Any], *, fallback_scope: str, now: datetime | None = None
    ) -> TokenResponse:
        access_token = data.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise AuthorizationFailed("The EHR's token response has no access token.")
        token_type = data.get("token_type")
        # SMART: token_type is "Bearer" (RFC 6749 §7.1 compares it case-insensitively).
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise AuthorizationFailed("The EHR issued a token type the app cannot use.")
        expires_in = _int_or_none(data.get("expires_in"))
        issued = now or utcnow()
        scope_value = data.get("scope")
        scope_from_server = isinstance(scope_value, str) and bool(scope_value.strip())
        refresh_token = data.get("refresh_token")
        id_token = data.get("id_token")
        return cls(
            access_token=access_token,
            token_type="Bearer",
            expires_in=expires_in,
            expires_at=issued + timedelta(seconds=expires_in) if expires_in is not None else None,
            scope=" ".join(str(scope_value).split()) if scope_from_server else fallback_scope,
            scope_from_server=scope_from_server,
            refresh_token=refresh_token
            if isinstance(refresh_token, str) and refresh_token
            else None,
            id_token=id_token if isinstance(id_token, str) and id_token else None,
            patient=_str_or_none(data.get("patient")),
            encounter=_str_or_none(data.get("encounter")),
            need_patient_banner=data.get("need_patient_banner") is True,
            smart_style_url=_http_url_or_none(data.get("smart_style_url")),
            intent=_str_or_none(data.get("intent")),
            tenant=_str_or_none(data.get("tenant")),
            fhir_context=tuple(
                item for item in _list(data.get("fhirContext")) if isinstance(item, dict)
            ),
            app_context=_str_or_none(data.get("appContext")),
        )


class SMARTClient:
    """Talks OAuth to one app registration; every request has a timeout, a deadline for the
    whole exchange and a cap on the answer's size (`smartapp.httplimits`)."""

    def __init__(
        self,
        *,
        auth: ClientAuthentication,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        self.auth = auth
        self.timeout = timeout
        self.deadline = deadline

    @property
    def client_id(self) -> str:
        return self.auth.client_id

    def authorization_url(
        self,
        authorization_endpoint: str,
        *,
        redirect_uri: str,
        scope: str,
        state: str,
        code_verifier: str,
        aud: str,
        launch: str | None = None,
        nonce: str | None = None,
    ) -> str:
        """The URL to send the browser to (response_type=code, PKCE S256, aud = the FHIR base)."""
        extra: dict[str, str] = {
            # SMART requires aud = the FHIR base URL exactly; EHRs refuse anything else,
            # and it stops a token minted for one server being replayed to another.
            "aud": aud,
        }
        if launch:
            extra["launch"] = launch
        if nonce:
            extra["nonce"] = nonce
        with self._session() as oauth:
            url, _ = oauth.create_authorization_url(
                authorization_endpoint,
                state=state,
                code_verifier=code_verifier,
                redirect_uri=redirect_uri,
                scope=scope,
                **extra,
            )
        return str(url)

    def exchange_code(
        self,
        token_endpoint: str,
        *,
        code: str,
        redirect_uri: str,
        code_verifier: str,
        requested_scope: str,
    ) -> TokenResponse:
        """Redeem the authorization code. Raises AuthorizationFailed or TemporaryUpstreamError."""
        try:
            with self._session() as oauth:
                data = oauth.fetch_token(
                    token_endpoint,
                    grant_type="authorization_code",
                    code=code,
                    redirect_uri=redirect_uri,
                    code_verifier=code_verifier,
                    timeout=self.timeout,
                )
        except OAuthError as exc:
            raise AuthorizationFailed(
                f"The EHR refused to issue a token ({_safe_error_code(exc.error)})."
            ) from exc
        except RedirectRefused as exc:
            log.warning("token endpoint %s: %s", _host(token_endpoint), exc)
            raise AuthorizationFailed(
                f"The EHR's token endpoint answered with a redirect (HTTP {exc.status}); "
                "the app does not follow redirects there."
            ) from None
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            log.warning("token endpoint %s answered HTTP %s", _host(token_endpoint), status)
            if status >= 500 or status == 429:
                raise TemporaryUpstreamError(
                    "The EHR's sign-in service is not answering right now. Try again in a moment."
                ) from exc
            raise AuthorizationFailed(f"The EHR refused to issue a token (HTTP {status}).") from exc
        except requests.RequestException as exc:
            log.warning("token request to %s failed: %s", _host(token_endpoint), type(exc).__name__)
            raise TemporaryUpstreamError(
                "The EHR's sign-in service is not answering right now. Try again in a moment."
            ) from exc
        except ValueError as exc:
            raise AuthorizationFailed("The EHR's token response is not valid JSON.") from exc
        return TokenResponse.parse(dict(data), fallback_scope=requested_scope)

    def refresh(
        self, token_endpoint: str, *, refresh_token: str, current_scope: str
    ) -> TokenResponse:
        """`grant_type=refresh_token`. The returned refresh_token is the new one when the
        server rotated it, else the one given. Raises RefreshRefused or TemporaryUpstreamError.
        """
        try:
            with self._session() as oauth:
                data = oauth.refresh_token(
                    token_endpoint, refresh_token=refresh_token, timeout=self.timeout
                )
        except OAuthError as exc:
            log.info(
                "refresh refused by %s: %s", _host(token_endpoint), _safe_error_code(exc.error)
            )
            raise RefreshRefused() from exc
        except RedirectRefused as exc:
            log.warning("refresh at %s: %s", _host(token_endpoint), exc)
            raise RefreshRefused() from None
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            log.warning("refresh at %s answered HTTP %s", _host(token_endpoint), status)
            if status >= 500 or status == 429:
                raise TemporaryUpstreamError() from exc
            raise RefreshRefused() from exc
        except requests.RequestException as exc:
            log.warning("refresh at %s failed: %s", _host(token_endpoint), type(exc).__name__)
            raise TemporaryUpstreamError() from exc
        except ValueError as exc:
            raise RefreshRefused() from exc
        try:
            parsed = TokenResponse.parse(dict(data), fallback_scope=current_scope)
        except AuthorizationFailed as exc:
            raise RefreshRefused() from exc
        if parsed.refresh_token is None:
            # No new refresh token: the old one stays valid (RFC 6749 §6).
            parsed = _replace_refresh_token(parsed, refresh_token)
        return parsed

    def revoke(self, revocation_endpoint: str, *, token: str, token_type_hint: str) -> bool:
        """RFC 7009 revocation, with this client's authentication. True if the server took it.

        Never raises: logout ends the session here whatever the EHR answers.
        https://www.rfc-editor.org/rfc/rfc7009#section-2.1
        """
        try:
            with self._session() as oauth:
                response = oauth.revoke_token(
                    revocation_endpoint,
                    token=token,
                    token_type_hint=token_type_hint,
                    timeout=self.timeout,
                )
        except (OAuthError, requests.RequestException, ValueError) as exc:
            log.warning(
                "revocation at %s failed: %s", _host(revocation_endpoint), type(exc).__name__
            )
            return False
        status = response.status_code
        if status != 200:
            log.warning("revocation at %s answered HTTP %s", _host(revocation_endpoint), status)
        return bool(status == 200)

    def _session(self) -> OAuth2Session:
        auth = self.auth
        oauth = _TokenSession(
            client_id=auth.client_id,
            client_secret=auth.client_secret,
            token_endpoint_auth_method=auth.method,
            code_challenge_method="S256",
            default_timeout=self.timeout,
        )
        # A token endpoint that trickles its answer must not hold the callback for ever.
        for prefix in ("https://", "http://"):
            oauth.mount(prefix, LimitedAdapter(deadline=self.deadline, max_bytes=AUTH_MAX_BYTES))
        if auth.method == "client_secret_basic":
            oauth.register_client_auth_method(("client_secret_basic", _client_secret_basic))
        elif auth.method == "private_key_jwt":
            key = auth.signing_key
            assert key is not None  # checked in ClientAuthentication

            def _private_key_jwt(
                client: Any, method: str, uri: str, headers: dict[str, str], body: str
            ) -> tuple[str, dict[str, str], str]:
                assertion = client_assertion(key, client_id=client.client_id, token_endpoint=uri)
                body = add_params_to_qs(
                    body or "",
                    [("client_assertion_type", ASSERTION_TYPE), ("client_assertion", assertion)],
                )
                headers["Content-Length"] = str(len(body))
                return uri, headers, body

            oauth.register_client_auth_method(("private_key_jwt", _private_key_jwt))
        return oauth


def _client_secret_basic(
    client: Any, method: str, uri: str, headers: dict[str, str], body: str
) -> tuple[str, dict[str, str], str]:
    # RFC 6749 §2.3.1: id and secret are form-urlencoded before the Basic encoding.
    userpass = f"{quote_plus(client.client_id)}:{quote_plus(client.client_secret)}"
    headers["Authorization"] = "Basic " + base64.b64encode(userpass.encode("utf-8")).decode("ascii")
    return uri, headers, body


def _replace_refresh_token(response: TokenResponse, refresh_token: str) -> TokenResponse:
    return replace(response, refresh_token=refresh_token)


def _safe_error_code(error: object) -> str:
    """The OAuth error code for a message, only when it looks like one (never free text)."""
    return error if isinstance(error, str) and _ERROR_CODE.match(error) else "error"


def _host(url: str) -> str:
    return urlsplit(url).netloc


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _http_url_or_none(value: object) -> str | None:
    # The sidebar may link this stylesheet: only an absolute http(s) URL is kept.
    if isinstance(value, str) and urlsplit(value).scheme in ("https", "http"):
        return value if urlsplit(value).netloc else None
    return None


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


class _TokenSession(OAuth2Session):  # type: ignore[misc]  # authlib is untyped
    """authlib's session with redirects off: a token request (code, verifier, client
    credentials) is never re-sent anywhere, not even within the same origin."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for hook in ("access_token_response", "refresh_token_response"):
            self.register_compliance_hook(hook, _refuse_redirect)

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs["allow_redirects"] = False
        response: requests.Response = super().request(method, url, *args, **kwargs)
        return response


def _refuse_redirect(response: requests.Response) -> requests.Response:
    if response.status_code in REDIRECT_STATUSES:
        location = response.headers.get("Location")
        raise RedirectRefused(
            response.url,
            urljoin(response.url, location) if location else None,
            response.status_code,
            reason="from the token endpoint",
        )
    return response
