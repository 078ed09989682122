"""The backends table (one GPU server each) and the speeds the scheduler learned per backend and model."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Column, Float, String, Text
from sqlmodel import Field, SQLModel

from gateway.common.ids import new_id
from gateway.common.time import UTCDateTime, utcnow


class Backend(SQLModel, table=True):
    """A configured backend. ``auth_secret`` (password or bearer token) is encrypted with the secret key."""

    __tablename__ = "backends"

    id: str = Field(default_factory=lambda: new_id("bke"), primary_key=True, max_length=40)
    name: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    kind: str = Field(max_length=16)
    url: str = Field(sa_column=Column(String(500), nullable=False))
    auth_kind: str = Field(default="none", max_length=8)
    auth_username: str | None = Field(default=None, max_length=200)
    auth_secret: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    slots: int = Field(default=1)
    models: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    discovered_models: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    options: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    enabled: bool = Field(default=True, sa_column=Column(Boolean, nullable=False, default=True))
    timeout_seconds: float = Field(default=600.0, sa_column=Column(Float, nullable=False, default=600.0))

    health: str = Field(default="unknown", max_length=16)  # unknown | healthy | unhealthy
    health_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    loaded_model: str | None = Field(default=None, max_length=200)
    checked_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))

    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))


class BackendSpeed(SQLModel, table=True):
    """Learned seconds per (megapixel x step x image) of one backend on one model (moving average)."""

    __tablename__ = "backend_speeds"

    backend: str = Field(sa_column=Column(String(64), primary_key=True))
    model: str = Field(sa_column=Column(String(200), primary_key=True))  # "" for the backend's default model
    seconds_per_unit: float
    samples: int = Field(default=0)
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))
