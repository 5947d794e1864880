"""Secrets at rest: tokens encrypted with Fernet, cookie and state values stored as hashes.

Fernet (AES-128-CBC + HMAC-SHA256) with a key derived from SMARTAPP_SECRET_KEY by
HKDF-SHA256. https://cryptography.io/en/latest/fernet/
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def hash_secret(value: str) -> str:
    """SHA-256 hex of a high-entropy random value (state, cookie): a DB leak reveals no cookie."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def same_secret(value: str, expected_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(value), expected_hash)


def random_secret(nbytes: int = 32) -> str:
    """`nbytes` random bytes, base64url: 32 bytes = 256 bits."""
    return secrets.token_urlsafe(nbytes)


class DecryptionFailed(Exception):
    """The ciphertext was not made with this key (the secret key changed) or was altered."""


class TokenCipher:
    """Encrypts tokens for the store; the key never leaves the process."""

    def __init__(self, secret_key: str) -> None:
        if not secret_key:
            raise ValueError("a secret key is required to encrypt tokens")
        derived = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=b"smartapp.smart.tokens",
            info=b"launch-session token encryption v1",
        ).derive(secret_key.encode("utf-8"))
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode("ascii")).decode("utf-8")
        except (InvalidToken, ValueError) as exc:
            raise DecryptionFailed() from exc
