"""SQL for systems and tokens."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from gateway.quotas.models import Quota
from gateway.systems.models import OAuthClient, System, Token


async def get_system_by_name(session: AsyncSession, name: str) -> System | None:
    result = await session.execute(select(System).where(System.name == name))
    return result.scalar_one_or_none()


async def list_systems(session: AsyncSession) -> Sequence[System]:
    result = await session.execute(select(System).order_by(col(System.name)))
    return result.scalars().all()


async def get_active_token(session: AsyncSession, token_hash: str) -> tuple[Token, System, int | None] | None:
    """The token, its system and the system's requests-per-minute limit, in one query (every request does this)."""
    result = await session.execute(
        select(Token, System, col(Quota.requests_per_minute))
        .join(System, col(System.id) == col(Token.system_id))
        .outerjoin(Quota, col(Quota.system_id) == col(System.id))
        .where(Token.token_hash == token_hash, col(Token.revoked_at).is_(None))
    )
    row = result.first()
    return (row[0], row[1], row[2]) if row else None


async def get_active_client(session: AsyncSession, client_id: str) -> tuple[OAuthClient, System] | None:
    result = await session.execute(
        select(OAuthClient, System)
        .join(System, col(System.id) == col(OAuthClient.system_id))
        .where(OAuthClient.id == client_id, col(OAuthClient.revoked_at).is_(None))
    )
    row = result.first()
    return (row[0], row[1]) if row else None


async def clients_of(session: AsyncSession, system_id: str) -> Sequence[OAuthClient]:
    result = await session.execute(
        select(OAuthClient).where(OAuthClient.system_id == system_id).order_by(col(OAuthClient.created_at))
    )
    return result.scalars().all()


async def tokens_by_prefix(session: AsyncSession, prefix: str) -> list[Token]:
    """Tokens whose display prefix starts with ``prefix``, case-sensitively (SQLite's LIKE ignores case)."""
    result = await session.execute(select(Token).where(col(Token.prefix).startswith(prefix, autoescape=True)))
    return [token for token in result.scalars() if token.prefix.startswith(prefix)]


async def tokens_of(session: AsyncSession, system_id: str) -> Sequence[Token]:
    result = await session.execute(select(Token).where(Token.system_id == system_id).order_by(col(Token.created_at)))
    return result.scalars().all()


async def get(session: AsyncSession, system_id: str) -> System | None:
    return await session.get(System, system_id)


async def set_logo(session: AsyncSession, system_id: str, sha256: str | None) -> bool:
    result = await session.execute(update(System).where(col(System.id) == system_id).values(logo_sha256=sha256))
    return bool(getattr(result, "rowcount", 0))
