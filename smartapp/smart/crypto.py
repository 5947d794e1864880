"""Secrets at rest: tokens encrypted with Fernet, cookie and state values stored as hashes.

Fernet (AES-128-CBC + HMAC-SHA256) with a key derived from SMARTAPP_SECRET_KEY by
HKDF-SHA256. https://cryptography.io/en/latest/fernet/
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from smartapp.atrest import Cipher, DecryptionFailed

__all__ = ["DecryptionFailed", "TokenCipher", "hash_secret", "random_secret", "same_secret"]


def hash_secret(value: str) -> str:
    """SHA-256 hex of a high-entropy random value (state, cookie): a DB leak reveals no cookie."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def same_secret(value: str, expected_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(value), expected_hash)


def random_secret(nbytes: int = 32) -> str:
    """`nbytes` random bytes, base64url: 32 bytes = 256 bits."""
    return secrets.token_urlsafe(nbytes)


class TokenCipher(Cipher):
    """Encrypts tokens for the store; the key never leaves the process. `previous` keys
    (SMARTAPP_PREVIOUS_SECRET_KEYS) still decrypt during a rotation."""

    def __init__(self, secret_key: str, *, previous: tuple[str, ...] = ()) -> None:
        if not secret_key:
            raise ValueError("a secret key is required to encrypt tokens")
        super().__init__(secret_key, purpose="tokens", previous=previous)
