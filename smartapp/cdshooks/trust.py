"""Which EHRs may call the CDS Hooks service, and the check of each request's signed JWT.

https://cds-hooks.hl7.org/2.0/#trusting-cds-clients

In CDS Hooks the EHR is the client: it signs a JWT with its private key and sends it as
`Authorization: Bearer …`. The service believes a request only when the JWT's `iss` is
an EHR the site registered (SMARTAPP_CDS_CLIENTS, a TOML file; in sandbox mode the
embedded EHR is registered too), the signature verifies against that EHR's registered
JWKS (never a `jku` the token names), `aud` is this service's URL, `exp` is near, and
the `jti` was not seen before. No registration: every hook call is refused (fail closed).

    [[client]]
    iss = "https://ehr.example.org"                 # the JWT's iss
    jwks_url = "https://ehr.example.org/cds/jwks"   # or jwks_file = "/etc/smartapp/ehr.jwks"
    fhir_servers = ["https://ehr.example.org/fhir"] # fhirServer values it may speak for
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeGuard
from urllib.parse import urlsplit

import requests
from joserfc import jws, jwt
from joserfc.errors import BadSignatureError, InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from smartapp.cdshooks.models import SeenRequestToken
from smartapp.config import ConfigError, normalize_issuer
from smartapp.db import Database, utcnow
from smartapp.errors import AppError

log = logging.getLogger(__name__)

#: CDS Hooks 2.0: clients SHOULD sign with ES384 or RS384; services MUST support both.
#: Asymmetric only: an HS* token keyed with a public key, or alg=none, never verifies.
ALGORITHMS = ("ES384", "RS384", "ES256", "RS256", "ES512", "RS512", "PS256", "PS384")
#: Clock skew tolerated on `exp`, `iat` and `nbf`.
LEEWAY_SECONDS = 30
#: The longest life a request JWT may have (iat to exp): "short-lived" made a number.
MAX_LIFETIME_SECONDS = 5 * 60
#: Seconds a fetched JWKS is reused before it is fetched again.
JWKS_TTL_SECONDS = 600.0
JWKS_MAX_BYTES = 256 * 1024


class CDSClientRefused(AppError):
    """The hook request's JWT is missing, or fails a check; the message says which."""

    code = "cds_client_refused"
    about_the_request = True


@dataclass(frozen=True, kw_only=True)
class CDSClient:
    """One EHR registered to call the service."""

    iss: str
    fhir_servers: tuple[str, ...]
    jwks_url: str | None = None
    #: A JWKS given inline (a file, or the sandbox's keys handed over in-process).
    jwks: Mapping[str, Any] | None = field(default=None, repr=False)

    def speaks_for(self, fhir_server: str) -> bool:
        return normalize_issuer(fhir_server) in self.fhir_servers


@dataclass(frozen=True, kw_only=True)
class VerifiedCaller:
    """Who called, as the verified JWT says."""

    client: CDSClient
    jti: str
    tenant: str | None = None


def load_clients(path: Path | None, *, allowed_issuers: Iterable[str]) -> tuple[CDSClient, ...]:
    """The registrations in `path` (SMARTAPP_CDS_CLIENTS); a bad file stops start-up."""
    if path is None:
        return ()
    name = "SMARTAPP_CDS_CLIENTS"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{name}={str(path)!r}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name}: {path} is not valid TOML ({exc})") from None
    allowed = {normalize_issuer(i) for i in allowed_issuers}
    clients: list[CDSClient] = []
    entries = data.get("client")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{name}: {path} lists no [[client]] (the EHRs that call the hooks)")
    for number, entry in enumerate(entries, start=1):
        where = f"{name}: {path} [[client]] #{number}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} is not a table")
        iss = entry.get("iss")
        if not isinstance(iss, str) or not iss.strip():
            raise ConfigError(f"{where}: iss is missing (the EHR's JWT issuer)")
        servers = entry.get("fhir_servers")
        if (
            not isinstance(servers, list)
            or not servers
            or not all(isinstance(s, str) for s in servers)
        ):
            raise ConfigError(f"{where}: fhir_servers must list the FHIR base URLs it speaks for")
        normalized = tuple(normalize_issuer(s) for s in servers)
        for server in normalized:
            # The hook warms charts for launches: only from issuers the app may launch from.
            if server not in allowed:
                raise ConfigError(
                    f"{where}: fhir_servers {server!r} is not in SMARTAPP_ALLOWED_ISSUERS"
                )
        jwks_url, jwks_file = entry.get("jwks_url"), entry.get("jwks_file")
        if bool(jwks_url) == bool(jwks_file):
            raise ConfigError(f"{where}: give exactly one of jwks_url and jwks_file")
        jwks: dict[str, Any] | None = None
        if jwks_file:
            try:
                jwks = json.loads(Path(str(jwks_file)).read_text(encoding="utf-8"))
                KeySet.import_key_set(jwks)  # type: ignore[arg-type]
            except (OSError, ValueError, JoseError) as exc:
                raise ConfigError(
                    f"{where}: jwks_file {jwks_file!r} is not a JWKS ({exc})"
                ) from None
        elif urlsplit(str(jwks_url)).scheme not in ("https", "http"):
            raise ConfigError(f"{where}: jwks_url must be an absolute https URL")
        clients.append(
            CDSClient(
                iss=str(iss).strip(),
                fhir_servers=normalized,
                jwks_url=str(jwks_url) if jwks_url else None,
                jwks=jwks,
            )
        )
    return tuple(clients)


