"""Request and response bodies of the jobs API (strict: unknown fields and wrong types are refused)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.assets.finish import Watermark
from gateway.assets.models import Asset
from gateway.assets.schemas import AssetRead
from gateway.common.text import INTEGRAL, NonBlankText, Record, SafeText
from gateway.jobs.models import Job, JobStatus

MAX_SEED = 2**32 - 1
Dimension = Annotated[
    int,
    Field(
        ge=64,
        le=2048,
        description="Pixels. Backends generate at the sizes they support; the stored image is fitted to exactly this",
    ),
    INTEGRAL,
]
Tag = Annotated[SafeText, Field(min_length=1, max_length=100)]
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
    sampler: Annotated[SafeText, Field(min_length=1, max_length=100, description="e.g. `DPM++ 2M`")] | None = None
    scheduler: Annotated[SafeText, Field(min_length=1, max_length=100, description="e.g. `Karras`")] | None = None
    describe: bool = Field(default=False, description="Caption and tag the images with a vision backend")
    oom_fallback: bool = Field(
        default=False, description="On a GPU out-of-memory error, retry once at about a quarter of the pixels"
    )
    watermark: Watermark | None = Field(default=None, description="Drawn on the stored images (text or the logo)")


InputImage = Annotated[
    str,
    Field(
        min_length=1,
        max_length=16 * 1024 * 1024,
        description=(
            "An asset id of yours (`ast_...`), base64 image data (a `data:image/...;base64,` prefix is fine) or an"
            " `http(s)://` URL the gateway fetches once at submission (public hosts only; no redirects; size-capped)"
        ),
    ),
]


class DeliverTarget(BaseModel):
    """Where to push the images on success: one of your connectors, plus the fields its kind needs per delivery
    (e.g. `{"connector": "crm-prod", "record_id": "01t5g00000AbCdE"}`; `GET /v1/connectors/kinds` lists them)."""

    model_config = ConfigDict(extra="allow")

    connector: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.-]*$")]


CallbackUrl = Annotated[
    str,
    Field(
        min_length=8,
        max_length=2000,
        pattern=r"^https?://",
        description="Signed webhook (Standard Webhooks, your callback secret) when it completes",
    ),
]


class JobCreate(JobParameters):
    """Body of ``POST /v1/jobs``. With `init_image` it is an image-to-image job."""

    prompt: Annotated[NonBlankText, Field(min_length=1, max_length=4000)] | None = Field(
        default=None, description="The prompt; or give `template` and `record` to have it rendered"
    )
    template: Annotated[str, Field(max_length=100, pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")] | None = Field(
        default=None, description="A template name: its prompt and parameters, rendered from `record`"
    )
    template_version: Annotated[int, Field(ge=1, le=1_000_000)] | None = Field(
        default=None, description="Default: the newest"
    )
    record: Record | None = Field(default=None, description="The business record the template renders (<= 64 KB)")
    tags: Annotated[list[Tag], Field(max_length=20)] | None = Field(
        default=None, description="Labels given to the job's assets (a template adds its own)"
    )
    deliver: Annotated[list[DeliverTarget], Field(max_length=10)] | None = Field(
        default=None, description="Targets the images are delivered to on success (reliably, with retries)"
    )
    callback_url: CallbackUrl | None = None
    init_image: InputImage | None = None
    mask: InputImage | None = Field(default=None, description="White areas are repainted (needs `init_image`)")
    denoising_strength: Annotated[float, Field(ge=0, le=1)] | None = Field(
        default=None, description="How far from the init image to go (image-to-image; backend default 0.75)"
    )

    @model_validator(mode="after")
    def _prompt_or_template(self) -> JobCreate:
        if (self.prompt is None) == (self.template is None):
            raise ValueError("give either prompt, or template and record")
        if self.template is None and (self.record is not None or self.template_version is not None):
            raise ValueError("record and template_version need a template")
        if self.template is not None and self.record is None:
            raise ValueError("a template needs its record")
        return self

    @model_validator(mode="after")
    def _image_to_image_fields(self) -> JobCreate:
        if self.init_image is None and (self.mask is not None or self.denoising_strength is not None):
            raise ValueError("mask and denoising_strength need an init_image")
        return self


class TemplateUsed(BaseModel):
    name: str
    version: int
    id: str = Field(description="The exact template version the prompt was rendered from")


class BatchPlace(BaseModel):
    id: str = Field(description="The batch (`GET /v1/batches/{id}`)")
    role: str
    name: str = Field(description="Unique in its batch: the role, or role-N when the role has several jobs")
    position: int = Field(description="The job's place in its batch, from 0")


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
    sampler: str | None
    scheduler: str | None
    image_to_image: bool
    denoising_strength: float | None
    describe: bool
    oom_fallback: bool
    backend: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: JobError | None
    notes: list[str] = Field(description="What the gateway adjusted or retried (e.g. a smaller size after OOM)")
    template: TemplateUsed | None = Field(default=None, description="Set when the prompt came from a template")
    tags: list[str]
    watermark: Watermark | None
    batch: BatchPlace | None = Field(default=None, description="Set when a recipe made the job")
    deliver: list[dict[str, object]] = Field(
        description="Its delivery targets (`GET /v1/deliveries?job=` for their state)"
    )
    callback_url: str | None
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
            sampler=job.sampler,
            scheduler=job.scheduler,
            image_to_image=job.init_image_sha256 is not None,
            denoising_strength=job.denoising_strength,
            describe=job.describe,
            oom_fallback=job.oom_fallback,
            backend=job.backend,
            attempts=job.attempts,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            error=error,
            notes=list(job.notes or []),
            template=TemplateUsed(name=job.template_name, version=job.template_version, id=job.template_version_id)
            if job.template_version_id and job.template_name and job.template_version
            else None,
            tags=list(job.tags or []),
            deliver=list(job.deliver or []),
            callback_url=job.callback_url,
            watermark=Watermark.model_validate(public_watermark(job.watermark)) if job.watermark else None,
            batch=BatchPlace(
                id=job.batch_id, role=job.batch_role or "", name=job.batch_name or "", position=job.batch_index or 0
            )
            if job.batch_id
            else None,
            assets=[AssetRead.of(a, base_url) for a in assets],
        )


def public_watermark(stored: dict[str, object]) -> dict[str, object]:
    """The watermark as the caller gave it (the stored one also pins the logo's content hash)."""
    return {k: v for k, v in stored.items() if k != "logo_sha256"}


class JobList(BaseModel):
    items: list[JobRead]
    next_cursor: str | None = Field(description="Pass as `cursor` to get the next (older) page; null on the last page")
