"""Bodies of the templates API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from gateway.common.text import Record
from gateway.templates.document import MAX_SOURCE
from gateway.templates.models import LIBRARY, TemplateVersion


class TemplateSave(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    source: Annotated[str, Field(min_length=1, max_length=MAX_SOURCE, description="Front matter + Jinja text")]


class TemplateRender(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    record: Record = Field(description="The business record, as the template's schema describes it (<= 64 KB)")
    version: Annotated[int, Field(ge=1, le=1_000_000)] | None = Field(default=None, description="Default: the newest")


class VersionRead(BaseModel):
    version: int
    id: str = Field(description="Recorded on jobs rendered from it")
    created_at: datetime
    created_by: str

    @classmethod
    def of(cls, row: TemplateVersion) -> VersionRead:
        return cls(version=row.version, id=row.id, created_at=row.created_at, created_by=row.created_by)


class TemplateSummary(BaseModel):
    name: str
    version: int
    description: str
    record: str = Field(description="The record kind it expects, e.g. product")
    tags: list[str]
    private: bool = Field(description="Only your system sees it; otherwise it is in the shared library")
    updated_at: datetime

    @classmethod
    def of(cls, row: TemplateVersion) -> TemplateSummary:
        return cls(
            name=row.name,
            version=row.version,
            description=row.description,
            record=row.record_kind,
            tags=list(row.tags),
            private=row.owner_key != LIBRARY,
            updated_at=row.created_at,
        )


class TemplateRead(TemplateSummary):
    source: str
    versions: list[VersionRead]


class TemplateList(BaseModel):
    items: list[TemplateSummary]


class RenderedRead(BaseModel):
    template: str
    version: int
    prompt: str
    negative_prompt: str
    parameters: dict[str, Any]
    tags: list[str]
    notes: list[str] = Field(description="What the content policy masked")