class JTIStore:
    """Request JWT ids seen, kept in the app's store until they expire (every process)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def first_use(self, iss: str, jti: str, *, expires_at: datetime) -> bool:
        key = hashlib.sha256(f"{iss} {jti}".encode()).hexdigest()
        try:
            with self._db.session() as session:
                session.add(SeenRequestToken(key=key, expires_at=expires_at))
        except IntegrityError:
            return False
        return True

    def purge_expired(self) -> int:
        with self._db.session() as session:
            result = session.execute(
                delete(SeenRequestToken).where(SeenRequestToken.expires_at <= utcnow())
            )
            return int(getattr(result, "rowcount", 0) or 0)


class TrustRegistry:
    """The registered EHRs and their keys; verifies a request's bearer JWT."""

    def __init__(
        self,
        clients: Iterable[CDSClient],
        *,
        jti_store: JTIStore,
        http: Callable[[], requests.Session],
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clients: dict[str, CDSClient] = {}
        for client in clients:
            self.register(client)
        self._jti = jti_store
        self._http = http
        self._timeout = timeout
        self._clock = clock
        self._keys: dict[str, tuple[float, KeySet]] = {}
        self._lock = threading.Lock()

    def register(self, client: CDSClient) -> None:
        self._clients[client.iss] = client

    @property
    def clients(self) -> tuple[CDSClient, ...]:
        return tuple(self._clients.values())

    def verify(self, authorization: str | None, *, audience: str) -> VerifiedCaller:
        """The caller the bearer JWT proves, or CDSClientRefused naming the failed check."""
        if not self._clients:
            raise CDSClientRefused(
                "No EHR is registered to call this CDS service (SMARTAPP_CDS_CLIENTS)."
            )
        if not authorization or not authorization.lower().startswith("bearer "):
            raise CDSClientRefused("A signed JWT is required: Authorization: Bearer <JWT>.")
        token = authorization[7:].strip()
        try:
            compact = jws.extract_compact(token.encode("ascii"))
            header = compact.headers()
            unverified = json.loads(compact.payload)
        except (JoseError, ValueError, UnicodeError):
            raise CDSClientRefused("The bearer token is not a JWT.") from None
        if header.get("alg") not in ALGORITHMS:
            raise CDSClientRefused("The JWT's algorithm is not accepted (use ES384 or RS384).")
        iss = unverified.get("iss") if isinstance(unverified, dict) else None
        client = self._clients.get(iss) if isinstance(iss, str) else None
        if client is None:
            raise CDSClientRefused("The JWT's issuer is not an EHR registered for this service.")
        claims = self._decode(token, header, client)
        now = self._clock()
        audiences = claims.get("aud")
        audiences = audiences if isinstance(audiences, list) else [audiences]
        if audience not in audiences:
            raise CDSClientRefused("The JWT was issued for another service (aud).")
        exp, iat = claims.get("exp"), claims.get("iat")
        if not _number(exp):
            raise CDSClientRefused("The JWT has no expiry (exp).")
        if exp <= now - LEEWAY_SECONDS:
            raise CDSClientRefused("The JWT has expired (exp). Check the EHR's clock.")
        if not _number(iat):
            raise CDSClientRefused("The JWT has no issue time (iat).")
        if iat > now + LEEWAY_SECONDS:
            raise CDSClientRefused("The JWT is dated in the future (iat). Check the clocks.")
        if exp - iat > MAX_LIFETIME_SECONDS:
            raise CDSClientRefused(
                f"The JWT lives longer than {MAX_LIFETIME_SECONDS} seconds (exp - iat)."
            )
        nbf = claims.get("nbf")
        if _number(nbf) and nbf > now + LEEWAY_SECONDS:
            raise CDSClientRefused("The JWT is not valid yet (nbf).")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise CDSClientRefused("The JWT has no id (jti).")
        expires_at = datetime.fromtimestamp(exp + LEEWAY_SECONDS, UTC)
        if not self._jti.first_use(client.iss, jti, expires_at=expires_at + timedelta(seconds=1)):
            raise CDSClientRefused("The JWT was used before (jti): a replay is refused.")
        tenant = claims.get("tenant")
        return VerifiedCaller(
            client=client, jti=jti, tenant=tenant if isinstance(tenant, str) else None
        )

    def _decode(self, token: str, header: Mapping[str, Any], client: CDSClient) -> dict[str, Any]:
        keyset = self._keyset(client)
        try:
            return self._decode_with(token, header, keyset)
        except InvalidKeyIdError:
            if client.jwks_url is None:
                raise CDSClientRefused(
                    "The JWT is signed with a key the EHR did not register."
                ) from None
        # The EHR may have rotated its keys since they were fetched: fetch them once more.
        keyset = self._keyset(client, refresh=True)
        try:
            return self._decode_with(token, header, keyset)
        except InvalidKeyIdError:
            raise CDSClientRefused(
                "The JWT is signed with a key the EHR does not publish."
            ) from None

    @staticmethod
    def _decode_with(token: str, header: Mapping[str, Any], keyset: KeySet) -> dict[str, Any]:
        kid = header.get("kid")
        if kid is None:
            if len(keyset.keys) != 1:
                raise CDSClientRefused("The JWT names no key (kid).")
            key = keyset.keys[0]
        else:
            key = keyset.get_by_kid(kid)
        try:
            return dict(jwt.decode(token, key, algorithms=[str(header["alg"])]).claims)
        except BadSignatureError:
            raise CDSClientRefused("The JWT's signature does not verify.") from None
        except JoseError:
            raise CDSClientRefused("The JWT could not be verified.") from None

    def _keyset(self, client: CDSClient, *, refresh: bool = False) -> KeySet:
        if client.jwks is not None:
            return KeySet.import_key_set(client.jwks)  # type: ignore[arg-type]
        assert client.jwks_url is not None
        with self._lock:
            cached = self._keys.get(client.jwks_url)
        if cached and not refresh and time.monotonic() - cached[0] <= JWKS_TTL_SECONDS:
            return cached[1]
        keyset = self.fetch_jwks(client.jwks_url)
        with self._lock:
            self._keys[client.jwks_url] = (time.monotonic(), keyset)
        return keyset

    def fetch_jwks(self, url: str) -> KeySet:
        """The JWKS at a registered URL; redirects are not followed (the keys decide trust)."""
        try:
            with self._http() as http:
                response = http.get(
                    url,
                    headers={"Accept": "application/json"},
                    timeout=self._timeout,
                    allow_redirects=False,
                )
                body = response.content[: JWKS_MAX_BYTES + 1]
        except requests.RequestException as exc:
            log.warning("CDS client JWKS at %s: %s", urlsplit(url).netloc, type(exc).__name__)
            raise CDSClientRefused(
                "The EHR's registered keys (jwks_url) could not be fetched."
            ) from None
        if response.status_code != 200 or len(body) > JWKS_MAX_BYTES:
            raise CDSClientRefused(
                f"The EHR's registered keys (jwks_url) answered HTTP {response.status_code}."
            )
        try:
            return KeySet.import_key_set(json.loads(body))
        except (ValueError, TypeError, KeyError, JoseError):
            raise CDSClientRefused("The EHR's registered jwks_url holds no usable keys.") from None


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)
