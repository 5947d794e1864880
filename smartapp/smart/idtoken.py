"""Validation of the OpenID Connect `id_token` and the clinician's `fhirUser` reference.

Signature against the server's JWKS, then `iss`, `aud`, `exp`, `nonce`.
https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html#scopes-for-requesting-identity-data
and https://openid.net/specs/openid-connect-core-1_0.html#IDTokenValidation
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from joserfc import jws, jwt
from joserfc.errors import BadSignatureError, InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from smartapp.errors import AuthorizationFailed, TemporaryUpstreamError
from smartapp.identity import normalize_fhir_user
from smartapp.redirects import RedirectRefused, get_within_origin

log = logging.getLogger(__name__)

#: Asymmetric algorithms only: an HS* token "signed" with the server's public key, or
#: alg=none, must never validate. SMART servers sign id_tokens with RS256.
ID_TOKEN_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384")

#: Clock skew tolerated on `exp` and `iat`, in seconds.
LEEWAY_SECONDS = 60

#: Seconds a fetched JWKS is reused before it is fetched again.
JWKS_TTL_SECONDS = 3600.0


class IDTokenInvalid(AuthorizationFailed):
    """The id_token failed validation; the message says which check, never the token."""

    code = "invalid_id_token"
    default_message = "the id_token could not be verified"


@dataclass(frozen=True, kw_only=True)
class IDTokenClaims:
    sub: str
    #: `fhirUser` as the server sent it (relative or absolute), or None.
    fhir_user_raw: str | None
    #: `fhirUser` as a relative reference ("Practitioner/123"), or None.
    fhir_user: str | None
    claims: dict[str, Any] = field(repr=False)


class JWKSCache:
    """The authorization servers' public keys, per jwks_uri (thread-safe)."""

    def __init__(self, ttl_seconds: float = JWKS_TTL_SECONDS) -> None:
        self.ttl_seconds = ttl_seconds
        self._entries: dict[str, tuple[float, KeySet]] = {}
        self._lock = threading.Lock()

    def get(
        self,
        jwks_uri: str,
        *,
        http: requests.Session,
        timeout: float | tuple[float, float],
        refresh: bool = False,
    ) -> KeySet:
        with self._lock:
            entry = self._entries.get(jwks_uri)
        if entry and not refresh and time.monotonic() - entry[0] <= self.ttl_seconds:
            return entry[1]
        keyset = _fetch_jwks(jwks_uri, http=http, timeout=timeout)
        with self._lock:
            self._entries[jwks_uri] = (time.monotonic(), keyset)
        return keyset

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _fetch_jwks(
    jwks_uri: str, *, http: requests.Session, timeout: float | tuple[float, float]
) -> KeySet:
    try:
        # The keys decide whose identity tokens are believed: never from another origin.
        response = get_within_origin(
            http, jwks_uri, headers={"Accept": "application/json"}, timeout=timeout
        )
    except RedirectRefused as exc:
        log.warning("JWKS at %s: redirect not followed: %s", urlsplit(jwks_uri).netloc, exc)
        raise IDTokenInvalid(
            "The EHR's signing keys (jwks_uri) redirect to another server; not followed."
        ) from None
    except requests.RequestException as exc:
        log.warning("JWKS request to %s failed: %s", urlsplit(jwks_uri).netloc, type(exc).__name__)
        raise TemporaryUpstreamError(
            "The EHR's sign-in keys could not be fetched. Try again in a moment."
        ) from exc
    if response.status_code >= 500:
        raise TemporaryUpstreamError(
            "The EHR's sign-in keys could not be fetched. Try again in a moment."
        )
    try:
        data = response.json()
        if response.status_code >= 400 or not isinstance(data, dict):
            raise ValueError("not a JWKS")
        return KeySet.import_key_set(data)  # type: ignore[arg-type]
    except (ValueError, KeyError, TypeError, JoseError) as exc:
        raise IDTokenInvalid("The EHR publishes no usable signing keys (jwks_uri).") from exc


