"""The batch table: what one recipe run made from one record. Its jobs point at it (``jobs.batch_id``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from gateway.common.ids import new_id
from gateway.common.time import UTCDateTime, utcnow


class Batch(SQLModel, table=True):
    """Its status is not stored: it is the aggregate of its jobs' (the jobs are the truth)."""

    __tablename__ = "batches"
    __table_args__ = (
        UniqueConstraint("system_id", "idempotency_key", name="uq_batches_system_idempotency_key"),
        Index("ix_batches_system_created", "system_id", "id"),
    )

    id: str = Field(default_factory=lambda: new_id("bat"), primary_key=True, max_length=40)
    system_id: str = Field(sa_column=Column(String(40), ForeignKey("systems.id"), nullable=False))
    recipe: str = Field(sa_column=Column(String(100), nullable=False))
    record_id: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    options: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False, default=dict))
    total: int = Field(sa_column=Column(Integer, nullable=False))
    skipped: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False, default=list))
    callback_url: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # on completion
    idempotency_key: str | None = Field(default=None, max_length=255)
    request_hash: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))
