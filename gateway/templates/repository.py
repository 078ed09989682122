"""SQL for template versions."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from gateway.templates.models import TemplateVersion


async def latest(session: AsyncSession, owner_key: str, name: str) -> TemplateVersion | None:
    result = await session.execute(
        select(TemplateVersion)
        .where(TemplateVersion.owner_key == owner_key, TemplateVersion.name == name)
        .order_by(col(TemplateVersion.version).desc())
        .limit(1)
    )
    return result.scalar_one_or_none()


async def get_version(session: AsyncSession, owner_key: str, name: str, version: int) -> TemplateVersion | None:
    result = await session.execute(
        select(TemplateVersion).where(
            TemplateVersion.owner_key == owner_key, TemplateVersion.name == name, TemplateVersion.version == version
        )
    )
    return result.scalar_one_or_none()


async def versions(session: AsyncSession, owner_key: str, name: str) -> Sequence[TemplateVersion]:
    result = await session.execute(
        select(TemplateVersion)
        .where(TemplateVersion.owner_key == owner_key, TemplateVersion.name == name)
        .order_by(col(TemplateVersion.version).desc())
    )
    return result.scalars().all()


async def with_source(session: AsyncSession, owner_key: str, name: str, source: str) -> TemplateVersion | None:
    result = await session.execute(
        select(TemplateVersion)
        .where(TemplateVersion.owner_key == owner_key, TemplateVersion.name == name, TemplateVersion.source == source)
        .limit(1)
    )
    return result.scalar_one_or_none()


async def latest_of_owners(session: AsyncSession, owner_keys: list[str]) -> Sequence[TemplateVersion]:
    """The newest version of every template of these owners."""
    newest = (
        select(TemplateVersion.owner_key, TemplateVersion.name, func.max(TemplateVersion.version).label("version"))
        .where(col(TemplateVersion.owner_key).in_(owner_keys))
        .group_by(col(TemplateVersion.owner_key), col(TemplateVersion.name))
        .subquery()
    )
    result = await session.execute(
        select(TemplateVersion)
        .join(
            newest,
            (col(TemplateVersion.owner_key) == newest.c.owner_key)
            & (col(TemplateVersion.name) == newest.c.name)
            & (col(TemplateVersion.version) == newest.c.version),
        )
        .order_by(col(TemplateVersion.name))
    )
    return result.scalars().all()
