"""The GLM-Image WebUI of seed 002 as Gradio serves it: one function behind ``/api/predict`` and ``/call/predict``.

The WebUI is a ``gr.Interface`` around ``generate_image(prompt, negative_prompt, width=1024, height=1024, steps=50,
guidance_scale=1.5, seed=-1) -> PIL image``; an Interface's function is named ``predict`` in the API, which is
why seed 002 can POST ``/api/predict`` with a bare ``data`` list. Routes of Gradio 4.x at the root and of Gradio
5 under ``/gradio_api`` are both served (``/config`` stays at the root, as in Gradio 5):

- legacy ``POST /api/{api_name}`` and ``/run/{api_name}`` (``fn_index`` or api_name ``predict``): the call runs
  at once, outside the queue, -> ``{"data", "is_generating", "duration", "average_duration", "render_config",
  "changed_state_ids"}``; a failing function -> 500 ``{"error": "<message>"}`` (the app runs with
  ``show_error=True``; with Gradio's default the value is null); an unknown api_name -> 500 "Internal Server
  Error" (upstream's uncaught ``FnIndexInferError``); a body without ``data`` -> FastAPI's 422;
- ``POST /call/{api_name}`` -> ``{"event_id"}``, queued FIFO with ``concurrency_limit=1`` (``--slots``);
  ``GET /call/{api_name}/{event_id}`` -> SSE ``event: complete`` / ``data: [FileData]``, ``event: error`` /
  ``data: null`` (upstream sends the output's ``data`` key, which an error lacks), ``event: heartbeat`` every
  15 s, and for an unknown event ``event: error`` / ``data: "404: Session not found."``;
- the image is a WebP in Gradio's cache (``/tmp/gradio/<sha256>/image.webp``) given as FileData (``size`` and
  ``mime_type`` null, as gr.Image leaves them), fetched from ``/file=`` (4.x) or ``/gradio_api/file=`` (5);
  any other path: 403 ``File not allowed``;
- GET ``/config`` and ``/info`` (``/gradio_api/info``) describe the app and the endpoint's parameters.

GLM-Image rules (reference section 3): width/height multiples of 32 (otherwise the pipeline raises), the negative
prompt is accepted by the UI and ignored by the pipeline, outputs vary between calls even with one seed. Time is
steps x pixels on ``SimulatedGPU``. ``--fail-rate``: the function raises a CUDA OOM. ``--auth``: Gradio's own
auth is a login form with cookies; this emulator instead requires HTTP Basic, as a reverse proxy in front of
the WebUI would (see ``emulators.proxy``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel

from gateway.emulators.core import EmulatorOptions, SimulatedGPU, render_image_async, resolve_seed
from gateway.emulators.proxy import ProxyBasicAuth

VERSION = "5.9.1"
API_NAME = "predict"
FN_NAME = "generate_image"
MODEL = "zai-org/GLM-Image"
HEARTBEAT_SECONDS = 15.0
MAX_PIXELS = 16 * 1024 * 1024
MAX_EVENTS = 2000  # results Gradio keeps for /call (its LRU)
MAX_FILE_BYTES = 256 * 1024 * 1024
OOM_MESSAGE = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.65 GiB of which 1.12 GiB is "
    "free. Including non-PyTorch memory, this process has 22.51 GiB memory in use. Of the allocated memory 21.80 "
    "GiB is allocated by PyTorch, and 301.37 MiB is reserved by PyTorch but unallocated. If reserved but "
    "unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid "
    "fragmentation.  See documentation for Memory Management  "
    "(https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
)
# (parameter name, component, label, default, python type, extra props)
INPUTS: list[tuple[str, str, str, Any, str, dict[str, Any]]] = [
    ("prompt", "Textbox", "Prompt", "", "str", {"lines": 3}),
    ("negative_prompt", "Textbox", "Negative prompt", "", "str", {"lines": 2}),
    ("width", "Slider", "Width", 1024, "float", {"minimum": 256, "maximum": 2048, "step": 32}),
    ("height", "Slider", "Height", 1024, "float", {"minimum": 256, "maximum": 2048, "step": 32}),
    ("steps", "Slider", "Steps", 50, "float", {"minimum": 1, "maximum": 100, "step": 1}),
    ("guidance_scale", "Slider", "Guidance scale", 1.5, "float", {"minimum": 0, "maximum": 20, "step": 0.1}),
    ("seed", "Number", "Seed (-1: random)", -1, "float", {"precision": 0}),
]


def _optional(kind: str, title: str) -> dict[str, Any]:
    return {"anyOf": [{"type": kind}, {"type": "null"}], "default": None, "title": title}


FILE_SCHEMA = {  # the ImageData model of gr.Image, as /info shows it
    "properties": {
        "path": {"title": "Path", "type": "string"},
        "url": _optional("string", "Url"),
        "size": _optional("integer", "Size"),
        "orig_name": _optional("string", "Orig Name"),
        "mime_type": _optional("string", "Mime Type"),
        "is_stream": {"default": False, "title": "Is Stream", "type": "boolean"},
        "meta": {"default": {"_type": "gradio.FileData"}, "title": "Meta", "type": "object"},
    },
    "required": ["path"],
    "title": "ImageData",
    "type": "object",
}


class OutOfMemoryError(RuntimeError):
    """``torch.OutOfMemoryError`` (its ``str`` is what Gradio shows)."""


class PredictBody(BaseModel):
    session_hash: str | None = None
    event_id: str | None = None
    data: list[Any]
    event_data: Any | None = None
    fn_index: int | None = None
    trigger_id: int | None = None
    simple_format: bool = False
    batched: bool | None = False


class SimplePredictBody(BaseModel):
    data: list[Any]
    event_data: Any | None = None
    session_hash: str | None = None


class FnIndexInferError(Exception):
    """No function for that api_name / fn_index: uncaught upstream, so a plain 500."""


class CancelBody(BaseModel):
    session_hash: str
    fn_index: int
    event_id: str | None = None


@dataclass
class Event:
    id: str
    data: list[Any]
    root: str
    messages: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    task: asyncio.Task[dict[str, Any]] | None = None  # while it runs


def _wanted_inputs() -> str:
    return ", ".join(
        f"<gradio.components.{component.lower()}.{component} object at 0x{0x7F3A5C000000 + i * 0x1000:x}>"
        for i, (_, component, *_rest) in enumerate(INPUTS)
    )


class GlmImageWebUI:
    """The app's state: the simulated GPU, Gradio's file cache, the /call events and their queue."""

    def __init__(self, options: EmulatorOptions) -> None:
        self.options = options
        self.gpu = SimulatedGPU(options, default_model=MODEL)
        self.files: OrderedDict[str, bytes] = OrderedDict()
        self.events: OrderedDict[str, Event] = OrderedDict()
        self.queue: asyncio.Queue[Event] | None = None
        self.workers: list[asyncio.Task[None]] = []
        self.total_runtime = 0.0
        self.total_runs = 0
        self._variation = itertools.count(1)

    def ensure_started(self) -> asyncio.Queue[Event]:
        if self.queue is None:
            self.queue = asyncio.Queue()
        if not self.workers:
            loop = asyncio.get_running_loop()
            self.workers = [loop.create_task(self._worker(self.queue)) for _ in range(max(1, self.options.slots))]
        return self.queue

    async def aclose(self) -> None:
        for task in self.workers:
            task.cancel()
        for task in self.workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.workers = []

    async def generate_image(
        self, prompt: Any, negative_prompt: Any, width: Any, height: Any, steps: Any, guidance_scale: Any, seed: Any
    ) -> bytes:
        """The WebUI's function: GlmImagePipeline(prompt, height, width, num_inference_steps, guidance_scale, ...)."""
        width, height, steps = int(width), int(height), int(steps)
        float(guidance_scale)
        if width % 32 or height % 32:
            raise ValueError(f"`height` and `width` have to be divisible by 32 but are {height} and {width}.")
        if self.gpu.should_fail() or width * height > MAX_PIXELS:
            raise OutOfMemoryError(OOM_MESSAGE)
        seed = resolve_seed(int(seed if seed is not None else -1))
        await self.gpu.run(steps=steps, width=width, height=height)
        # The pipeline ignores the negative prompt, and its sampling varies between calls even with one seed.
        variation = f"glm-image sample {next(self._variation)}"
        return await render_image_async(
            prompt=str(prompt or ""),
            negative_prompt=variation,
            width=width,
            height=height,
            seed=seed,
            output_format="webp",
        )

    def _cache(self, data: bytes) -> str:
        path = f"/tmp/gradio/{hashlib.sha256(data).hexdigest()}/image.webp"  # noqa: S108 - Gradio's cache path
        self.files[path] = data
        while sum(len(v) for v in self.files.values()) > MAX_FILE_BYTES and len(self.files) > 1:
            self.files.popitem(last=False)
        return path

    async def process(self, data: list[Any], root: str) -> dict[str, Any]:
        """``process_api``: check the inputs, call the function, turn the image into FileData."""
        started = time.monotonic()
        if len(data) < len(INPUTS):
            received = ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in data)
            raise ValueError(
                f"An event handler ({FN_NAME}) didn't receive enough input values "
                f"(needed: {len(INPUTS)}, got: {len(data)}).\n"
                "Check if the event handler calls a Javascript function, and make sure its return value is correct.\n"
                f"Wanted inputs:\n    [{_wanted_inputs()}]\nReceived inputs:\n    [{received}]"
            )
        path = self._cache(await self.generate_image(*data[: len(INPUTS)]))
        file = {
            "path": path,
            "url": f"{root}/file={path}",
            "size": None,
            "orig_name": "image.webp",
            "mime_type": None,
            "is_stream": False,
            "meta": {"_type": "gradio.FileData"},
        }
        duration = time.monotonic() - started
        self.total_runtime += duration
        self.total_runs += 1
        return {
            "data": [file],
            "is_generating": False,
            "duration": duration,
            "average_duration": self.total_runtime / self.total_runs,
            "render_config": None,
            "changed_state_ids": [],
        }

    async def _worker(self, queue: asyncio.Queue[Event]) -> None:
        while True:
            event = await queue.get()
            if event.cancelled:  # cancelled while queued: never runs
                event.messages.put_nowait(("error", None))
                continue
            event.task = asyncio.ensure_future(self.process(event.data, event.root))
            try:
                output = await asyncio.shield(event.task)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():  # the worker itself is being stopped
                    event.task.cancel()
                    raise
                event.messages.put_nowait(("error", None))
            except Exception:
                event.messages.put_nowait(("error", None))
            else:
                event.messages.put_nowait(("complete", output["data"]))
            finally:
                event.task = None

    def cancel(self, event_id: str | None) -> None:
        """``POST /cancel``: a queued event is dropped, a running one has its task cancelled (the GPU stops)."""
        event = self.events.get(event_id or "")
        if event is None:
            return
        event.cancelled = True
        if event.task is not None:
            event.task.cancel()

    def submit(self, data: list[Any], root: str) -> str:
        queue = self.ensure_started()
        event = Event(uuid.uuid4().hex, data, root)
        self.events[event.id] = event
        while len(self.events) > MAX_EVENTS:
            self.events.popitem(last=False)
        queue.put_nowait(event)
        return event.id

    async def stream(self, event_id: str) -> AsyncIterator[str]:
        """The SSE of ``GET /call/{api_name}/{event_id}`` (``simple_predict_get``)."""
        event = self.events.get(event_id)
        if event is None:
            yield f"event: error\ndata: {json.dumps('404: Session not found.')}\n\n"
            return
        while True:
            try:
                kind, data = await asyncio.wait_for(event.messages.get(), timeout=HEARTBEAT_SECONDS)
            except TimeoutError:
                yield "event: heartbeat\ndata: null\n\n"
                continue
            yield f"event: {kind}\ndata: {json.dumps(data)}\n\n"
            self.events.pop(event_id, None)
            return


