"""Systems and their API keys. Services take the session explicitly and never commit."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.auth.access_tokens import AccessClaims
from gateway.auth.tokens import CLIENT_SECRET_PREFIX, display_prefix, generate_token, hash_token, well_formed
from gateway.common.ids import is_id
from gateway.common.time import utcnow
from gateway.errors import Conflict, NotFound, ValidationFailed
from gateway.quotas.models import Quota
from gateway.systems import repository
from gateway.systems.models import OAuthClient, System, Token
from policies.scopes import parse_scopes

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the system and the scopes this credential holds."""

    system_id: str
    system_name: str
    scopes: frozenset[str]
    token_id: str | None = None
    client_id: str | None = None  # set when the caller came with an OAuth2 access token
    requests_per_minute: int | None = None  # the system's rate limit, read with the credential

    @property
    def credential(self) -> str:
        """Which credential acted (an id, never a secret): for the audit log."""
        return self.token_id or self.client_id or "-"


@dataclass(frozen=True)
class IssuedToken:
    system: System
    token: Token
    secret: str  # the plain key: shown once, never stored


@dataclass(frozen=True)
class IssuedClient:
    system: System
    client: OAuthClient
    secret: str  # the plain client secret: shown once, never stored


async def create_system(session: AsyncSession, *, name: str, scopes: list[str] | str) -> IssuedToken:
    if not _NAME.match(name):
        raise ValidationFailed("System names are 1-64 characters: lowercase letters, digits, '-' or '_'.")
    try:
        parsed = parse_scopes(scopes)
    except ValueError as exc:
        raise ValidationFailed(str(exc)) from exc
    if await repository.get_system_by_name(session, name) is not None:
        raise Conflict(f"System {name!r} already exists.", code="system_exists")
    system = System(name=name, scopes=parsed)
    session.add(system)
    await session.flush()
    return await _issue(session, system)


async def issue_token(session: AsyncSession, *, system_name: str) -> IssuedToken:
    system = await repository.get_system_by_name(session, system_name)
    if system is None:
        raise NotFound(f"No system named {system_name!r}.")
    return await _issue(session, system)


async def _issue(session: AsyncSession, system: System) -> IssuedToken:
    secret = generate_token()
    token = Token(system_id=system.id, prefix=display_prefix(secret), token_hash=hash_token(secret))
    session.add(token)
    await session.flush()
    return IssuedToken(system=system, token=token, secret=secret)


async def revoke_token(session: AsyncSession, *, prefix: str) -> Token:
    """Revoke the one token whose display prefix starts with ``prefix`` (ambiguous or unknown prefixes refuse)."""
    prefix = prefix.strip()
    if len(prefix) < 6:
        raise ValidationFailed("Give at least the first 6 characters of the token (e.g. igw_AbCd1234).")
    if well_formed(prefix):  # a whole key was given
        matches = [
            t
            for t in await repository.tokens_by_prefix(session, display_prefix(prefix))
            if t.token_hash == hash_token(prefix)
        ]
    else:
        matches = await repository.tokens_by_prefix(session, prefix)
    if not matches:
        raise NotFound(f"No token starts with {prefix!r}.")
    if len(matches) > 1:
        raise Conflict(f"{len(matches)} tokens start with {prefix!r}; give more characters.", code="ambiguous_prefix")
    token = matches[0]
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        session.add(token)
    return token


async def authenticate(session: AsyncSession, secret: str) -> Principal | None:
    """The principal of a valid, unrevoked key, or None (the caller answers every None with one 401)."""
    if not well_formed(secret):
        return None
    found = await repository.get_active_token(session, hash_token(secret))
    if found is None:
        return None
    token, system, rpm = found
    return Principal(
        system_id=system.id,
        system_name=system.name,
        scopes=_narrowed(system, token.scopes),
        token_id=token.id,
        requests_per_minute=rpm,
    )


def _narrowed(system: System, scopes: list[str] | None) -> frozenset[str]:
    """A credential holds the system's scopes, narrowed by its own list if it has one (never widened)."""
    held = set(system.scopes)
    if scopes is not None:
        held &= set(scopes)
    return frozenset(held)


async def create_oauth_client(session: AsyncSession, *, system_name: str) -> IssuedClient:
    system = await repository.get_system_by_name(session, system_name)
    if system is None:
        raise NotFound(f"No system named {system_name!r}.")
    secret = generate_token(CLIENT_SECRET_PREFIX)
    client = OAuthClient(system_id=system.id, secret_hash=hash_token(secret))
    session.add(client)
    await session.flush()
    return IssuedClient(system=system, client=client, secret=secret)


async def authenticate_client(session: AsyncSession, client_id: str, secret: str) -> tuple[OAuthClient, System] | None:
    """The client and its system for a valid, unrevoked client id + secret, or None."""
    if not is_id(client_id, "cli"):
        return None
    found = await repository.get_active_client(session, client_id)
    if found is None or not secrets.compare_digest(found[0].secret_hash, hash_token(secret)):
        return None
    return found


def client_scopes(client: OAuthClient, system: System) -> frozenset[str]:
    return _narrowed(system, client.scopes)


async def authenticate_access_token(session: AsyncSession, claims: AccessClaims) -> Principal | None:
    """The principal of a verified access token whose client is still active (revoking it ends its tokens)."""
    found = await repository.get_active_client(session, claims.client_id)
    if found is None or found[1].id != claims.system_id:
        return None
    client, system = found
    quota = await session.get(Quota, system.id)
    return Principal(
        system_id=system.id,
        system_name=system.name,
        # The token's scopes, but never more than the client holds now (a narrowed system narrows its tokens).
        scopes=frozenset(claims.scopes & client_scopes(client, system)),
        client_id=client.id,
        requests_per_minute=quota.requests_per_minute if quota else None,
    )


async def get_system(session: AsyncSession, name: str) -> System:
    system = await repository.get_system_by_name(session, name)
    if system is None:
        raise NotFound(f"No system named {name!r}.", code="system_not_found")
    return system


async def set_scopes(session: AsyncSession, *, name: str, scopes: list[str]) -> System:
    system = await get_system(session, name)
    try:
        system.scopes = parse_scopes(scopes)
    except ValueError as exc:
        raise ValidationFailed(str(exc)) from exc
    session.add(system)
    await session.flush()
    return system


async def issue_narrowed_token(session: AsyncSession, *, name: str, scopes: list[str] | None) -> IssuedToken:
    """Another key for the system; ``scopes`` narrows it (each must be one the system holds)."""
    system = await get_system(session, name)
    extra = set(scopes or ()) - set(system.scopes)
    if extra:
        raise ValidationFailed(
            f"The system does not hold: {', '.join(sorted(extra))}.",
            details=[{"field": "scopes", "message": "a key cannot hold more than its system"}],
        )
    issued = await _issue(session, system)
    if scopes is not None:
        issued.token.scopes = sorted(set(scopes))
        session.add(issued.token)
        await session.flush()
    return issued


Credential = TypeVar("Credential", Token, OAuthClient)


async def revoke_of(session: AsyncSession, model: type[Credential], *, name: str, item_id: str) -> Credential:
    """Revoke one of the system's keys or OAuth2 clients (another system's id is not found); idempotent."""
    system = await get_system(session, name)
    item = await session.get(model, item_id)
    if item is None or item.system_id != system.id:
        kind = "token" if model is Token else "client"
        raise NotFound(f"No such {kind}.", code=f"{kind}_not_found")
    if item.revoked_at is None:
        item.revoked_at = utcnow()
        session.add(item)
    return item
