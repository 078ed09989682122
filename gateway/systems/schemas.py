"""Bodies of the admin routes for systems, their API keys and OAuth2 clients."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from gateway.quotas.schemas import Limits
from gateway.systems.models import OAuthClient, System, Token
from policies.scopes import Scope

# Strict bodies (a "true" string is not a boolean); scope names arrive as strings and become the enum.
Scopes = Annotated[list[Annotated[Scope, Field(strict=False)]], Field(max_length=len(Scope))]


class SystemCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$", description="e.g. crm")]
    scopes: Scopes = Field(default_factory=lambda: [Scope.generate])
    oauth: bool = Field(default=False, description="Also create an OAuth2 client-credentials client")


class SystemUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    scopes: Scopes


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    scopes: Scopes | None = Field(default=None, description="Narrow this key to some of the system's scopes")


class TokenRead(BaseModel):
    id: str
    prefix: str = Field(
        description="The key's first characters, to tell keys apart (the key itself is never shown again)"
    )
    scopes: list[str] | None
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, token: Token) -> TokenRead:
        return cls(
            id=token.id,
            prefix=token.prefix,
            scopes=token.scopes,
            created_at=token.created_at,
            revoked_at=token.revoked_at,
        )


class TokenIssued(TokenRead):
    token: str = Field(description="The API key: shown once, store it now")


class ClientRead(BaseModel):
    client_id: str
    scopes: list[str] | None
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, client: OAuthClient) -> ClientRead:
        return cls(
            client_id=client.id, scopes=client.scopes, created_at=client.created_at, revoked_at=client.revoked_at
        )


class ClientIssued(ClientRead):
    client_secret: str = Field(description="Shown once, store it now")


class SystemRead(BaseModel):
    id: str
    name: str
    scopes: list[str]
    created_at: datetime
    limits: Limits
    tokens: list[TokenRead]
    oauth_clients: list[ClientRead]

    @classmethod
    def of(cls, system: System, limits: Limits, tokens: list[Token], clients: list[OAuthClient]) -> SystemRead:
        return cls(
            id=system.id,
            name=system.name,
            scopes=list(system.scopes),
            created_at=system.created_at,
            limits=limits,
            tokens=[TokenRead.of(t) for t in tokens],
            oauth_clients=[ClientRead.of(c) for c in clients],
        )


class SystemCreated(SystemRead):
    token: str = Field(description="The first API key: shown once, store it now")
    client_id: str | None = None
    client_secret: str | None = Field(default=None, description="Shown once (with `oauth: true`)")


class SystemList(BaseModel):
    items: list[SystemRead]
