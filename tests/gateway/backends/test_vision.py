"""The GLM-4.6V vision adapter against its emulator, and the caption parser."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from PIL import Image

from gateway.backends.base import BackendError, BackendSpec
from gateway.backends.vision import DESCRIBE_PROMPT, MAX_IMAGE_FIELD, VisionAdapter, parse_caption
from tests.live import serve_asgi
from tests.processes import free_port


def _png(width: int = 64, height: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def _adapter(url: str) -> VisionAdapter:
    return VisionAdapter(BackendSpec(name="glm", kind="vision", url=url))


# --- parse_caption --------------------------------------------------------------------------------------


def test_parse_caption_splits_the_sentence_from_the_tags_line() -> None:
    caption, tags = parse_caption("A red teapot on a wooden table.\nTags: teapot, red, table, studio")
    assert caption == "A red teapot on a wooden table."
    assert tags == ["teapot", "red", "table", "studio"]


def test_parse_caption_lower_cases_and_deduplicates_tags() -> None:
    _, tags = parse_caption("A cat.\nTags: Cat, cat, Black Cat,  black   cat , #Window")
    assert tags == ["cat", "black cat", "window"]


def test_parse_caption_keeps_at_most_ten_tags() -> None:
    _, tags = parse_caption("Many things.\nTags: " + ", ".join(f"t{i}" for i in range(15)))
    assert tags == [f"t{i}" for i in range(10)]


def test_parse_caption_without_tags_gives_the_first_line_and_no_tags() -> None:
    assert parse_caption("  A dog running on a beach.\nIt is sunny.") == ("A dog running on a beach.", [])


def test_parse_caption_strips_markdown_and_labels() -> None:
    caption, tags = parse_caption("**Caption:** A mountain lake at dawn.\n\n**Tags:** lake, mountain, dawn.")
    assert caption == "A mountain lake at dawn."
    assert tags == ["lake", "mountain", "dawn"]


def test_parse_caption_reads_tags_on_the_caption_line_and_chinese_labels() -> None:
    assert parse_caption("A blue car. Tags: car, blue") == ("A blue car.", ["car", "blue"])
    assert parse_caption("一只猫坐在窗台上。\n标签：猫，窗台、阳光") == ("一只猫坐在窗台上。", ["猫", "窗台", "阳光"])


def test_parse_caption_does_not_take_a_price_tag_for_the_tags_line() -> None:
    assert parse_caption("A shirt with a price tag: 5 dollars.") == ("A shirt with a price tag: 5 dollars.", [])


def test_describe_prompt_asks_for_one_sentence_and_a_tags_line() -> None:
    assert "one sentence" in DESCRIBE_PROMPT and "'Tags:'" in DESCRIBE_PROMPT


# --- adapter, no server needed --------------------------------------------------------------------------


def test_vision_adapter_declares_the_describe_capability() -> None:
    assert (VisionAdapter.kind, VisionAdapter.capability, VisionAdapter.default_slots) == ("vision", "describe", 1)
    assert VisionAdapter.lists_models is False


async def test_describe_refuses_an_image_over_10_mb_without_calling_the_server() -> None:
    # A closed port: a call would fail as backend_unavailable, so backend_rejected proves no call was made.
    adapter = _adapter(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(BackendError) as caught:
            await adapter.describe(b"\x00" * (MAX_IMAGE_FIELD * 3 // 4 + 1), "image/png", "What is this?")
    finally:
        await adapter.aclose()
    assert (caught.value.code, caught.value.retryable) == ("backend_rejected", False)


async def test_probe_of_a_service_not_healthy_is_a_retryable_unavailable_error() -> None:
    answer = {"status": "loading", "model": "GLM-4.6V-Flash", "device": "cuda:0"}
    client = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda request: httpx.Response(200, json=answer)), base_url="http://glm.invalid"
    )
    adapter = VisionAdapter(BackendSpec(name="glm", kind="vision", url="http://glm.invalid"), client)
    with pytest.raises(BackendError) as caught:
        await adapter.probe()
    await adapter.aclose()
    assert (caught.value.code, caught.value.retryable) == ("backend_unavailable", True)


async def test_probe_of_an_unreachable_server_is_a_retryable_unavailable_error() -> None:
    adapter = _adapter(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(BackendError) as caught:
            await adapter.probe()
    finally:
        await adapter.aclose()
    assert (caught.value.code, caught.value.retryable) == ("backend_unavailable", True)


# --- against the emulator -------------------------------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[str]:
    emulator = pytest.importorskip("gateway.emulators.vision")
    from gateway.emulators.core import EmulatorOptions

    async with serve_asgi(emulator.create_app(EmulatorOptions(step_ms=2))) as url:
        yield url


@pytest.fixture
async def adapter(server: str) -> AsyncIterator[VisionAdapter]:
    adapter = _adapter(server)
    yield adapter
    await adapter.aclose()


async def test_probe_reports_the_healthy_service_and_its_model(adapter: VisionAdapter) -> None:
    result = await adapter.probe()
    assert result.models is None
    assert result.loaded_model and "GLM" in result.loaded_model


async def test_describe_returns_the_model_answer_as_text(adapter: VisionAdapter) -> None:
    answer = await adapter.describe(_png(64, 48), "image/png", DESCRIBE_PROMPT)
    caption, tags = parse_caption(answer)
    assert "landscape" in caption and "\n" not in caption
    assert 3 <= len(tags) <= 8 and "red" in tags


async def test_describe_sends_jpeg_with_its_content_type(adapter: VisionAdapter) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 80), (20, 20, 220)).save(buffer, format="JPEG")
    answer = await adapter.describe(buffer.getvalue(), "image/jpeg", "Describe the picture.")
    assert "40x80" in answer and "blue" in answer


async def test_describe_of_an_empty_image_is_rejected_with_the_server_detail(adapter: VisionAdapter) -> None:
    with pytest.raises(BackendError) as caught:
        await adapter.describe(b"", "image/png", "What is this?")
    assert (caught.value.code, caught.value.retryable) == ("backend_rejected", False)
    assert "(400)" in caught.value.message


async def _vision_emulator(**options: object) -> object:
    from gateway.emulators.core import EmulatorOptions
    from gateway.emulators.vision import create_app

    return create_app(EmulatorOptions(**options))  # type: ignore[arg-type]


async def test_a_service_failure_is_a_retryable_backend_error() -> None:
    async with serve_asgi(await _vision_emulator(step_ms=2, fail_rate=1.0)) as url:
        adapter = _adapter(url)
        try:
            with pytest.raises(BackendError) as caught:
                await adapter.describe(_png(), "image/png", DESCRIBE_PROMPT)
        finally:
            await adapter.aclose()
    assert (caught.value.code, caught.value.retryable) == ("backend_error", True)


async def test_cancel_closes_the_call_at_once() -> None:
    # The service has no interrupt route: closing the connection is what a cancelled caption can do.
    app = await _vision_emulator(step_ms=400)  # one answer: about 2 s of simulated GPU
    gpu = app.state.gpu  # type: ignore[attr-defined]
    async with serve_asgi(app) as url:
        adapter = _adapter(url)
        try:
            task = asyncio.create_task(adapter.describe(_png(), "image/png", DESCRIBE_PROMPT))
            while not gpu.running:
                await asyncio.sleep(0.01)
            began = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert time.monotonic() - began < 0.5 and gpu.completed == 0
        finally:
            await adapter.aclose()
