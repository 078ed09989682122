"""The webui behind the API: the queue lock, ``shared.state``, settings, checkpoints and ``process_images``.

* One generation at a time (``options.slots``, 1 like A1111's ``queue_lock``): further calls wait, no 429.
  ``/progress``, ``/interrupt`` and ``/skip`` never take the lock; progress is global, as ``shared.state`` is.
* ``state.begin()`` runs inside the lock, so an interrupt only stops the generation running at that moment.
  An interrupted call still answers 200 with what it has: the batch being sampled comes out partly denoised
  and later batches are not started (``process_images_inner`` breaks out of its ``n_iter`` loop). A skip ends
  the current batch early and goes on with the next one.
* Checkpoints switch through ``opts.sd_model_checkpoint``. ``override_settings.sd_model_checkpoint`` (any
  alias: title, model_name, file name, hash) loads that checkpoint for the call; an unknown one is silently
  dropped (upstream pops it and uses the configured checkpoint). ``override_settings_restore_afterwards`` puts
  the *setting* back afterwards, but the overriding weights stay loaded: the next call without an override pays
  the switch back, as in upstream where ``reload_model_weights`` happens lazily.
* ``--fail-rate``: the sampler fails as CUDA OOM does, a ``torch.cuda.OutOfMemoryError`` that api_middleware
  turns into 500 ``{"error": "OutOfMemoryError", "detail": "", "body": "", "errors": "CUDA out of memory. ..."}``
  (the exception has no ``detail`` attribute, so the message is in ``errors``).
* Time: ``step_ms`` per sampling step of one megapixel image; a batch is sampled at once (its pixels add up);
  second-order samplers (Heun, DPM2, DPM++ SDE, ...) evaluate the model twice per step.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import io
import math
import time
from dataclasses import dataclass
from typing import Any

from PIL import Image

from gateway.emulators.a1111 import catalog, images
from gateway.emulators.a1111.jobs import Job, info, infotext
from gateway.emulators.a1111.models import Img2ImgRequest, Txt2ImgRequest
from gateway.emulators.core import MEGAPIXEL, EmulatorOptions, Interrupted, SimulatedGPU


class OutOfMemoryError(RuntimeError):
    """Named like ``torch.cuda.OutOfMemoryError``, whose class name is what the error envelope reports."""


def oom_message(width: int, height: int, batch: int) -> str:
    """The text of a CUDA OOM, sized to the request."""
    tried = max(0.02, width * height * batch / MEGAPIXEL * 1.5)
    return (
        f"CUDA out of memory. Tried to allocate {tried:.2f} GiB. GPU 0 has a total capacity of 23.65 GiB of which "
        "312.94 MiB is free. Of the allocated memory 21.87 GiB is allocated by PyTorch, and 1.05 GiB is reserved by "
        "PyTorch but unallocated. If reserved but unallocated memory is large try setting "
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory "
        "Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
    )


@dataclass
class State:
    """``shared.state``: what ``/progress`` reports. ``end()`` resets only ``job`` and ``job_count``."""

    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    time_start: float = 0.0
    textinfo: str | None = None
    current_image: str | None = None
    current_image_sampling_step: int = 0
    subject: dict[str, Any] | None = None  # what the current batch draws (for live previews)

    def begin(self, job: str) -> None:
        self.sampling_step = 0
        self.time_start = time.time()
        self.job_count = -1
        self.job_no = 0
        self.job_timestamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
        self.current_image = None
        self.current_image_sampling_step = 0
        self.skipped = self.interrupted = self.stopping_generation = False
        self.textinfo = None
        self.job = job

    def end(self) -> None:
        self.job = ""
        self.job_count = 0

    def nextjob(self) -> None:
        self.job_no += 1
        self.sampling_step = 0
        self.current_image_sampling_step = 0

    def as_dict(self) -> dict[str, Any]:
        keys = ("skipped", "interrupted", "stopping_generation", "job", "job_count", "job_timestamp", "job_no")
        return {
            **{k: getattr(self, k) for k in keys},
            "sampling_step": self.sampling_step,
            "sampling_steps": self.sampling_steps,
        }


class Webui:
    """One emulated stable-diffusion-webui process."""

    def __init__(self, options: EmulatorOptions) -> None:
        self.options = options
        self.checkpoints = catalog.checkpoints(options.models)
        self.opts = catalog.default_options(self.checkpoints[0])
        self.gpu = SimulatedGPU(options, default_model=self.checkpoints[0].title)
        self.queue_lock = asyncio.Semaphore(max(1, options.slots))
        self.state = State()

    # -- checkpoints and settings ---------------------------------------------------------------------------

    def checkpoint(self, name: Any) -> catalog.Checkpoint | None:
        """``sd_models.checkpoint_aliases.get(name)``."""
        return next((c for c in self.checkpoints if name in c.aliases), None) if isinstance(name, str) else None

    @property
    def loaded(self) -> catalog.Checkpoint:
        return self.checkpoint(self.gpu.loaded_model) or self.checkpoints[0]

    async def reload_model_weights(self) -> catalog.Checkpoint:
        """Load the checkpoint the setting names (the first one if it names none), paying ``load_ms`` to switch."""
        wanted = self.checkpoint(self.opts["sd_model_checkpoint"]) or self.checkpoints[0]
        if self.gpu.loaded_model != wanted.title:
            await self.gpu.run(steps=0, width=0, height=0, model=wanted.title)
        self.opts["sd_model_checkpoint"] = wanted.title
        return wanted

    def _set(self, key: str, value: Any) -> bool:
        """``opts.set``: unchanged values are a no-op, unknown keys a KeyError; True when it changed."""
        if self.opts.get(key) == value:
            return False
        if key not in self.opts:
            raise KeyError(key)
        self.opts[key] = value
        return True

    async def set_config(self, req: dict[str, Any]) -> None:
        """POST /sdapi/v1/options; a checkpoint change reloads the weights under the queue lock."""
        name = req.get("sd_model_checkpoint")
        if name is not None and self.checkpoint(name) is None:
            raise RuntimeError(f"model {name!r} not found")
        for key, value in req.items():
            if self._set(key, value) and key == "sd_model_checkpoint":
                async with self.queue_lock:
                    await self.reload_model_weights()

    # -- progress, interrupt, skip ----------------------------------------------------------------------------

    async def progress(self, skip_current_image: bool) -> dict[str, Any]:
        """GET /sdapi/v1/progress, computed the way ``progressapi`` does."""
        st = self.state
        if st.job_count == 0:
            return {
                "progress": 0,
                "eta_relative": 0,
                "state": st.as_dict(),
                "current_image": None,
                "textinfo": st.textinfo,
            }
        run = self.gpu.current
        if run is not None and st.sampling_steps:
            st.sampling_step = min(st.sampling_steps, int(run.progress * st.sampling_steps))
        progress = 0.01
        if st.job_count > 0:
            progress += st.job_no / st.job_count
        if st.sampling_steps > 0:
            progress += 1 / st.job_count * st.sampling_step / st.sampling_steps
        elapsed = time.time() - st.time_start
        eta_relative = elapsed / progress - elapsed
        snapshot = st.as_dict()  # before the preview is drawn: the generation goes on meanwhile
        every = int(self.opts.get("show_progress_every_n_steps", 10))
        wants_image = self.opts.get("live_previews_enable") and every > 0 and st.subject is not None
        if wants_image and not skip_current_image and st.sampling_step - st.current_image_sampling_step >= every:
            st.current_image_sampling_step = st.sampling_step
            done = st.sampling_step / max(1, st.sampling_steps)
            st.current_image = await asyncio.to_thread(images.preview, done=done, **(st.subject or {}))
        current = st.current_image if not skip_current_image else None
        return {
            "progress": min(progress, 1),
            "eta_relative": eta_relative,
            "state": snapshot,
            "current_image": current,
            "textinfo": st.textinfo,
        }

    def interrupt(self) -> None:
        self.state.interrupted = True
        self.gpu.interrupt()

    def skip(self) -> None:
        self.state.skipped = True
        self.gpu.interrupt()

    # -- generation ------------------------------------------------------------------------------------------

    async def generate(self, job: Job, req: Txt2ImgRequest | Img2ImgRequest) -> tuple[list[str], str]:
        """Take the queue lock and run ``process_images``; returns (base64 images, info JSON string)."""
        fmt = images.output_format(self.opts.get("samples_format", "png"))
        async with self.queue_lock:
            self.state.begin(f"scripts_{job.kind}")
            try:
                return await self._process_images(job, req, fmt)
            finally:
                self.state.end()

    async def _process_images(self, job: Job, req: Txt2ImgRequest | Img2ImgRequest, fmt: str) -> tuple[list[str], str]:
        override = req.override_settings if req.override_settings is not None else {}
        stored = {k: self.opts[k] for k in override if k in self.opts}
        if self.checkpoint(override.get("sd_model_checkpoint")) is None:
            override.pop("sd_model_checkpoint", None)  # upstream mutates the request's dict: it shows in parameters
            await self.reload_model_weights()
        try:
            for key, value in override.items():
                self._set(key, value)
                if key == "sd_model_checkpoint":
                    await self.reload_model_weights()
            return await self._process_images_inner(job, req, fmt)
        finally:
            if req.override_settings_restore_afterwards:
                self.opts.update(stored)

    @staticmethod
    def _draw(
        job: Job, first: int, size: tuple[int, int], texts: list[str], fmt: str, done: float
    ) -> asyncio.Future[list[str]]:
        """Draw one batch's pictures off the event loop (a future: it may start before sampling ends)."""
        return asyncio.ensure_future(asyncio.to_thread(_draw_batch, job, first, size, texts, fmt, done))

    async def _sample(self, *, steps: int, width: int, height: int, batch: int, sampler: catalog.Sampler) -> float:
        """Spend one sampling pass on the GPU; returns how much of it was done (< 1 when interrupted/skipped)."""
        self.state.sampling_steps, self.state.sampling_step = steps, 0
        factor = 2 if sampler.second_order else 1
        started = time.monotonic()
        duration = self.gpu.duration(steps=steps * factor, width=width, height=height * batch)
        try:
            await self.gpu.run(steps=steps * factor, width=width, height=height * batch)
            return 1.0
        except Interrupted:
            done = min(1.0, (time.monotonic() - started) / duration) if duration > 0 else 1.0
            self.state.sampling_step = int(done * steps)
            return done

    async def _process_images_inner(
        self, job: Job, req: Txt2ImgRequest | Img2ImgRequest, fmt: str
    ) -> tuple[list[str], str]:
        st, checkpoint = self.state, self.loaded
        if job.total <= 0:
            raise IndexError("list index out of range")
        out_w, out_h = job.out_size
        if out_w <= 0 or out_h <= 0:
            raise RuntimeError(f"cannot reshape tensor of 0 elements into shape [{job.batch_size}, 4, 0, -1]")
        job.fix_seeds()
        st.job_count = job.n_iter * (2 if job.hires else 1)
        clip_skip = int(self.opts.get("CLIP_stop_at_last_layers", 1))
        outputs: list[str] = []
        texts: list[str] = []
        for n in range(job.n_iter):
            st.skipped = False
            if st.interrupted or st.stopping_generation:
                break
            if job.n_iter > 1:
                st.job = f"Batch {n + 1} out of {job.n_iter}"
            first = n * job.batch_size
            st.subject = {
                "prompt": job.prompt,
                "negative_prompt": job.negative_prompt,
                "width": out_w,
                "height": out_h,
                "seed": job.all_seeds[first],
            }
            if n == 0 and self.gpu.should_fail():
                raise OutOfMemoryError(oom_message(out_w, out_h, job.batch_size))
            batch_texts = [
                infotext(job, i, checkpoint=checkpoint, clip_skip=clip_skip)
                for i in range(first, first + job.batch_size)
            ]
            # The pictures are drawn while the simulated sampler runs (on a GPU, decoding is part of the
            # generation's time): the time a generation takes stays proportional to steps x pixels.
            drawing = None if job.hires else self._draw(job, first, (out_w, out_h), batch_texts, fmt, 1.0)
            try:
                done = await self._sample(
                    steps=job.sampling_steps, width=out_w, height=out_h, batch=job.batch_size, sampler=job.sampler
                )
            except BaseException:
                if drawing is not None:
                    drawing.cancel()
                raise
            size = (out_w, out_h)
            if job.hires is not None and not st.interrupted:  # sample_hr_pass returns early when interrupted
                if job.denoising_strength is None:  # setup_img2img_steps compares it with 0
                    raise TypeError("'>' not supported between instances of 'NoneType' and 'int'")
                st.nextjob()
                hr_steps, hr_w, hr_h = job.hires
                st.subject = {**st.subject, "width": hr_w, "height": hr_h}
                size = (hr_w, hr_h)
                if not st.skipped:  # a skip also stops the second pass at its first step
                    done = await self._sample(
                        steps=hr_steps, width=hr_w, height=hr_h, batch=job.batch_size, sampler=job.sampler
                    )
            texts += batch_texts
            if drawing is not None and done >= 1.0:
                outputs += await drawing
            else:  # a second pass changed the size, or the picture is unfinished (interrupted, skipped)
                if drawing is not None:
                    drawing.cancel()
                outputs += await self._draw(job, first, size, batch_texts, fmt, done)
            st.nextjob()
        if not texts:
            texts.append(infotext(job, 0, checkpoint=checkpoint, clip_skip=clip_skip))
        first_index = 0
        if len(outputs) >= 2 and req.save_images and self.opts.get("return_grid"):
            outputs.insert(0, await asyncio.to_thread(_grid, outputs, job.batch_size, fmt))
            texts.insert(0, texts[0])
            first_index = 1
        result = info(
            job,
            req,
            checkpoint=checkpoint,
            infotexts=texts,
            index_of_first_image=first_index,
            job_timestamp=st.job_timestamp,
            clip_skip=clip_skip,
        )
        return outputs, result


