"""The ComfyUI adapter (reference: ``backends.md`` section 2; upstream server.py, execution.py, main.py).

A generation is one queued prompt: the request is patched into an API-format workflow (``workflow.py``), init
images are uploaded first, the websocket ``/ws?clientId=`` is opened *before* ``POST /prompt`` (so no message of
our prompt is missed), progress and completion come from websocket messages, and the images are read from
``/history/{prompt_id}`` and fetched with ``/view``. Without a websocket (refused, dropped, or the option
``"websocket": false``) the adapter polls ``/history/{prompt_id}``, which ComfyUI fills when a prompt finishes.

Options (``spec.options``): ``workflows`` (see ``workflow.select``), ``websocket`` (default true),
``poll_seconds`` (default 0.5), ``ws_silence_seconds`` (default 5: a quiet websocket makes us check /history),
``filename_prefix`` (SaveImage prefix, default ``"imagegate"``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import uuid
from dataclasses import dataclass, replace
from typing import Any

import httpx
import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from gateway.backends.base import (
    BACKEND_REJECTED,
    TIMEOUT,
    Adapter,
    BackendError,
    BackendSpec,
    GeneratedImage,
    GenerationRequest,
    ProbeResult,
    ProgressCallback,
    image_of,
    number_option,
    status_error,
    transport_error,
)
from gateway.backends.comfyui import messages as msg
from gateway.backends.comfyui import workflow as wf

log = structlog.get_logger("gateway.backends.comfyui")

CANCEL_SECONDS = 5.0  # the interrupt/delete calls made while a cancellation propagates


@dataclass
class _Run:
    """One queued prompt as the adapter follows it."""

    prompt_id: str
    running: bool = False  # ComfyUI started executing it (execution_start/executing/progress seen)
    reported: float = 0.0


class ComfyUIAdapter(Adapter):
    """A ComfyUI server: one prompt at a time on its GPU (``default_slots`` 1), checkpoints listed by probe."""

    kind = "comfyui"
    default_slots = 1
    lists_models = True

    def __init__(self, spec: BackendSpec, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(spec, client)
        self.use_websocket = bool(spec.options.get("websocket", True))
        self.poll_seconds = number_option(spec.options, "poll_seconds", 0.5)
        # A websocket quiet this long: check /history in case its end was missed.
        self.ws_silence_seconds = number_option(spec.options, "ws_silence_seconds", 5.0)
        wf.check_all(spec.options.get("workflows"))
        self.filename_prefix = str(spec.options.get("filename_prefix", "imagegate"))
        self._checkpoints: dict[str, str] | None = None  # model name (and file name) -> ckpt_name
        self._loaded: str | None = None  # model of the last successful run (ComfyUI keeps it in memory)

    # ----- contract -----

    def adjust(self, request: GenerationRequest) -> tuple[GenerationRequest, list[str]]:
        """Latents are 1/8 of the image, so sizes are multiples of 8; A1111 sampler names become ComfyUI's."""
        if request.mask is not None:  # refused before placement when no inpainting workflow is configured
            wf.select(self.spec.options.get("workflows"), request.model, "inpaint")
        notes: list[str] = []
        width, height = (max(16, (v + 4) // 8 * 8) for v in (request.width, request.height))  # half up
        if (width, height) != (request.width, request.height):
            notes.append(f"Size {request.width}x{request.height} rounded to {width}x{height} (multiples of 8).")
            request = replace(request, width=width, height=height)
        if request.sampler and request.sampler.lower() in msg.A1111_SAMPLERS:
            name, scheduler = msg.A1111_SAMPLERS[request.sampler.lower()]
            scheduler = request.scheduler or scheduler
            notes.append(
                f"Sampler {request.sampler!r} is ComfyUI's {name!r}" + (f" ({scheduler})." if scheduler else ".")
            )
            request = replace(request, sampler=name, scheduler=scheduler)
        return request, notes

    async def probe(self) -> ProbeResult:
        """GET /prompt proves the server answers (and accepts our credentials); /object_info lists checkpoints."""
        await self._call("GET", "/prompt")
        checkpoints = await self._refresh_checkpoints()
        models = sorted({wf.model_name(name) for name in checkpoints.values()})
        return ProbeResult(models=models, loaded_model=self._loaded)

    async def generate(self, request: GenerationRequest, progress: ProgressCallback) -> list[GeneratedImage]:
        mode = "inpaint" if request.mask is not None else "img2img" if request.init_image is not None else "txt2img"
        template, specific = wf.select(self.spec.options.get("workflows"), request.model, mode)
        checkpoint = await self._checkpoint_for(request.model, template, specific)
        init = await self._upload(request.init_image, request, "RGB") if request.init_image else None
        mask = await self._upload(request.mask, request, "L") if request.mask is not None else None
        patched = wf.patch(
            template, request, checkpoint=checkpoint, filename_prefix=self.filename_prefix, init_image=init, mask=mask
        )
        client_id = uuid.uuid4().hex
        ws = await self._connect(client_id) if self.use_websocket else None
        run = _Run(prompt_id=str(uuid.uuid4()))
        try:
            try:
                async with asyncio.timeout(self.spec.timeout_seconds):
                    run.prompt_id = await self._queue(patched.workflow, run.prompt_id, client_id)
                    entry = await self._wait(run, ws, progress)
            except asyncio.CancelledError:
                await asyncio.shield(self._cancel(run))
                raise
            except TimeoutError:
                await asyncio.shield(self._cancel(run))
                raise BackendError(
                    f"Backend {self.name} did not finish prompt {run.prompt_id} in {self.spec.timeout_seconds:g} s.",
                    code=TIMEOUT,
                    retryable=True,
                ) from None
        finally:
            if ws is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(ws.close())
        # ComfyUI's KSampler draws the noise of a whole batch from ONE generator seeded with the KSampler seed
        # (comfy.sample.prepare_noise: torch.manual_seed(seed), then one randn for the batch), so image i is not
        # what seed + i alone would give. Every image therefore reports the KSampler seed, which with the same
        # batch size reproduces the batch.
        images = await self._images(entry, patched.outputs, request.seed)
        if patched.checkpoint is not None:
            self._loaded = wf.model_name(patched.checkpoint)
        await progress(1.0)
        return images

    # ----- HTTP -----

    async def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request; transport failures and error statuses become ``BackendError``."""
        try:
            response = await self.client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise transport_error(self.name, exc) from exc
        if response.status_code >= 400:
            raise status_error(self.name, response.status_code, response.text)
        return response

    async def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        response = await self._call(method, url, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise BackendError(f"Backend {self.name} answered {url} with non-JSON.", retryable=True) from exc

    async def _refresh_checkpoints(self) -> dict[str, str]:
        """Checkpoint files from /object_info/CheckpointLoaderSimple (whole /object_info on old servers)."""
        try:
            info = await self._json("GET", "/object_info/CheckpointLoaderSimple")
        except BackendError as exc:
            if exc.code != BACKEND_REJECTED:  # 404: a server without the per-class route
                raise
            info = {}
        if not isinstance(info, dict) or "CheckpointLoaderSimple" not in info:
            info = await self._json("GET", "/object_info")
        names = wf.checkpoint_names(info if isinstance(info, dict) else {})
        mapping: dict[str, str] = {}
        for name in names:
            mapping.setdefault(wf.model_name(name), name)
            mapping.setdefault(name, name)
        self._checkpoints = mapping
        return mapping

    async def _checkpoint_for(self, model: str | None, template: wf.Workflow, specific: bool) -> str | None:
        """The ckpt_name to load for ``model``; None to keep the workflow's own."""
        loaders = wf.nodes_of(template, ("CheckpointLoaderSimple",))
        if not loaders:
            if model is not None and not specific:
                raise wf.rejected(
                    "The ComfyUI workflow has no CheckpointLoaderSimple node to load the requested model."
                )
            return None  # a workflow made for this model, loading it its own way (UNETLoader, ...)
        known = self._checkpoints if self._checkpoints is not None else await self._refresh_checkpoints()
        if model is None:
            # The backend's default: what it ran last, else the workflow's checkpoint if present, else the first.
            current = template[loaders[0]]["inputs"].get("ckpt_name")
            if self._loaded and self._loaded in known:
                return known[self._loaded]
            if current in known.values() or not known:
                return None
            return sorted(known.values())[0]
        if model not in known:
            known = await self._refresh_checkpoints()
        if model not in known and specific:
            return None  # the workflow configured for this model names its checkpoint itself
        # An unknown model is sent as named: ComfyUI's validation then names the node and the choices it has.
        return known.get(model, model)

    async def _upload(self, data: bytes, request: GenerationRequest, mode: str) -> str:
        """Upload an init image or mask (resized to the request's size) to ComfyUI's input folder; its name."""
        png = await asyncio.to_thread(msg.as_png, data, request.width, request.height, mode)
        name = f"imagegate-{hashlib.sha256(png).hexdigest()[:20]}.png"  # same picture, same file: overwrite is safe
        answer = await self._json(
            "POST",
            "/upload/image",
            files={"image": (name, png, "image/png")},
            data={"type": "input", "overwrite": "true", "subfolder": ""},
        )
        if not isinstance(answer, dict) or not answer.get("name"):
            raise BackendError(f"Backend {self.name} answered the upload without a file name.", retryable=True)
        subfolder = str(answer.get("subfolder") or "")
        return f"{subfolder}/{answer['name']}" if subfolder else str(answer["name"])

    async def _queue(self, workflow: wf.Workflow, prompt_id: str, client_id: str) -> str:
        body = {"prompt": workflow, "client_id": client_id, "prompt_id": prompt_id, "extra_data": {}}
        try:
            response = await self.client.post("/prompt", json=body)
        except httpx.HTTPError as exc:
            raise transport_error(self.name, exc) from exc
        if response.status_code == 400:
            raise BackendError(self._rejection(response), code=BACKEND_REJECTED, retryable=False)
        if response.status_code >= 400:
            raise status_error(self.name, response.status_code, response.text)
        try:
            answer = response.json()
            queued = str(answer["prompt_id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(f"Backend {self.name} answered /prompt without a prompt_id.", retryable=True) from exc
        if answer.get("node_errors"):
            # Queued, but only the outputs that validated will run: ours may not. Take it back and say why.
            with contextlib.suppress(httpx.HTTPError):
                await self.client.post("/queue", json={"delete": [queued]}, timeout=CANCEL_SECONDS)
            raise BackendError(self._rejection(response), code=BACKEND_REJECTED, retryable=False)
        return queued

    def _rejection(self, response: httpx.Response) -> str:
        try:
            return msg.validation_message(self.name, response.json())
        except ValueError:
            return f"Backend {self.name} rejected the workflow: {response.text[:300]}"

    # ----- following a prompt -----

    async def _connect(self, client_id: str) -> ClientConnection | None:
        """The websocket for ``client_id``, or None (the adapter then polls /history)."""
        base = self.client.base_url
        scheme = "wss" if base.scheme == "https" else "ws"
        url = str(base.copy_with(scheme=scheme)).rstrip("/") + f"/ws?clientId={client_id}"
        headers = dict(self.spec.auth.headers())
        if self.spec.auth.kind == "basic":
            token = f"{self.spec.auth.username or ''}:{self.spec.auth.password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
        try:
            # proxy=None: like the HTTP client (trust_env=False), never route backend traffic via env proxies.
            return await connect(url, additional_headers=headers, proxy=None, open_timeout=10, max_size=2**26)
        except (OSError, TimeoutError, WebSocketException) as exc:
            log.info("comfyui.ws_unavailable", backend=self.name, error=repr(exc))
            return None

    async def _wait(self, run: _Run, ws: ClientConnection | None, progress: ProgressCallback) -> dict[str, Any]:
        """Until the prompt finished: follow the websocket, then read (or, without it, poll) its history entry."""
        if ws is not None:
            try:
                await self._follow(ws, run, progress)
            except (ConnectionClosed, OSError) as exc:
                log.info("comfyui.ws_dropped", backend=self.name, prompt_id=run.prompt_id, error=repr(exc))
        return await self._poll_history(run)

    async def _follow(self, ws: ClientConnection, run: _Run, progress: ProgressCallback) -> None:
        """Read websocket messages until our prompt finished (returns) or failed (raises).

        A silent websocket (a proxy that buffers, a server that sends our messages elsewhere) must not leave us
        waiting for the whole timeout: after ``ws_silence_seconds`` without a message, /history is checked."""
        while True:
            try:
                async with asyncio.timeout(self.ws_silence_seconds):
                    raw = await ws.recv()
            except TimeoutError:
                if await self._in_history(run):
                    return
                continue
            if isinstance(raw, bytes):
                continue  # binary frames are previews (type 1); the gateway does not stream them
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            kind, data = message.get("type"), message.get("data") or {}
            if not isinstance(data, dict):
                continue
            ours = data.get("prompt_id")
            if ours is not None and ours != run.prompt_id:
                continue  # status broadcasts and other clients' prompts
            if kind in ("execution_start", "execution_cached"):
                run.running = True
            elif kind == "progress":
                run.running = True
                maximum = float(data.get("max") or 0)
                if maximum > 0:
                    fraction = 0.95 * min(1.0, float(data.get("value") or 0) / maximum)
                    if fraction > run.reported:  # several nodes report progress: never go backwards
                        run.reported = fraction
                        await progress(fraction)
            elif kind == "executing" and data.get("node") is not None:
                run.running = True
            elif kind == "execution_success" or (kind == "executing" and (ours is not None or run.running)):
                run.running = False  # finished: a cancel from now on must not interrupt the next prompt
                return
            elif kind == "execution_error":
                raise msg.execution_error(self.name, data)
            elif kind == "execution_interrupted":
                raise msg.interrupted(self.name, run.prompt_id)

    async def _in_history(self, run: _Run) -> bool:
        history = await self._json("GET", f"/history/{run.prompt_id}")
        return isinstance(history, dict) and run.prompt_id in history

    async def _poll_history(self, run: _Run) -> dict[str, Any]:
        """GET /history/{id} until ComfyUI records the prompt as finished (it does so before the final
        ``executing`` message, at the end of a run); its entry."""
        polls = 0
        while True:
            history = await self._json("GET", f"/history/{run.prompt_id}")
            entry = history.get(run.prompt_id) if isinstance(history, dict) else None
            if isinstance(entry, dict):
                status = entry.get("status") or {}
                if status.get("status_str") == "error":
                    messages = dict(
                        (m[0], m[1]) for m in status.get("messages", []) if isinstance(m, list) and len(m) == 2
                    )
                    if "execution_error" in messages:
                        raise msg.execution_error(self.name, messages["execution_error"])
                    raise msg.interrupted(self.name, run.prompt_id)
                if status.get("completed", True) or status.get("status_str") == "success":
                    return entry
            polls += 1
            if polls % 10 == 0 and not await self._still_queued(run):
                # Neither queued nor in history: someone deleted it (POST /queue delete) or the server restarted.
                if not await self._in_history(run):
                    raise msg.interrupted(self.name, run.prompt_id)
                continue
            # Quick first polls: after the websocket said "done" the entry is (nearly) there already.
            await asyncio.sleep(min(self.poll_seconds, 0.05 * 2**polls))

    async def _still_queued(self, run: _Run) -> bool:
        queue = await self._json("GET", "/queue")
        if not isinstance(queue, dict):
            raise BackendError(f"Backend {self.name} answered /queue with no queue.", retryable=True)
        running = any(msg.item_id(item) == run.prompt_id for item in queue.get("queue_running", []))
        run.running = run.running or running
        return running or any(msg.item_id(item) == run.prompt_id for item in queue.get("queue_pending", []))

    async def _cancel(self, run: _Run) -> None:
        """Stop our prompt: delete it from the queue (pending) and interrupt it (running). Best effort, bounded."""
        with contextlib.suppress(httpx.HTTPError, TimeoutError):
            async with asyncio.timeout(CANCEL_SECONDS):
                await self.client.post("/queue", json={"delete": [run.prompt_id]})
                # Deleting only removes pending prompts; a running one shows in queue_running and is interrupted.
                # /interrupt with a prompt_id stops only that prompt, but old servers ignore the id and stop
                # whatever runs, so it is sent only when ours is (or, if the queue cannot be read, may be) running.
                running = run.running
                if not running:
                    try:
                        await self._still_queued(run)
                        running = run.running
                    except BackendError:
                        running = True
                if running:
                    await self.client.post("/interrupt", json={"prompt_id": run.prompt_id})
        log.info("comfyui.cancelled", backend=self.name, prompt_id=run.prompt_id, running=run.running)

    async def _images(self, entry: dict[str, Any], outputs: list[str], seed: int) -> list[GeneratedImage]:
        files = [
            image
            for node_id in outputs
            for image in (entry.get("outputs", {}).get(node_id, {}) or {}).get("images", [])
            if isinstance(image, dict) and image.get("filename")
        ]
        if not files:
            raise BackendError(f"Backend {self.name} finished the prompt without saving images.", retryable=True)
        images = []
        for file in files:
            params = {
                "filename": file["filename"],
                "subfolder": file.get("subfolder", ""),
                "type": file.get("type", "output"),
            }
            response = await self._call("GET", "/view", params=params)
            images.append(image_of(response.content, seed))
        return images
