"""Request and response bodies of the jobs API (strict: unknown fields and wrong types are refused)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.assets.models import Asset
from gateway.assets.schemas import AssetRead
from gateway.common.text import INTEGRAL, NonBlankText, SafeText
from gateway.jobs.models import Job, JobStatus

MAX_SEED = 2**32 - 1
Dimension = Annotated[int, Field(ge=64, le=2048, multiple_of=8), INTEGRAL]
OutputFormat = Literal["png", "jpeg", "webp"]


class JobParameters(BaseModel):
    """Generation parameters shared by direct jobs and (later) template-rendered ones."""

    model_config = ConfigDict(extra="forbid", strict=True)

    negative_prompt: Annotated[SafeText, Field(max_length=4000)] = ""
    width: Dimension = 1024
    height: Dimension = 1024
    steps: Annotated[int, Field(ge=1, le=150), INTEGRAL] = 30
    guidance_scale: Annotated[float, Field(ge=0, le=30)] = 7.0
    seed: Annotated[
        int, Field(ge=-1, le=MAX_SEED, description="-1 or absent: a random seed, recorded on the job"), INTEGRAL
    ] = -1
    n: Annotated[int, Field(ge=1, le=8, description="Number of images"), INTEGRAL] = 1
    model: Annotated[SafeText, Field(min_length=1, max_length=200)] | None = None
    output_format: OutputFormat = "png"


class JobCreate(JobParameters):
    """Body of ``POST /v1/jobs``."""

    prompt: Annotated[NonBlankText, Field(min_length=1, max_length=4000)]


class JobError(BaseModel):
    code: str
    message: str


class JobRead(BaseModel):
    id: str
    status: JobStatus
    progress: float
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    n: int
    model: str | None
    output_format: str
    backend: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: JobError | None
    assets: list[AssetRead]

    @classmethod
    def of(cls, job: Job, assets: list[Asset], base_url: str) -> JobRead:
        error = JobError(code=job.error_code, message=job.error_message or "") if job.error_code is not None else None
        return cls(
            id=job.id,
            status=JobStatus(job.status),
            progress=job.progress,
            prompt=job.prompt,
            negative_prompt=job.negative_prompt,
            width=job.width,
            height=job.height,
            steps=job.steps,
            guidance_scale=job.guidance_scale,
            seed=job.seed,
            n=job.n,
            model=job.model,
            output_format=job.output_format,
            backend=job.backend,
            attempts=job.attempts,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            error=error,
            assets=[AssetRead.of(a, base_url) for a in assets],
        )


class JobList(BaseModel):
    items: list[JobRead]
    next_cursor: str | None = Field(description="Pass as `cursor` to get the next (older) page; null on the last page")
