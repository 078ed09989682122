"""Bodies of the backend admin API. Secrets go in, never out."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.backends.models import Backend, BackendSpeed
from gateway.common.text import INTEGRAL, SafeText

BackendName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="e.g. gpu-a1111-01")]
Kind = Literal["a1111", "comfyui", "zimage", "openai", "gradio", "vision"]
# No ``user:pass@`` in the host part: credentials go in ``auth`` (sealed), never in the URL (shown and stored as is).
Url = Annotated[str, Field(min_length=8, max_length=500, pattern=r"^https?://[^\s/?#@]+(/[^\s?#]*)?$")]
ModelName = Annotated[SafeText, Field(min_length=1, max_length=200)]
Slots = Annotated[int, Field(ge=1, le=64), INTEGRAL]
Timeout = Annotated[float, Field(gt=0, le=3600)]


class BasicAuth(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["basic"]
    username: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^:\s\x00-\x1f\x7f]+$")]
    password: Annotated[str, Field(min_length=1, max_length=500)]


class BearerAuth(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["bearer"]
    token: Annotated[str, Field(min_length=1, max_length=2000, pattern=r"^[\x21-\x7e]+$")]


class NoAuth(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["none"]


Auth = Annotated[BasicAuth | BearerAuth | NoAuth, Field(discriminator="type")]


def _bounded_options(value: dict[str, Any]) -> dict[str, Any]:
    import json

    try:
        encoded = json.dumps(value, allow_nan=False)
    except ValueError:
        raise ValueError("options must be JSON: NaN and Infinity are not numbers there") from None
    if len(encoded) > 256 * 1024:
        raise ValueError("options are limited to 256 KiB of JSON")
    return value


class BackendCreate(BaseModel):
    """Body of ``POST /v1/admin/backends``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: BackendName
    kind: Kind
    url: Url
    auth: Auth | None = None
    slots: Slots | None = Field(default=None, description="Generations at once; default 1 (4 for openai)")
    models: list[ModelName] = Field(default_factory=list, max_length=200, description="Empty: discovered")
    options: dict[str, Any] = Field(default_factory=dict, description="Kind-specific, e.g. ComfyUI `workflows`")
    enabled: bool = True
    timeout_seconds: Timeout = 600.0

    _options = field_validator("options")(_bounded_options)


class BackendUpdate(BaseModel):
    """Body of ``PATCH /v1/admin/backends/{name}``: only the fields given change."""

    model_config = ConfigDict(extra="forbid", strict=True)

    url: Url | None = None
    auth: Auth | None = None
    slots: Slots | None = None
    models: list[ModelName] | None = Field(default=None, max_length=200)
    options: dict[str, Any] | None = None
    enabled: bool | None = None
    timeout_seconds: Timeout | None = None

    @field_validator("options")
    @classmethod
    def _options(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else _bounded_options(value)


class SpeedRead(BaseModel):
    model: str | None
    seconds_per_unit: float = Field(description="Seconds per megapixel x step x image")
    samples: int


class BackendRead(BaseModel):
    id: str
    name: str
    kind: str
    url: str
    auth_type: str
    username: str | None
    slots: int
    models: list[str] = Field(description="Configured models (empty: what the server reports)")
    discovered_models: list[str] | None
    enabled: bool
    timeout_seconds: float
    health: str
    health_error: str | None
    loaded_model: str | None
    checked_at: datetime | None
    created_at: datetime
    updated_at: datetime
    speeds: list[SpeedRead]

    @classmethod
    def of(cls, row: Backend, speeds: list[BackendSpeed]) -> BackendRead:
        return cls(
            id=row.id,
            name=row.name,
            kind=row.kind,
            url=row.url,
            auth_type=row.auth_kind,
            username=row.auth_username,
            slots=row.slots,
            models=row.models,
            discovered_models=row.discovered_models,
            enabled=row.enabled,
            timeout_seconds=row.timeout_seconds,
            health=row.health,
            health_error=row.health_error,
            loaded_model=row.loaded_model,
            checked_at=row.checked_at,
            created_at=row.created_at,
            updated_at=row.updated_at,
            speeds=[
                SpeedRead(model=s.model or None, seconds_per_unit=s.seconds_per_unit, samples=s.samples) for s in speeds
            ],
        )


class BackendList(BaseModel):
    items: list[BackendRead]
