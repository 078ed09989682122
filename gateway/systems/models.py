"""Tables of calling systems and their API tokens."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column, ForeignKey, String, Text
from sqlmodel import Field, SQLModel

from gateway.common.ids import new_id
from gateway.common.time import UTCDateTime, utcnow


class System(SQLModel, table=True):
    """A calling business system (crm, oa, design, ...): owns tokens, scopes and jobs."""

    __tablename__ = "systems"

    id: str = Field(default_factory=lambda: new_id("sys"), primary_key=True, max_length=40)
    name: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    scopes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    logo_sha256: str | None = Field(default=None, max_length=64)  # its watermark logo, in the asset store (png)
    callback_secrets: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # sealed, newest first
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))


class Token(SQLModel, table=True):
    """An API key of a system. Only the SHA-256 of the secret is stored; ``prefix`` is for display and revocation."""

    __tablename__ = "tokens"

    id: str = Field(default_factory=lambda: new_id("tok"), primary_key=True, max_length=40)
    system_id: str = Field(
        sa_column=Column(String(40), ForeignKey("systems.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    prefix: str = Field(sa_column=Column(String(32), nullable=False, index=True))
    token_hash: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    scopes: list[str] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True)
    )  # None: the system's scopes; a list narrows them
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))


class OAuthClient(SQLModel, table=True):
    """An OAuth2 client-credentials client of a system. Only the SHA-256 of the secret is stored."""

    __tablename__ = "oauth_clients"

    id: str = Field(default_factory=lambda: new_id("cli"), primary_key=True, max_length=40)  # the client_id
    system_id: str = Field(
        sa_column=Column(String(40), ForeignKey("systems.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    secret_hash: str = Field(sa_column=Column(String(64), nullable=False))
    scopes: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