def _draw_batch(job: Job, first: int, size: tuple[int, int], texts: list[str], fmt: str, done: float) -> list[str]:
    outputs = []
    for offset, text in enumerate(texts):
        i = first + offset
        init = job.init_images[offset % len(job.init_images)] if job.init_images else None
        outputs.append(
            images.make_image(
                prompt=job.prompt,
                negative_prompt=job.negative_prompt,
                width=size[0],
                height=size[1],
                seed=job.all_seeds[i],
                fmt=fmt,
                infotext=text,
                done=done,
                init_image=init,
                denoising_strength=job.denoising_strength or 0.0,
            )
        )
    return outputs


def _grid(encoded: list[str], batch_size: int, fmt: str) -> str:
    """``images.image_grid`` with the default ``n_rows`` (-1: a square-ish grid)."""
    pictures = [Image.open(io.BytesIO(base64.b64decode(e))).convert("RGB") for e in encoded]
    rows = min(len(pictures), max(1, round(math.sqrt(len(pictures)))))
    cols = math.ceil(len(pictures) / rows)
    w, h = pictures[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "black")
    for i, picture in enumerate(pictures):
        grid.paste(picture, box=(i % cols * w, i // cols * h))
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG" if fmt == "png" else fmt.upper())
    return base64.b64encode(buffer.getvalue()).decode()