def validate_id_token(
    id_token: str,
    *,
    issuer: str,
    client_id: str,
    nonce: str | None,
    jwks_uri: str | None,
    jwks: JWKSCache,
    http: requests.Session,
    timeout: float | tuple[float, float],
    now: int | None = None,
    leeway: int = LEEWAY_SECONDS,
) -> IDTokenClaims:
    """Verify the id_token and return its claims, or raise IDTokenInvalid saying which check failed.

    `issuer` is the configuration's `issuer` (or the FHIR base URL when it has none).
    """
    if not jwks_uri:
        raise IDTokenInvalid(
            "The EHR sent an identity token but publishes no jwks_uri to check it."
        )
    try:
        header = jws.extract_compact(id_token.encode("ascii")).headers()
    except (JoseError, ValueError, UnicodeError) as exc:
        raise IDTokenInvalid("The EHR's identity token is malformed.") from exc
    if header.get("alg") not in ID_TOKEN_ALGORITHMS:
        raise IDTokenInvalid("The EHR's identity token uses an algorithm the app does not accept.")

    keyset = jwks.get(jwks_uri, http=http, timeout=timeout)
    try:
        token = _decode(id_token, keyset, header)
    except InvalidKeyIdError:
        # The server may have rotated its keys since we fetched them: fetch once more.
        keyset = jwks.get(jwks_uri, http=http, timeout=timeout, refresh=True)
        try:
            token = _decode(id_token, keyset, header)
        except InvalidKeyIdError as exc:
            raise IDTokenInvalid(
                "The EHR's identity token is signed with a key the EHR does not publish."
            ) from exc

    claims = token.claims
    current = int(time.time()) if now is None else now
    if claims.get("iss") != issuer:
        raise IDTokenInvalid("The EHR's identity token was issued by a different server.")
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if client_id not in audiences:
        raise IDTokenInvalid("The EHR's identity token was issued for a different app.")
    if len(audiences) > 1 and claims.get("azp") not in (None, client_id):
        raise IDTokenInvalid("The EHR's identity token was issued for a different app.")
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        raise IDTokenInvalid("The EHR's identity token has no expiry time.")
    if exp <= current - leeway:
        raise IDTokenInvalid(
            "The EHR's identity token has expired. If this repeats, check the server clocks.",
            reason="clock",
        )
    iat = claims.get("iat")
    if isinstance(iat, (int, float)) and iat > current + leeway:
        raise IDTokenInvalid(
            "The EHR's identity token is dated in the future. Check the clocks.", reason="clock"
        )
    if nonce is not None:
        supplied = claims.get("nonce")
        if not isinstance(supplied, str) or not hmac.compare_digest(supplied, nonce):
            raise IDTokenInvalid("The EHR's identity token does not belong to this sign-in.")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise IDTokenInvalid("The EHR's identity token names no user (sub).")

    raw_fhir_user = claims.get("fhirUser")
    fhir_user_raw = raw_fhir_user if isinstance(raw_fhir_user, str) and raw_fhir_user else None
    return IDTokenClaims(
        sub=sub,
        fhir_user_raw=fhir_user_raw,
        fhir_user=normalize_fhir_user(fhir_user_raw) if fhir_user_raw else None,
        claims=dict(claims),
    )


def _decode(id_token: str, keyset: KeySet, header: dict[str, Any]) -> jwt.Token:
    kid = header.get("kid")
    # Resolve the key ourselves so that an unknown kid is told apart from a bad signature.
    if kid is None and len(keyset.keys) != 1:
        candidates = [k for k in keyset.keys if k.key_type == _key_type_for(header["alg"])]
        if len(candidates) != 1:
            raise IDTokenInvalid("The EHR's identity token names no key (kid).")
        key = candidates[0]
    else:
        key = keyset.get_by_kid(kid)  # raises InvalidKeyIdError
    try:
        return jwt.decode(id_token, key, algorithms=[header["alg"]])
    except BadSignatureError as exc:
        raise IDTokenInvalid("The EHR's identity token has an invalid signature.") from exc
    except JoseError as exc:
        raise IDTokenInvalid("The EHR's identity token could not be verified.") from exc


def _key_type_for(alg: str) -> str:
    return "EC" if alg.startswith("ES") else "RSA"
