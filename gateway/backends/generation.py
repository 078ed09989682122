"""One generation through the pool: place it, run it, learn from it, retry elsewhere when a backend fails.

- A retryable error (the backend's fault) counts against that backend's circuit and the generation moves to
  another backend (at most ``backend_max_tries`` backends per run).
- ``out_of_memory`` with the job's ``oom_fallback`` option: one more try at about a quarter of the pixels
  (seed 003's rule: 1024x1024 -> 512x512), recorded in the notes.
- Each success teaches the speed book this backend's seconds per unit on this model (not when the run
  included a checkpoint switch, which would skew it), and the backend now has that model loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog

from gateway.backends.base import OUT_OF_MEMORY, BackendError, GeneratedImage, GenerationRequest, ProgressCallback
from gateway.backends.pool import PoolEntry
from gateway.backends.scheduler import NoCandidate, Scheduler, Work, estimated_progress
from gateway.backends.speeds import work_units

log = structlog.get_logger("gateway.backends")
SpeedSink = Callable[[str, str | None, float, int], Awaitable[None]]
PlacedSink = Callable[[str], Coroutine[Any, Any, None]]


@dataclass
class Generated:
    images: list[GeneratedImage]
    backend: str
    request: GenerationRequest  # what was finally sent (after adjustments and fallbacks)
    notes: list[str]
    gpu_seconds: float = 0.0  # time backends spent on this job, failed tries included (settles its quota)
    fell_back: bool = False  # made at a smaller size after running out of GPU memory


def smaller(request: GenerationRequest) -> GenerationRequest:
    """About a quarter of the pixels, same aspect, multiples of 64, at least 256 on the short side."""
    scale = math.sqrt(512 * 512 / (request.width * request.height))
    scale = min(scale, 0.5) if request.width * request.height > 512 * 512 else 0.5

    def side(value: int) -> int:
        return max(256, int(value * scale) // 64 * 64)

    return dataclasses.replace(request, width=side(request.width), height=side(request.height))


async def generate(
    scheduler: Scheduler,
    request: GenerationRequest,
    *,
    job_id: str,
    progress: ProgressCallback,
    on_placed: PlacedSink,
    on_speed: SpeedSink,
    oom_fallback: bool = False,
) -> Generated:
    notes: list[str] = []
    excluded: set[str] = set()
    fell_back = False
    last_error: BackendError | None = None
    spent = 0.0
    while len(excluded) < scheduler.settings.backend_max_tries:
        work = Work(job_id, request.model, _units(request), request=request)
        entry: PoolEntry | None = None
        try:
            async with scheduler.slot(work, frozenset(excluded)) as placed:
                entry = placed
                # Recording the placement must not keep the GPU waiting: it runs alongside the call.
                recording = asyncio.create_task(on_placed(entry.name))
                sent, adjustments = entry.adapter.adjust(request)
                switching = sent.model is not None and entry.loaded_model not in (None, sent.model)
                expected = scheduler.expected_seconds(entry, work)
                started = time.monotonic()
                try:
                    images = await _run(entry.adapter.generate, sent, progress, expected)
                finally:
                    elapsed = time.monotonic() - started
                    spent += elapsed
                    await _settle(recording)
        except NoCandidate:
            break
        except BackendError as exc:
            if entry is None:  # placement itself failed (no backend serves the model, none healthy in time)
                exc.notes = notes + exc.notes
                raise
            if exc.code == OUT_OF_MEMORY and oom_fallback and not fell_back:
                fell_back = True
                request = smaller(request)
                notes.append(
                    f"{entry.name} ran out of GPU memory; retried once at {request.width}x{request.height} "
                    "(oom_fallback)."
                )
                continue
            if not exc.retryable:
                exc.notes = notes + exc.notes
                raise
            scheduler.pool.failed(entry, exc)
            excluded.add(entry.name)
            notes.append(f"{entry.name} failed ({exc.code}: {exc.message}); tried another backend.")
            log.warning("backend.generation_failed", backend=entry.name, code=exc.code, error=exc.message)
            last_error = exc
            continue
        assert entry is not None
        entry.breaker.success()
        if not switching:
            spu, samples = scheduler.pool.speeds.record(entry.name, sent.model, elapsed, _units(sent))
            with contextlib.suppress(Exception):  # learning is best effort
                await on_speed(entry.name, sent.model, spu, samples)
        if sent.model is not None:
            entry.loaded_model = sent.model
        return Generated(
            images=images,
            backend=entry.name,
            request=sent,
            notes=notes + adjustments,
            gpu_seconds=spent,
            fell_back=fell_back,
        )
    if last_error is None:
        raise BackendError("No backend could run this job.", code="backend_unavailable")
    last_error.notes = notes
    raise last_error


async def _settle(task: asyncio.Task[None]) -> None:
    """Wait for a side task; if we are being cancelled, cancel it too (its database write is cancel-safe)."""
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        raise
    except Exception:  # informative only: a database hiccup here must not throw away a finished generation
        log.warning("job.placement_not_recorded", exc_info=True)


def _units(request: GenerationRequest) -> float:
    return work_units(request.width, request.height, request.steps, request.n)


async def _run(
    call: Callable[[GenerationRequest, ProgressCallback], Awaitable[list[GeneratedImage]]],
    request: GenerationRequest,
    progress: ProgressCallback,
    expected: float,
) -> list[GeneratedImage]:
    """Run the adapter call, estimating progress from the expected duration where the backend reports none."""
    reported = 0.0

    async def sink(value: float) -> None:
        nonlocal reported
        reported = max(reported, value)
        await progress(value)

    ticker = asyncio.create_task(estimated_progress(progress, expected, lambda: reported))
    try:
        images = await call(request, sink)
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
    if len(images) < request.n:
        raise BackendError(
            f"The backend returned {len(images)} of {request.n} images.", code="interrupted", retryable=True
        )
    return images
