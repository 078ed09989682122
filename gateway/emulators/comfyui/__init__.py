"""A ComfyUI server emulator that answers like upstream ``server.py`` (aiohttp), on every route and under ``/api``.

Routes: POST/GET /prompt, GET /queue + POST /queue (clear/delete), POST /interrupt (optionally one prompt_id),
GET/POST /history, GET /history/{id}, GET /view, POST /upload/image, GET /object_info[/{class}], GET /ws,
GET /system_stats, /models[/{folder}], /embeddings, /extensions, POST /free. Errors use aiohttp's plain
bodies ("404: Not Found", an empty 400/403/404 from /view, "500 Internal Server Error" for a body that is not
JSON). One executor runs prompts in queue order (see ``executor``); the KSampler spends GPU time through
``SimulatedGPU`` (a checkpoint not on the GPU costs ``load_ms`` first) and the images are real PNGs of the
latent's size. No binary preview frames are sent (upstream's default ``--preview-method none``). ``--auth``:
HTTP Basic as a reverse proxy adds it (``proxy``). ``--fail-rate``: a KSampler fails with a CUDA OOM
(``torch.OutOfMemoryError``) and the models are unloaded, as upstream does after an OOM.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import posixpath
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from PIL import Image
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from gateway.emulators.comfyui.executor import SENSITIVE_EXTRA_DATA_KEYS, Executor, Hub, PromptQueue, QueueItem
from gateway.emulators.comfyui.files import FOLDER_TYPES, FileStore, PathEscape, content_type, normalise_subfolder
from gateway.emulators.comfyui.nodes import Env
from gateway.emulators.comfyui.registry import LORAS, NODES, VAES, checkpoint_names
from gateway.emulators.comfyui.validation import validate_prompt
from gateway.emulators.core import EmulatorOptions, SimulatedGPU, render_image
from gateway.emulators.proxy import ProxyBasicAuth

VERSION = "0.3.40"
AIOHTTP_500 = "500 Internal Server Error\n\nServer got itself in trouble"


class ServerTrouble(Exception):
    """What aiohttp turns into its plain 500 (an unhandled exception in a handler)."""


def _json(data: Any, status: int = 200) -> Response:
    """``web.json_response``: ``json.dumps`` with its default separators."""
    return Response(json.dumps(data), status_code=status, media_type="application/json")


async def _body(request: Request) -> dict[str, Any]:
    """``await request.json()`` of a handler that then indexes it: anything but an object is aiohttp's 500."""
    try:
        data = json.loads(await request.body())
    except ValueError:
        raise ServerTrouble from None
    if not isinstance(data, dict):
        raise ServerTrouble
    return data


