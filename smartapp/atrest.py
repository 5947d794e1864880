"""Keys for what the app keeps at rest, all derived from SMARTAPP_SECRET_KEY.

One secret, one derivation (HKDF-SHA256 with a salt per purpose), so that tokens, PHI
(chart snapshots, clinicians' comments and edited texts) and the audit chain's seals share
one key management: set the key once, rotate it the same way. While rotating, the
retired keys go in SMARTAPP_PREVIOUS_SECRET_KEYS: values encrypted under them still read,
new values are encrypted under the current key.
https://cryptography.io/en/latest/fernet/#cryptography.fernet.MultiFernet
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: Purposes and their HKDF (salt, info). The token purpose keeps its original derivation,
#: so tokens stored before this module existed still decrypt.
PURPOSES: dict[str, tuple[bytes, bytes]] = {
    "tokens": (b"smartapp.smart.tokens", b"launch-session token encryption v1"),
    "phi": (b"smartapp.phi", b"chart snapshots, comments and edited texts v1"),
    "audit": (b"smartapp.audit", b"audit chain seal v1"),
}

#: Marks an encrypted value in a text column, so that a reader can tell ciphertext from
#: text written before encryption was turned on.
PREFIX = "enc1:"


class DecryptionFailed(Exception):
    """The ciphertext was not made with any configured key (the key changed) or was altered."""


def derive(secret_key: str, purpose: str) -> bytes:
    """32 bytes for `purpose` from the secret key (HKDF-SHA256)."""
    if not secret_key:
        raise ValueError("a secret key is required to protect data at rest")
    salt, info = PURPOSES[purpose]
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(
        secret_key.encode("utf-8")
    )


class Cipher:
    """Fernet (AES-128-CBC + HMAC-SHA256) under the current key; reads the previous keys too."""

    def __init__(
        self, secret_key: str, *, purpose: str = "tokens", previous: Sequence[str] = ()
    ) -> None:
        keys = [secret_key, *(k for k in previous if k and k != secret_key)]
        self._fernet = MultiFernet(
            [Fernet(base64.urlsafe_b64encode(derive(k, purpose))) for k in keys]
        )
        self._current = Fernet(base64.urlsafe_b64encode(derive(secret_key, purpose)))

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode("ascii")).decode("utf-8")
        except (InvalidToken, ValueError) as exc:
            raise DecryptionFailed() from exc

    def is_current(self, ciphertext: str) -> bool:
        """Whether the current key made it (else `rekey` has work to do)."""
        try:
            self._current.decrypt(ciphertext.encode("ascii"))
        except (InvalidToken, ValueError):
            return False
        return True

    def rotate(self, ciphertext: str) -> str:
        """The same plaintext under the current key."""
        try:
            return self._fernet.rotate(ciphertext.encode("ascii")).decode("ascii")
        except (InvalidToken, ValueError) as exc:
            raise DecryptionFailed() from exc

    # Text columns: a prefix tells ciphertext from text stored before encryption.
    def seal_text(self, plaintext: str) -> str:
        return PREFIX + self.encrypt(plaintext)

    def open_text(self, stored: str) -> str:
        if stored.startswith(PREFIX):
            return self.decrypt(stored[len(PREFIX) :])
        return stored  # written before encryption at rest
