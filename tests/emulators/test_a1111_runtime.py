"""The A1111 emulator behaves like a webui at work: progress, interrupt, skip, the global lock, GPU time."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from PIL import Image

from gateway.emulators.a1111 import create_app
from gateway.emulators.core import EmulatorOptions
from tests.emulators.support import emulator_process

SMALL = {"width": 64, "height": 64, "steps": 2}


@contextlib.asynccontextmanager
async def emulator(**options: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(EmulatorOptions(**{"step_ms": 5.0, "load_ms": 50.0, **options}))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://emu", timeout=30) as client:
        yield client


def decode(image: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(image)))


def png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


async def wait_until_running(client: httpx.AsyncClient) -> dict[str, Any]:
    for _ in range(200):
        progress: dict[str, Any] = (await client.get("/sdapi/v1/progress")).json()
        if progress["state"]["job_count"] > 0 and progress["state"]["sampling_step"] > 0:
            return progress
        await asyncio.sleep(0.01)
    raise AssertionError("the generation did not start")


# -- progress, interrupt, skip, the global lock, timing --------------------------------------------------------


async def test_progress_when_idle_is_zero_with_the_state_fields() -> None:
    async with emulator() as client:
        progress = (await client.get("/sdapi/v1/progress")).json()
    assert (progress["progress"], progress["eta_relative"], progress["current_image"]) == (0, 0, None)
    assert set(progress["state"]) == {
        "skipped",
        "interrupted",
        "stopping_generation",
        "job",
        "job_count",
        "job_timestamp",
        "job_no",
        "sampling_step",
        "sampling_steps",
    }


async def test_progress_moves_while_a_generation_runs() -> None:
    async with emulator(step_ms=800.0) as client:
        task = asyncio.create_task(client.post("/sdapi/v1/txt2img", json={**SMALL, "steps": 20, "width": 256}))
        first = await wait_until_running(client)
        await asyncio.sleep(0.15)
        second = (await client.get("/sdapi/v1/progress")).json()
        await task
    assert 0 < first["progress"] < second["progress"] < 1
    assert second["state"]["sampling_step"] > first["state"]["sampling_step"]
    assert second["eta_relative"] > 0


async def test_progress_shows_a_live_preview_unless_skip_current_image() -> None:
    async with emulator(step_ms=800.0) as client:
        task = asyncio.create_task(client.post("/sdapi/v1/txt2img", json={**SMALL, "steps": 30, "width": 256}))
        await wait_until_running(client)
        for _ in range(200):
            with_image = (await client.get("/sdapi/v1/progress")).json()
            if with_image["state"]["sampling_step"] >= 10:
                break
            await asyncio.sleep(0.01)
        without = (await client.get("/sdapi/v1/progress", params={"skip_current_image": "true"})).json()
        await client.post("/sdapi/v1/interrupt")
        await task
    assert decode(with_image["current_image"]).size == (256, 64)
    assert without["current_image"] is None


async def test_interrupt_ends_the_generation_early_with_what_it_has() -> None:
    async with emulator(step_ms=1000.0) as client:  # 3 batches of 0.4 s each
        started = time.monotonic()
        task = asyncio.create_task(client.post("/sdapi/v1/txt2img", json={**SMALL, "steps": 100, "n_iter": 3}))
        await wait_until_running(client)
        interrupted = await client.post("/sdapi/v1/interrupt")
        response = await task
        elapsed = time.monotonic() - started
        state = (await client.get("/sdapi/v1/progress")).json()["state"]
    assert (interrupted.status_code, interrupted.json()) == (200, {})
    assert response.status_code == 200 and len(response.json()["images"]) == 1
    assert elapsed < 0.9 and state["interrupted"] is True  # all three batches: 1.2 s


async def test_skip_ends_only_the_current_batch() -> None:
    async with emulator(step_ms=1000.0) as client:
        task = asyncio.create_task(client.post("/sdapi/v1/txt2img", json={**SMALL, "steps": 50, "n_iter": 2}))
        await wait_until_running(client)
        skipped = await client.post("/sdapi/v1/skip")
        started = time.monotonic()
        response = await task
    assert (skipped.status_code, skipped.json()) == (200, None)
    assert len(response.json()["images"]) == 2
    assert time.monotonic() - started > 0.15  # the second batch (0.2 s) still ran


async def test_two_concurrent_generations_run_one_at_a_time() -> None:
    async with emulator(step_ms=256.0) as client:  # 0.2 s of GPU time each
        body = {**SMALL, "steps": 20, "width": 256, "height": 160}
        await client.post("/sdapi/v1/txt2img", json=SMALL)  # warm up
        started = time.monotonic()
        responses = await asyncio.gather(*(client.post("/sdapi/v1/txt2img", json=body) for _ in range(2)))
        both = time.monotonic() - started
    assert [r.status_code for r in responses] == [200, 200]
    assert 0.4 <= both < 0.7  # in parallel they would take 0.2 s


async def test_generation_time_is_proportional_to_steps_times_pixels() -> None:
    async def timed(client: httpx.AsyncClient, steps: int, width: int) -> float:
        started = time.monotonic()
        await client.post("/sdapi/v1/txt2img", json={"steps": steps, "width": width, "height": 256})
        return time.monotonic() - started

    async with emulator(step_ms=320.0) as client:  # 256x256 x 10 steps = 0.2 s
        await timed(client, 1, 64)  # warm up
        base = await timed(client, 10, 256)
        more_steps = await timed(client, 20, 256)
        more_pixels = await timed(client, 10, 512)
    assert base >= 0.2 and more_steps >= 0.4 and more_pixels >= 0.4
    assert 0.12 < more_steps - base < 0.32  # the overhead of a call cancels out
    assert 0.12 < more_pixels - base < 0.32


async def test_img2img_samples_only_denoising_strength_of_the_steps() -> None:
    async with emulator(step_ms=2000.0) as client:
        body = {**SMALL, "steps": 20, "denoising_strength": 0.5, "init_images": [png_b64()]}
        task = asyncio.create_task(client.post("/sdapi/v1/img2img", json=body))
        progress = await wait_until_running(client)
        await client.post("/sdapi/v1/interrupt")
        await task
    assert progress["state"]["sampling_steps"] == 11


# -- as a process --------------------------------------------------------------------------------------------------


def test_imagegate_emulate_a1111_serves_the_api_as_a_process() -> None:
    with emulator_process("a1111", "--step-ms", "5", "--auth", "u:p") as base:
        models = httpx.get(f"{base}/sdapi/v1/sd-models", auth=("u", "p"), timeout=5)
        generated = httpx.post(f"{base}/sdapi/v1/txt2img", json=SMALL, auth=("u", "p"), timeout=30)
    assert models.status_code == 200 and len(models.json()) == 2
    assert generated.status_code == 200 and decode(generated.json()["images"][0]).size == (64, 64)
