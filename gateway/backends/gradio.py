"""The Gradio adapter, for the GLM-Image WebUI (reference: ``backends.md`` section 4; seed 002).

The WebUI's generate function takes ``[prompt, negative_prompt, width, height, steps, guidance_scale, seed]`` and
returns one image. Gradio serves it two ways:

- Gradio 4.20+ (``protocol: "call"``): ``POST {prefix}/call/{api}`` ``{"data": [...]}`` -> ``{"event_id"}``, then
  ``GET {prefix}/call/{api}/{event_id}`` is a server-sent event stream: ``generating`` (partial outputs),
  ``heartbeat``, then ``complete`` (data = the output array) or ``error``.
- Legacy (``protocol: "legacy"``, what seed 002 calls): ``POST {prefix}/api/{api}`` (or ``/run/{api}``)
  ``{"data": [...]}`` -> ``{"data": [...], "is_generating", "duration", ...}``; errors are 500 ``{"error": ...}``.

``protocol: "auto"`` (default) tries ``/call`` first and falls back to legacy on 404, remembering what worked.
``prefix`` is ``""`` (Gradio 4) or ``"/gradio_api"`` (Gradio 5); left unset, it is detected from which of
``/gradio_api/info`` and ``/info`` answers. Other options: ``api_name`` (default ``"/predict"``, the name in the
seed's ``/api/predict``), ``fn_index`` (legacy apps that need it; also enables ``/cancel``), ``size_multiple`` (32).

Gradio's own login form (a cookie session) is not spoken: put such an app behind HTTP Basic or a bearer proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import httpx
import structlog
from httpx_sse import SSEError, aconnect_sse

from gateway.backends.base import (
    BACKEND_ERROR,
    BACKEND_REJECTED,
    OUT_OF_MEMORY,
    TIMEOUT,
    Adapter,
    BackendError,
    BackendSpec,
    GeneratedImage,
    GenerationRequest,
    ProbeResult,
    ProgressCallback,
    decode_base64_image,
    image_of,
    status_error,
    transport_error,
)

log = structlog.get_logger("gateway.backends.gradio")

PROTOCOLS = ("auto", "call", "legacy")
PREFIXES = ("/gradio_api", "")  # Gradio 5 first: a Gradio 4 app answers 404 there
CANCEL_SECONDS = 5.0


class GradioAdapter(Adapter):
    """A Gradio app (the GLM-Image WebUI): one call per image, seed + i; it cannot list models."""

    kind = "gradio"
    default_slots = 1
    lists_models = False
    default_models = ("glm-image",)

    def __init__(self, spec: BackendSpec, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(spec, client)
        options = spec.options
        self.api_name = str(options.get("api_name") or "/predict").strip("/")
        self.protocol = str(options.get("protocol") or "auto")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"Gradio backend {spec.name}: protocol must be one of {PROTOCOLS}, not {self.protocol!r}")
        prefix = options.get("prefix")
        self._prefix: str | None = None if prefix is None else ("/" + str(prefix).strip("/") if prefix else "")
        self.fn_index: int | None = int(options["fn_index"]) if options.get("fn_index") is not None else None
        self.size_multiple = int(options.get("size_multiple", 32))
        self._mode: str | None = None if self.protocol == "auto" else self.protocol  # what worked (auto)
        self._endpoints: list[str] | None = None  # named endpoints from /info, once read

    # ----- contract -----

    def adjust(self, request: GenerationRequest) -> tuple[GenerationRequest, list[str]]:
        """GLM-Image: text-to-image only, sizes in multiples of 32, and its pipeline has no negative prompt."""
        if request.init_image is not None or request.mask is not None:
            raise BackendError(
                f"Backend {self.name} (GLM-Image WebUI) only does text-to-image.",
                code=BACKEND_REJECTED,
                retryable=False,
            )
        notes: list[str] = []
        step = max(1, self.size_multiple)
        width, height = (max(step, (v + step // 2) // step * step) for v in (request.width, request.height))
        if (width, height) != (request.width, request.height):
            notes.append(f"Size {request.width}x{request.height} rounded to {width}x{height} (multiples of {step}).")
            request = replace(request, width=width, height=height)
        if request.negative_prompt.strip():
            notes.append("The negative prompt is sent, but GLM-Image's pipeline does not use one.")
        return request, notes

    async def probe(self) -> ProbeResult:
        """The app answers its API info (which also tells Gradio 4 from Gradio 5); it lists no models."""
        await self._detect_prefix()
        if self._endpoints is not None and f"/{self.api_name}" not in self._endpoints:
            raise BackendError(
                f"Backend {self.name} has no API endpoint /{self.api_name} (it has {sorted(self._endpoints)}).",
                code=BACKEND_REJECTED,
            )
        if self.fn_index is None:
            with contextlib.suppress(BackendError, httpx.HTTPError, ValueError, TypeError, AttributeError):
                self.fn_index = await self._discover_fn_index()
        return ProbeResult(models=list(self.default_models), loaded_model=None)  # its one model

    async def generate(self, request: GenerationRequest, progress: ProgressCallback) -> list[GeneratedImage]:
        if self._prefix is None:
            await self._detect_prefix()
        images = []
        for index in range(request.n):
            seed = request.seed + index
            data = [
                request.prompt,
                request.negative_prompt,
                request.width,
                request.height,
                request.steps,
                request.guidance_scale,
                seed,
            ]
            try:
                async with asyncio.timeout(self.spec.timeout_seconds):
                    output = await self._predict(data)
                    images.append(image_of(await self._image_bytes(output), seed))
            except TimeoutError:
                raise BackendError(
                    f"Backend {self.name} did not answer in {self.spec.timeout_seconds:g} s.",
                    code=TIMEOUT,
                    retryable=True,
                ) from None
            # /call streams no step progress for a plain function (gr.Progress is not sent on /call), so
            # progress advances per image.
            await progress((index + 1) / request.n)
        return images

    # ----- discovery -----

    @property
    def prefix(self) -> str:
        return self._prefix or ""

    async def _get(self, url: str) -> httpx.Response:
        try:
            return await self.client.get(url)
        except httpx.HTTPError as exc:
            raise transport_error(self.name, exc) from exc

    async def _detect_prefix(self) -> str:
        """``/gradio_api`` when ``/gradio_api/info`` answers, ``""`` when ``/info`` does (or only ``/config``)."""
        candidates = (self._prefix,) if self._prefix is not None else PREFIXES
        last: httpx.Response | None = None
        for prefix in candidates:
            response = await self._get(f"{prefix}/info")
            if response.status_code == 200:
                self._prefix = prefix
                with contextlib.suppress(ValueError, AttributeError, TypeError):
                    self._endpoints = list(response.json()["named_endpoints"])
                return prefix
            if response.status_code != 404:
                raise status_error(self.name, response.status_code, response.text)
            last = response
        response = await self._get("/config")  # apps that hide /info still serve their config
        if response.status_code == 200:
            if self._prefix is None:
                try:
                    self._prefix = str(response.json().get("api_prefix") or "").rstrip("/")
                except (ValueError, AttributeError):
                    self._prefix = ""
            return self._prefix
        last = response if response.status_code != 404 or last is None else last
        raise status_error(self.name, last.status_code, last.text)

    async def _discover_fn_index(self) -> int | None:
        """The id of our function in ``/config`` (Gradio 5: ``dependencies[].id``; 4: the dependency's index)."""
        response = await self._get("/config")
        if response.status_code != 200:
            return None
        for index, dependency in enumerate(response.json().get("dependencies", [])):
            if str(dependency.get("api_name") or "").strip("/") == self.api_name:
                return int(dependency.get("id", index))
        return None

    # ----- calling -----

    async def _predict(self, data: list[Any]) -> list[Any]:
        """The function's output array, by /call (SSE) or the legacy routes."""
        if self._mode in (None, "call"):
            output = await self._call(data)
            if output is not None:
                self._mode = "call"
                return output
            log.info("gradio.legacy_fallback", backend=self.name, api_name=self.api_name)
            self._mode = "legacy"
        return await self._legacy(data)

    async def _call(self, data: list[Any]) -> list[Any] | None:
        """The Gradio 4.20+ flow; None when the app has no /call route (auto mode falls back to legacy)."""
        route = f"{self.prefix}/call/{self.api_name}"
        try:
            response = await self.client.post(route, json={"data": data})
        except httpx.HTTPError as exc:
            raise transport_error(self.name, exc) from exc
        if response.status_code in (404, 405) and self.protocol == "auto":
            return None
        if response.status_code >= 400:
            raise status_error(self.name, response.status_code, response.text)
        try:
            event_id = str(response.json()["event_id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(f"Backend {self.name} answered {route} without an event_id.", retryable=True) from exc
        try:
            return await self._stream(f"{route}/{event_id}")
        except (asyncio.CancelledError, TimeoutError):
            # Closing the stream (leaving aconnect_sse) only drops the event if it is still queued; a running
            # one is stopped by Gradio's /cancel, which needs the function's fn_index.
            await asyncio.shield(self._cancel(event_id))
            raise

    async def _stream(self, url: str) -> list[Any]:
        try:
            async with aconnect_sse(self.client, "GET", url) as source:
                if source.response.status_code >= 400:
                    await source.response.aread()
                    raise status_error(self.name, source.response.status_code, source.response.text)
                async for event in source.aiter_sse():
                    if event.event == "complete":
                        output = json.loads(event.data)
                        if not isinstance(output, list):
                            raise BackendError(f"Backend {self.name} completed without outputs.", retryable=True)
                        return output
                    if event.event == "error":
                        raise self._app_error(_error_text(event.data))
                    # "generating" carries partial outputs (generators) and "heartbeat" nothing: keep reading.
        except httpx.HTTPError as exc:
            raise transport_error(self.name, exc) from exc
        except (SSEError, ValueError) as exc:
            raise BackendError(f"Backend {self.name} sent a malformed event stream: {exc}", retryable=True) from exc
        raise BackendError(f"Backend {self.name} closed the event stream without a result.", retryable=True)

    async def _cancel(self, event_id: str) -> None:
        """Gradio's /cancel for a /call event (session_hash = event_id there); without fn_index, nothing to send."""
        if self.fn_index is None:
            return
        body = {"session_hash": event_id, "fn_index": self.fn_index, "event_id": event_id}
        with contextlib.suppress(httpx.HTTPError):
            await self.client.post(f"{self.prefix}/cancel", json=body, timeout=CANCEL_SECONDS)
        log.info("gradio.cancelled", backend=self.name, event_id=event_id)

    async def _legacy(self, data: list[Any]) -> list[Any]:
        """POST /api/{api} (or /run/{api}); a cancelled call can only be abandoned (the protocol has no cancel)."""
        body: dict[str, Any] = {"data": data}
        if self.fn_index is not None:
            body["fn_index"] = self.fn_index
        response: httpx.Response | None = None
        for route in (f"{self.prefix}/api/{self.api_name}", f"{self.prefix}/run/{self.api_name}"):
            try:
                response = await self.client.post(route, json=body)
            except httpx.HTTPError as exc:
                raise transport_error(self.name, exc) from exc
            if response.status_code not in (404, 405):
                break
        assert response is not None
        if response.status_code == 500:
            raise self._app_error(_error_text(response.text))
        if response.status_code >= 400:
            raise status_error(self.name, response.status_code, response.text)
        try:
            output = response.json()["data"]
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(f"Backend {self.name} answered without data.", retryable=True) from exc
        if not isinstance(output, list):
            raise BackendError(f"Backend {self.name} answered with data that is not a list.", retryable=True)
        return output

    def _app_error(self, text: str) -> BackendError:
        """The function raised: CUDA OOM is the request's size on this GPU; anything else is the backend's fault."""
        if "out of memory" in text.lower() or "outofmemory" in text.lower():
            return BackendError(f"Backend {self.name} ran out of GPU memory: {text[:300]}", code=OUT_OF_MEMORY)
        return BackendError(f"Backend {self.name} failed: {text[:300]}", code=BACKEND_ERROR, retryable=True)

    # ----- images -----

    async def _image_bytes(self, output: list[Any]) -> bytes:
        """The bytes of the first output: a FileData dict, a data URL / base64 string, or a server file path."""
        value: Any = output[0] if output else None
        if isinstance(value, list) and value:  # a gallery: [FileData | {"image": FileData} | [path, caption]]
            value = value[0][0] if isinstance(value[0], list) and value[0] else value[0]
        if isinstance(value, dict) and isinstance(value.get("image"), dict):
            value = value["image"]
        if isinstance(value, dict):
            url, path = value.get("url"), value.get("path") or value.get("name")
            if isinstance(url, str) and url.startswith("data:"):
                return decode_base64_image(url)
            return await self._fetch(url if isinstance(url, str) else None, path if isinstance(path, str) else None)
        if isinstance(value, str) and value:
            if value.startswith("data:"):
                return decode_base64_image(value)
            if "." not in value[-6:] or len(value) > 4096:  # paths end in an extension; base64 has no dot
                with contextlib.suppress(BackendError):
                    return decode_base64_image(value)
            return await self._fetch(None, value)
        raise BackendError(f"Backend {self.name} returned no image (output {str(value)[:100]!r}).", retryable=True)

    async def _fetch(self, url: str | None, path: str | None) -> bytes:
        """Fetch a file output. A ``url`` is followed only on the backend's own scheme, host and port (else it is
        rebuilt from ``path`` on the backend), so a compromised or misconfigured app cannot make us fetch
        arbitrary hosts (SSRF)."""
        target: httpx.URL | str | None = None
        if url:
            parsed = httpx.URL(url)
            if parsed.is_relative_url:
                target = url
            elif _origin(parsed) == _origin(self.client.base_url):
                target = parsed
        if target is None and path:
            target = f"{self.prefix}/file={quote(path, safe='/')}"
        if target is None:
            raise BackendError(f"Backend {self.name} pointed at a file on another host ({url}); refused.")
        try:
            response = await self.client.get(target)
        except httpx.HTTPError as exc:
            raise transport_error(self.name, exc) from exc
        if response.status_code >= 400:
            raise status_error(self.name, response.status_code, response.text)
        return response.content


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host.lower(), url.port or default


def _error_text(raw: str) -> str:
    """The message of a Gradio error payload (``null``, a string, ``{"error": ...}``, or plain text)."""
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return raw
    if isinstance(value, dict):
        value = value.get("error") or value.get("message") or value.get("detail")
    if value is None:
        return "the app raised an error (Gradio hides it unless the app is launched with show_error=True)"
    return str(value)