def _root(request: Request, prefixed: bool) -> str:
    """Gradio's ``get_root_url`` (honours X-Forwarded-Proto/Host), plus ``/gradio_api`` for Gradio 5 routes."""
    scheme = request.headers.get("x-forwarded-proto", request.url.scheme)
    host = request.headers.get("x-forwarded-host", request.headers.get("host", request.url.netloc))
    return f"{scheme}://{host}{request.scope.get('root_path', '')}" + ("/gradio_api" if prefixed else "")


def _fn(api_name: str, fn_index: int | None) -> None:
    """``route_utils.get_fn``: the one function, by fn_index 0 or api_name ``predict``."""
    if (fn_index is None and api_name != API_NAME) or (fn_index is not None and fn_index != 0):
        raise FnIndexInferError(f"Could not infer function index for API name: {api_name}")


def api_info() -> dict[str, Any]:
    """``GET /info``: the named endpoint with its parameters and return value."""
    parameters = []
    for name, component, label, default, python_type, extra in INPUTS:
        kind = {"type": "string"} if component == "Textbox" else {"type": "number"}
        if component == "Slider":
            kind["description"] = f"numeric value between {extra['minimum']} and {extra['maximum']}"
        parameters.append(
            {
                "label": label,
                "parameter_name": name,
                "parameter_has_default": name != "prompt",
                "parameter_default": None if name == "prompt" else default,
                "type": kind,
                "python_type": {"type": python_type, "description": kind.get("description", "")},
                "component": component,
                "example_input": "Hello!!" if component == "Textbox" else default,
            }
        )
    returns = [
        {
            "label": "Result",
            "type": FILE_SCHEMA,
            "python_type": {"type": "filepath", "description": ""},
            "component": "Image",
        }
    ]
    endpoint = {"parameters": parameters, "returns": returns, "show_api": True}
    return {"named_endpoints": {f"/{API_NAME}": endpoint}, "unnamed_endpoints": {}}


