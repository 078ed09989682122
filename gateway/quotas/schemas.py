"""Bodies of the quota and usage routes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from gateway.common.text import INTEGRAL
from gateway.quotas.models import Quota, UsageDay

Count = Annotated[int, Field(ge=0, le=10**9), INTEGRAL]


class QuotaUpdate(BaseModel):
    """Only the fields given change; `null` removes that limit."""

    model_config = ConfigDict(extra="forbid", strict=True)

    images_per_day: Count | None = None
    gpu_seconds_per_day: Annotated[float, Field(ge=0, le=1e9)] | None = None
    concurrent_jobs: Count | None = None
    requests_per_minute: Annotated[int, Field(ge=1, le=10**6), INTEGRAL] | None = None


class Limits(BaseModel):
    images_per_day: int | None
    gpu_seconds_per_day: float | None
    concurrent_jobs: int | None
    requests_per_minute: int | None

    @classmethod
    def of(cls, quota: Quota | None) -> Limits:
        if quota is None:
            return cls(images_per_day=None, gpu_seconds_per_day=None, concurrent_jobs=None, requests_per_minute=None)
        return cls(
            images_per_day=quota.images_per_day,
            gpu_seconds_per_day=quota.gpu_seconds_per_day,
            concurrent_jobs=quota.concurrent_jobs,
            requests_per_minute=quota.requests_per_minute,
        )


class Used(BaseModel):
    images: int = Field(description="Today's images: generated, plus reserved by unfinished jobs")
    gpu_seconds: float = Field(description="Today's GPU-seconds: measured, plus estimates of unfinished jobs")
    concurrent_jobs: int = Field(description="Jobs queued or running now")


class UsageRead(BaseModel):
    system: str
    day: str = Field(description="The UTC day the daily figures are for")
    resets_at: datetime = Field(description="When the daily figures start again from zero")
    limits: Limits
    used: Used

    @classmethod
    def of(cls, system: str, day: str, resets_at: datetime, quota: Quota | None, usage: UsageDay | None) -> UsageRead:
        return cls(
            system=system,
            day=day,
            resets_at=resets_at,
            limits=Limits.of(quota),
            used=Used(
                images=usage.images if usage else 0,
                gpu_seconds=round(usage.gpu_seconds, 3) if usage else 0.0,
                concurrent_jobs=quota.active_jobs if quota else 0,
            ),
        )
