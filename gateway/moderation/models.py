"""Per-system additions to the shipped content lists: extra terms, allowed terms and actions per category."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column, ForeignKey, String
from sqlmodel import Field, SQLModel

from gateway.common.time import UTCDateTime, utcnow


class ContentPolicy(SQLModel, table=True):
    __tablename__ = "content_policies"

    system_id: str = Field(sa_column=Column(String(40), ForeignKey("systems.id", ondelete="CASCADE"), primary_key=True))
    extra: dict[str, list[str]] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False, default=dict))
    allow: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False, default=list))
    actions: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False, default=dict))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))
