"""Emulator of an OpenAI Images API server: /v1/images/generations, /v1/images/edits, /v1/models.

Model families follow the OpenAI API reference; ``--models`` replaces the default list (dall-e-2, dall-e-3,
gpt-image-1), and a name of no known family is a "compatible" model (any ``WxH`` size, like local servers):

| family       | sizes                                      | n    | response_format            | extras              |
|--------------|--------------------------------------------|------|----------------------------|---------------------|
| dall-e-2     | 256x256, 512x512, 1024x1024                | 1-10 | url (default) or b64_json  |                     |
| dall-e-3     | 1024x1024, 1792x1024, 1024x1792            | 1    | url (default) or b64_json  | revised_prompt      |
| gpt-image-*  | 1024x1024, 1536x1024, 1024x1536, auto      | 1-10 | always b64 (param refused) | usage, output_format|
| compatible   | any WxH (16-4096), auto                    | 1-10 | url (default) or b64_json  |                     |

``model`` defaults to dall-e-2 when served (the API's default), else to the first served model. Answers are
``{"created", "data": [{"b64_json", "url", "revised_prompt"}], "usage"?}`` (absent values null, as the
reference shows); a ``url`` points back at this server (``GET /v1/images/files/{name}``, no key needed, like
OpenAI's pre-signed URLs). Errors are ``{"error": {"message", "type", "param", "code"}}``: 400 for bad
parameters (OpenAI's current wording: "Missing required parameter: 'prompt'.", "Invalid value: ...",
"Invalid 'n': integer above maximum value. ..."), 401 for a missing or wrong bearer key when ``options.auth``
is set (keys are the password parts of its pairs), 404 for unknown routes and models, 500 ``server_error`` for
``--fail-rate``. Unknown body fields are ignored (as compatible servers do). Time: 20 sampling steps (10 for
quality low, 40 for high/hd) per image on the simulated GPU, plus ``load_ms`` when a call switches the model
(a local compatible server holds one model in VRAM).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.emulators.core import EmulatorOptions, SimulatedGPU, bearer_ok, render_image_async, resolve_seed

DEFAULT_MODELS = ["dall-e-2", "dall-e-3", "gpt-image-1"]
CREATED = {"dall-e-2": 1698798177, "dall-e-3": 1698785189, "gpt-image-1": 1745517030}
STEPS = {"low": 10, "standard": 20, "medium": 20, "auto": 20, "high": 40, "hd": 40}
TOKENS_1024 = {"low": 272, "medium": 1056, "high": 4160, "auto": 1056}
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth "
    "(i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the "
    "API from your browser and are prompted for a username. You can obtain an API key from "
    "https://platform.openai.com/account/api-keys."
)
SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"


class ApiError(Exception):
    """An OpenAI error answer."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def response(self) -> JSONResponse:
        error = {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        return JSONResponse(status_code=self.status, content={"error": error})


@dataclass(frozen=True)
class Family:
    """What one kind of model accepts."""

    sizes: tuple[str, ...] | None  # None: any WxH
    default_size: str
    max_n: int
    urls: bool  # response_format allowed (else always base64)
    qualities: tuple[str, ...]


FAMILIES = {
    "dall-e-2": Family(("256x256", "512x512", "1024x1024"), "1024x1024", 10, True, ("standard", "auto")),
    "dall-e-3": Family(("1024x1024", "1792x1024", "1024x1792"), "1024x1024", 1, True, ("standard", "hd", "auto")),
    "gpt-image": Family(
        ("1024x1024", "1536x1024", "1024x1536", "auto"), "auto", 10, False, ("low", "medium", "high", "auto")
    ),
    "compatible": Family(None, "auto", 10, True, ("low", "medium", "high", "standard", "hd", "auto")),
}


def family_of(model: str) -> str:
    for prefix in ("dall-e-2", "dall-e-3", "gpt-image"):
        if model.startswith(prefix):
            return prefix
    return "compatible"


def _quoted_list(values: list[str]) -> str:
    quoted = [f"'{v}'" for v in values]
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}" if len(quoted) > 2 else " and ".join(quoted)


def invalid_value(param: str, value: Any, allowed: list[str]) -> ApiError:
    message = f"Invalid value: '{value}'. Supported values are: {_quoted_list(allowed)}."
    return ApiError(400, message, param=param, code="invalid_value")


