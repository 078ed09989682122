"""Z-Image-Turbo behind the FastAPI service of seed 003 (``POST /v1/generate``, one image per call).

Protocol: ``/work/shared/reference/backends.md`` section 3. The Turbo model is distilled for exactly 8 steps and
no classifier-free guidance; the service wants sizes in multiples of 64 and has no webp. ``adjust`` brings a
request within those rules and says what it changed.

The service has neither a progress route nor an interrupt route: progress is reported per finished image, and
cancelling ``generate`` closes the connection, which stops the remaining images but not the one being drawn
(the service finishes it and its answer is dropped; a Turbo image takes seconds).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import httpx

from gateway.backends._http import HttpAdapter, error_text, malformed
from gateway.backends.base import (
    BACKEND_REJECTED,
    OUT_OF_MEMORY,
    BackendError,
    GeneratedImage,
    GenerationRequest,
    ProbeResult,
    ProgressCallback,
    decode_base64_image,
    image_of,
)

TURBO_STEPS = 8
TURBO_GUIDANCE = 0.0
SIZE_MULTIPLE = 64
MIN_SIZE, MAX_SIZE = 64, 2048
FORMATS = ("png", "jpeg")  # "webp not supported" (seed 003)


def _round_size(value: int) -> int:
    """The nearest multiple of 64 (halves round up), kept within 64..2048."""
    rounded = (value + SIZE_MULTIPLE // 2) // SIZE_MULTIPLE * SIZE_MULTIPLE
    return max(MIN_SIZE, min(MAX_SIZE, rounded))


class ZImageAdapter(HttpAdapter):
    """Text-to-image only; ``n`` images are ``n`` calls with seeds ``seed``, ``seed + 1``, ..."""

    kind = "zimage"
    default_slots = 1
    lists_models = False
    default_models = ("z-image-turbo",)

    def adjust(self, request: GenerationRequest) -> tuple[GenerationRequest, list[str]]:
        if request.init_image is not None:
            raise BackendError(f"Backend {self.name} (Z-Image-Turbo) cannot do image-to-image.", code=BACKEND_REJECTED)
        changes: dict[str, Any] = {}
        notes: list[str] = []
        if request.steps != TURBO_STEPS:
            changes["steps"] = TURBO_STEPS
            notes.append(f"Z-Image-Turbo runs exactly {TURBO_STEPS} steps: {request.steps} steps became 8.")
        if request.guidance_scale != TURBO_GUIDANCE:
            changes["guidance_scale"] = TURBO_GUIDANCE
            notes.append(
                f"Z-Image-Turbo needs guidance scale 0.0 (any other value gives an empty or black image): "
                f"{request.guidance_scale:g} became 0.0."
            )
        width, height = _round_size(request.width), _round_size(request.height)
        if (width, height) != (request.width, request.height):
            changes.update(width=width, height=height)
            notes.append(
                f"Z-Image-Turbo needs sizes in multiples of {SIZE_MULTIPLE} ({MIN_SIZE}..{MAX_SIZE}): "
                f"{request.width}x{request.height} became {width}x{height}."
            )
        if request.output_format not in FORMATS:
            changes["output_format"] = "png"
            notes.append(
                f"Z-Image-Turbo cannot produce {request.output_format}: it makes png, "
                f"which the gateway converts to {request.output_format} when storing the image."
            )
        if request.sampler or request.scheduler:
            changes.update(sampler=None, scheduler=None)
            notes.append("Z-Image-Turbo uses its own fixed scheduler: the requested sampler/scheduler was ignored.")
        return (replace(request, **changes) if changes else request), notes

    def status_error(self, response: httpx.Response) -> BackendError:
        """The service catches the pipeline's exceptions and answers exactly 500 ``{"detail": "Internal Server
        Error"}``, a CUDA OOM above all (seed 003), but also a GPU left broken by one. So: ``out_of_memory``
        (``oom_fallback`` applies) and retryable (without the fallback, or when the smaller try fails too, the
        generation moves to another backend, and a server that keeps failing opens its circuit)."""
        if response.status_code == 500 and error_text(response) == "Internal Server Error":
            return BackendError(
                f"Backend {self.name} failed the generation (500 Internal Server Error: the Z-Image service's "
                "answer to a CUDA out-of-memory).",
                code=OUT_OF_MEMORY,
                retryable=True,
            )
        return super().status_error(response)

    async def probe(self) -> ProbeResult:
        # The service is a FastAPI app: its OpenAPI document answers without touching the GPU, and names its routes.
        document = await self.send_json("GET", "/openapi.json")
        paths = document.get("paths") if isinstance(document, dict) else None
        if not isinstance(paths, dict) or "/v1/generate" not in paths:
            raise malformed(self.name, "its OpenAPI document has no /v1/generate (not a Z-Image-Turbo service?)")
        return ProbeResult(models=list(self.default_models), loaded_model=None)  # its one model

    async def generate(self, request: GenerationRequest, progress: ProgressCallback) -> list[GeneratedImage]:
        # Defensive: a request that skipped ``adjust`` must still be valid for the service.
        output_format = request.output_format if request.output_format in FORMATS else "png"
        images = []
        for index in range(request.n):
            seed = request.seed + index
            answer = await self.send_json(
                "POST",
                "/v1/generate",
                json={
                    "prompt": request.prompt,
                    "negative_prompt": request.negative_prompt,
                    "width": request.width,
                    "height": request.height,
                    "num_inference_steps": request.steps,
                    "guidance_scale": request.guidance_scale,
                    "seed": seed,
                    "output_format": output_format,
                },
            )
            if not isinstance(answer, dict) or "image" not in answer:
                raise malformed(self.name, "no image field")
            if not answer["image"]:
                # The service's way of saying the parameters were wrong (seed 003: guidance scale not 0.0).
                raise BackendError(
                    f"Backend {self.name} returned an empty image (guidance scale must be 0.0 for Z-Image-Turbo; "
                    f"got {request.guidance_scale:g}).",
                    code=BACKEND_REJECTED,
                )
            images.append(image_of(decode_base64_image(str(answer["image"])), seed))
            await progress((index + 1) / request.n)
        return images
