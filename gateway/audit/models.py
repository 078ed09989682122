"""The audit log: one append-only row per admin action and per refusal (the database refuses changes to it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, String, Text
from sqlmodel import Field, SQLModel

from gateway.common.ids import new_id
from gateway.common.time import UTCDateTime, utcnow


class AuditEvent(SQLModel, table=True):
    """Who did what to which target, when, and with what outcome. Never holds a token or a secret."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_at", "at"),
        Index("ix_audit_action", "action", "id"),
        Index("ix_audit_actor", "actor", "id"),
    )

    id: str = Field(default_factory=lambda: new_id("aud"), primary_key=True, max_length=40)
    at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))
    actor: str = Field(sa_column=Column(String(100), nullable=False))  # a system name, cli:<user>, or anonymous
    credential: str | None = Field(default=None, sa_column=Column(String(40), nullable=True))  # tok_/cli_ id
    action: str = Field(sa_column=Column(String(64), nullable=False))  # e.g. system.create, quota.refused
    target: str = Field(default="", sa_column=Column(String(200), nullable=False))  # e.g. system:crm
    outcome: str = Field(sa_column=Column(String(12), nullable=False))  # ok | refused
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False, default=dict))
    ip: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    request_id: str | None = Field(default=None, sa_column=Column(String(128), nullable=True))