class ComfyServer:
    """The state behind the routes: queue, history, files, websocket clients and the executor."""

    def __init__(self, options: EmulatorOptions) -> None:
        self.options = options
        self.hub = Hub()
        self.queue = PromptQueue(self.hub)
        self.files = FileStore()
        self.files.put("input", "", "example.png", render_image(prompt="example", width=512, height=512, seed=0))
        self.env = Env(checkpoints=checkpoint_names(options.models), files=self.files)
        self.gpu = SimulatedGPU(options)
        self.executor = Executor(self.hub, self.queue, self.files, self.gpu, self.env)
        self.number = 0
        self._worker: asyncio.Task[None] | None = None

    def ensure_started(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self.executor.worker())

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    # --- routes -----------------------------------------------------------------------------------------------

    async def post_prompt(self, request: Request) -> Response:
        data = await _body(request)
        if "number" in data:
            try:
                number: int | float = float(data["number"])
            except (TypeError, ValueError):
                raise ServerTrouble from None
        else:
            number = -self.number if data.get("front") else self.number
            self.number += 1
        if "prompt" not in data:
            reason = "No prompt provided"
            no_prompt = {"type": "no_prompt", "message": reason, "details": reason, "extra_info": {}}
            return _json({"error": no_prompt, "node_errors": {}}, 400)
        prompt = data["prompt"]
        prompt_id = str(data.get("prompt_id", uuid.uuid4()))
        if not isinstance(prompt, dict):
            if prompt:
                raise ServerTrouble
            prompt = {}
        targets = data.get("partial_execution_targets")
        valid, error, outputs, node_errors = validate_prompt(prompt, NODES, self.env, targets)
        extra_data = dict(data.get("extra_data") or {})
        if "client_id" in data:
            extra_data["client_id"] = data["client_id"]
        if not valid:
            return _json({"error": error, "node_errors": node_errors}, 400)
        for key in SENSITIVE_EXTRA_DATA_KEYS:
            extra_data.pop(key, None)
        extra_data["create_time"] = int(time.time() * 1000)
        self.ensure_started()
        self.queue.put(QueueItem(number, prompt_id, prompt, extra_data, outputs))
        return _json({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    async def get_prompt(self, request: Request) -> Response:
        return _json(self.queue.queue_info())

    async def get_queue(self, request: Request) -> Response:
        running = [item.row() for item in self.queue.running.values()]
        return _json({"queue_running": running, "queue_pending": [item.row() for item in self.queue.pending]})

    async def post_queue(self, request: Request) -> Response:
        data = await _body(request)
        if data.get("clear"):
            self.queue.wipe_queue()
        for prompt_id in data.get("delete", []):
            self.queue.delete_queue_item(prompt_id)
        return Response(status_code=200)

    async def post_interrupt(self, request: Request) -> Response:
        try:
            data = json.loads(await request.body())
        except ValueError:
            data = {}
        self.executor.interrupt(data.get("prompt_id") if isinstance(data, dict) else None)
        return Response(status_code=200)

    async def post_free(self, request: Request) -> Response:
        data = await _body(request)
        self.executor.free(bool(data.get("unload_models")), bool(data.get("free_memory")))
        return Response(status_code=200)

    async def get_history(self, request: Request) -> Response:
        if "prompt_id" in request.path_params:
            return _json(self.queue.get_history(prompt_id=request.path_params["prompt_id"]))
        try:
            max_items = int(request.query_params["max_items"]) if "max_items" in request.query_params else None
            offset = int(request.query_params.get("offset", -1))
        except ValueError:
            raise ServerTrouble from None
        return _json(self.queue.get_history(max_items=max_items, offset=offset))

    async def post_history(self, request: Request) -> Response:
        data = await _body(request)
        if data.get("clear"):
            self.queue.history.clear()
        for prompt_id in data.get("delete", []):
            self.queue.history.pop(prompt_id, None)
        return Response(status_code=200)

    async def view(self, request: Request) -> Response:
        query = request.query_params
        if "filename" not in query:
            return Response(status_code=404)
        name, folder = query["filename"], query.get("type", "output")
        if name.endswith(("[input]", "[output]", "[temp]")) and " [" in name:
            name, _, annotation = name.rpartition(" [")
            folder = annotation.rstrip("]")
        if not name or name[0] == "/" or ".." in name:
            return Response(status_code=400)
        if folder not in FOLDER_TYPES:
            return Response(status_code=400)
        try:
            subfolder = normalise_subfolder(query.get("subfolder", ""))
        except PathEscape:
            return Response(status_code=403)
        filename = posixpath.basename(name)
        data = self.files.get(folder, subfolder, filename)
        if data is None:
            return Response(status_code=404)
        headers = {"Content-Disposition": f'filename="{filename}"'}
        preview = query.get("preview")
        channel = query.get("channel", "rgba")
        if preview is None and channel not in ("rgb", "a"):
            return Response(data, media_type=content_type(filename), headers=headers)
        return await asyncio.to_thread(_converted, data, preview, channel, headers)

    async def upload_image(self, request: Request) -> Response:
        async with request.form() as form:
            image = form.get("image")
            if not isinstance(image, UploadFile) or not image.filename:
                return Response(status_code=400)
            folder = str(form.get("type") or "input")
            if folder not in FOLDER_TYPES:
                raise ServerTrouble
            subfolder = str(form.get("subfolder") or "")
            overwrite = str(form.get("overwrite")) in ("true", "1")
            data = await image.read()
        try:
            directory, name = posixpath.split(posixpath.join(normalise_subfolder(subfolder), image.filename))
            directory = normalise_subfolder(directory)
        except PathEscape:
            return Response(status_code=400)
        stored, duplicate = self.files.upload_name(folder, directory, name, data, overwrite)
        if not duplicate:
            self.files.put(folder, directory, stored, data)
        filename = posixpath.join(posixpath.dirname(image.filename), stored)
        return _json({"name": filename, "subfolder": subfolder, "type": folder})

    async def object_info(self, request: Request) -> Response:
        node_class = request.path_params.get("node_class")
        if node_class is None:
            return _json({name: node.info(self.env) for name, node in NODES.items()})
        return _json({node_class: NODES[node_class].info(self.env)} if node_class in NODES else {})

    async def system_stats(self, request: Request) -> Response:
        vram = 24 * 1024**3
        return _json(
            {
                "system": {
                    "os": os.name,
                    "ram_total": 64 * 1024**3,
                    "ram_free": 48 * 1024**3,
                    "comfyui_version": VERSION,
                    "python_version": sys.version,
                    "pytorch_version": "2.5.1+cu124",
                    "embedded_python": False,
                    "argv": ["main.py", "--listen", self.options.host, "--port", str(self.options.port)],
                },
                "devices": [
                    {
                        "name": "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync",
                        "type": "cuda",
                        "index": 0,
                        "vram_total": vram,
                        "vram_free": vram // 2 if self.gpu.loaded_model else vram,
                        "torch_vram_total": vram // 2 if self.gpu.loaded_model else 0,
                        "torch_vram_free": 0,
                    }
                ],
            }
        )

    async def models(self, request: Request) -> Response:
        folders = {"checkpoints": self.env.checkpoints, "loras": LORAS, "vae": VAES, "embeddings": []}
        folder = request.path_params.get("folder")
        if folder is None:
            return _json(list(folders))
        return _json(folders[folder]) if folder in folders else Response(status_code=404)

    async def empty_list(self, request: Request) -> Response:
        return _json([])

    async def root(self, request: Request) -> Response:
        return HTMLResponse("<!DOCTYPE html><html><head><title>ComfyUI</title></head><body></body></html>")

    async def websocket(self, ws: WebSocket) -> None:
        await ws.accept()
        sid = ws.query_params.get("clientId") or uuid.uuid4().hex
        outgoing: asyncio.Queue[str] = asyncio.Queue()
        self.hub.sockets[sid] = outgoing
        outgoing.put_nowait(json.dumps({"type": "status", "data": {"status": self.queue.queue_info(), "sid": sid}}))
        if self.executor.client_id == sid and self.executor.last_node_id is not None:
            outgoing.put_nowait(json.dumps({"type": "executing", "data": {"node": self.executor.last_node_id}}))

        async def write() -> None:
            while True:
                await ws.send_text(await outgoing.get())

        async def read() -> None:  # clients may send text or binary frames; only the close matters
            while (await ws.receive())["type"] != "websocket.disconnect":
                pass

        tasks = {asyncio.ensure_future(write()), asyncio.ensure_future(read())}
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            if self.hub.sockets.get(sid) is outgoing:
                del self.hub.sockets[sid]

    def routes(self) -> list[BaseRoute]:
        http = [
            ("/", self.root, ["GET"]),
            ("/prompt", self.post_prompt, ["POST"]),
            ("/prompt", self.get_prompt, ["GET"]),
            ("/queue", self.get_queue, ["GET"]),
            ("/queue", self.post_queue, ["POST"]),
            ("/interrupt", self.post_interrupt, ["POST"]),
            ("/free", self.post_free, ["POST"]),
            ("/history", self.get_history, ["GET"]),
            ("/history", self.post_history, ["POST"]),
            ("/history/{prompt_id}", self.get_history, ["GET"]),
            ("/view", self.view, ["GET"]),
            ("/upload/image", self.upload_image, ["POST"]),
            ("/object_info", self.object_info, ["GET"]),
            ("/object_info/{node_class}", self.object_info, ["GET"]),
            ("/system_stats", self.system_stats, ["GET"]),
            ("/models", self.models, ["GET"]),
            ("/models/{folder}", self.models, ["GET"]),
            ("/embeddings", self.empty_list, ["GET"]),
            ("/extensions", self.empty_list, ["GET"]),
        ]
        routes: list[BaseRoute] = []
        for prefix in ("", "/api"):
            routes.append(WebSocketRoute(prefix + "/ws", self.websocket))
            routes += [Route(prefix + path, handler, methods=methods) for path, handler, methods in http]
        return routes


def _converted(data: bytes, preview: str | None, channel: str, headers: dict[str, str]) -> Response:
    """/view's ``preview=webp;90`` / ``channel=rgb|a`` re-encodings."""
    with Image.open(io.BytesIO(data)) as img:
        buffer = io.BytesIO()
        if preview is not None:
            parts = preview.split(";")
            fmt = parts[0] if parts[0] in ("webp", "jpeg") and "a" not in channel else "webp"
            quality = int(parts[-1]) if parts[-1].isdigit() else 90
            out = img.convert("RGB") if fmt == "jpeg" or channel == "rgb" else img
            out.save(buffer, format=fmt, quality=quality)
            return Response(buffer.getvalue(), media_type=f"image/{fmt}", headers=headers)
        if channel == "rgb":
            img.convert("RGB").save(buffer, format="PNG")
        else:
            alpha = img.getchannel("A") if img.mode == "RGBA" else Image.new("L", img.size, 255)
            out = Image.new("RGBA", img.size)
            out.putalpha(alpha)
            out.save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png", headers=headers)


def create_app(options: EmulatorOptions) -> Any:
    """The emulated ComfyUI as an ASGI app (the executor starts with the lifespan, or on the first prompt)."""
    server = ComfyServer(options)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        server.ensure_started()
        try:
            yield
        finally:
            await server.aclose()

    async def not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        text = {404: "404: Not Found", 405: "405: Method Not Allowed"}.get(exc.status_code, str(exc.detail))
        return PlainTextResponse(text, status_code=exc.status_code, headers=exc.headers)

    async def trouble(request: Request, exc: Exception) -> Response:
        return PlainTextResponse(AIOHTTP_500, status_code=500)

    app = Starlette(
        routes=server.routes(),
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: not_found, ServerTrouble: trouble},
    )
    app.state.comfy = server
    return ProxyBasicAuth(app, options, realm="ComfyUI") if options.auth else app


__all__ = ["ComfyServer", "create_app"]
