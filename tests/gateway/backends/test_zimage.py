"""The Z-Image-Turbo adapter: the Turbo rules of ``adjust``, and generation against the seed-003 emulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import httpx
import pytest

from gateway.backends.base import BackendError, BackendSpec, GenerationRequest
from gateway.backends.zimage import ZImageAdapter
from tests.live import serve_asgi
from tests.processes import free_port

TURBO = GenerationRequest(
    prompt="a lighthouse on a cliff at dusk",
    negative_prompt="blurry",
    width=128,
    height=64,
    steps=8,
    guidance_scale=0.0,
    seed=1000,
    n=1,
    model=None,
    output_format="png",
)


def _adapter(url: str = "http://zimage.invalid", client: httpx.AsyncClient | None = None) -> ZImageAdapter:
    return ZImageAdapter(BackendSpec(name="zimg", kind="zimage", url=url), client)


async def _noop(value: float) -> None:
    return None


# --- adjust (pure) --------------------------------------------------------------------------------------


def test_adjust_leaves_a_turbo_request_unchanged() -> None:
    assert _adapter().adjust(TURBO) == (TURBO, [])


def test_adjust_forces_8_steps_with_a_note() -> None:
    request, notes = _adapter().adjust(replace(TURBO, steps=30))
    assert request.steps == 8
    assert len(notes) == 1 and "30 steps became 8" in notes[0]


def test_adjust_forces_guidance_0_with_a_note() -> None:
    request, notes = _adapter().adjust(replace(TURBO, guidance_scale=7.5))
    assert request.guidance_scale == 0.0
    assert len(notes) == 1 and "7.5 became 0.0" in notes[0]


@pytest.mark.parametrize(
    ("size", "expected"),
    [((1000, 600), (1024, 576)), ((1200, 1200), (1216, 1216)), ((10, 5000), (64, 2048)), ((96, 160), (128, 192))],
)
def test_adjust_rounds_sizes_to_multiples_of_64_within_64_to_2048(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    request, notes = _adapter().adjust(replace(TURBO, width=size[0], height=size[1]))
    assert (request.width, request.height) == expected
    assert len(notes) == 1 and f"became {expected[0]}x{expected[1]}" in notes[0]


def test_adjust_asks_for_png_instead_of_webp_and_says_the_store_converts() -> None:
    request, notes = _adapter().adjust(replace(TURBO, output_format="webp"))
    assert request.output_format == "png"
    assert len(notes) == 1 and "converts" in notes[0]


def test_adjust_keeps_the_negative_prompt_and_jpeg() -> None:
    request, notes = _adapter().adjust(replace(TURBO, output_format="jpeg"))
    assert (request.negative_prompt, request.output_format, notes) == ("blurry", "jpeg", [])


def test_adjust_gives_one_note_per_change() -> None:
    _, notes = _adapter().adjust(replace(TURBO, steps=20, guidance_scale=5.0, width=100, output_format="webp"))
    assert len(notes) == 4


def test_adjust_refuses_image_to_image() -> None:
    with pytest.raises(BackendError) as caught:
        _adapter().adjust(replace(TURBO, init_image=b"\x89PNG"))
    assert caught.value.code == "backend_rejected"


# --- generate, with a scripted server ------------------------------------------------------------------


async def test_an_empty_image_answer_is_rejected_as_a_bad_guidance_scale() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"image": ""}))
    adapter = _adapter(client=httpx.AsyncClient(transport=transport, base_url="http://zimage.invalid"))
    with pytest.raises(BackendError) as caught:
        await adapter.generate(replace(TURBO, guidance_scale=3.0), _noop)
    await adapter.aclose()
    assert (caught.value.code, caught.value.retryable) == ("backend_rejected", False)
    assert "guidance" in caught.value.message


# --- against the emulator -------------------------------------------------------------------------------


def _emulator(**options: object) -> object:
    emulator = pytest.importorskip("gateway.emulators.zimage")
    from gateway.emulators.core import EmulatorOptions

    return emulator.create_app(EmulatorOptions(**options))  # type: ignore[arg-type]


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async with serve_asgi(_emulator(step_ms=5)) as url:
        yield url


@pytest.fixture
async def adapter(server: str) -> AsyncIterator[ZImageAdapter]:
    adapter = _adapter(server)
    yield adapter
    await adapter.aclose()


async def test_probe_finds_the_generate_route_in_the_openapi_document(adapter: ZImageAdapter) -> None:
    result = await adapter.probe()
    assert (result.models, result.loaded_model) == (["z-image-turbo"], None)


async def test_generate_makes_n_images_of_the_size_and_consecutive_seeds(adapter: ZImageAdapter) -> None:
    values: list[float] = []

    async def progress(value: float) -> None:
        values.append(value)

    images = await adapter.generate(replace(TURBO, n=3), progress)
    assert [(i.width, i.height, i.format, i.seed) for i in images] == [(128, 64, "png", 1000 + k) for k in range(3)]
    assert len({i.data for i in images}) == 3
    assert values == pytest.approx([1 / 3, 2 / 3, 1.0])


async def test_generate_returns_jpeg_when_asked(adapter: ZImageAdapter) -> None:
    (image,) = await adapter.generate(replace(TURBO, output_format="jpeg"), _noop)
    assert image.format == "jpeg"


async def test_a_non_zero_guidance_scale_is_rejected_by_the_server(adapter: ZImageAdapter) -> None:
    with pytest.raises(BackendError) as caught:
        await adapter.generate(replace(TURBO, guidance_scale=5.0), _noop)
    assert (caught.value.code, caught.value.retryable) == ("backend_rejected", False)


async def test_a_server_oom_is_out_of_memory_and_may_move_to_another_backend() -> None:
    async with serve_asgi(_emulator(step_ms=2, fail_rate=1.0)) as url:
        adapter = _adapter(url)
        try:
            with pytest.raises(BackendError) as caught:
                await adapter.generate(TURBO, _noop)
        finally:
            await adapter.aclose()
    assert (caught.value.code, caught.value.retryable) == ("out_of_memory", True)
    assert "Internal Server Error" in caught.value.message


async def test_cancel_closes_the_call_and_no_further_image_is_started() -> None:
    # No interrupt route: the image being drawn finishes on the server, the remaining ones are never asked for.
    app = _emulator(step_ms=100)  # 1024x1024: 0.7 s per image
    gpu = app.state.gpu  # type: ignore[attr-defined]
    async with serve_asgi(app) as url:
        adapter = _adapter(url)
        done: list[float] = []

        async def progress(value: float) -> None:
            done.append(value)

        task = asyncio.create_task(adapter.generate(replace(TURBO, width=1024, height=1024, n=3), progress))
        while not gpu.running:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await adapter.aclose()
        while gpu.running:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        assert (gpu.completed, gpu.running, done) == (1, [], [])


async def test_an_unreachable_server_is_a_retryable_unavailable_error() -> None:
    adapter = _adapter(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(BackendError) as caught:
            await adapter.generate(TURBO, _noop)
    finally:
        await adapter.aclose()
    assert (caught.value.code, caught.value.retryable) == ("backend_unavailable", True)


def test_without_configured_models_it_serves_its_one_model_only() -> None:
    from gateway.backends.health import CircuitBreaker
    from gateway.backends.pool import PoolEntry

    spec = BackendSpec(name="zi", kind="zimage", url="http://127.0.0.1:9")
    entry = PoolEntry(spec=spec, adapter=ZImageAdapter(spec), breaker=CircuitBreaker(3, 30.0))
    assert entry.serves("z-image-turbo") and entry.serves(None)
    assert not entry.serves("sdxl"), "an sdxl job must not get a Z-Image picture"
