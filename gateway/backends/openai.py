"""Any OpenAI-compatible Images API (``/v1/images/generations``, ``/v1/images/edits``, ``/v1/models``).

Protocol: ``/work/shared/reference/backends.md`` section 6. The backend URL may be given with or without its
``/v1`` suffix (``https://api.example.com`` and ``https://api.example.com/v1`` are the same backend): the
adapter adds ``/v1`` only when the URL does not already end in it.

The API has no negative prompt, seed, steps or guidance scale: ``adjust`` says so in notes and the images are
recorded with the gateway's seeds (``seed + i``) although the server did not use them. There is no progress and
no interrupt: cancelling ``generate`` closes the connection (a hosted API may still finish, and bill, the call).
"""

from __future__ import annotations

import io
from dataclasses import replace
from typing import Any

import httpx
from PIL import Image, UnidentifiedImageError

from gateway.backends._http import HttpAdapter, json_of, malformed
from gateway.backends.base import (
    BACKEND_ERROR,
    BACKEND_REJECTED,
    BackendError,
    BackendSpec,
    GeneratedImage,
    GenerationRequest,
    ProbeResult,
    ProgressCallback,
    decode_base64_image,
    image_of,
)

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme)


def _upload(field: str, data: bytes) -> tuple[str, tuple[str, bytes, str]]:
    """A multipart file part with a truthful file name and content type (servers check them, not just the bytes)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = (image.format or "png").lower()
    except (UnidentifiedImageError, OSError) as exc:
        raise BackendError(f"The {field} to upload is not an image.", code=BACKEND_REJECTED) from exc
    return field, (f"{field}.{fmt}", data, Image.MIME.get(fmt.upper(), "application/octet-stream"))


class OpenAIAdapter(HttpAdapter):
    """``n`` images in one call, as base64 (``response_format: b64_json``, implied for GPT image models); a URL
    answer (servers that ignore ``response_format``) is fetched only from the backend's own origin."""

    kind = "openai"
    default_slots = 4  # a hosted or compatible API serves concurrent calls
    lists_models = True

    def __init__(self, spec: BackendSpec, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(spec, client)
        self.prefix = "" if self.client.base_url.path.rstrip("/").endswith("/v1") else "/v1"

    def adjust(self, request: GenerationRequest) -> tuple[GenerationRequest, list[str]]:
        notes: list[str] = []
        changes: dict[str, Any] = {}
        if request.negative_prompt.strip():
            # Dropped rather than appended to the prompt: "no X" in a prompt tends to draw X.
            changes["negative_prompt"] = ""
            notes.append("The OpenAI Images API has no negative prompt: it was not sent.")
        notes.append(
            f"The OpenAI Images API takes no seed: seed {request.seed} was not sent, the images are not reproducible."
        )
        notes.append(
            f"The OpenAI Images API takes no steps or guidance scale: {request.steps} steps and guidance "
            f"{request.guidance_scale:g} were not sent."
        )
        if request.sampler or request.scheduler:
            changes.update(sampler=None, scheduler=None)
            notes.append("The OpenAI Images API takes no sampler or scheduler: they were not sent.")
        if (request.model or "").startswith("dall-e") and request.output_format != "png":
            changes["output_format"] = "png"
            notes.append(
                f"DALL·E models only make png: the gateway converts it to {request.output_format} when storing it."
            )
        return (replace(request, **changes) if changes else request), notes

    async def probe(self) -> ProbeResult:
        response = await self.send("GET", f"{self.prefix}/models", accept=(404,))
        if response.status_code == 404:
            # Some compatible servers serve images only: no model list, any model name is theirs to judge.
            return ProbeResult(models=None, loaded_model=None)
        answer = json_of(self.name, response)
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list):
            raise malformed(self.name, "the model list has no data array")
        return ProbeResult(models=[str(m["id"]) for m in data if isinstance(m, dict) and m.get("id")])

    async def generate(self, request: GenerationRequest, progress: ProgressCallback) -> list[GeneratedImage]:
        fields: dict[str, Any] = {"prompt": request.prompt, "n": request.n, "size": f"{request.width}x{request.height}"}
        model = request.model or ""
        if model:
            fields["model"] = model
        # GPT image models always answer base64 and refuse the field (400 "Unknown parameter: 'response_format'.").
        if not model.startswith("gpt-image"):
            fields["response_format"] = "b64_json"
        # png is the default; DALL·E models have no output_format (the gateway's store converts their png).
        if request.output_format != "png" and not model.startswith("dall-e"):
            fields["output_format"] = request.output_format
        if request.init_image is None:
            answer = await self.send_json("POST", f"{self.prefix}/images/generations", json=fields)
        else:
            files = [_upload("image", request.init_image)]
            if request.mask is not None:
                files.append(_upload("mask", request.mask))
            form = {key: str(value) for key, value in fields.items()}
            answer = await self.send_json("POST", f"{self.prefix}/images/edits", data=form, files=files)
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or len(data) < request.n:
            count = len(data) if isinstance(data, list) else 0
            raise malformed(self.name, f"{count} of {request.n} images in its data array")
        images = [image_of(await self._bytes_of(item), request.seed + i) for i, item in enumerate(data[: request.n])]
        await progress(1.0)
        return images

    async def _bytes_of(self, item: Any) -> bytes:
        if not isinstance(item, dict):
            raise malformed(self.name, "a data item is not an object")
        if item.get("b64_json"):
            return decode_base64_image(str(item["b64_json"]))
        if not item.get("url"):
            raise malformed(self.name, "a data item has neither b64_json nor url")
        base = self.client.base_url
        url = base.join(str(item["url"]))
        # Never fetch a URL of another origin: the answer would make the gateway request arbitrary hosts (SSRF).
        if _origin(url) != _origin(base):
            raise BackendError(
                f"Backend {self.name} returned an image URL on another host ({url.host}); it is not fetched. "
                "Configure the server to return b64_json.",
                code=BACKEND_ERROR,
                retryable=True,
            )
        return (await self.send("GET", str(url))).content
