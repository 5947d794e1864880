"""SMART Backend Services: a system-level access token by client credentials and `private_key_jwt`.

No user and no browser: the app authenticates at the token endpoint with a JWT assertion
signed by its own key (the one published at its JWKS URL) and asks for `system/` scopes.
https://hl7.org/fhir/smart-app-launch/backend-services.html
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from smartapp.config import normalize_issuer
from smartapp.errors import AuthorizationFailed, TemporaryUpstreamError
from smartapp.httplimits import limited_session
from smartapp.redirects import REDIRECT_STATUSES, RedirectRefused, get_within_origin, origin_text
from smartapp.smart.client import AUTH_MAX_BYTES, DEFAULT_DEADLINE, DEFAULT_TIMEOUT, TokenResponse
from smartapp.smart.keys import ASSERTION_TYPE, SigningKey, client_assertion

log = logging.getLogger(__name__)

CLIENT_CREDENTIALS = "client_credentials"


class BackendServicesError(AuthorizationFailed):
    """The EHR cannot, or would not, issue the app a system-level token."""

    code = "backend_services_failed"
    default_message = "the EHR did not issue a system-level token"


@dataclass(frozen=True, kw_only=True)
class BackendConfiguration:
    """What the app needs from `.well-known/smart-configuration` for backend services."""

    token_endpoint: str
    #: SMART v2 scopes (`.rs`) when the server says `permission-v2`, else v1 (`.read`).
    scopes_v2: bool

    def system_scope(self, resource_types: tuple[str, ...]) -> str:
        suffix = "rs" if self.scopes_v2 else "read"
        return " ".join(f"system/{rtype}.{suffix}" for rtype in resource_types)


def parse_backend_configuration(iss: str, data: Mapping[str, Any]) -> BackendConfiguration:
    """The token endpoint and scope version; refuses a server that says it cannot do this."""
    endpoint = data.get("token_endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise BackendServicesError("The EHR's SMART configuration has no token_endpoint.")
    parts = urlsplit(endpoint)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise BackendServicesError("The EHR's SMART configuration has an invalid token_endpoint.")
    # Never downgrade: the assertion would travel in clear text.
    if parts.scheme == "http" and urlsplit(iss).scheme == "https":
        raise BackendServicesError(
            "The EHR's SMART configuration gives a non-https token_endpoint."
        )
    grants = _strings(data.get("grant_types_supported"))
    if grants and CLIENT_CREDENTIALS not in grants:
        raise BackendServicesError(
            "The EHR does not offer the client_credentials grant (grant_types_supported): "
            "it has no SMART Backend Services."
        )
    methods = _strings(data.get("token_endpoint_auth_methods_supported"))
    if methods and "private_key_jwt" not in methods:
        raise BackendServicesError(
            "The EHR does not accept private_key_jwt at its token endpoint "
            "(token_endpoint_auth_methods_supported)."
        )
    capabilities = _strings(data.get("capabilities"))
    return BackendConfiguration(token_endpoint=endpoint, scopes_v2="permission-v2" in capabilities)


class BackendServicesClient:
    """Discovers the token endpoint of an issuer and asks it for a system token.

    The caller must have checked the issuer against SMARTAPP_ALLOWED_ISSUERS: this sends
    requests to it. Every exchange has a deadline and a size cap (`smartapp.httplimits`);
    discovery follows redirects only within the issuer's origin, the token request none.
    """

    def __init__(
        self,
        *,
        client_id: str,
        signing_key: SigningKey,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        deadline: float = DEFAULT_DEADLINE,
        session_factory: Callable[[], requests.Session] | None = None,
    ) -> None:
        self.client_id = client_id
        self.signing_key = signing_key
        self.timeout = timeout
        self.deadline = deadline
        self._session_factory = session_factory or (
            lambda: limited_session(deadline=deadline, max_bytes=AUTH_MAX_BYTES)
        )

    def discover(self, iss: str) -> BackendConfiguration:
        iss = normalize_issuer(iss)
        url = f"{iss}/.well-known/smart-configuration"
        with self._session_factory() as http:
            try:
                response = get_within_origin(
                    http, url, headers={"Accept": "application/json"}, timeout=self.timeout
                )
            except RedirectRefused as exc:
                raise BackendServicesError(
                    f"The EHR redirected its SMART configuration elsewhere ({exc}); "
                    "the app follows redirects only within the EHR's own address."
                ) from None
            except requests.RequestException as exc:
                log.warning(
                    "backend discovery at %s failed: %s", origin_text(url), type(exc).__name__
                )
                raise TemporaryUpstreamError(
                    "The EHR's server is not answering right now. Try again in a moment."
                ) from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise TemporaryUpstreamError(
                f"The EHR's SMART configuration answered HTTP {response.status_code}; "
                "try again later."
            )
        try:
            data = response.json() if response.status_code < 400 else None
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise BackendServicesError(
                f"The EHR publishes no SMART configuration at {origin_text(url)}"
                "/…/.well-known/smart-configuration."
            )
        return parse_backend_configuration(iss, data)

    def system_token(self, configuration: BackendConfiguration, *, scope: str) -> TokenResponse:
        """A client_credentials token, authenticated by a fresh signed assertion (RFC 7523)."""
        endpoint = configuration.token_endpoint
        form = {
            "grant_type": CLIENT_CREDENTIALS,
            "scope": scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion(
                self.signing_key, client_id=self.client_id, token_endpoint=endpoint
            ),
        }
        with self._session_factory() as http:
            try:
                response = http.post(
                    endpoint,
                    data=form,
                    headers={"Accept": "application/json"},
                    timeout=self.timeout,
                    # The assertion is never re-sent anywhere.
                    allow_redirects=False,
                )
            except requests.RequestException as exc:
                log.warning(
                    "token request to %s failed: %s", origin_text(endpoint), type(exc).__name__
                )
                raise TemporaryUpstreamError(
                    "The EHR's sign-in service is not answering right now. Try again in a moment."
                ) from exc
        status = response.status_code
        if status in REDIRECT_STATUSES:
            raise BackendServicesError(
                f"The EHR's token endpoint answered with a redirect (HTTP {status}); "
                "the app does not follow redirects there."
            )
        if status >= 500 or status == 429:
            raise TemporaryUpstreamError(
                f"The EHR's token endpoint answered HTTP {status}; try again later."
            )
        try:
            data = response.json()
        except ValueError:
            data = None
        if status >= 400 or not isinstance(data, dict):
            error = data.get("error") if isinstance(data, dict) else None
            raise BackendServicesError(
                f"The EHR refused a system-level token (HTTP {status}, {_error_code(error)}): "
                "is the app registered there for backend services, with its JWKS URL?"
            )
        return TokenResponse.parse(data, fallback_scope=scope)


def _error_code(error: object) -> str:
    # An OAuth error code only, never free text (it could echo anything).
    if isinstance(error, str) and error.replace("_", "").isalpha() and len(error) <= 64:
        return error
    return "error"


def _strings(value: object) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()
