"""Quota use cases: reserve at admission, settle at success, refund at failure or cancel (each once per job)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.common.time import utcnow
from gateway.errors import ImagegateError, ValidationFailed
from gateway.quotas import repository
from gateway.quotas.models import ChargeState, JobCharge, Quota
from gateway.quotas.schemas import QuotaUpdate, UsageRead

LIMITS = ("images_per_day", "gpu_seconds_per_day", "concurrent_jobs", "requests_per_minute")


class QuotaExceeded(ImagegateError):
    """429: the code names the limit; ``Retry-After`` says when trying again can succeed."""

    status_code = 429

    def __init__(self, limit: str, *, value: float, used: float, retry_after: int, message: str) -> None:
        super().__init__(
            message,
            code=f"{limit}_exceeded",
            details={"limit": limit, "value": value, "used": used, "retry_after": retry_after},
            headers={"Retry-After": str(retry_after)},
        )
        self.limit = limit


@dataclass(frozen=True)
class Demand:
    """What a job asks for: images, and GPU-seconds estimated from size x steps x n."""

    images: int
    gpu_seconds: float

    @classmethod
    def of(cls, *, width: int, height: int, steps: int, n: int, seconds_per_megapixel_step: float) -> Demand:
        return cls(images=n, gpu_seconds=round(width * height / 1e6 * steps * n * seconds_per_megapixel_step, 3))


def today(now: datetime | None = None) -> str:
    return (now or utcnow()).date().isoformat()


def next_midnight(now: datetime) -> datetime:
    """When the daily limits reset (UTC)."""
    return datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=now.tzinfo)


def seconds_to_midnight(now: datetime | None = None) -> int:
    now = now or utcnow()
    return max(1, math.ceil((next_midnight(now) - now).total_seconds()))


async def reserve(session: AsyncSession, *, system_id: str, job_id: str, demand: Demand) -> JobCharge:
    """Reserve the job's demand in the caller's transaction, or raise QuotaExceeded and reserve nothing.

    Call it before inserting the job; add the returned charge after the job row (it references the job).
    """
    quota = await repository.take_job_slot(session, system_id)
    if quota is None:
        current = await repository.get_quota(session, system_id)
        limit = current.concurrent_jobs if current and current.concurrent_jobs is not None else 0
        raise _too_many_jobs(limit, current.active_jobs if current else 0, demand)
    _fits_a_day(quota, demand)
    day = today()
    if not await repository.spend(
        session, system_id, day, images=demand.images, gpu_seconds=demand.gpu_seconds, quota=quota
    ):
        await _refuse_daily(session, quota, day, demand)
    return JobCharge(job_id=job_id, system_id=system_id, day=day, images=demand.images, gpu_seconds=demand.gpu_seconds)


def _too_many_jobs(limit: int, active: int, demand: Demand) -> QuotaExceeded:
    return QuotaExceeded(
        "concurrent_jobs",
        value=limit,
        used=active,
        # A slot frees when one of the unfinished jobs ends; a job like this one takes about this long.
        retry_after=max(1, min(60, math.ceil(demand.gpu_seconds))),
        message=f"This system already has {active} unfinished jobs (limit {limit}).",
    )


def _fits_a_day(quota: Quota, demand: Demand) -> None:
    """A job bigger than a whole day's limit can never be admitted: that is a 422, not a 429 to retry."""
    for limit, value, wanted in (
        ("images_per_day", quota.images_per_day, demand.images),
        ("gpu_seconds_per_day", quota.gpu_seconds_per_day, demand.gpu_seconds),
    ):
        if value is not None and 0 < value < wanted:
            message = f"This needs {wanted:g} of {limit}, more than the whole daily limit of {value:g}."
            raise ValidationFailed(
                message, code="exceeds_daily_limit", details=[{"field": "body", "message": message, "limit": limit}]
            )


