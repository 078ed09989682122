"""A1111 v1.10 request models, as ``modules/api/models.py`` generates them, validated the way its stack does.

Upstream builds the models from the ``__init__`` signature of ``StableDiffusionProcessingTxt2Img`` /
``...Img2Img`` (every generated field ``Optional[...]``; where a subclass and the base class disagree on a
default, the *base* class wins, so txt2img's ``denoising_strength`` is null) plus a few ``additional_fields``.
A1111 runs pydantic v1 under FastAPI 0.94: unknown fields are ignored, values are coerced the lax v1 way
(``"20"`` -> 20), and errors read ``{"loc": ["body", "steps"], "msg": "value is not a valid integer",
"type": "type_error.integer"}``. The models are therefore ``pydantic.v1`` models and ``validate`` reproduces
FastAPI 0.94's request validation (422, JSON decode errors included).

``img2img``'s ``mask_blur`` is null in the API (a property shadows the dataclass default), ``mask_blur_x`` and
``mask_blur_y`` are 4.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic.v1 import BaseModel, ValidationError


class _Processing(BaseModel):
    """Fields of ``StableDiffusionProcessing.__init__`` that the API exposes (all Optional, base defaults)."""

    prompt: str | None = ""
    negative_prompt: str | None = ""
    styles: list[str] | None = None
    seed: int | None = -1
    subseed: int | None = -1
    subseed_strength: float | None = 0
    seed_resize_from_h: int | None = -1
    seed_resize_from_w: int | None = -1
    sampler_name: str | None = None
    scheduler: str | None = None
    batch_size: int | None = 1
    n_iter: int | None = 1
    steps: int | None = 50
    cfg_scale: float | None = 7.0
    width: int | None = 512
    height: int | None = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool | None = False
    do_not_save_grid: bool | None = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool | None = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool | None = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None

    class Config:
        allow_population_by_field_name = True
        allow_mutation = True


class Txt2ImgRequest(_Processing):
    """``StableDiffusionTxt2ImgProcessingAPI``."""

    enable_hr: bool | None = False
    firstphase_width: int | None = 0
    firstphase_height: int | None = 0
    hr_scale: float | None = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int | None = 0
    hr_resize_x: int | None = 0
    hr_resize_y: int | None = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str | None = ""
    hr_negative_prompt: str | None = ""
    force_task_id: str | None = None
    sampler_index: str = "Euler"
    script_name: str | None = None
    script_args: list[Any] = []
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = {}
    infotext: str | None = None


class Img2ImgRequest(_Processing):
    """``StableDiffusionImg2ImgProcessingAPI``."""

    init_images: list[Any] | None = None
    resize_mode: int | None = 0
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int | None = 4
    mask_blur_y: int | None = 4
    mask_blur: int | None = None
    mask_round: bool | None = True
    inpainting_fill: int | None = 0
    inpaint_full_res: bool | None = True
    inpaint_full_res_padding: int | None = 0
    inpainting_mask_invert: int | None = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    force_task_id: str | None = None
    sampler_index: str = "Euler"
    include_init_images: bool = False
    script_name: str | None = None
    script_args: list[Any] = []
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = {}
    infotext: str | None = None
    denoising_strength: float | None = 0.75  # an additional field: overrides the base null


class ProgressQuery(BaseModel):
    """``ProgressRequest`` (query parameters of GET /sdapi/v1/progress)."""

    skip_current_image: bool = False


RequestModel = TypeVar("RequestModel", bound=BaseModel)


class RequestInvalid(Exception):
    """FastAPI 0.94's RequestValidationError: 422 ``{"detail": errors}``."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("request validation failed")
        self.errors = errors


def parse_json(raw: bytes) -> Any:
    """A JSON request body, or ``RequestInvalid`` as FastAPI 0.94 reports a missing or malformed one."""
    if not raw:
        raise RequestInvalid([{"loc": ["body"], "msg": "field required", "type": "value_error.missing"}])
    try:
        return json.loads(raw)
    except ValueError as exc:
        error: dict[str, Any] = {"loc": ["body", getattr(exc, "pos", 0)], "msg": str(exc)}
        if isinstance(exc, json.JSONDecodeError):
            error["msg"] = f"{exc.msg}: line {exc.lineno} column {exc.colno} (char {exc.pos})"
            error["ctx"] = {"msg": exc.msg, "doc": exc.doc, "pos": exc.pos, "lineno": exc.lineno, "colno": exc.colno}
        error["type"] = "value_error.jsondecode"
        raise RequestInvalid([error]) from exc


def parse_dict(raw: bytes) -> dict[str, Any]:
    """A body declared as ``dict[str, Any]`` (POST /options)."""
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise RequestInvalid([{"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}])
    return body


def parse_body(raw: bytes, model: type[RequestModel]) -> RequestModel:
    """The request body as ``model``, or ``RequestInvalid`` with the errors FastAPI 0.94 + pydantic v1 report."""
    return validate(parse_json(raw), model)


def validate(body: Any, model: type[RequestModel], *, prefix: str = "body") -> RequestModel:
    """``body`` as ``model`` (pydantic v1 rules), or ``RequestInvalid`` with FastAPI-style locations."""
    if not isinstance(body, dict):
        raise RequestInvalid([{"loc": [prefix], "msg": "value is not a valid dict", "type": "type_error.dict"}])
    try:
        return model.parse_obj(body)
    except ValidationError as exc:
        errors = []
        for item in exc.errors():
            entry: dict[str, Any] = {"loc": [prefix, *item["loc"]], "msg": item["msg"], "type": item["type"]}
            if "ctx" in item:
                entry["ctx"] = item["ctx"]
            errors.append(entry)
        raise RequestInvalid(errors) from exc
