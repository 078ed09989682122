"""Tables of quotas: each system's limits, its use per UTC day, and what each job reserved against them."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Column, Float, ForeignKey, Integer, String
from sqlmodel import Field, SQLModel

from gateway.common.time import UTCDateTime, utcnow


class Quota(SQLModel, table=True):
    """A system's limits (null: unlimited) and its count of unfinished jobs.

    Every admission of a job updates this row first; on PostgreSQL that row lock is what makes the
    conditional updates of one system's counters serialise, so that N racing requests admit exactly the limit.
    """

    __tablename__ = "quotas"

    system_id: str = Field(sa_column=Column(String(40), ForeignKey("systems.id", ondelete="CASCADE"), primary_key=True))
    images_per_day: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    gpu_seconds_per_day: float | None = Field(default=None, sa_column=Column(Float, nullable=True))
    concurrent_jobs: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    requests_per_minute: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    active_jobs: int = Field(default=0, sa_column=Column(Integer, nullable=False, default=0))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))


class UsageDay(SQLModel, table=True):
    """What a system spent on one UTC day: reserved by queued and running jobs, settled by finished ones."""

    __tablename__ = "usage_days"

    system_id: str = Field(sa_column=Column(String(40), ForeignKey("systems.id", ondelete="CASCADE"), primary_key=True))
    day: str = Field(sa_column=Column(String(10), primary_key=True))  # YYYY-MM-DD, UTC
    images: int = Field(default=0, sa_column=Column(Integer, nullable=False, default=0))
    gpu_seconds: float = Field(default=0.0, sa_column=Column(Float, nullable=False, default=0.0))


class ChargeState(enum.StrEnum):
    reserved = "reserved"  # admitted, not finished: its estimate counts
    settled = "settled"  # succeeded: the real figures count
    refunded = "refunded"  # failed or cancelled: nothing counts


class JobCharge(SQLModel, table=True):
    """What one job reserved. Its state moves once, so settling or refunding a job twice changes nothing."""

    __tablename__ = "job_charges"

    job_id: str = Field(sa_column=Column(String(40), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True))
    system_id: str = Field(sa_column=Column(String(40), nullable=False, index=True))
    day: str = Field(sa_column=Column(String(10), nullable=False))
    images: int
    gpu_seconds: float
    state: str = Field(default=ChargeState.reserved.value, sa_column=Column(String(12), nullable=False))
    settled_images: int | None = None
    settled_gpu_seconds: float | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))
    settled_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
