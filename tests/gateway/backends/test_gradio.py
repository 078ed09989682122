"""The Gradio adapter (GLM-Image WebUI): adjust rules, output parsing, and the /call and legacy flows against
the Gradio emulator."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import httpx
import pytest
from PIL import Image

from gateway.backends.base import (
    BACKEND_AUTH,
    BACKEND_ERROR,
    BACKEND_REJECTED,
    BACKEND_UNAVAILABLE,
    OUT_OF_MEMORY,
    BackendAuth,
    BackendError,
    BackendSpec,
    GenerationRequest,
)
from gateway.backends.gradio import GradioAdapter
from tests.live import serve_asgi
from tests.processes import free_port

REQUEST = GenerationRequest(
    prompt="a paper lantern in the rain",
    negative_prompt="",
    width=96,
    height=64,
    steps=4,
    guidance_scale=1.5,
    seed=77,
    n=1,
    model=None,
    output_format="png",
)


async def no_progress(value: float) -> None:
    return None


def png(width: int = 32, height: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 20, 20)).save(buffer, format="PNG")
    return buffer.getvalue()


def mock_adapter(handler: Any, **options: Any) -> GradioAdapter:
    """An adapter whose HTTP goes to ``handler`` (an httpx.MockTransport handler) instead of a socket."""
    spec = BackendSpec(name="glm", kind="gradio", url="http://glm.local:7860", options={"prefix": "", **options})
    client = httpx.AsyncClient(base_url=spec.url, transport=httpx.MockTransport(handler))
    return GradioAdapter(spec, client)


# ----- pure: adjust and output parsing -----


def test_adjust_rounds_sizes_to_multiples_of_32_and_notes_the_unused_negative_prompt() -> None:
    adapter = GradioAdapter(BackendSpec(name="glm", kind="gradio", url="http://127.0.0.1:9"))
    adjusted, notes = adapter.adjust(replace(REQUEST, width=1000, height=1600, negative_prompt="ugly"))
    assert (adjusted.width, adjusted.height) == (992, 1600)
    assert any("992" in n for n in notes) and any("negative prompt" in n for n in notes)
    same, none = adapter.adjust(replace(REQUEST, width=1024, height=768))
    assert (same.width, same.height, none) == (1024, 768, [])


def test_adjust_rejects_image_to_image() -> None:
    adapter = GradioAdapter(BackendSpec(name="glm", kind="gradio", url="http://127.0.0.1:9"))
    with pytest.raises(BackendError) as caught:
        adapter.adjust(replace(REQUEST, init_image=png()))
    assert caught.value.code == BACKEND_REJECTED


async def test_filedata_url_on_the_backend_origin_is_fetched() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, content=png())

    adapter = mock_adapter(handler)
    url = "http://glm.local:7860/file=/tmp/gradio/x/image.png"
    assert await adapter._image_bytes([{"path": "/tmp/gradio/x/image.png", "url": url}]) == png()
    assert seen == [url]
    await adapter.aclose()


async def test_filedata_url_on_another_host_is_never_fetched_the_path_is_used_on_the_backend() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, content=png())

    adapter = mock_adapter(handler, prefix="/gradio_api")
    output = [{"path": "/tmp/gradio/x/image.png", "url": "http://169.254.169.254/latest/meta-data", "size": 10}]
    await adapter._image_bytes(output)
    assert seen == ["http://glm.local:7860/gradio_api/file=/tmp/gradio/x/image.png"]
    with pytest.raises(BackendError, match="another host"):
        await adapter._image_bytes([{"url": "http://evil.example/x.png"}])
    assert len(seen) == 1
    await adapter.aclose()


async def test_base64_and_data_url_outputs_are_decoded_without_any_request() -> None:
    adapter = mock_adapter(lambda request: httpx.Response(500))
    encoded = base64.b64encode(png()).decode()
    assert await adapter._image_bytes([encoded]) == png()
    assert await adapter._image_bytes([f"data:image/png;base64,{encoded}"]) == png()
    assert (
        await adapter._image_bytes([[{"image": {"url": f"data:image/png;base64,{encoded}"}, "caption": None}]]) == png()
    )
    await adapter.aclose()


# ----- against the emulator -----


def emulator(**options: Any) -> Any:
    from gateway.emulators.core import EmulatorOptions
    from gateway.emulators.gradio import create_app

    return create_app(EmulatorOptions(**{"step_ms": 20.0, "load_ms": 0.0, **options}))


class Recorder:
    """ASGI wrapper: logs every request and answers ``hidden`` path prefixes with 404 (an older Gradio)."""

    def __init__(self, app: Any, hidden: tuple[str, ...] = ()) -> None:
        self.app, self.hidden = app, hidden
        self.requests: list[tuple[str, str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        self.requests.append((scope["method"], path))
        if any(path.startswith(h) for h in self.hidden):
            while (await receive()).get("more_body"):
                pass
            status, content = 404, b'{"detail": "Not Found"}'
            await send(
                {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": content})
            return
        await self.app(scope, receive, send)

    def posts(self) -> list[str]:
        return [path for method, path in self.requests if method == "POST"]


@asynccontextmanager
async def gradio(app: Any, *, auth: BackendAuth | None = None, **options: Any) -> AsyncIterator[GradioAdapter]:
    async with serve_asgi(app) as url:
        spec = BackendSpec(name="glm", kind="gradio", url=url, auth=auth or BackendAuth(), options=options)
        adapter = GradioAdapter(spec)
        try:
            yield adapter
        finally:
            await adapter.aclose()


async def test_call_flow_streams_sse_and_fetches_one_image_per_seed() -> None:
    recorder = Recorder(emulator())
    seen: list[float] = []

    async def record(value: float) -> None:
        seen.append(value)

    async with gradio(recorder) as adapter:
        images = await adapter.generate(replace(REQUEST, n=2), record)
    assert [(i.width, i.height, i.format, i.seed) for i in images] == [(96, 64, "webp", 77), (96, 64, "webp", 78)]
    assert recorder.posts() == ["/gradio_api/call/predict"] * 2, "Gradio 5 prefix detected, /call used"
    assert sum(1 for _, path in recorder.requests if "/file=" in path) == 2
    assert seen == [0.5, 1.0]


async def test_probe_detects_gradio5_prefix_and_reports_its_one_model() -> None:
    recorder = Recorder(emulator())
    async with gradio(recorder) as adapter:
        result = await adapter.probe()
        assert (result.models, result.loaded_model) == (["glm-image"], None)
        assert adapter.prefix == "/gradio_api" and adapter.fn_index == 0


async def test_a_gradio4_app_is_called_without_prefix() -> None:
    recorder = Recorder(emulator(), hidden=("/gradio_api",))
    async with gradio(recorder) as adapter:
        await adapter.probe()
        images = await adapter.generate(REQUEST, no_progress)
    assert adapter.prefix == "" and len(images) == 1
    assert recorder.posts() == ["/call/predict"]


async def test_auto_protocol_falls_back_to_legacy_on_404_and_remembers_it() -> None:
    recorder = Recorder(emulator(), hidden=("/gradio_api/call/", "/call/"))
    async with gradio(recorder) as adapter:
        first = await adapter.generate(REQUEST, no_progress)
        second = await adapter.generate(replace(REQUEST, seed=5), no_progress)
    assert [i.seed for i in first + second] == [77, 5]
    assert recorder.posts() == ["/gradio_api/call/predict", "/gradio_api/api/predict", "/gradio_api/api/predict"]


async def test_legacy_protocol_posts_api_predict_as_in_the_seed() -> None:
    recorder = Recorder(emulator())
    async with gradio(recorder, protocol="legacy", prefix="", api_name="predict") as adapter:
        images = await adapter.generate(REQUEST, no_progress)
    assert recorder.posts() == ["/api/predict"]
    assert (images[0].width, images[0].height) == (96, 64)


async def test_legacy_cuda_oom_is_out_of_memory() -> None:
    async with gradio(emulator(fail_rate=1.0), protocol="legacy") as adapter:
        with pytest.raises(BackendError) as caught:
            await adapter.generate(REQUEST, no_progress)
    assert caught.value.code == OUT_OF_MEMORY and not caught.value.retryable


async def test_call_error_event_is_a_retryable_backend_error() -> None:
    # Gradio's /call error event carries `null` (it sends the output's "data", which an error lacks), so the
    # cause (here an OOM) cannot be told: it is the backend's failure, retryable.
    async with gradio(emulator(fail_rate=1.0)) as adapter:
        with pytest.raises(BackendError) as caught:
            await adapter.generate(REQUEST, no_progress)
    assert caught.value.code == BACKEND_ERROR and caught.value.retryable
    assert "show_error" in caught.value.message


async def test_cancel_sends_gradio_cancel_for_the_event_and_stops_the_generation() -> None:
    app = emulator(step_ms=200000.0)  # 96x64, 4 steps: ~5 s if it ran to the end
    gpu = app.state.webui.gpu
    recorder = Recorder(app)
    async with gradio(recorder) as adapter:
        await adapter.probe()
        task = asyncio.create_task(adapter.generate(REQUEST, no_progress))
        while not any(m == "GET" and "/call/predict/" in p for m, p in recorder.requests):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        began = asyncio.get_running_loop().time()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert asyncio.get_running_loop().time() - began < 1.0
        assert ("POST", "/gradio_api/cancel") in recorder.requests
        for _ in range(50):
            if not gpu.running:
                break
            await asyncio.sleep(0.02)
        assert gpu.running == [] and gpu.completed == 0, "the emulated GPU stopped without finishing the image"


async def test_basic_auth_right_password_works_and_wrong_one_is_backend_auth_failed() -> None:
    app = emulator(auth="gw:s3cret")
    good = BackendAuth(kind="basic", username="gw", password="s3cret")
    async with gradio(app, auth=good) as adapter:
        await adapter.probe()
        assert len(await adapter.generate(REQUEST, no_progress)) == 1
    bad = BackendAuth(kind="basic", username="gw", password="nope")
    async with gradio(app, auth=bad) as adapter:
        with pytest.raises(BackendError) as caught:
            await adapter.probe()
    assert caught.value.code == BACKEND_AUTH and caught.value.retryable


async def test_an_unreachable_server_is_backend_unavailable_and_retryable() -> None:
    adapter = GradioAdapter(BackendSpec(name="gone", kind="gradio", url=f"http://127.0.0.1:{free_port()}"))
    for call in (adapter.probe(), adapter.generate(REQUEST, no_progress)):
        with pytest.raises(BackendError) as caught:
            await call
        assert caught.value.code == BACKEND_UNAVAILABLE and caught.value.retryable
    await adapter.aclose()


async def test_probe_fails_when_the_app_has_no_such_api_name() -> None:
    async with gradio(emulator(), api_name="/generate") as adapter:
        with pytest.raises(BackendError, match="no API endpoint /generate") as caught:
            await adapter.probe()
    assert caught.value.code == BACKEND_REJECTED