def config(root: str) -> dict[str, Any]:
    """``GET /config`` (a subset of Gradio 5's Blocks config: components and the one dependency)."""
    components: list[dict[str, Any]] = []
    for i, (_name, component, label, default, _, extra) in enumerate(INPUTS, start=1):
        props = {"label": label, "value": default, "interactive": True, "visible": True, "name": component.lower()}
        components.append({"id": i, "type": component.lower(), "props": {**props, **extra}, "skip_api": False})
    button_id, image_id = len(INPUTS) + 1, len(INPUTS) + 2
    components.append({"id": button_id, "type": "button", "props": {"value": "Generate", "name": "button"}})
    image_props = {"label": "Result", "format": "webp", "type": "pil", "name": "image", "interactive": False}
    components.append({"id": image_id, "type": "image", "props": image_props, "skip_api": False})
    dependency = {
        "id": 0,
        "targets": [[button_id, "click"]],
        "inputs": list(range(1, len(INPUTS) + 1)),
        "outputs": [image_id],
        "backend_fn": True,
        "api_name": API_NAME,
        "queue": True,
        "show_api": True,
        "concurrency_limit": 1,
        "types": {"generator": False, "cancel": False},
        "trigger_mode": "once",
        "connection": "sse",
    }
    return {
        "version": VERSION,
        "api_prefix": "/gradio_api",
        "mode": "interface",
        "title": "GLM-Image WebUI",
        "is_space": False,
        "enable_queue": True,
        "show_error": True,
        "show_api": True,
        "protocol": "sse_v3",
        "root": root,
        "username": None,
        "components": components,
        "dependencies": [dependency],
    }