def _int(param: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        kind = type(value).__name__.replace("str", "a string").replace("float", "a decimal")
        raise ApiError(
            400,
            f"Invalid type for '{param}': expected an integer, but got {kind} instead.",
            param=param,
            code="invalid_type",
        )
    if value < low:
        raise ApiError(
            400,
            f"Invalid '{param}': integer below minimum value. Expected a value >= {low}, but got {value} instead.",
            param=param,
            code="integer_below_min_value",
        )
    if value > high:
        raise ApiError(
            400,
            f"Invalid '{param}': integer above maximum value. Expected a value <= {high}, but got {value} instead.",
            param=param,
            code="integer_above_max_value",
        )
    return value


def _size(family: Family, value: Any, fallback: tuple[int, int]) -> tuple[int, int]:
    size = str(value if value is not None else family.default_size)
    if family.sizes is not None and size not in family.sizes:
        raise invalid_value("size", size, list(family.sizes))
    if size == "auto":
        return fallback
    match = re.fullmatch(r"(\d+)x(\d+)", size)
    if match is None or not all(16 <= int(v) <= 4096 for v in match.groups()):
        raise invalid_value("size", size, ["auto", "WxH (16-4096)"])
    return int(match[1]), int(match[2])


class Server:
    """Models, the simulated GPU and the images served by URL."""

    def __init__(self, options: EmulatorOptions) -> None:
        self.options = options
        self.models = options.models or DEFAULT_MODELS
        self.gpu = SimulatedGPU(options, default_model=self.models[0])
        self.files: OrderedDict[str, tuple[bytes, str]] = OrderedDict()

    def check_key(self, request: Request) -> None:
        header = request.headers.get("authorization")
        if bearer_ok(header, self.options):
            return
        if not header or not header.lower().startswith("bearer ") or not header[7:].strip():
            raise ApiError(401, NO_KEY)
        key = header[7:].strip()
        shown = f"{key[:3]}{'*' * max(0, len(key) - 7)}{key[-4:]}" if len(key) > 8 else "***"
        raise ApiError(
            401,
            f"Incorrect API key provided: {shown}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )

    def model(self, value: Any) -> str:
        if value is None:
            return "dall-e-2" if "dall-e-2" in self.models else self.models[0]
        if str(value) not in self.models:
            raise invalid_value("model", value, list(self.models))
        return str(value)

    def store(self, data: bytes, fmt: str) -> str:
        name = f"img-{secrets.token_urlsafe(18)}.{fmt}"
        self.files[name] = (data, fmt)
        while len(self.files) > 512:
            self.files.popitem(last=False)
        return name

    async def produce(
        self,
        request: Request,
        body: dict[str, Any],
        *,
        base: Image.Image | None = None,
        mask: Image.Image | None = None,
    ) -> dict[str, Any]:
        """Validate the shared parameters, spend the GPU time and build the answer."""
        prompt = body.get("prompt")
        if prompt is None or prompt == "":
            raise ApiError(
                400, "Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter"
            )
        model = self.model(body.get("model"))
        family = FAMILIES[family_of(model)]
        n = _int("n", body.get("n", 1), 1, family.max_n)
        fallback = (1024, 1024) if base is None or family_of(model) != "compatible" else base.size
        width, height = _size(family, body.get("size"), fallback)
        quality = str(body.get("quality") or "auto")
        if quality not in family.qualities:
            raise invalid_value("quality", quality, list(family.qualities))
        response_format = body.get("response_format")
        if not family.urls and response_format is not None:
            raise ApiError(
                400, "Unknown parameter: 'response_format'.", param="response_format", code="unknown_parameter"
            )
        response_format = str(response_format or ("url" if family.urls else "b64_json"))
        if response_format not in ("url", "b64_json"):
            raise invalid_value("response_format", response_format, ["url", "b64_json"])
        fmt = str(body.get("output_format") or "png") if not model.startswith("dall-e") else "png"
        if fmt not in CONTENT_TYPES:
            raise invalid_value("output_format", fmt, list(CONTENT_TYPES))
        for param, allowed in (("style", ("vivid", "natural")), ("background", ("transparent", "opaque", "auto"))):
            if body.get(param) is not None and str(body[param]) not in allowed:
                raise invalid_value(param, body[param], list(allowed))
        if self.gpu.should_fail():
            raise ApiError(500, SERVER_ERROR, kind="server_error")
        await self.gpu.run(steps=STEPS.get(quality, 20), width=width, height=height, n=n, model=model)
        seed = resolve_seed(-1)
        data = []
        for index in range(n):
            image = await render_image_async(
                prompt=str(prompt), width=width, height=height, seed=seed + index, output_format=fmt
            )
            if base is not None:
                image = await asyncio.to_thread(_edit, image, base, mask, fmt)
            item: dict[str, Any] = {"b64_json": None, "url": None, "revised_prompt": None}
            if response_format == "url":
                item["url"] = f"{str(request.base_url).rstrip('/')}/v1/images/files/{self.store(image, fmt)}"
            else:
                item["b64_json"] = base64.b64encode(image).decode()
            if family_of(model) == "dall-e-3":
                item["revised_prompt"] = str(prompt)
            data.append(item)
        answer: dict[str, Any] = {"created": int(time.time()), "data": data}
        if family_of(model) == "gpt-image":
            text_tokens = max(1, len(str(prompt).split()))
            image_tokens = n * round(TOKENS_1024.get(quality, 1056) * width * height / (1024 * 1024))
            answer.update(
                background=body.get("background") or "opaque",
                output_format=fmt,
                quality=quality,
                size=f"{width}x{height}",
            )
            answer["usage"] = {
                "total_tokens": text_tokens + image_tokens,
                "input_tokens": text_tokens,
                "output_tokens": image_tokens,
                "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": 0},
            }
        return answer


def _edit(generated: bytes, base: Image.Image, mask: Image.Image | None, fmt: str) -> bytes:
    """The new picture where the mask (or the image) is transparent, the original elsewhere."""
    picture = Image.open(io.BytesIO(generated)).convert("RGBA")
    original = base.convert("RGBA").resize(picture.size)
    source = mask if mask is not None else base
    if "A" in source.getbands():
        keep = source.getchannel("A").resize(picture.size)
        result = Image.composite(original, picture, keep)
    else:
        result = Image.blend(original, picture, 0.6)
    buffer = io.BytesIO()
    result.convert("RGB" if fmt == "jpeg" else "RGBA").save(buffer, format=fmt.upper())
    return buffer.getvalue()


async def _upload(value: Any, param: str) -> Image.Image:
    if not isinstance(value, UploadFile):
        raise ApiError(
            400,
            f"Invalid type for '{param}': expected a file, but got a string instead.",
            param=param,
            code="invalid_type",
        )
    try:
        image = Image.open(io.BytesIO(await value.read()))
        image.load()
        return image
    except (UnidentifiedImageError, OSError, ValueError, binascii.Error) as exc:
        raise ApiError(
            400,
            f"Invalid image file or mode for {param}, please check your image file.",
            param=param,
            code="invalid_image_file",
        ) from exc


def create_app(options: EmulatorOptions) -> FastAPI:
    """The OpenAI-compatible Images API server."""
    server = Server(options)
    app = FastAPI(title="OpenAI Images API (Imagegate emulator)")
    app.state.server = server

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return ApiError(404, f"Invalid URL ({request.method} {request.url.path})").response()
        return ApiError(exc.status_code, str(exc.detail)).response()

    @app.middleware("http")
    async def request_id(request: Request, call_next: Any) -> Response:
        started = time.monotonic()
        response: Response = await call_next(request)
        response.headers["x-request-id"] = f"req_{secrets.token_hex(16)}"
        response.headers["openai-processing-ms"] = str(int((time.monotonic() - started) * 1000))
        return response

    @app.post("/v1/images/generations")
    async def generations(request: Request) -> dict[str, Any]:
        server.check_key(request)
        try:
            body = await request.json()
        except ValueError as exc:
            raise ApiError(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you "
                "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but "
                "what was sent was not valid JSON.)",
            ) from exc
        if not isinstance(body, dict):
            raise ApiError(400, "Invalid type for request body: expected an object.", code="invalid_type")
        return await server.produce(request, body)

    @app.post("/v1/images/edits")
    async def edits(request: Request) -> dict[str, Any]:
        server.check_key(request)
        form = await request.form()
        files = form.getlist("image[]") or form.getlist("image")
        if not files:
            raise ApiError(
                400, "Missing required parameter: 'image'.", param="image", code="missing_required_parameter"
            )
        base = await _upload(files[0], "image")
        mask = await _upload(form["mask"], "mask") if form.get("mask") is not None else None
        if mask is not None and mask.size != base.size:
            raise ApiError(
                400,
                "Invalid mask image: the mask must have the same dimensions as the image.",
                param="mask",
                code="invalid_image_dimensions",
            )
        body = {k: v for k, v in form.items() if isinstance(v, str)}
        return await server.produce(request, body, base=base, mask=mask)

    @app.get("/v1/images/files/{name}")
    async def image_file(name: str) -> Response:
        if name not in server.files:
            raise ApiError(404, "The requested image does not exist or has expired.", code="not_found")
        data, fmt = server.files[name]
        return Response(content=data, media_type=CONTENT_TYPES[fmt])

    def model_item(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": CREATED.get(name, 1700000000), "owned_by": "system"}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        server.check_key(request)
        return {"object": "list", "data": [model_item(m) for m in server.models]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str, request: Request) -> dict[str, Any]:
        server.check_key(request)
        if model not in server.models:
            raise ApiError(404, f"The model '{model}' does not exist", param="model", code="model_not_found")
        return model_item(model)

    return app
