"""The job table: one generation request and its state machine (queued -> running -> terminal)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Column, Float, ForeignKey, Index, String, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from gateway.common.ids import new_id
from gateway.common.time import UTCDateTime, utcnow


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})


class Job(SQLModel, table=True):
    """One generation. The database row is the source of truth; queues only carry its id."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("system_id", "idempotency_key", name="uq_jobs_system_idempotency_key"),
        Index("ix_jobs_system_created", "system_id", "id"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
        Index("ix_jobs_batch", "batch_id"),
    )

    id: str = Field(default_factory=lambda: new_id("job"), primary_key=True, max_length=40)
    system_id: str = Field(sa_column=Column(String(40), ForeignKey("systems.id"), nullable=False))
    status: str = Field(default=JobStatus.queued.value, sa_column=Column(String(16), nullable=False))
    progress: float = Field(default=0.0, sa_column=Column(Float, nullable=False, default=0.0))

    prompt: str = Field(sa_column=Column(Text, nullable=False))
    negative_prompt: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int = Field(sa_column=Column(BigInteger, nullable=False))
    n: int
    model: str | None = Field(default=None, max_length=200)
    output_format: str = Field(max_length=8)
    sampler: str | None = Field(default=None, max_length=100)
    scheduler: str | None = Field(default=None, max_length=100)
    denoising_strength: float | None = Field(default=None)
    init_image_sha256: str | None = Field(default=None, max_length=64)  # image-to-image input, in the asset store
    mask_sha256: str | None = Field(default=None, max_length=64)
    describe: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, default=False))
    oom_fallback: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, default=False))
    notes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False, default=list))

    backend: str | None = Field(default=None, max_length=100)
    error_code: str | None = Field(default=None, max_length=64)
    error_message: str | None = Field(default=None, sa_column=Column(Text, nullable=True))

    template_version_id: str | None = Field(default=None, max_length=40)  # the exact version it was rendered from
    template_name: str | None = Field(default=None, max_length=100)
    template_version: int | None = Field(default=None)

    tags: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))  # given to its assets
    watermark: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    batch_id: str | None = Field(
        default=None,
        sa_column=Column(
            String(40), ForeignKey("batches.id", name="fk_jobs_batch_id", ondelete="SET NULL"), nullable=True
        ),
    )
    batch_role: str | None = Field(default=None, max_length=100)
    batch_index: int | None = Field(default=None)  # its position in the batch, from 0
    batch_name: str | None = Field(default=None, max_length=120)  # unique within its batch: main, detail-2
    deliver: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON, nullable=True))  # targets
    callback_url: str | None = Field(default=None, sa_column=Column(Text, nullable=True))

    idempotency_key: str | None = Field(default=None, max_length=255)
    request_hash: str | None = Field(default=None, max_length=64)

    attempts: int = Field(default=0)
    lease_owner: str | None = Field(default=None, max_length=100)
    lease_token: str | None = Field(default=None, max_length=64)
    lease_expires_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    queue_ref: str | None = Field(default=None, max_length=100)
    enqueued_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))

    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))
    started_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    finished_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
