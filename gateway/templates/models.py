"""Template versions: one row per saved version of a named template, never changed once written."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from gateway.common.ids import new_id
from gateway.common.time import UTCDateTime, utcnow

LIBRARY = ""  # owner_key of the shared library (shipped templates and those its managers write)


class TemplateVersion(SQLModel, table=True):
    """``owner_key`` is the owning system's id for a private template, or ``LIBRARY`` for the shared library."""

    __tablename__ = "template_versions"
    __table_args__ = (
        UniqueConstraint("owner_key", "name", "version", name="uq_template_versions_owner_name_version"),
        Index("ix_template_versions_lookup", "owner_key", "name"),
    )

    id: str = Field(default_factory=lambda: new_id("tpl"), primary_key=True, max_length=40)
    owner_key: str = Field(sa_column=Column(String(40), nullable=False))
    name: str = Field(sa_column=Column(String(100), nullable=False))
    version: int = Field(sa_column=Column(Integer, nullable=False))
    source: str = Field(sa_column=Column(Text, nullable=False))
    description: str = Field(default="", sa_column=Column(String(500), nullable=False, default=""))
    record_kind: str = Field(sa_column=Column(String(40), nullable=False))
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False, default=list))
    created_by: str = Field(sa_column=Column(String(100), nullable=False))  # a system name, cli:<user>, shipped
    created_by_system_id: str | None = Field(
        default=None, sa_column=Column(String(40), ForeignKey("systems.id", ondelete="SET NULL"), nullable=True)
    )
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))
