"""The AUTOMATIC1111 adapter: request mapping with a scripted server, then the protocol against the emulator."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import httpx
import pytest
from PIL import Image

from gateway.backends.a1111 import A1111Adapter
from gateway.backends.base import BackendAuth, BackendError, BackendSpec, GenerationRequest
from tests.live import serve_asgi
from tests.processes import free_port

REQUEST = GenerationRequest(
    prompt="a red fox in fresh snow",
    negative_prompt="blurry",
    width=64,
    height=96,
    steps=4,
    guidance_scale=6.5,
    seed=77,
    n=2,
    model=None,
    output_format="png",
)
CHECKPOINTS = [
    {"title": "sd15.safetensors [6ce0161689]", "model_name": "sd15", "hash": "6ce0161689"},
    {"title": "sdxl.safetensors [31e35c80fc]", "model_name": "sdxl", "hash": "31e35c80fc"},
]


def _png(width: int = 64, height: int = 96) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 160, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def _spec(url: str, **auth: Any) -> BackendSpec:
    return BackendSpec(
        name="webui",
        kind="a1111",
        url=url,
        auth=BackendAuth(kind="basic", **auth) if auth else BackendAuth(),
        options={"poll_seconds": 0.05},
    )


async def _noop(value: float) -> None:
    return None


class Scripted:
    """A scripted A1111: records the calls, answers txt2img/img2img with ``images`` PNGs and all_seeds."""

    def __init__(
        self,
        images: int = 2,
        seeds: list[int] | None = None,
        error: httpx.Response | None = None,
        interrupted: bool = False,
    ) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.images, self.seeds, self.error, self.interrupted = images, seeds, error, interrupted

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.calls.append((request.url.path, body))
        if request.url.path == "/sdapi/v1/sd-models":
            return httpx.Response(200, json=CHECKPOINTS)
        if request.url.path == "/sdapi/v1/samplers":
            return httpx.Response(200, json=[{"name": "DPM++ 2M", "aliases": ["k_dpmpp_2m"], "options": {}}])
        if request.url.path == "/sdapi/v1/schedulers":
            return httpx.Response(200, json=[{"name": "karras", "label": "Karras", "aliases": None}])
        if request.url.path == "/sdapi/v1/progress":
            state = {"interrupted": self.interrupted, "skipped": False, "job_count": 0}
            return httpx.Response(200, json={"progress": 0, "eta_relative": 0, "state": state})
        if self.error is not None:
            return self.error
        info = json.dumps({"all_seeds": self.seeds or [], "seed": 0})
        encoded = [base64.b64encode(_png()).decode()] * self.images
        return httpx.Response(200, json={"images": encoded, "parameters": {}, "info": info})

    def posted(self) -> tuple[str, dict[str, Any]]:
        return next((path, body) for path, body in self.calls if path.endswith(("txt2img", "img2img")))


def _scripted(handler: Callable[[httpx.Request], httpx.Response]) -> A1111Adapter:
    url = "http://webui.invalid"
    return A1111Adapter(_spec(url), httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url=url))


# --- request mapping, with a scripted server -----------------------------------------------------------


async def test_txt2img_payload_maps_every_field() -> None:
    server = Scripted()
    adapter = _scripted(server)
    await adapter.generate(replace(REQUEST, sampler="DPM++ 2M", scheduler="Karras"), _noop)
    await adapter.aclose()
    route, sent = server.posted()
    assert route == "/sdapi/v1/txt2img"
    assert {k: sent[k] for k in ("prompt", "negative_prompt", "seed", "steps", "cfg_scale", "width", "height")} == {
        "prompt": REQUEST.prompt,
        "negative_prompt": "blurry",
        "seed": 77,
        "steps": 4,
        "cfg_scale": 6.5,
        "width": 64,
        "height": 96,
    }
    assert (sent["batch_size"], sent["n_iter"], sent["sampler_name"], sent["scheduler"]) == (2, 1, "DPM++ 2M", "Karras")
    assert (sent["send_images"], sent["save_images"]) == (True, False)
    assert "override_settings" not in sent


async def test_a_named_model_switches_the_checkpoint_by_title_and_keeps_it_loaded() -> None:
    server = Scripted()
    adapter = _scripted(server)
    await adapter.generate(replace(REQUEST, model="sdxl"), _noop)
    await adapter.aclose()
    _, sent = server.posted()
    assert sent["override_settings"] == {"sd_model_checkpoint": "sdxl.safetensors [31e35c80fc]"}
    assert sent["override_settings_restore_afterwards"] is False


async def test_an_unknown_model_refreshes_the_list_once_then_is_refused_without_generating() -> None:
    server = Scripted()
    adapter = _scripted(server)
    await adapter.probe()
    with pytest.raises(BackendError) as caught:
        await adapter.generate(replace(REQUEST, model="missing"), _noop)
    await adapter.aclose()
    assert caught.value.code == "backend_rejected"
    assert [path for path, _ in server.calls].count("/sdapi/v1/sd-models") == 2
    assert not any(path.endswith("txt2img") for path, _ in server.calls)


async def test_img2img_sends_the_init_image_mask_and_strength() -> None:
    server = Scripted(images=1)
    adapter = _scripted(server)
    init, mask = _png(), _png()
    await adapter.generate(replace(REQUEST, n=1, init_image=init, mask=mask, denoising_strength=0.4), _noop)
    await adapter.aclose()
    route, sent = server.posted()
    assert route == "/sdapi/v1/img2img"
    assert base64.b64decode(sent["init_images"][0]) == init and base64.b64decode(sent["mask"]) == mask
    assert sent["denoising_strength"] == 0.4


async def test_the_seeds_reported_in_info_are_used() -> None:
    adapter = _scripted(Scripted(seeds=[900, 901]))
    images = await adapter.generate(REQUEST, _noop)
    await adapter.aclose()
    assert [i.seed for i in images] == [900, 901]


async def test_fewer_images_than_asked_is_a_retryable_interruption() -> None:
    adapter = _scripted(Scripted(images=1))
    with pytest.raises(BackendError) as caught:
        await adapter.generate(REQUEST, _noop)
    await adapter.aclose()
    assert (caught.value.code, caught.value.retryable) == ("interrupted", True)


async def test_a_full_batch_interrupted_by_someone_else_is_a_retryable_interruption() -> None:
    # A1111 answers 200 with the batch partly denoised; only the state's interrupted flag tells.
    adapter = _scripted(Scripted(images=2, interrupted=True))
    with pytest.raises(BackendError) as caught:
        await adapter.generate(REQUEST, _noop)
    await adapter.aclose()
    assert (caught.value.code, caught.value.retryable) == ("interrupted", True)


async def test_an_out_of_memory_error_class_is_out_of_memory_even_without_the_words() -> None:
    body = {"error": "OutOfMemoryError", "detail": "", "body": "", "errors": "Tried to allocate 2.00 GiB"}
    adapter = _scripted(Scripted(error=httpx.Response(500, json=body)))
    with pytest.raises(BackendError) as caught:
        await adapter.generate(REQUEST, _noop)
    await adapter.aclose()
    assert (caught.value.code, caught.value.retryable) == ("out_of_memory", False)
    assert "Tried to allocate 2.00 GiB" in caught.value.message


async def test_a_validation_error_is_rejected_with_its_field_and_message() -> None:
    body = {"detail": [{"loc": ["body", "steps"], "msg": "value is not a valid integer", "type": "type_error"}]}
    adapter = _scripted(Scripted(error=httpx.Response(422, json=body)))
    with pytest.raises(BackendError) as caught:
        await adapter.generate(REQUEST, _noop)
    await adapter.aclose()
    assert (caught.value.code, caught.value.retryable) == ("backend_rejected", False)
    assert "body.steps: value is not a valid integer" in caught.value.message


async def test_an_unreachable_server_is_a_retryable_unavailable_error() -> None:
    adapter = A1111Adapter(_spec(f"http://127.0.0.1:{free_port()}"))
    try:
        with pytest.raises(BackendError) as caught:
            await adapter.generate(REQUEST, _noop)
    finally:
        await adapter.aclose()
    assert (caught.value.code, caught.value.retryable) == ("backend_unavailable", True)


# --- against the emulator -------------------------------------------------------------------------------

AUTH = {"username": "gw", "password": "s3cret"}


def _webui(**options: Any) -> Any:
    from gateway.emulators.a1111 import create_app
    from gateway.emulators.core import EmulatorOptions

    return create_app(EmulatorOptions(**{"step_ms": 5, "load_ms": 20, "auth": "gw:s3cret", **options}))


@contextlib.asynccontextmanager
async def _running(app: Any, **auth: Any) -> AsyncIterator[tuple[A1111Adapter, str]]:
    async with serve_asgi(app) as url:
        adapter = A1111Adapter(_spec(url, **(auth or AUTH)))
        try:
            yield adapter, url
        finally:
            await adapter.aclose()


@pytest.fixture
async def webui() -> AsyncIterator[A1111Adapter]:
    async with _running(_webui()) as (adapter, _):
        yield adapter


def _infotext(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as image:
        return str(image.info.get("parameters", ""))


async def test_probe_lists_the_checkpoints_and_the_loaded_one(webui: A1111Adapter) -> None:
    result = await webui.probe()
    assert result.models == ["v1-5-pruned-emaonly", "sd_xl_base_1.0"]
    assert result.loaded_model == "v1-5-pruned-emaonly"


async def test_txt2img_returns_n_images_of_the_size_with_their_seeds(webui: A1111Adapter) -> None:
    images = await webui.generate(REQUEST, _noop)
    assert [(i.width, i.height, i.format, i.seed) for i in images] == [(64, 96, "png", 77), (64, 96, "png", 78)]
    assert images[0].data != images[1].data
    assert "Seed: 78" in _infotext(images[1].data)


async def test_img2img_with_a_mask_returns_images_of_the_size(webui: A1111Adapter) -> None:
    request = replace(REQUEST, n=1, init_image=_png(), mask=_png(), denoising_strength=0.5)
    (image,) = await webui.generate(request, _noop)
    assert (image.width, image.height, image.seed) == (64, 96, 77)
    assert "Denoising strength: 0.5" in _infotext(image.data)


async def test_a_named_model_is_loaded_and_stays_loaded(webui: A1111Adapter) -> None:
    (image,) = await webui.generate(replace(REQUEST, n=1, model="sd_xl_base_1.0"), _noop)
    assert "Model: sd_xl_base_1.0" in _infotext(image.data)
    assert (await webui.probe()).loaded_model == "sd_xl_base_1.0"


async def test_sampler_and_scheduler_reach_the_server(webui: A1111Adapter) -> None:
    (image,) = await webui.generate(replace(REQUEST, n=1, sampler="Euler a", scheduler="Karras"), _noop)
    text = _infotext(image.data)
    assert "Sampler: Euler a" in text and "Schedule type: Karras" in text


@pytest.mark.parametrize("change", [{"sampler": "Nope"}, {"scheduler": "nope"}], ids=["sampler", "scheduler"])
async def test_an_unknown_sampler_or_scheduler_is_rejected_before_generating(change: dict[str, str]) -> None:
    app = _webui()
    async with _running(app) as (adapter, _):
        with pytest.raises(BackendError) as caught:
            await adapter.generate(replace(REQUEST, **change), _noop)
    assert (caught.value.code, caught.value.retryable) == ("backend_rejected", False)
    assert app.state.webui.gpu.completed == 0


async def test_progress_rises_during_a_generation_then_reaches_1() -> None:
    values: list[float] = []

    async def progress(value: float) -> None:
        values.append(value)

    async with _running(_webui(step_ms=200)) as (adapter, _):  # 512x512, 20 steps: 1 s
        await adapter.generate(replace(REQUEST, n=1, width=512, height=512, steps=20), progress)
    assert len(values) >= 4
    assert values == sorted(values) and values[-1] == 1.0 and 0 < values[0] < 0.5


async def test_cancel_interrupts_the_generation_on_the_server() -> None:
    app = _webui(step_ms=400)  # 512x512, 20 steps: 2 s
    async with _running(app) as (adapter, url):
        seen = asyncio.Event()

        async def progress(value: float) -> None:
            seen.set()

        task = asyncio.create_task(adapter.generate(replace(REQUEST, n=1, width=512, height=512, steps=20), progress))
        await asyncio.wait_for(seen.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with httpx.AsyncClient(base_url=url, auth=httpx.BasicAuth(**AUTH)) as client:
            for _ in range(20):  # the server's answer for the interrupted batch takes a moment
                state = (await client.get("/sdapi/v1/progress")).json()["state"]
                if state["job_count"] == 0:
                    break
                await asyncio.sleep(0.05)
    assert state["interrupted"] is True and state["job_count"] == 0
    assert app.state.webui.gpu.completed == 0


async def test_an_interrupt_by_someone_else_is_a_retryable_interruption() -> None:
    async with _running(_webui(step_ms=400)) as (adapter, url):
        task = asyncio.create_task(adapter.generate(replace(REQUEST, n=1, width=512, height=512, steps=20), _noop))
        async with httpx.AsyncClient(base_url=url, auth=httpx.BasicAuth(**AUTH)) as client:
            while (await client.get("/sdapi/v1/progress")).json()["state"]["job_count"] == 0:
                await asyncio.sleep(0.02)  # an interrupt before the generation begins would not stop it
            await client.post("/sdapi/v1/interrupt")
        with pytest.raises(BackendError) as caught:
            await task
    assert (caught.value.code, caught.value.retryable) == ("interrupted", True)


async def test_the_right_credentials_are_accepted_and_wrong_ones_are_an_auth_failure() -> None:
    async with _running(_webui()) as (_, url):
        good = A1111Adapter(_spec(url, **AUTH))
        bad = A1111Adapter(_spec(url, username="gw", password="wrong"))
        try:
            assert (await good.probe()).models
            with pytest.raises(BackendError) as caught:
                await bad.generate(REQUEST, _noop)
        finally:
            await good.aclose()
            await bad.aclose()
    assert (caught.value.code, caught.value.retryable) == ("backend_auth_failed", True)


async def test_a_cuda_oom_is_out_of_memory() -> None:
    async with _running(_webui(fail_rate=1.0)) as (adapter, _):
        with pytest.raises(BackendError) as caught:
            await adapter.generate(REQUEST, _noop)
    assert (caught.value.code, caught.value.retryable) == ("out_of_memory", False)
    assert "CUDA out of memory" in caught.value.message
