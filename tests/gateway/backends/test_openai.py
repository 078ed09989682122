"""The OpenAI-compatible adapter: notes, URL handling, errors, and generation against the emulator."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import httpx
import pytest
from PIL import Image

from gateway.backends.base import BackendAuth, BackendError, BackendSpec, GenerationRequest
from gateway.backends.openai import OpenAIAdapter
from tests.live import serve_asgi
from tests.processes import free_port

REQUEST = GenerationRequest(
    prompt="a paper boat on a pond",
    negative_prompt="",
    width=64,
    height=96,
    steps=20,
    guidance_scale=7.0,
    seed=5,
    n=2,
    model=None,
    output_format="png",
)


def _png(width: int = 64, height: int = 96) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def _adapter(url: str, *, token: str | None = None, client: httpx.AsyncClient | None = None) -> OpenAIAdapter:
    auth = BackendAuth(kind="bearer", token=token) if token else BackendAuth()
    return OpenAIAdapter(BackendSpec(name="oai", kind="openai", url=url, auth=auth), client)


def _scripted(url: str, handler: Callable[[httpx.Request], httpx.Response]) -> OpenAIAdapter:
    return _adapter(url, client=httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url=url))


async def _noop(value: float) -> None:
    return None


# --- adjust (pure) --------------------------------------------------------------------------------------


def test_adjust_drops_the_negative_prompt_with_a_note() -> None:
    request, notes = _adapter("http://oai.invalid").adjust(replace(REQUEST, negative_prompt="rain"))
    assert request.negative_prompt == ""
    assert request.prompt == REQUEST.prompt  # not appended as "no rain"
    assert any("negative prompt" in note for note in notes)


def test_adjust_asks_dall_e_for_png_and_says_the_store_converts() -> None:
    request, notes = _adapter("http://oai.invalid").adjust(replace(REQUEST, model="dall-e-3", output_format="webp"))
    assert request.output_format == "png"
    assert any("converts it to webp" in note for note in notes)


def test_adjust_notes_that_seed_steps_and_guidance_are_not_sent() -> None:
    _, notes = _adapter("http://oai.invalid").adjust(REQUEST)
    assert any("seed 5" in note for note in notes)
    assert any("20 steps" in note and "guidance 7" in note for note in notes)
    assert not any("negative prompt" in note for note in notes)


# --- protocol details, with a scripted server ----------------------------------------------------------


@pytest.mark.parametrize("url", ["http://oai.invalid", "http://oai.invalid/", "http://oai.invalid/v1"])
async def test_the_backend_url_may_end_with_or_without_v1(url: str) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json={"data": [{"b64_json": base64.b64encode(_png()).decode()}] * 2})

    adapter = _scripted(url, handler)
    await adapter.generate(REQUEST, _noop)
    await adapter.aclose()
    assert seen == ["/v1/images/generations"]


async def test_generate_sends_model_only_when_named_and_output_format_only_when_not_png() -> None:
    bodies: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"data": [{"b64_json": base64.b64encode(_png()).decode()}] * 2})

    adapter = _scripted("http://oai.invalid", handler)
    await adapter.generate(REQUEST, _noop)
    await adapter.generate(replace(REQUEST, model="gpt-image-1", output_format="jpeg"), _noop)
    await adapter.aclose()
    assert bodies[0] == {"prompt": REQUEST.prompt, "n": 2, "size": "64x96", "response_format": "b64_json"}
    assert (bodies[1]["model"], bodies[1]["output_format"]) == ("gpt-image-1", "jpeg")


async def test_an_image_url_on_another_host_is_not_fetched() -> None:
    fetched: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        fetched.append(str(request.url))
        return httpx.Response(200, json={"data": [{"url": "http://169.254.169.254/latest/meta-data"}] * 2})

    adapter = _scripted("http://oai.invalid", handler)
    with pytest.raises(BackendError) as caught:
        await adapter.generate(REQUEST, _noop)
    await adapter.aclose()
    assert fetched == ["http://oai.invalid/v1/images/generations"]
    assert caught.value.code == "backend_error" and "another host" in caught.value.message


async def test_an_image_url_on_another_port_of_the_same_host_is_not_fetched() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": [{"url": "http://oai.invalid:8081/files/a.png"}] * 2})

    adapter = _scripted("http://oai.invalid", handler)
    with pytest.raises(BackendError):
        await adapter.generate(REQUEST, _noop)
    await adapter.aclose()


async def test_an_image_url_on_the_backend_origin_is_fetched() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/files/"):
            return httpx.Response(200, content=_png(), headers={"content-type": "image/png"})
        return httpx.Response(200, json={"data": [{"url": "http://oai.invalid:80/files/a.png"}, {"url": "/files/b"}]})

    adapter = _scripted("http://oai.invalid/v1", handler)
    images = await adapter.generate(REQUEST, _noop)
    await adapter.aclose()
    assert [(i.width, i.height, i.seed) for i in images] == [(64, 96, 5), (64, 96, 6)]


async def test_an_error_body_gives_its_message_and_a_429_is_retryable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        error = {"message": "Rate limit reached for images", "type": "requests", "param": None, "code": None}
        return httpx.Response(429, json={"error": error})

    adapter = _scripted("http://oai.invalid", handler)
    with pytest.raises(BackendError) as caught:
        await adapter.generate(REQUEST, _noop)
    await adapter.aclose()
    assert caught.value.retryable is True
    assert "Rate limit reached for images" in caught.value.message


async def test_probe_without_a_models_route_reports_no_model_list() -> None:
    adapter = _scripted("http://oai.invalid", lambda request: httpx.Response(404, json={"detail": "Not Found"}))
    result = await adapter.probe()
    await adapter.aclose()
    assert result.models is None


async def test_an_unreachable_server_is_a_retryable_unavailable_error() -> None:
    adapter = _adapter(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(BackendError) as caught:
            await adapter.probe()
    finally:
        await adapter.aclose()
    assert (caught.value.code, caught.value.retryable) == ("backend_unavailable", True)


# --- against the emulator -------------------------------------------------------------------------------


def _emulator(**options: object) -> object:
    emulator = pytest.importorskip("gateway.emulators.openai")
    from gateway.emulators.core import EmulatorOptions

    return emulator.create_app(EmulatorOptions(**options))  # type: ignore[arg-type]


@pytest.fixture
async def server() -> AsyncIterator[str]:
    # A "compatible" model (no OpenAI family): any WxH, like local servers; the OpenAI families are served too.
    # Without dall-e-2 (the API's default model when served), a request naming no model goes to the first one.
    models = ["sdxl-turbo", "dall-e-3", "gpt-image-1"]
    async with serve_asgi(_emulator(step_ms=2, auth="key:sk-test", models=models)) as url:
        yield url


@pytest.fixture
async def adapter(server: str) -> AsyncIterator[OpenAIAdapter]:
    adapter = _adapter(server, token="sk-test")
    yield adapter
    await adapter.aclose()


async def test_probe_lists_the_server_models(adapter: OpenAIAdapter) -> None:
    assert (await adapter.probe()).models == ["sdxl-turbo", "dall-e-3", "gpt-image-1"]


async def test_generate_returns_n_real_images_of_the_size(adapter: OpenAIAdapter) -> None:
    images = await adapter.generate(REQUEST, _noop)
    assert [(i.width, i.height, i.format, i.seed) for i in images] == [(64, 96, "png", 5), (64, 96, "png", 6)]
    assert images[0].data != images[1].data


async def test_generate_returns_the_asked_output_format(adapter: OpenAIAdapter) -> None:
    (image,) = await adapter.generate(replace(REQUEST, n=1, output_format="webp"), _noop)
    assert image.format == "webp"


async def test_a_gpt_image_model_is_asked_without_response_format(adapter: OpenAIAdapter) -> None:
    request = replace(REQUEST, n=1, width=1024, height=1024, model="gpt-image-1", output_format="jpeg")
    (image,) = await adapter.generate(request, _noop)
    assert (image.width, image.height, image.format) == (1024, 1024, "jpeg")


async def test_a_dall_e_model_gets_b64_and_no_output_format(adapter: OpenAIAdapter) -> None:
    request = replace(REQUEST, n=1, width=1024, height=1024, model="dall-e-3", output_format="jpeg")
    (image,) = await adapter.generate(request, _noop)
    assert (image.width, image.height, image.format) == (1024, 1024, "png")


async def test_image_to_image_goes_through_edits(adapter: OpenAIAdapter) -> None:
    request = replace(REQUEST, n=1, init_image=_png(), mask=_png())
    (image,) = await adapter.generate(request, _noop)
    assert (image.width, image.height) == (64, 96)


async def test_a_wrong_key_is_an_auth_failure(server: str) -> None:
    adapter = _adapter(server, token="sk-wrong")
    try:
        with pytest.raises(BackendError) as caught:
            await adapter.generate(REQUEST, _noop)
    finally:
        await adapter.aclose()
    assert (caught.value.code, caught.value.retryable) == ("backend_auth_failed", True)


async def test_a_bad_size_is_rejected_with_the_server_message(adapter: OpenAIAdapter) -> None:
    with pytest.raises(BackendError) as caught:
        await adapter.generate(replace(REQUEST, n=1, model="dall-e-3"), _noop)
    assert (caught.value.code, caught.value.retryable) == ("backend_rejected", False)
    assert "Invalid value: '64x96'" in caught.value.message


async def test_a_server_error_is_retryable() -> None:
    async with serve_asgi(_emulator(step_ms=2, fail_rate=1.0, models=["sdxl-turbo"])) as url:
        adapter = _adapter(url)
        try:
            with pytest.raises(BackendError) as caught:
                await adapter.generate(REQUEST, _noop)
        finally:
            await adapter.aclose()
    assert (caught.value.code, caught.value.retryable) == ("backend_error", True)
    assert "The server had an error" in caught.value.message


async def test_cancel_closes_the_call_at_once() -> None:
    # The Images API has no interrupt: closing the connection is all a client can do, and it must be prompt.
    app = _emulator(step_ms=10000, models=["sdxl-turbo"])  # 64x96: 2 images take over 2 s
    gpu = app.state.server.gpu  # type: ignore[attr-defined]
    async with serve_asgi(app) as url:
        adapter = _adapter(url)
        try:
            task = asyncio.create_task(adapter.generate(REQUEST, _noop))
            while not gpu.running:
                await asyncio.sleep(0.01)
            began = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert time.monotonic() - began < 0.5
            assert gpu.completed == 0
        finally:
            await adapter.aclose()
