"""The scheduler and the generation loop on fake adapters: placement by expected finish time, slots,
circuits, retries on another backend, the OOM fallback and speed learning."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.backends import generation
from gateway.backends.base import (
    Adapter,
    BackendError,
    BackendSpec,
    GeneratedImage,
    GenerationRequest,
    ProbeResult,
    ProgressCallback,
)
from gateway.backends.health import CircuitBreaker
from gateway.backends.ledger import MemoryLedger
from gateway.backends.pool import BackendPool, PoolEntry
from gateway.backends.scheduler import Scheduler, Work
from tests.conftest import make_settings

REQUEST = GenerationRequest(
    prompt="p", negative_prompt="", width=512, height=512, steps=4, guidance_scale=7.0, seed=1, n=1,
    model=None, output_format="png",
)  # fmt: skip


class FakeAdapter(Adapter):
    """Sleeps ``delay`` seconds per generation; ``fail`` raises instead; records what it ran."""

    kind = "fake"

    def __init__(self, spec: BackendSpec, delay: float = 0.01, fail: BackendError | None = None) -> None:
        super().__init__(spec)
        self.delay = delay
        self.fail = fail
        self.ran: list[GenerationRequest] = []
        self.active = 0
        self.peak = 0

    async def probe(self) -> ProbeResult:
        return ProbeResult()

    async def generate(self, request: GenerationRequest, progress: ProgressCallback) -> list[GeneratedImage]:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(self.delay)
            if self.fail is not None and (self.fail.code != "out_of_memory" or request.width > 512):
                raise self.fail
            self.ran.append(request)
            return [
                GeneratedImage(b"", "png", request.width, request.height, request.seed + i) for i in range(request.n)
            ]
        finally:
            self.active -= 1


def make_scheduler(tmp_path: Path, **overrides: Any) -> Scheduler:
    settings = make_settings(tmp_path, backend_switch_seconds=5.0, **overrides)
    return Scheduler(BackendPool(settings, None), MemoryLedger(), settings)


def add(scheduler: Scheduler, name: str, *, slots: int = 1, models: tuple[str, ...] = (), **kw: Any) -> PoolEntry:
    spec = BackendSpec(name=name, kind="fake", url="http://127.0.0.1:9", slots=slots, models=models)
    entry = PoolEntry(spec=spec, adapter=FakeAdapter(spec, **kw), breaker=CircuitBreaker(3, 30.0))
    scheduler.pool.entries[name] = entry
    return entry


def fake(entry: PoolEntry) -> FakeAdapter:
    assert isinstance(entry.adapter, FakeAdapter)
    return entry.adapter


async def _noop(*_: Any) -> None:
    return None


async def run(scheduler: Scheduler, request: GenerationRequest = REQUEST, **kw: Any) -> generation.Generated:
    return await generation.generate(
        scheduler, request, job_id=kw.pop("job_id", "job"), progress=_noop, on_placed=_noop, on_speed=_noop, **kw
    )


async def test_the_faster_of_two_free_backends_is_chosen(tmp_path: Path) -> None:
    scheduler = make_scheduler(tmp_path)
    add(scheduler, "a-slow")
    add(scheduler, "b-fast")
    scheduler.pool.speeds.record("a-slow", None, 4.0, 1.0)
    scheduler.pool.speeds.record("b-fast", None, 1.0, 1.0)
    async with scheduler.slot(Work("job", None, 1.0)) as entry:
        assert entry.name == "b-fast"


async def test_an_idle_slow_backend_wins_over_a_busy_fast_one_that_would_finish_later(tmp_path: Path) -> None:
    scheduler = make_scheduler(tmp_path)
    add(scheduler, "fast")
    add(scheduler, "slow")
    scheduler.pool.speeds.record("fast", None, 1.0, 1.0)
    scheduler.pool.speeds.record("slow", None, 2.0, 1.0)
    async with scheduler.slot(Work("long", None, 10.0)) as first:  # fast: busy for ~10 s
        assert first.name == "fast"
        async with scheduler.slot(Work("short", None, 1.0)) as second:  # slow: 2 s < 10 s + 1 s
            assert second.name == "slow"


async def test_a_backend_with_the_model_loaded_is_preferred(tmp_path: Path) -> None:
    scheduler = make_scheduler(tmp_path)
    add(scheduler, "a", models=("sd15", "sdxl")).loaded_model = "sd15"
    add(scheduler, "b", models=("sd15", "sdxl")).loaded_model = "sdxl"
    async with scheduler.slot(Work("job", "sdxl", 1.0)) as entry:
        assert entry.name == "b"


async def test_generations_in_flight_never_exceed_slots(tmp_path: Path) -> None:
    scheduler = make_scheduler(tmp_path)
    entry = add(scheduler, "gpu", slots=2, delay=0.03)
    await asyncio.gather(*(run(scheduler, job_id=f"job{i}") for i in range(10)))
    assert fake(entry).peak == 2 and len(fake(entry).ran) == 10


async def test_work_spreads_over_backends_by_speed(tmp_path: Path) -> None:
    """Equal jobs on backends 1x, 1x, 2x and 4x slower: each gets work in proportion to its speed."""
    scheduler = make_scheduler(tmp_path)
    entries = [add(scheduler, name, delay=0.02 * factor) for name, factor in (("a", 1), ("b", 1), ("c", 2), ("d", 4))]
    for entry, factor in zip(entries, (1, 1, 2, 4), strict=True):
        scheduler.pool.speeds.record(entry.name, None, 0.02 * factor, 1.0)
    request = GenerationRequest(**{**REQUEST.__dict__, "width": 1024, "height": 1024, "steps": 1})
    started = time.monotonic()
    await asyncio.gather(*(run(scheduler, request, job_id=f"job{i}") for i in range(44)))
    elapsed = time.monotonic() - started
    counts = [len(fake(e).ran) for e in entries]
    assert counts[0] >= 12 and counts[1] >= 12 and counts[3] <= 5, counts
    assert elapsed < 0.02 * 44 / 2.75 * 1.5  # ideal makespan 0.32 s; round robin would need 0.88 s


async def test_a_model_nobody_serves_fails_fast_naming_it(tmp_path: Path) -> None:
    scheduler = make_scheduler(tmp_path)
    add(scheduler, "gpu", models=("sd15",))
    with pytest.raises(BackendError) as caught:
        await run(scheduler, GenerationRequest(**{**REQUEST.__dict__, "model": "flux-dev"}))
    assert caught.value.code == "no_backend" and "flux-dev" in caught.value.message


async def test_a_backend_with_an_open_circuit_gets_no_work(tmp_path: Path) -> None:
    scheduler = make_scheduler(tmp_path)
    broken = add(scheduler, "a")
    add(scheduler, "b")
    for _ in range(3):
        broken.breaker.failure("down")
    assert (await run(scheduler)).backend == "b"


async def test_with_every_circuit_open_the_job_fails_after_the_wait(tmp_path: Path) -> None:
    scheduler = make_scheduler(tmp_path, backend_wait_seconds=0.3, backend_probe_seconds=0.1)
    down = add(scheduler, "a")
    for _ in range(3):
        down.breaker.failure("down")
    with pytest.raises(BackendError) as caught:
        await run(scheduler)
    assert caught.value.code == "backend_unavailable"


async def test_a_retryable_failure_moves_the_generation_to_another_backend(tmp_path: Path) -> None:
    scheduler = make_scheduler(tmp_path)
    failing = add(scheduler, "a", fail=BackendError("reset", code="backend_unavailable", retryable=True))
    scheduler.pool.speeds.record("a", None, 0.001, 1.0)  # the preferred one
    add(scheduler, "b")
    result = await run(scheduler)
    assert result.backend == "b"
    assert failing.breaker.failures == 1
    assert any("a failed (backend_unavailable" in note for note in result.notes)


async def test_a_rejected_request_is_not_retried_elsewhere(tmp_path: Path) -> None:
    scheduler = make_scheduler(tmp_path)
    add(scheduler, "a", fail=BackendError("Sampler not found", code="backend_rejected"))
    scheduler.pool.speeds.record("a", None, 0.001, 1.0)
    other = add(scheduler, "b")
    with pytest.raises(BackendError) as caught:
        await run(scheduler)
    assert caught.value.code == "backend_rejected" and fake(other).ran == []


async def test_tries_stop_after_the_configured_number_of_backends(tmp_path: Path) -> None:
    scheduler = make_scheduler(tmp_path, backend_max_tries=2)
    entries = [add(scheduler, n, fail=BackendError("x", code="backend_error", retryable=True)) for n in "abc"]
    with pytest.raises(BackendError) as caught:
        await run(scheduler)
    assert caught.value.code == "backend_error"
    assert sum(e.breaker.failures for e in entries) == 2
    assert len(caught.value.notes) == 2


async def test_out_of_memory_with_fallback_retries_once_at_a_smaller_size(tmp_path: Path) -> None:
    scheduler = make_scheduler(tmp_path)
    add(scheduler, "gpu", fail=BackendError("CUDA out of memory", code="out_of_memory"))
    big = GenerationRequest(**{**REQUEST.__dict__, "width": 1024, "height": 1024})
    result = await run(scheduler, big, oom_fallback=True)
    assert (result.request.width, result.request.height) == (512, 512)
    assert any("512x512" in note for note in result.notes)


async def test_out_of_memory_without_fallback_fails_the_job(tmp_path: Path) -> None:
    scheduler = make_scheduler(tmp_path)
    add(scheduler, "gpu", fail=BackendError("CUDA out of memory", code="out_of_memory"))
    with pytest.raises(BackendError) as caught:
        await run(scheduler, GenerationRequest(**{**REQUEST.__dict__, "width": 1024, "height": 1024}))
    assert caught.value.code == "out_of_memory"


async def test_a_finished_generation_teaches_the_backend_speed(tmp_path: Path) -> None:
    scheduler = make_scheduler(tmp_path)
    add(scheduler, "gpu", delay=0.1)
    learned: list[tuple[str, str | None, float, int]] = []

    async def on_speed(backend: str, model: str | None, seconds: float, samples: int) -> None:
        learned.append((backend, model, seconds, samples))

    await generation.generate(scheduler, REQUEST, job_id="j", progress=_noop, on_placed=_noop, on_speed=on_speed)
    units = 512 * 512 / 2**20 * REQUEST.steps  # 1.0
    assert learned and learned[0][:2] == ("gpu", None) and learned[0][3] == 1
    assert 0.1 / units <= learned[0][2] < 0.2 / units


async def test_a_waiting_job_leaves_a_backend_whose_circuit_opens(tmp_path: Path) -> None:
    scheduler = make_scheduler(tmp_path)
    busy = add(scheduler, "a", delay=2.0)
    add(scheduler, "b")
    scheduler.pool.speeds.record("a", None, 0.01, 1.0)
    scheduler.pool.speeds.record("b", None, 100.0, 1.0)  # b looks terrible: the job waits for a
    first = asyncio.create_task(run(scheduler, job_id="first"))
    await asyncio.sleep(0.1)
    second = asyncio.create_task(run(scheduler, job_id="second"))
    await asyncio.sleep(0.2)
    for _ in range(3):
        busy.breaker.failure("down")
    result = await asyncio.wait_for(second, 1.5)
    assert result.backend == "b"
    first.cancel()


async def test_round_robin_baseline_ignores_speed(tmp_path: Path) -> None:
    scheduler = make_scheduler(tmp_path, scheduler="round_robin")
    add(scheduler, "a")
    add(scheduler, "b")
    scheduler.pool.speeds.record("b", None, 100.0, 1.0)
    backends = [(await run(scheduler, job_id=f"j{i}")).backend for i in range(4)]
    assert sorted(backends) == ["a", "a", "b", "b"]


def _with_preview(scheduler: Scheduler, models: str) -> None:
    from gateway.backends.preview import PreviewAdapter, preview_spec

    spec = preview_spec(models=models)
    scheduler.pool.entries["preview"] = PoolEntry(
        spec=spec, adapter=PreviewAdapter(spec), breaker=CircuitBreaker(3, 30)
    )


async def test_the_any_model_preview_serves_everything_only_while_there_is_no_gpu(tmp_path: Path) -> None:
    scheduler = make_scheduler(tmp_path)
    _with_preview(scheduler, "*")
    assert [e.name for e in scheduler.pool.candidates("flux")] == ["preview"]
    add(scheduler, "gpu", models=("sdxl",))
    assert [e.name for e in scheduler.pool.candidates("sdxl")] == ["gpu"]
    assert scheduler.pool.candidates("flux") == []
    with pytest.raises(BackendError) as caught:
        await run(scheduler, replace(REQUEST, model="flux"))
    assert caught.value.code == "no_backend" and "'flux'" in caught.value.message


async def test_a_preview_with_named_models_stays_their_fallback_beside_gpus(tmp_path: Path) -> None:
    scheduler = make_scheduler(tmp_path)
    _with_preview(scheduler, "draft,sdxl")
    add(scheduler, "gpu", models=("sdxl",))
    assert [e.name for e in scheduler.pool.candidates("sdxl")] == ["gpu"]
    assert [e.name for e in scheduler.pool.candidates("draft")] == ["preview"]


async def test_the_switch_cost_follows_the_model_of_the_last_job_in_line(tmp_path: Path) -> None:
    """A has sd15 loaded but an sdxl job waits on it: an sd15 job would pay a switch there too."""
    from gateway.backends.ledger import model_key

    scheduler = make_scheduler(tmp_path)  # a switch costs 5 s
    a = add(scheduler, "a", models=("sd15", "sdxl"))
    b = add(scheduler, "b", models=("sd15", "sdxl"))
    a.loaded_model, b.loaded_model = "sd15", "sdxl"
    for name in ("a", "b"):
        scheduler.pool.speeds.record(name, "sd15", 1.0, 1.0)
        scheduler.pool.speeds.record(name, "sdxl", 1.0, 1.0)
    await scheduler.ledger.reserve("a", "queued-sdxl", 1.0, 0, model_key("sdxl"))
    async with scheduler.slot(Work("job", "sd15", 1.0)) as entry:
        assert entry.name == "b"  # a: 1 s wait + 5 s switch + 1 s = 7 s; b: 5 s switch + 1 s = 6 s


class Text2ImageOnly(FakeAdapter):
    """Refuses image-to-image in ``adjust``, as Z-Image-Turbo and the GLM-Image WebUI do."""

    def adjust(self, request: GenerationRequest) -> tuple[GenerationRequest, list[str]]:
        if request.init_image is not None:
            raise BackendError(f"Backend {self.name} only does text-to-image.", code="backend_rejected")
        return request, []


def add_text2image_only(scheduler: Scheduler, name: str) -> PoolEntry:
    spec = BackendSpec(name=name, kind="fake", url="http://127.0.0.1:9")
    entry = PoolEntry(spec=spec, adapter=Text2ImageOnly(spec), breaker=CircuitBreaker(3, 30.0))
    scheduler.pool.entries[name] = entry
    return entry


async def test_a_backend_that_cannot_run_the_request_is_passed_over(tmp_path: Path) -> None:
    scheduler = make_scheduler(tmp_path)
    fast = add_text2image_only(scheduler, "fast")
    slow = add(scheduler, "slow")
    scheduler.pool.speeds.record("fast", None, 0.01, 1.0)
    scheduler.pool.speeds.record("slow", None, 10.0, 1.0)
    result = await run(scheduler, replace(REQUEST, init_image=b"png"))
    assert result.backend == "slow" and fake(slow).ran and not fake(fast).ran
    assert (await run(scheduler)).backend == "fast"


async def test_when_no_backend_can_run_the_request_the_job_says_why(tmp_path: Path) -> None:
    scheduler = make_scheduler(tmp_path)
    add_text2image_only(scheduler, "z")
    with pytest.raises(BackendError) as caught:
        await run(scheduler, replace(REQUEST, init_image=b"png"))
    assert caught.value.code == "backend_rejected"
    assert "only does text-to-image" in caught.value.message


async def _waiting_position(scheduler: Scheduler, job: str, model: str) -> float:
    """Start ``job`` placing itself on the only backend (whose slot is taken) and read its place in line."""
    task = asyncio.create_task(run(scheduler, replace(REQUEST, model=model), job_id=job))
    for _ in range(200):
        _, snap = await scheduler.ledger.snapshot(["a"])
        mine = [e for e in snap["a"] if e.job == job]
        if mine:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return mine[0].seq
        await asyncio.sleep(0.01)
    raise AssertionError("the job never reserved a place")


async def test_a_job_joins_the_run_of_its_model_in_line_instead_of_paying_a_switch(tmp_path: Path) -> None:
    from gateway.backends.ledger import model_key

    scheduler = make_scheduler(tmp_path)
    add(scheduler, "a", models=("sd15", "sdxl"))
    ledger = scheduler.ledger
    await ledger.reserve("a", "running", 1.0, await ledger.next_seq(), model_key("sdxl"))
    assert await ledger.acquire("a", "running", 1, 30.0)
    sd15 = await ledger.next_seq()
    sdxl = await ledger.next_seq()
    await ledger.reserve("a", "queued-sd15", 1.0, sd15, model_key("sd15"))
    await ledger.reserve("a", "queued-sdxl", 1.0, sdxl, model_key("sdxl"))
    position = await _waiting_position(scheduler, "new-sd15", "sd15")
    assert sd15 < position < sdxl  # right behind the other sd15 job: two switches saved, one job passed


async def test_a_job_never_passes_one_that_has_waited_much_longer(tmp_path: Path) -> None:
    from gateway.backends import scheduler as module
    from gateway.backends.ledger import model_key

    scheduler = make_scheduler(tmp_path)
    add(scheduler, "a", models=("sd15", "sdxl"))
    ledger = scheduler.ledger
    await ledger.reserve("a", "running", 1.0, await ledger.next_seq(), model_key("sdxl"))
    assert await ledger.acquire("a", "running", 1, 30.0)
    await ledger.reserve("a", "queued-sd15", 1.0, await ledger.next_seq(), model_key("sd15"))
    old_sdxl = await ledger.next_seq()
    await ledger.reserve("a", "old-sdxl", 1.0, old_sdxl, model_key("sdxl"))
    for _ in range(module._JUMP_WINDOW + 1):  # many placements since the sdxl job started waiting
        await ledger.next_seq()
    position = await _waiting_position(scheduler, "new-sd15", "sd15")
    assert position > old_sdxl
