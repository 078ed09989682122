"""The asset table: one stored image, content-addressed by its SHA-256."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Column, ForeignKey, String, Text
from sqlmodel import Field, SQLModel

from gateway.common.ids import new_id
from gateway.common.time import UTCDateTime, utcnow


class Asset(SQLModel, table=True):
    __tablename__ = "assets"

    id: str = Field(default_factory=lambda: new_id("ast"), primary_key=True, max_length=40)
    job_id: str = Field(
        sa_column=Column(String(40), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    system_id: str = Field(sa_column=Column(String(40), ForeignKey("systems.id"), nullable=False, index=True))
    index: int
    sha256: str = Field(max_length=64, index=True)
    bytes: int
    width: int
    height: int
    format: str = Field(max_length=8)
    content_type: str = Field(max_length=32)
    seed: int = Field(sa_column=Column(BigInteger, nullable=False))
    caption: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # from a vision backend
    tags: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))