def create_app(options: EmulatorOptions) -> Any:
    """The emulated GLM-Image WebUI as an ASGI app (the /call workers start with the lifespan or on first use)."""
    webui = GlmImageWebUI(options)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        webui.ensure_started()
        try:
            yield
        finally:
            await webui.aclose()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.webui = webui

    @app.get("/", response_class=Response)
    async def main() -> Response:
        return Response(
            "<!doctype html><html><head><title>GLM-Image WebUI</title></head></html>", media_type="text/html"
        )

    @app.get("/config")
    @app.get("/config/")
    async def get_config(request: Request) -> dict[str, Any]:
        return config(_root(request, prefixed=False))

    for prefixed in (False, True):
        prefix = "/gradio_api" if prefixed else ""
        _add_api_routes(app, webui, prefix, prefixed)

    return ProxyBasicAuth(app, options, realm="GLM-Image WebUI") if options.auth else app


def _add_api_routes(app: FastAPI, webui: GlmImageWebUI, prefix: str, prefixed: bool) -> None:
    @app.get(prefix + "/info")
    @app.get(prefix + "/info/")
    async def info() -> dict[str, Any]:
        return api_info()

    @app.post(prefix + "/api/{api_name}")
    @app.post(prefix + "/api/{api_name}/")
    @app.post(prefix + "/run/{api_name}")
    @app.post(prefix + "/run/{api_name}/")
    async def predict(api_name: str, body: PredictBody, request: Request) -> Response:
        try:
            _fn(api_name, body.fn_index)
        except FnIndexInferError:
            return PlainTextResponse("Internal Server Error", status_code=500)
        try:
            output = await webui.process(body.data, _root(request, prefixed))
        except Exception as error:
            return JSONResponse({"error": str(error)}, status_code=500)
        return JSONResponse(output)

    @app.post(prefix + "/call/{api_name}")
    @app.post(prefix + "/call/{api_name}/")
    async def call(api_name: str, body: SimplePredictBody, request: Request) -> Response:
        try:
            _fn(api_name, None)
        except FnIndexInferError:
            return PlainTextResponse("Internal Server Error", status_code=500)
        return JSONResponse({"event_id": webui.submit(body.data, _root(request, prefixed))})

    @app.post(prefix + "/cancel")
    async def cancel(body: CancelBody) -> dict[str, bool]:
        # Gradio answers success whether or not the event existed (its cancel_tasks ignores unknown ids).
        webui.cancel(body.event_id)
        return {"success": True}

    @app.get(prefix + "/call/{api_name}/{event_id}")
    async def call_result(api_name: str, event_id: str) -> StreamingResponse:
        return StreamingResponse(webui.stream(event_id), media_type="text/event-stream")

    @app.get(prefix + "/file={path_or_url:path}")
    @app.head(prefix + "/file={path_or_url:path}")
    @app.get(prefix + "/file/{path_or_url:path}")
    async def file(path_or_url: str) -> Response:
        if path_or_url.startswith(("http://", "https://")):
            return RedirectResponse(path_or_url, status_code=302)
        data = webui.files.get(path_or_url)
        if data is None:
            return JSONResponse({"detail": f"File not allowed: {path_or_url}."}, status_code=403)
        headers = {"Accept-Ranges": "bytes", "Content-Disposition": 'inline; filename="image.webp"'}
        return Response(data, media_type="image/webp", headers=headers)
