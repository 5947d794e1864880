"""The app's signing key for `private_key_jwt` client authentication, and its public JWKS.

SMART "confidential asymmetric" clients sign an RS384 or ES384 assertion; the EHR
verifies it with the keys published at the app's `jwks_uri`.
https://hl7.org/fhir/smart-app-launch/client-confidential-asymmetric.html
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey, import_key

from smartapp.config import ConfigError

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

#: SMART servers must support RS384 and ES384 for client assertions; the app signs with those.
_ALG_FOR_KEY = {"RSA": "RS384", "EC": "ES384"}

#: SMART: the assertion's `exp` is no more than five minutes in the future.
ASSERTION_LIFETIME_SECONDS = 300


@dataclass(frozen=True)
class SigningKey:
    key: RSAKey | ECKey
    alg: str
    kid: str

    def public_jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = dict(self.key.as_dict(private=False))
        # Publish only the public half and say what it is for.
        jwk.update({"kid": self.kid, "alg": self.alg, "use": "sig", "key_ops": ["verify"]})
        for private_member in ("d", "p", "q", "dp", "dq", "qi", "oth"):
            jwk.pop(private_member, None)
        return jwk


def load_signing_key(path: Path) -> SigningKey:
    """Read SMARTAPP_PRIVATE_KEY: a PEM private key, a JWK, or a JWKS holding one JWK."""
    variable = f"SMARTAPP_PRIVATE_KEY={str(path)!r}"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read the file ({exc.strerror})") from exc

    declared_alg: str | None = None
    declared_kid: str | None = None
    try:
        if raw.lstrip().startswith(b"{"):
            data = json.loads(raw)
            if isinstance(data, dict) and isinstance(data.get("keys"), list):
                if len(data["keys"]) != 1:
                    raise ConfigError(f"{variable}: a JWKS must hold exactly one private key")
                data = data["keys"][0]
            if not isinstance(data, dict):
                raise ConfigError(f"{variable}: not a JWK object")
            declared_alg = data.get("alg") if isinstance(data.get("alg"), str) else None
            declared_kid = data.get("kid") if isinstance(data.get("kid"), str) else None
            key = import_key(data)
        else:
            key = _import_pem(raw)
    except ConfigError:
        raise
    except (JoseError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"{variable}: not a readable PEM or JWK private key ({type(exc).__name__})"
        ) from exc

    if not isinstance(key, (RSAKey, ECKey)) or not key.is_private:
        raise ConfigError(f"{variable}: must be an RSA or EC (P-384) private key")
    alg = _ALG_FOR_KEY[key.key_type]
    if isinstance(key, ECKey) and key.as_dict().get("crv") != "P-384":
        raise ConfigError(f"{variable}: an EC key must be on curve P-384 (for ES384)")
    if isinstance(key, RSAKey) and key.raw_value.key_size < 2048:
        raise ConfigError(f"{variable}: an RSA key must have at least 2048 bits")
    if declared_alg is not None and declared_alg != alg:
        raise ConfigError(f"{variable}: the key says alg {declared_alg}; the app signs {alg}")
    return SigningKey(key=key, alg=alg, kid=declared_kid or key.thumbprint())


def _import_pem(raw: bytes) -> RSAKey | ECKey:
    """A PKCS#8 PEM may hold either kind of key: try RSA, then EC."""
    try:
        return RSAKey.import_key(raw)
    except (JoseError, ValueError, TypeError):
        return ECKey.import_key(raw)


def public_jwks(key: SigningKey | None) -> dict[str, list[dict[str, Any]]]:
    """The document served at `/.well-known/jwks.json` (an empty set without a key)."""
    return {"keys": [key.public_jwk()] if key else []}


def public_keyset(key: SigningKey) -> KeySet:
    return KeySet([import_key(key.public_jwk())])


def client_assertion(
    key: SigningKey,
    *,
    client_id: str,
    token_endpoint: str,
    now: int | None = None,
    lifetime: int = ASSERTION_LIFETIME_SECONDS,
) -> str:
    """A signed JWT authenticating the app at `token_endpoint` (RFC 7523, SMART profile)."""
    if not 0 < lifetime <= ASSERTION_LIFETIME_SECONDS:
        raise ValueError("a SMART client assertion expires within five minutes")
    issued_at = int(time.time()) if now is None else now
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_endpoint,
        "iat": issued_at,
        "exp": issued_at + lifetime,
        # A fresh jti per assertion: servers reject a replayed one.
        "jti": secrets.token_urlsafe(24),
    }
    header = {"alg": key.alg, "kid": key.kid, "typ": "JWT"}
    return jwt.encode(header, claims, key.key, algorithms=[key.alg])
