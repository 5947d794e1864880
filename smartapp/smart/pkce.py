"""PKCE (RFC 7636) with the S256 method, the only one SMART App Launch 2.x allows.

https://www.rfc-editor.org/rfc/rfc7636 and
https://hl7.org/fhir/smart-app-launch/app-launch.html#step-3-app-requests-authorization
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

#: RFC 7636 §4.1: 43 to 128 characters from the unreserved set.
_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")


def make_verifier(nbytes: int = 64) -> str:
    """A fresh code_verifier: `nbytes` random bytes, base64url (64 bytes → 86 characters)."""
    verifier = secrets.token_urlsafe(nbytes)
    if not _VERIFIER.match(verifier):  # pragma: no cover - token_urlsafe is base64url
        raise ValueError("code_verifier out of range: use 32 to 96 random bytes")
    return verifier


def s256_challenge(verifier: str) -> str:
    """BASE64URL(SHA256(ASCII(code_verifier))) without padding (RFC 7636 §4.2)."""
    if not _VERIFIER.match(verifier):
        raise ValueError("code_verifier must be 43-128 unreserved characters (RFC 7636 §4.1)")
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