async def precheck(session: AsyncSession, *, system_id: str, demand: Demand, jobs: int = 1) -> None:
    """A read-only look before costly work (fetching input URLs): refuse now what admission would refuse.

    ``jobs`` is how many jobs ``demand`` is spread over (a batch). Not authoritative (nothing is locked);
    ``reserve`` decides.
    """
    quota = await repository.get_quota(session, system_id)
    if quota is None:
        return
    if quota.concurrent_jobs is not None and 0 < quota.concurrent_jobs < jobs:
        message = (
            f"This batch has {jobs} jobs, more than this system may have unfinished at once "
            f"(concurrent_jobs {quota.concurrent_jobs})."
        )
        raise ValidationFailed(
            message,
            code="batch_exceeds_concurrent_jobs",
            details=[{"field": "record", "message": message, "limit": "concurrent_jobs"}],
        )
    if quota.concurrent_jobs is not None and quota.active_jobs + jobs > quota.concurrent_jobs:
        raise _too_many_jobs(quota.concurrent_jobs, quota.active_jobs, demand)
    _fits_a_day(quota, demand)
    day = today()
    usage = await repository.get_usage(session, system_id, day)
    images = usage.images if usage else 0
    seconds = usage.gpu_seconds if usage else 0.0
    over_images = quota.images_per_day is not None and images + demand.images > quota.images_per_day
    over_seconds = quota.gpu_seconds_per_day is not None and seconds + demand.gpu_seconds > quota.gpu_seconds_per_day
    if over_images or over_seconds:
        await _refuse_daily(session, quota, day, demand)


async def refund_all(session: AsyncSession, job_ids: list[str]) -> None:
    """Refund several jobs (of any systems) in one transaction, taking locks in admission's order."""
    for charge in await repository.open_charges(session, job_ids):
        await refund(session, charge.job_id)


async def _refuse_daily(session: AsyncSession, quota: Quota, day: str, demand: Demand) -> None:
    usage = await repository.get_usage(session, quota.system_id, day)
    images = usage.images if usage else 0
    seconds = usage.gpu_seconds if usage else 0.0
    retry = seconds_to_midnight()
    if quota.images_per_day is not None and images + demand.images > quota.images_per_day:
        raise QuotaExceeded(
            "images_per_day",
            value=quota.images_per_day,
            used=images,
            retry_after=retry,
            message=f"{demand.images} more images would pass today's limit of {quota.images_per_day} ({images} used).",
        )
    assert quota.gpu_seconds_per_day is not None
    raise QuotaExceeded(
        "gpu_seconds_per_day",
        value=quota.gpu_seconds_per_day,
        used=round(seconds, 3),
        retry_after=retry,
        message=(
            f"This job's estimated {demand.gpu_seconds:g} GPU-seconds would pass today's limit of "
            f"{quota.gpu_seconds_per_day:g} ({seconds:.1f} used)."
        ),
    )


async def settle(session: AsyncSession, job_id: str, *, images: int, gpu_seconds: float) -> bool:
    """A job succeeded: its real images and GPU time replace the estimate. False if already settled/refunded."""
    charge = await repository.close_charge(
        session, job_id, state=ChargeState.settled, images=images, gpu_seconds=round(gpu_seconds, 3)
    )
    if charge is None:
        return False
    await repository.release(session, charge, images=images, gpu_seconds=round(gpu_seconds, 3))
    return True


async def refund(session: AsyncSession, job_id: str) -> bool:
    """A job failed or was cancelled: nothing of it counts. False if already settled/refunded."""
    charge = await repository.close_charge(session, job_id, state=ChargeState.refunded, images=0, gpu_seconds=0.0)
    if charge is None:
        return False
    await repository.release(session, charge, images=0, gpu_seconds=0.0)
    return True


async def usage_of(session: AsyncSession, *, system_id: str, system_name: str) -> UsageRead:
    now = utcnow()
    day = today(now)
    quota = await repository.get_quota(session, system_id)
    usage = await repository.get_usage(session, system_id, day)
    return UsageRead.of(system_name, day, next_midnight(now), quota, usage)


async def set_limits(session: AsyncSession, *, system_id: str, body: QuotaUpdate) -> Quota:
    return await repository.set_limits(session, system_id, body.model_dump(include=body.model_fields_set))
