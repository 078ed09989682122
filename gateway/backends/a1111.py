"""AUTOMATIC1111 stable-diffusion-webui (and SD.Next, same ``/sdapi/v1`` routes), started with ``--api``.

Protocol: ``/work/shared/reference/backends.md`` section 1. The server runs one generation at a time behind a
global lock; progress and interrupt are global too. The gateway gives such a backend one slot, so while our
``generate`` runs, the server's one running generation is ours: its global progress is our progress and
``/sdapi/v1/interrupt`` stops our work. (Another client using the same server behind the gateway's back would
break that assumption; such servers should be reserved for the gateway.)

Cancelling ``generate`` posts ``/interrupt`` (the closed connection alone would not stop A1111: it finishes a
request whose client has gone). Upstream quirks handled here: an unknown checkpoint, sampler or scheduler name
is silently replaced by a default, so names are checked against the server's lists before sending; an
interrupted call still answers 200 with unfinished images, so the state's ``interrupted`` flag is read after it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
from typing import Any

import httpx
import structlog

from gateway.backends._http import HttpAdapter, error_text, json_of, malformed
from gateway.backends.base import (
    BACKEND_REJECTED,
    INTERRUPTED,
    OUT_OF_MEMORY,
    BackendError,
    BackendSpec,
    GeneratedImage,
    GenerationRequest,
    ProbeResult,
    ProgressCallback,
    decode_base64_image,
    image_of,
    number_option,
    status_error,
)

log = structlog.get_logger("gateway.backends")

API = "/sdapi/v1"
PROGRESS_TIMEOUT = 10.0  # a progress poll is cheap; a slow one is skipped, not waited for
_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]+\]$")  # titles are "<file> [<short hash>]"


class A1111Adapter(HttpAdapter):
    """txt2img / img2img with checkpoint switching, progress polling and interrupt.

    ``options``: ``poll_seconds`` (default 0.5), how often progress is polled while a generation runs.
    """

    kind = "a1111"
    default_slots = 1
    max_slots = 1
    lists_models = True

    def __init__(self, spec: BackendSpec, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(spec, client)
        self.poll_seconds = number_option(spec.options, "poll_seconds", 0.5)
        self._titles: dict[str, str] = {}  # model_name -> title, from the last /sd-models
        self._samplers: set[str] | None = None  # sampler names, from /samplers
        self._schedulers: set[str] | None = None  # scheduler names and labels; None: server without /schedulers

    # --- discovery -------------------------------------------------------------------------------------

    async def _refresh_models(self) -> dict[str, str]:
        checkpoints = await self.send_json("GET", f"{API}/sd-models")
        if not isinstance(checkpoints, list):
            raise malformed(self.name, "sd-models is not a list")
        self._titles = {
            str(c["model_name"]): str(c.get("title") or c["model_name"])
            for c in checkpoints
            if isinstance(c, dict) and c.get("model_name")
        }
        return self._titles

    def _model_name_of(self, title: str) -> str:
        """The model_name of a checkpoint title (``sd_model_checkpoint`` holds a title)."""
        for name, known in self._titles.items():
            if known == title:
                return name
        # Not in the list (changed since): the title minus its hash and extension is the model_name.
        stem = _HASH_SUFFIX.sub("", title)
        return stem.rsplit(".", 1)[0] if stem.endswith((".safetensors", ".ckpt")) else stem

    async def probe(self) -> ProbeResult:
        titles = await self._refresh_models()
        options = await self.send_json("GET", f"{API}/options")
        title = options.get("sd_model_checkpoint") if isinstance(options, dict) else None
        loaded = self._model_name_of(str(title)) if title else None
        return ProbeResult(models=list(titles), loaded_model=loaded)

    async def _checkpoint_title(self, model: str) -> str:
        """The title to put in ``override_settings``; refreshes the list once on a miss (a new checkpoint)."""
        if model not in self._titles:
            await self._refresh_models()
        if model not in self._titles:
            # A1111 silently falls back to another checkpoint for an unknown name, so never send one. The request
            # is fine (another backend may have the model): this backend's advertised list was stale.
            raise BackendError(
                f"Backend {self.name} has no checkpoint named {model!r}.", code=BACKEND_REJECTED, retryable=True
            )
        return self._titles[model]

    async def _refresh_sampling(self) -> None:
        samplers = await self.send_json("GET", f"{API}/samplers")
        self._samplers = {str(s["name"]) for s in samplers if isinstance(s, dict) and "name" in s}
        response = await self.send("GET", f"{API}/schedulers", accept=(404,))  # the route came with v1.9
        found = json_of(self.name, response) if response.status_code != 404 else None
        self._schedulers = (
            {str(s.get(key)) for s in found if isinstance(s, dict) for key in ("name", "label") if s.get(key)}
            if isinstance(found, list)
            else None
        )

    def _unknown_sampling(self, request: GenerationRequest) -> str | None:
        """What the server does not know among the request's sampler and scheduler (None: all known)."""
        samplers, schedulers = self._samplers or set(), self._schedulers or set()
        if request.scheduler and self._schedulers is not None and request.scheduler not in schedulers:
            return f"scheduler {request.scheduler!r}"
        name = request.sampler
        # A scheduler label may be glued to the sampler's name ("DPM++ 2M Karras"): the server accepts that too.
        glued = name and any(name.endswith(" " + s) and name[: -len(s) - 1] in samplers for s in schedulers)
        if name and name not in samplers and not glued:
            return f"sampler {name!r}"
        return None

    async def _check_sampling(self, request: GenerationRequest) -> None:
        """Refuse sampler/scheduler names the server does not know: A1111 (v1.9+) silently replaces an unknown
        sampler by its first one and an unknown scheduler by Automatic, which would return the wrong images."""
        if not (request.sampler or request.scheduler):
            return
        if self._samplers is None or self._unknown_sampling(request):
            await self._refresh_sampling()  # first use, or the server gained samplers (an extension) since
        unknown = self._unknown_sampling(request)
        if unknown:
            raise BackendError(f"Backend {self.name} has no {unknown}.", code=BACKEND_REJECTED)

    # --- generation ------------------------------------------------------------------------------------

    async def _payload(self, request: GenerationRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "seed": request.seed,
            "steps": request.steps,
            "cfg_scale": request.guidance_scale,
            "width": request.width,
            "height": request.height,
            "batch_size": request.n,  # one batch of n: n_iter > 1 would run n separate passes
            "n_iter": 1,
            "send_images": True,
            "save_images": False,
            "do_not_save_grid": True,  # else a batch may come back with a grid image in front
        }
        if request.sampler:
            payload["sampler_name"] = request.sampler
        if request.scheduler:
            payload["scheduler"] = request.scheduler
        if request.model:
            payload["override_settings"] = {"sd_model_checkpoint": await self._checkpoint_title(request.model)}
            # Keep the checkpoint loaded afterwards: the scheduler sends this model's next jobs here to avoid a reload.
            payload["override_settings_restore_afterwards"] = False
        if request.init_image is not None:
            payload["init_images"] = [base64.b64encode(request.init_image).decode()]
            if request.mask is not None:
                payload["mask"] = base64.b64encode(request.mask).decode()
            if request.denoising_strength is not None:
                payload["denoising_strength"] = request.denoising_strength
        return payload

    async def generate(self, request: GenerationRequest, progress: ProgressCallback) -> list[GeneratedImage]:
        await self._check_sampling(request)
        payload = await self._payload(request)
        route = f"{API}/img2img" if request.init_image is not None else f"{API}/txt2img"
        poller = asyncio.create_task(self._poll_progress(progress))
        try:
            answer = await self.send_json("POST", route, json=payload)
        except asyncio.CancelledError:
            await _stop(poller)
            await self.interrupt("POST", f"{API}/interrupt")
            raise
        finally:
            await _stop(poller)
        if await self._interrupted_on_server():
            raise BackendError(
                f"Backend {self.name} was interrupted by someone else: its images are unfinished.",
                code=INTERRUPTED,
                retryable=True,
            )
        images = self._images_of(request, answer)
        await progress(1.0)
        return images

    async def _interrupted_on_server(self) -> bool:
        """Whether the generation that just answered was interrupted or skipped (not by us: our cancel raises).

        An interrupted A1111 call still answers 200 with the batch partly denoised, so the answer alone cannot
        tell. ``state.interrupted``/``skipped`` are reset when a generation begins and kept after it ends, so right
        after our answer they describe our generation (unless another client's generation began in between,
        which resets them: at worst we miss the flag, we never blame a finished image). Best effort.
        """
        try:
            response = await self.client.get(
                f"{API}/progress", params={"skip_current_image": "true"}, timeout=PROGRESS_TIMEOUT
            )
            state = response.json().get("state") if response.is_success else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return False
        return isinstance(state, dict) and bool(state.get("interrupted") or state.get("skipped"))

    def _images_of(self, request: GenerationRequest, answer: Any) -> list[GeneratedImage]:
        if not isinstance(answer, dict) or not isinstance(answer.get("images"), list):
            raise malformed(self.name, "no images list")
        encoded = answer["images"]
        if len(encoded) < request.n:
            # We did not cancel (that path raises before here): the work was stopped on the server.
            raise BackendError(
                f"Backend {self.name} returned {len(encoded)} of {request.n} images (interrupted on the server).",
                code=INTERRUPTED,
                retryable=True,
            )
        seeds = _all_seeds(answer.get("info"))
        images = []
        # Extensions (e.g. ControlNet detected maps) may append extra images after the batch: keep the first n.
        for index, value in enumerate(encoded[: request.n]):
            seed = seeds[index] if index < len(seeds) else request.seed + index
            images.append(image_of(decode_base64_image(str(value)), seed))
        return images

    async def _poll_progress(self, progress: ProgressCallback) -> None:
        """Report the server's (global, hence our) progress, only ever rising and below 1 until the answer."""
        best = 0.0
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                response = await self.client.get(
                    f"{API}/progress", params={"skip_current_image": "true"}, timeout=PROGRESS_TIMEOUT
                )
                value = float(response.json().get("progress") or 0.0) if response.is_success else 0.0
            except (httpx.HTTPError, ValueError, AttributeError, TypeError):
                continue  # progress is cosmetic: the POST decides the outcome
            value = min(value, 0.99)
            if value > best:
                best = value
                await progress(value)

    def status_error(self, response: httpx.Response) -> BackendError:
        text = error_text(response)
        with contextlib.suppress(ValueError, AttributeError):
            if response.json().get("error") == "OutOfMemoryError":
                return BackendError(
                    f"Backend {self.name} ran out of GPU memory: {text[:500]}", code=OUT_OF_MEMORY, retryable=False
                )
        return status_error(self.name, response.status_code, text)


async def _stop(poller: asyncio.Task[None]) -> None:
    """End the progress poller. ``asyncio.wait`` rather than awaiting it: a cancellation of *our* task must still
    propagate. A failed progress callback is logged, not raised: the generation itself succeeded."""
    poller.cancel()
    await asyncio.wait({poller})
    if not poller.cancelled() and poller.exception() is not None:
        log.warning("progress callback failed", backend_kind="a1111", error=repr(poller.exception()))


def _all_seeds(info: Any) -> list[int]:
    """The seeds the server used, from ``info`` (a JSON *string*); empty when absent or unreadable."""
    if isinstance(info, str):
        with contextlib.suppress(ValueError):
            info = json.loads(info)
    seeds = info.get("all_seeds") if isinstance(info, dict) else None
    if not isinstance(seeds, list):
        return []
    try:
        return [int(seed) for seed in seeds]
    except (TypeError, ValueError):
        return []
