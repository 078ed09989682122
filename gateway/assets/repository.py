"""SQL for assets."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from gateway.assets.models import Asset


async def get_for_system(session: AsyncSession, asset_id: str, system_id: str) -> Asset | None:
    """The asset if it belongs to the system; another system's asset is indistinguishable from a missing one."""
    result = await session.execute(select(Asset).where(Asset.id == asset_id, Asset.system_id == system_id))
    return result.scalar_one_or_none()


async def for_jobs(session: AsyncSession, job_ids: Sequence[str]) -> dict[str, list[Asset]]:
    if not job_ids:
        return {}
    result = await session.execute(
        select(Asset).where(col(Asset.job_id).in_(job_ids)).order_by(col(Asset.job_id), col(Asset.index))
    )
    grouped: dict[str, list[Asset]] = {job_id: [] for job_id in job_ids}
    for asset in result.scalars():
        grouped[asset.job_id].append(asset)
    return grouped
