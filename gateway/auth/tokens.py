"""API key format: ``igw_`` + 43 base62 characters of randomness + a 6-character CRC32 checksum.

The checksum lets the edge reject junk without touching the database; only the SHA-256 of a key is stored.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import zlib

TOKEN_PREFIX = "igw_"  # noqa: S105 - a public prefix, not a secret
CLIENT_SECRET_PREFIX = "igs_"  # noqa: S105 - the prefix of OAuth2 client secrets
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY_LEN = 43  # 43 base62 characters carry 256 bits
_CHECK_LEN = 6
_SHAPE = re.compile(rf"^{TOKEN_PREFIX}[0-9A-Za-z]{{{_BODY_LEN + _CHECK_LEN}}}$")
DISPLAY_LEN = len(TOKEN_PREFIX) + 8


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECK_LEN)


def generate_token(prefix: str = TOKEN_PREFIX) -> str:
    body = _base62(secrets.randbits(256), _BODY_LEN)
    return f"{prefix}{body}{_checksum(body)}"


def well_formed(token: str) -> bool:
    """Shape and checksum only: a cheap filter before the database look-up."""
    if not _SHAPE.match(token):
        return False
    body = token[len(TOKEN_PREFIX) : len(TOKEN_PREFIX) + _BODY_LEN]
    return secrets.compare_digest(_checksum(body), token[-_CHECK_LEN:])


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def display_prefix(token: str) -> str:
    """What lists and revocation show: ``igw_`` + 8 characters, enough to tell keys apart, useless to an attacker."""
    return token[:DISPLAY_LEN]
