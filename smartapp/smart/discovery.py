"""Discovery of a FHIR server's SMART configuration (`.well-known/smart-configuration`).

Falls back to the deprecated `oauth-uris` extension of the CapabilityStatement, which
some servers still only publish.
https://hl7.org/fhir/smart-app-launch/conformance.html
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from smartapp.config import normalize_issuer
from smartapp.errors import AuthorizationFailed, TemporaryUpstreamError
from smartapp.redirects import RedirectRefused, get_within_origin

log = logging.getLogger(__name__)

OAUTH_URIS_EXTENSION = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"

#: Seconds a discovered configuration is reused for one issuer.
DISCOVERY_TTL_SECONDS = 300.0


class DiscoveryError(AuthorizationFailed):
    """The server publishes no usable SMART configuration (or one this app must refuse)."""

    code = "discovery_failed"
    default_message = "the EHR's SMART configuration could not be read"


@dataclass(frozen=True, kw_only=True)
class SMARTConfiguration:
    issuer: str | None
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str | None
    capabilities: tuple[str, ...]
    code_challenge_methods_supported: tuple[str, ...]
    grant_types_supported: tuple[str, ...]
    scopes_supported: tuple[str, ...]
    token_endpoint_auth_methods_supported: tuple[str, ...]
    #: "well-known" or "capability-statement" (the deprecated fallback).
    source: str = "well-known"
    #: RFC 7009 token revocation, where the server advertises it (logout revokes there).
    revocation_endpoint: str | None = None

    @classmethod
    def from_well_known(
        cls, iss: str, data: Mapping[str, Any], *, unlisted_pkce: bool = False
    ) -> SMARTConfiguration:
        """`unlisted_pkce`: the EHR family is known to do S256 without listing any method
        (the quirks profile's `pkce_methods_listed = false`); an absent list then means S256."""
        methods = _strings(data, "code_challenge_methods_supported")
        if unlisted_pkce and "code_challenge_methods_supported" not in data:
            methods = ("S256",)
        # SMART 2.x: servers SHALL support S256 and SHALL NOT support `plain`. A server
        # that cannot do S256 would let an intercepted code be redeemed, so refuse it.
        if "S256" not in methods:
            raise DiscoveryError(
                "The EHR's SMART configuration does not list PKCE method S256 "
                "(code_challenge_methods_supported); the app requires it."
            )
        if "plain" in methods:
            log.warning("SMART server %s also lists PKCE 'plain'; the app uses S256 only", iss)
        jwks_uri = _optional_url(iss, data, "jwks_uri")
        return cls(
            issuer=_optional_str(data, "issuer"),
            authorization_endpoint=_required_url(iss, data, "authorization_endpoint"),
            token_endpoint=_required_url(iss, data, "token_endpoint"),
            jwks_uri=jwks_uri,
            capabilities=_strings(data, "capabilities"),
            code_challenge_methods_supported=methods,
            grant_types_supported=_strings(data, "grant_types_supported"),
            scopes_supported=_strings(data, "scopes_supported"),
            token_endpoint_auth_methods_supported=_strings(
                data, "token_endpoint_auth_methods_supported"
            ),
            source="well-known",
            revocation_endpoint=_revocation_endpoint(iss, data),
        )

    @classmethod
    def from_capability_statement(
        cls, iss: str, data: Mapping[str, Any]
    ) -> SMARTConfiguration | None:
        """The deprecated `oauth-uris` extension on `rest[].security`; None when absent."""
        if data.get("resourceType") != "CapabilityStatement":
            return None
        for rest in _list(data.get("rest")):
            security = rest.get("security") if isinstance(rest, dict) else None
            if not isinstance(security, dict):
                continue
            for ext in _list(security.get("extension")):
                if not isinstance(ext, dict) or ext.get("url") != OAUTH_URIS_EXTENSION:
                    continue
                uris: dict[str, Any] = {
                    str(sub.get("url")): sub.get("valueUri") or sub.get("valueUrl")
                    for sub in _list(ext.get("extension"))
                    if isinstance(sub, dict)
                }
                return cls(
                    issuer=None,
                    authorization_endpoint=_required_url(iss, uris, "authorize"),
                    token_endpoint=_required_url(iss, uris, "token"),
                    jwks_uri=None,
                    capabilities=(),
                    # The legacy extension cannot declare PKCE methods; the app still
                    # sends S256, which servers without PKCE ignore (RFC 7636 §5).
                    code_challenge_methods_supported=(),
                    grant_types_supported=(),
                    scopes_supported=(),
                    token_endpoint_auth_methods_supported=(),
                    source="capability-statement",
                )
        return None


class DiscoveryCache:
    """Discovered configurations per issuer, kept for a few minutes (thread-safe)."""

    def __init__(self, ttl_seconds: float = DISCOVERY_TTL_SECONDS) -> None:
        self.ttl_seconds = ttl_seconds
        self._entries: dict[str, tuple[float, SMARTConfiguration]] = {}
        self._lock = threading.Lock()

    def get(self, iss: str) -> SMARTConfiguration | None:
        with self._lock:
            entry = self._entries.get(iss)
            if entry is None:
                return None
            stored_at, config = entry
            if time.monotonic() - stored_at > self.ttl_seconds:
                del self._entries[iss]
                return None
            return config

    def put(self, iss: str, config: SMARTConfiguration) -> None:
        with self._lock:
            self._entries[iss] = (time.monotonic(), config)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def discover(
    iss: str,
    *,
    http: requests.Session,
    timeout: float | tuple[float, float],
    cache: DiscoveryCache | None = None,
) -> SMARTConfiguration:
    """The SMART configuration of the FHIR server at `iss`.

    The caller must have checked `iss` against the allow-list: this sends requests to it.
    Raises DiscoveryError (no usable configuration) or TemporaryUpstreamError (no answer).
    """
    iss = normalize_issuer(iss)
    if cache is not None and (cached := cache.get(iss)) is not None:
        return cached

    data = _get_json(http, f"{iss}/.well-known/smart-configuration", timeout, "application/json")
    if data is not None:
        try:
            config = SMARTConfiguration.from_well_known(iss, data)
        except DiscoveryError:
            if "code_challenge_methods_supported" in data or not _pkce_unlisted_by_family(
                http, iss, timeout
            ):
                raise
            log.info("SMART server %s lists no PKCE methods; its EHR family does S256", iss)
            config = SMARTConfiguration.from_well_known(iss, data, unlisted_pkce=True)
    else:
        # Deprecated since SMART 2.0 but still the only mechanism on some servers.
        metadata = _get_json(http, f"{iss}/metadata", timeout, "application/fhir+json")
        config_or_none = (
            SMARTConfiguration.from_capability_statement(iss, metadata) if metadata else None
        )
        if config_or_none is None:
            raise DiscoveryError(
                "The EHR publishes no SMART configuration: neither "
                "/.well-known/smart-configuration nor OAuth URIs in its CapabilityStatement."
            )
        config = config_or_none
        log.info("SMART server %s has no .well-known; using its CapabilityStatement", iss)

    if cache is not None:
        cache.put(iss, config)
    return config


def _pkce_unlisted_by_family(
    http: requests.Session, iss: str, timeout: float | tuple[float, float]
) -> bool:
    """Whether the server's EHR family (its quirks profile, from the CapabilityStatement)
    is known to require S256 without listing it in code_challenge_methods_supported."""
    from smartapp.quirks import catalog

    try:
        metadata = _get_json(http, f"{iss}/metadata", timeout, "application/fhir+json")
    except (DiscoveryError, TemporaryUpstreamError):
        return False  # no statement: nothing vouches for S256
    return catalog().detect(metadata).value("pkce_methods_listed", True) is False


def _get_json(
    http: requests.Session, url: str, timeout: float | tuple[float, float], accept: str
) -> dict[str, Any] | None:
    """The JSON object at `url`, or None when the server has no such document (4xx / not JSON).

    A redirect is followed only within the issuer's origin: the document decides where the
    clinician signs in, so it must come from the allowed server itself.
    """
    try:
        response = get_within_origin(http, url, headers={"Accept": accept}, timeout=timeout)
    except RedirectRefused as exc:
        log.warning("discovery at %s: redirect not followed: %s", _host(url), exc)
        raise DiscoveryError(
            "The EHR's server redirected the app's discovery request to another server "
            f"({exc}); the app follows redirects only within the EHR's own address."
        ) from None
    except requests.RequestException as exc:
        log.warning("discovery request to %s failed: %s", _host(url), type(exc).__name__)
        raise TemporaryUpstreamError(
            "The EHR's server is not answering right now. Try again in a moment."
        ) from exc
    if response.status_code >= 500 or response.status_code == 429:
        log.warning("discovery %s answered HTTP %s", _host(url), response.status_code)
        raise TemporaryUpstreamError(
            "The EHR's server is not answering right now. Try again in a moment."
        )
    if response.status_code >= 400:
        return None
    try:
        data = response.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _host(url: str) -> str:
    return urlsplit(url).netloc


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _strings(data: Mapping[str, Any], key: str) -> tuple[str, ...]:
    return tuple(v for v in _list(data.get(key)) if isinstance(v, str))


def _optional_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value else None


def _required_url(iss: str, data: Mapping[str, Any], key: str) -> str:
    url = _optional_url(iss, data, key)
    if url is None:
        raise DiscoveryError(f"The EHR's SMART configuration has no {key}.")
    return url


def _revocation_endpoint(iss: str, data: Mapping[str, Any]) -> str | None:
    # Optional and used only at logout: a bad one must not stop every launch.
    try:
        return _optional_url(iss, data, "revocation_endpoint")
    except DiscoveryError:
        log.warning("SMART server %s: revocation_endpoint unusable; logout will not revoke", iss)
        return None


def _optional_url(iss: str, data: Mapping[str, Any], key: str) -> str | None:
    value = _optional_str(data, key)
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise DiscoveryError(f"The EHR's SMART configuration has an invalid {key}.")
    # Never downgrade: an https FHIR server must not send the app to plain-http OAuth URLs.
    if parts.scheme == "http" and urlsplit(iss).scheme == "https":
        raise DiscoveryError(f"The EHR's SMART configuration gives a non-https {key}.")
    return value
