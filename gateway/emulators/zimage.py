"""Emulator of the Z-Image-Turbo FastAPI service of seed 003 (the API behind its Gradio UI, port 7860).

``POST /v1/generate`` takes ``{"prompt", "negative_prompt", "width", "height", "num_inference_steps": 8,
"guidance_scale": 0.0, "seed", "output_format": "png"}`` and answers ``{"image": "<base64>"}`` (no ``data:``
prefix: the seed pipes it straight into ``base64 -d``). ``/docs`` and ``/openapi.json`` are FastAPI's own.

Rules, from the seed (and where it is silent, what a FastAPI service of this shape answers):

* ``prompt`` is required; a missing field or a wrong type is FastAPI's 422 ``{"detail": [...]}``.
* ``width``/``height`` must be multiples of 64 (the seed: "必须为64的整数倍"). The seed does not show the error,
  so this follows the usual way such a rule is written in a FastAPI service, a pydantic field validator: 422
  ``{"detail": [{"type": "value_error", "loc": ["body", "width"], "msg": "Value error, width must be a positive
  multiple of 64", ...}]}``. ``num_inference_steps`` below 1 is rejected the same way.
* ``output_format``: png (default) or jpeg ("jpg" accepted); "webp暂不支持": 400 ``{"detail": "webp not
  supported"}``; any other value 400 ``{"detail": "output_format must be png or jpeg"}``.
* Turbo is distilled for ``guidance_scale`` 0.0: any other value still runs, then returns ``{"image": ""}`` (the
  seed: an empty ``image`` means a bad guidance_scale).
* Steps: Z-Image-Turbo in diffusers ran ``num_inference_steps - 1`` DiT forwards (the model card's
  ``num_inference_steps=9  # This actually results in 8 DiT forwards``), so 9 requested still runs 8; time is
  charged per forward.
* ``seed`` omitted or null: random. ``--fail-rate``: a CUDA OOM, which the service turns into 500
  ``{"detail": "Internal Server Error"}`` (the seed's error for OOM).
* Concurrency: ``options.slots`` generations at once (the seed runs 4 client threads against one GPU); further
  requests wait. No authentication of its own (the seed reaches the service through an SSH tunnel); with
  ``--auth`` it sits behind a reverse proxy's HTTP Basic.
"""

from __future__ import annotations

import base64
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field, ValidationInfo, field_validator

from gateway.emulators.core import EmulatorOptions, SimulatedGPU, render_image_async, resolve_seed
from gateway.emulators.proxy import ProxyBasicAuth

MODEL = "Tongyi-MAI/Z-Image-Turbo"


class GenerateRequest(BaseModel):
    """The body of POST /v1/generate (unknown fields are ignored, as pydantic does by default)."""

    prompt: str
    negative_prompt: str = ""
    width: int = 1024
    height: int = 1024
    num_inference_steps: int = Field(default=8, ge=1)
    guidance_scale: float = 0.0
    seed: int | None = None
    output_format: str = "png"

    @field_validator("width", "height")
    @classmethod
    def multiple_of_64(cls, value: int, info: ValidationInfo) -> int:
        if value <= 0 or value % 64:
            raise ValueError(f"{info.field_name} must be a positive multiple of 64")
        return value


class GenerateResponse(BaseModel):
    """``{"image": "<base64>"}``; empty when the pipeline produced nothing usable."""

    image: str


def dit_forwards(num_inference_steps: int) -> int:
    """DiT forward passes for a requested step count (the last scheduler step is at sigma 0)."""
    return max(1, num_inference_steps - 1)


def create_app(options: EmulatorOptions) -> Any:
    """The Z-Image-Turbo API service."""
    gpu = SimulatedGPU(options, default_model=MODEL)
    app = FastAPI(title="Z-Image-Turbo API", version="1.0.0")
    app.state.gpu = gpu

    @app.post("/v1/generate", response_model=GenerateResponse)
    async def generate(request: GenerateRequest) -> dict[str, Any]:
        fmt = request.output_format.lower()
        if fmt == "webp":
            raise HTTPException(status_code=400, detail="webp not supported")
        if fmt not in {"png", "jpeg", "jpg"}:
            raise HTTPException(status_code=400, detail="output_format must be png or jpeg")
        fmt = "jpeg" if fmt == "jpg" else fmt
        if gpu.should_fail():  # CUDA OOM inside the pipeline, caught by the service
            raise HTTPException(status_code=500, detail="Internal Server Error")
        await gpu.run(steps=dit_forwards(request.num_inference_steps), width=request.width, height=request.height)
        if request.guidance_scale != 0.0:
            return {"image": ""}
        data = await render_image_async(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            width=request.width,
            height=request.height,
            seed=resolve_seed(request.seed if request.seed is not None else -1),
            output_format=fmt,
        )
        return {"image": base64.b64encode(data).decode()}

    # The service has no authentication of its own; ``--auth`` puts it behind a proxy's HTTP Basic, as deployed.
    return ProxyBasicAuth(app, options, realm="Z-Image") if options.auth else app
