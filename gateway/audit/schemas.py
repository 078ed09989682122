"""Bodies of the audit route."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from gateway.audit.models import AuditEvent


class AuditRead(BaseModel):
    id: str
    at: datetime
    actor: str = Field(description="A system name, `cli:<user>` for the command line, or `anonymous`")
    credential: str | None = Field(description="The id of the key (`tok_...`) or OAuth2 client (`cli_...`) used")
    action: str = Field(description="e.g. `system.create`, `quota.set`, `auth.refused`, `content.refused`")
    target: str
    outcome: str = Field(description="`ok` or `refused`")
    reason: str | None
    details: dict[str, Any]
    ip: str | None
    request_id: str | None

    @classmethod
    def of(cls, row: AuditEvent) -> AuditRead:
        return cls.model_validate(row, from_attributes=True)


class AuditList(BaseModel):
    items: list[AuditRead]
    next_cursor: str | None
