"""Connector instances (a system's configured targets) and the outbox: one row per (job or batch, target)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from gateway.common.ids import new_id
from gateway.common.time import UTCDateTime, utcnow


class ConnectorInstance(SQLModel, table=True):
    """A system's configured connector: ``config`` holds the plain settings, ``secrets`` the sealed ones."""

    __tablename__ = "connector_instances"
    __table_args__ = (UniqueConstraint("system_id", "name", name="uq_connector_instances_system_name"),)

    id: str = Field(default_factory=lambda: new_id("con"), primary_key=True, max_length=40)
    system_id: str = Field(
        sa_column=Column(String(40), ForeignKey("systems.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    name: str = Field(sa_column=Column(String(64), nullable=False))
    kind: str = Field(sa_column=Column(String(64), nullable=False))
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    secrets: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # SecretBox of a JSON object
    circuit_failures: int = Field(default=0, sa_column=Column(Integer, nullable=False, default=0))
    circuit_open_until: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))


class DeliveryStatus(enum.StrEnum):
    pending = "pending"  # waiting for its next attempt
    delivering = "delivering"  # a relay holds it (lease)
    delivered = "delivered"
    dead = "dead"  # out of attempts, or a permanent error: replay to try again


class DeliveryRow(SQLModel, table=True):
    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("idempotency_key", name="uq_deliveries_idempotency_key"),
        Index("ix_deliveries_due", "status", "next_attempt_at"),
        Index("ix_deliveries_system", "system_id", "id"),
    )

    id: str = Field(default_factory=lambda: new_id("dlv"), primary_key=True, max_length=40)
    system_id: str = Field(sa_column=Column(String(40), ForeignKey("systems.id", ondelete="CASCADE"), nullable=False))
    connector_id: str | None = Field(
        default=None,
        sa_column=Column(
            String(40), ForeignKey("connector_instances.id", ondelete="SET NULL"), nullable=True, index=True
        ),
    )
    connector: str = Field(sa_column=Column(String(64), nullable=False))  # the instance's name (or "callback")
    kind: str = Field(sa_column=Column(String(64), nullable=False))
    event: str = Field(sa_column=Column(String(32), nullable=False))  # job.succeeded | batch.completed
    job_id: str | None = Field(
        default=None, sa_column=Column(String(40), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=True, index=True)
    )
    batch_id: str | None = Field(
        default=None,
        sa_column=Column(String(40), ForeignKey("batches.id", ondelete="CASCADE"), nullable=True, index=True),
    )
    target: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    idempotency_key: str = Field(sa_column=Column(String(200), nullable=False))
    status: str = Field(default=DeliveryStatus.pending.value, sa_column=Column(String(16), nullable=False))
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, default=0))
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))
    lease_token: str | None = Field(default=None, max_length=64)
    lease_expires_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    external_id: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    external_url: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))
    delivered_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))


class DeliveryAttempt(SQLModel, table=True):
    __tablename__ = "delivery_attempts"

    id: str = Field(default_factory=lambda: new_id("dat"), primary_key=True, max_length=40)
    delivery_id: str = Field(
        sa_column=Column(String(40), ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    number: int = Field(sa_column=Column(Integer, nullable=False))
    outcome: str = Field(sa_column=Column(String(16), nullable=False))  # delivered | retry | dead | circuit
    status_code: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    external_id: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    duration_ms: int = Field(default=0, sa_column=Column(Integer, nullable=False, default=0))
    started_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))
