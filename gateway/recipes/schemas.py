"""Request and response bodies of the recipes and batches API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.assets.finish import Watermark
from gateway.common.text import Record
from gateway.jobs.models import JobStatus
from gateway.jobs.schemas import CallbackUrl, DeliverTarget, JobParameters, JobRead, OutputFormat, Tag
from gateway.recipes.document import RecipeDocument

RoleName = Annotated[str, Field(min_length=1, max_length=100)]
StyleName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,49}$")]
BatchStatus = Literal["queued", "running", "succeeded", "failed", "partial", "cancelled"]


class RoleOverride(JobParameters):
    """Parameters for every job of one role, over what its template says (e.g. `{"steps": 20}`)."""


class RecipeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    output_format: OutputFormat | None = Field(
        default=None, description="Every image's format (default: the template's)"
    )
    watermark: Watermark | None = Field(default=None, description="Drawn on every stored image (seed 003)")
    styles: Annotated[list[StyleName], Field(min_length=1, max_length=10)] | None = Field(
        default=None,
        description="Recipes with styles (crm.product_images: main, detail, social): one image per style instead",
    )
    roles: Annotated[dict[RoleName, RoleOverride], Field(max_length=30)] = Field(
        default_factory=dict, description='Per-role parameters, by role name: `{"main": {"steps": 20}}`'
    )
    tags: Annotated[list[Tag], Field(max_length=20)] = Field(default_factory=list, description="Added to every asset")
    deliver: Annotated[list[DeliverTarget], Field(max_length=10)] = Field(
        default_factory=list, description="Targets every job's images are delivered to (one delivery per job)"
    )


class RecipeRun(BaseModel):
    """Body of ``POST /v1/recipes/{name}``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    record: Record = Field(description="The business record (<= 64 KB), checked against the recipe's schema")
    options: RecipeOptions = Field(default_factory=RecipeOptions)
    callback_url: CallbackUrl | None = Field(
        default=None, description="Signed webhook when the whole batch has finished (`batch.completed`)"
    )


class RoleRead(BaseModel):
    role: str
    template: str
    each: str | None = None
    limit: int | None = None
    repeat: str | None = None
    skip_missing: bool = False
    tags: list[str] = []


class RecipeRead(BaseModel):
    name: str
    description: str
    record: str = Field(description="The record's kind")
    schema_: dict[str, Any] = Field(alias="schema", serialization_alias="schema")
    roles: list[RoleRead]
    styles: str | None = Field(default=None, description="The template each style name fills in, if it has styles")

    @classmethod
    def of(cls, recipe: RecipeDocument) -> RecipeRead:
        return cls.model_validate(
            {
                "name": recipe.name,
                "description": recipe.description,
                "record": recipe.record,
                "schema": recipe.schema_,
                "roles": [RoleRead.model_validate(r.model_dump()) for r in recipe.roles],
                "styles": recipe.styles.template if recipe.styles else None,
            }
        )


class RecipeList(BaseModel):
    items: list[RecipeRead]


class BatchJob(BaseModel):
    name: str = Field(description="Unique in the batch: the role, or role-N when a role has several jobs")
    role: str
    index: int = Field(description="Within its role, from 0")
    job: JobRead


class Skipped(BaseModel):
    role: str
    template: str | None = Field(description="The template it would have used, if the name is one")
    reason: str


class BatchSummary(BaseModel):
    id: str
    recipe: str
    record_id: str | None = Field(description="The record's `id`, if it had one")
    status: BatchStatus = Field(
        description="queued, running, then succeeded (all jobs), failed (none), partial (some) or cancelled (all)"
    )
    done: bool = Field(description="Every job has finished (succeeded, failed or been cancelled)")
    total: int
    counts: dict[JobStatus, int] = Field(description="Jobs per status")
    created_at: datetime
    finished_at: datetime | None
    callback_url: str | None
    skipped: list[Skipped] = Field(
        description="Items of the record left out for want of a template (e.g. report sections of another type)"
    )


class BatchRead(BatchSummary):
    jobs: list[BatchJob] = Field(description="Each job with its name, role and index within the role")


class BatchList(BaseModel):
    items: list[BatchSummary]
    next_cursor: str | None
