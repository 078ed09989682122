"""Encryption of secrets at rest (backend passwords and tokens), keyed by ``IMAGEGATE_SECRET_KEY``."""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken


class SecretBox:
    """Fernet (AES-128-CBC + HMAC-SHA256) with a key derived from the gateway's secret key."""

    def __init__(self, secret_key: str) -> None:
        key = hashlib.sha256(b"imagegate/secretbox/v1\x00" + secret_key.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def seal(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def open(self, sealed: str) -> str:
        """The plaintext; ValueError when the secret key changed or the value was tampered with."""
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken as exc:
            raise ValueError("cannot decrypt: wrong IMAGEGATE_SECRET_KEY or tampered value") from exc
