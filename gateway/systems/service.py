"""Systems and their API keys. Services take the session explicitly and never commit."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.auth.tokens import display_prefix, generate_token, hash_token, well_formed
from gateway.common.time import utcnow
from gateway.errors import Conflict, NotFound, ValidationFailed
from gateway.systems import repository
from gateway.systems.models import System, Token
from policies.scopes import parse_scopes

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the system and the scopes this credential holds."""

    system_id: str
    system_name: str
    scopes: frozenset[str]
    token_id: str | None = None


@dataclass(frozen=True)
class IssuedToken:
    system: System
    token: Token
    secret: str  # the plain key: shown once, never stored


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
    token, system = found
    scopes = set(system.scopes)
    if token.scopes is not None:
        scopes &= set(token.scopes)
    return Principal(system_id=system.id, system_name=system.name, scopes=frozenset(scopes), token_id=token.id)
