"""OAuth2 access tokens: short-lived JWTs (HS256 with a key derived from ``IMAGEGATE_SECRET_KEY``).

Signed and checked with joserfc, the JOSE library of the Authlib project (``authlib.jose`` is deprecated in its
favour). Only HS256 is accepted: ``alg=none``, other algorithms and any token not signed by this gateway fail.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

ALGORITHM = "HS256"
_JWT_SHAPE_PARTS = 3


@dataclass(frozen=True)
class AccessClaims:
    client_id: str
    system_id: str
    scopes: frozenset[str]
    expires_at: int


class AccessTokens:
    """Issue and verify access tokens for one issuer and audience."""

    def __init__(self, secret_key: str, *, issuer: str, audience: str, ttl_seconds: int) -> None:
        derived = hmac.new(secret_key.encode(), b"imagegate/oauth2-access-token/v1", hashlib.sha256).digest()
        self._key = OctKey.import_key(derived)
        self.issuer = issuer
        self.audience = audience
        self.ttl_seconds = ttl_seconds
        self._registry = jwt.JWTClaimsRegistry(
            leeway=5,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": audience},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
        )

    def issue(self, *, client_id: str, system_id: str, scopes: list[str]) -> tuple[str, int]:
        """A signed token and its lifetime in seconds."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": client_id,
            "sid": system_id,
            "scope": " ".join(sorted(scopes)),
            "iat": now,
            "nbf": now,
            "exp": now + self.ttl_seconds,
            "jti": secrets.token_hex(12),
        }
        return jwt.encode(
            {"alg": ALGORITHM, "typ": "at+jwt"}, claims, self._key, algorithms=[ALGORITHM]
        ), self.ttl_seconds

    def verify(self, token: str) -> AccessClaims | None:
        """The claims of a valid token, or None for anything else (one 401 for every failure)."""
        if token.count(".") != _JWT_SHAPE_PARTS - 1 or len(token) > 4096:
            return None
        try:
            decoded = jwt.decode(token, self._key, algorithms=[ALGORITHM])
            if decoded.header.get("alg") != ALGORITHM:
                return None
            self._registry.validate(decoded.claims)
            claims = decoded.claims
            scope, sub, sid, exp = claims.get("scope", ""), claims["sub"], claims.get("sid"), claims["exp"]
        except (JoseError, ValueError, KeyError, TypeError):
            return None
        if not (isinstance(scope, str) and isinstance(sub, str) and isinstance(sid, str) and isinstance(exp, int)):
            return None
        return AccessClaims(client_id=sub, system_id=sid, scopes=frozenset(scope.split()), expires_at=exp)


def looks_like_jwt(token: str) -> bool:
    return token.startswith("eyJ") and token.count(".") == _JWT_SHAPE_PARTS - 1
