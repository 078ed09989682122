"""The ComfyUI adapter: workflow patching (pure) and the whole protocol against the ComfyUI emulator."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import httpx
import pytest
from PIL import Image

from gateway.backends.base import (
    BACKEND_AUTH,
    BACKEND_REJECTED,
    BACKEND_UNAVAILABLE,
    OUT_OF_MEMORY,
    BackendAuth,
    BackendError,
    BackendSpec,
    GenerationRequest,
)
from gateway.backends.comfyui import ComfyUIAdapter
from gateway.backends.comfyui import workflow as wf
from gateway.emulators.core import EmulatorOptions
from tests.live import serve_asgi
from tests.processes import free_port

REQUEST = GenerationRequest(
    prompt="a red bicycle leaning on a wall",
    negative_prompt="blurry",
    width=96,
    height=64,
    steps=6,
    guidance_scale=5.5,
    seed=1234,
    n=1,
    model=None,
    output_format="png",
)


def png(width: int, height: int, colour: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


# ----- pure: workflow selection and patching -----


def test_shipped_txt2img_workflow_is_patched_through_links_not_node_ids() -> None:
    # Renumber the shipped workflow so that fixed ids would point at the wrong nodes.
    shipped = wf.builtin("txt2img")
    renamed = {str(int(k) * 10 + 1): v for k, v in shipped.items()}
    text = json.dumps(renamed)
    for old in shipped:
        text = text.replace(f'["{old}", ', f'["{int(old) * 10 + 1}", ')
    workflow = json.loads(text)

    request = replace(REQUEST, n=3, sampler="dpmpp_2m", scheduler="karras")
    patched = wf.patch(workflow, request, checkpoint="sd_xl_base_1.0.safetensors", filename_prefix="gw/test")
    nodes = patched.workflow
    sampler = nodes[patched.sampler]["inputs"]
    assert nodes[patched.sampler]["class_type"] == "KSampler"
    assert (sampler["seed"], sampler["steps"], sampler["cfg"]) == (1234, 6, 5.5)
    assert (sampler["sampler_name"], sampler["scheduler"]) == ("dpmpp_2m", "karras")
    assert nodes[sampler["positive"][0]]["inputs"]["text"] == "a red bicycle leaning on a wall"
    assert nodes[sampler["negative"][0]]["inputs"]["text"] == "blurry"
    latent = nodes[sampler["latent_image"][0]]["inputs"]
    assert (latent["width"], latent["height"], latent["batch_size"]) == (96, 64, 3)
    assert nodes[patched.checkpoint_node or ""]["inputs"]["ckpt_name"] == "sd_xl_base_1.0.safetensors"
    assert [nodes[n]["inputs"]["filename_prefix"] for n in patched.outputs] == ["gw/test"]
    assert workflow == json.loads(text), "the template itself is left untouched"


def test_workflow_sampler_and_scheduler_are_kept_when_the_request_has_none() -> None:
    patched = wf.patch(wf.builtin("txt2img"), REQUEST, checkpoint=None, filename_prefix="gw")
    sampler = patched.workflow[patched.sampler]["inputs"]
    assert (sampler["sampler_name"], sampler["scheduler"]) == ("euler", "normal")
    assert patched.checkpoint == "sd_xl_base_1.0.safetensors"  # the workflow's own, untouched


def test_prompt_encoders_are_found_through_intermediate_conditioning_nodes() -> None:
    workflow = wf.builtin("txt2img")
    workflow["20"] = {
        "class_type": "ConditioningCombine",
        "inputs": {"conditioning_1": ["6", 0], "conditioning_2": ["6", 0]},
    }
    workflow["3"]["inputs"]["positive"] = ["20", 0]
    patched = wf.patch(workflow, REQUEST, checkpoint=None, filename_prefix="gw")
    assert patched.workflow["6"]["inputs"]["text"] == REQUEST.prompt
    assert patched.workflow["7"]["inputs"]["text"] == REQUEST.negative_prompt


@pytest.mark.parametrize(
    ("remove", "message"),
    [("9", "no SaveImage"), ("5", "no EmptyLatentImage"), ("3", "no KSampler"), ("7", "negative")],
    ids=["save", "latent", "sampler", "negative-encoder"],
)
def test_a_workflow_missing_a_needed_node_is_rejected_with_its_name(remove: str, message: str) -> None:
    workflow = wf.builtin("txt2img")
    del workflow[remove]
    with pytest.raises(BackendError) as caught:
        wf.patch(workflow, REQUEST, checkpoint=None, filename_prefix="gw")
    assert caught.value.code == BACKEND_REJECTED and not caught.value.retryable
    assert message in caught.value.message


def test_img2img_patch_points_load_image_at_the_upload_and_batches_with_repeat_latent() -> None:
    request = replace(REQUEST, n=2, init_image=b"x", denoising_strength=0.4)
    patched = wf.patch(wf.builtin("img2img"), request, checkpoint=None, filename_prefix="gw", init_image="up.png")
    nodes = patched.workflow
    assert nodes[patched.load_image or ""]["inputs"]["image"] == "up.png"
    sampler = nodes[patched.sampler]["inputs"]
    assert sampler["denoise"] == 0.4
    repeat = nodes[sampler["latent_image"][0]]
    assert repeat["class_type"] == "RepeatLatentBatch" and repeat["inputs"]["amount"] == 2
    assert nodes[repeat["inputs"]["samples"][0]]["class_type"] == "VAEEncode"


def test_an_inpainting_workflow_gets_the_mask_in_its_load_image_mask_node() -> None:
    workflow = wf.builtin("img2img")
    workflow["30"] = {"class_type": "LoadImageMask", "inputs": {"image": "mask.png", "channel": "alpha"}}
    workflow["31"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["2", 0], "mask": ["30", 0]}}
    workflow["3"]["inputs"]["latent_image"] = ["31", 0]
    request = replace(REQUEST, init_image=b"x", mask=b"m")
    patched = wf.patch(workflow, request, checkpoint=None, filename_prefix="gw", init_image="in.png", mask="m.png")
    assert patched.workflow["30"]["inputs"] == {"image": "m.png", "channel": "red"}
    assert patched.workflow[patched.load_image or ""]["inputs"]["image"] == "in.png"
    chosen, _ = wf.select({"inpaint:*": workflow}, None, "inpaint")
    assert chosen == workflow


def test_a_mask_without_an_inpainting_workflow_is_rejected() -> None:
    with pytest.raises(BackendError, match="inpainting workflow") as caught:
        wf.select({}, None, "inpaint")
    assert caught.value.code == BACKEND_REJECTED


def test_configured_workflows_are_chosen_by_model_then_default() -> None:
    special, default = wf.builtin("txt2img"), wf.builtin("txt2img")
    special["9"]["inputs"]["filename_prefix"] = "special"
    workflows = {"flux": special, "*": json.dumps(default)}
    chosen, specific = wf.select(workflows, "flux", "txt2img")
    assert specific and chosen["9"]["inputs"]["filename_prefix"] == "special"
    chosen, specific = wf.select(workflows, "sdxl", "txt2img")
    assert not specific and chosen == default
    assert wf.select({}, "sdxl", "img2img")[0] == wf.builtin("img2img")


def test_a_ui_format_workflow_is_rejected_with_a_hint() -> None:
    with pytest.raises(BackendError, match="Save \\(API\\)"):
        wf.select({"*": {"nodes": [], "links": []}}, None, "txt2img")


def test_checkpoint_names_read_both_object_info_forms() -> None:
    legacy = {"CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["a.safetensors", "b.ckpt"], {}]}}}}
    combo = {
        "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": ["COMBO", {"options": ["c.safetensors"]}]}}}
    }
    assert wf.checkpoint_names(legacy) == ["a.safetensors", "b.ckpt"]
    assert wf.checkpoint_names(combo) == ["c.safetensors"]
    assert [wf.model_name(n) for n in ("sd_xl_base_1.0.safetensors", "SDXL/juggernaut.ckpt", "plain")] == [
        "sd_xl_base_1.0",
        "juggernaut",
        "plain",
    ]


def test_adjust_rounds_sizes_to_multiples_of_8_and_maps_a1111_sampler_names() -> None:
    adapter = ComfyUIAdapter(BackendSpec(name="c", kind="comfyui", url="http://127.0.0.1:9"))
    adjusted, notes = adapter.adjust(replace(REQUEST, width=100, height=61, sampler="DPM++ 2M Karras"))
    assert (adjusted.width, adjusted.height) == (104, 64)
    assert (adjusted.sampler, adjusted.scheduler) == ("dpmpp_2m", "karras")
    assert len(notes) == 2


# ----- against the emulator -----

FAST = {"step_ms": 20.0, "load_ms": 5.0}
MODELS = ["sd_xl_base_1.0", "dreamshaper_8"]


def emulator(**options: Any) -> Any:
    from gateway.emulators.comfyui import create_app

    return create_app(EmulatorOptions(**{"models": MODELS, **FAST, **options}))


@asynccontextmanager
async def comfy(
    app: Any = None, *, auth: BackendAuth | None = None, **options: Any
) -> AsyncIterator[tuple[ComfyUIAdapter, str]]:
    """A served emulator (or ``app``) and an adapter on it; the adapter is closed afterwards."""
    async with serve_asgi(app if app is not None else emulator()) as url:
        spec = BackendSpec(name="comfy", kind="comfyui", url=url, auth=auth or BackendAuth(), options=options)
        adapter = ComfyUIAdapter(spec)
        try:
            yield adapter, url
        finally:
            await adapter.aclose()


async def no_progress(value: float) -> None:
    return None


class Progress:
    """A progress callback that records what it is told."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.started = asyncio.Event()

    async def __call__(self, value: float) -> None:
        self.values.append(value)
        self.started.set()


def ws_proxy(app: Any, mode: str, after: int = 0) -> Any:
    """The app behind a proxy that mishandles websockets: ``refuse`` the upgrade, ``cut`` each one after ``after``
    server messages, or ``mute`` it (accepted, nothing delivered)."""

    async def wrapper(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "websocket":
            await app(scope, receive, send)
            return
        if mode == "refuse":
            await receive()
            await send({"type": "websocket.close", "code": 1008})
            return
        sent = 0

        async def filtered(message: dict[str, Any]) -> None:
            nonlocal sent
            if message["type"] == "websocket.send":
                sent += 1
                if mode == "cut" and sent == after + 1:
                    await send({"type": "websocket.close", "code": 1011})
                if sent > after:
                    return
            await send(message)

        await app(scope, receive, filtered)

    return wrapper


async def test_txt2img_returns_n_real_pngs_of_the_requested_size_all_with_the_ksampler_seed() -> None:
    async with comfy() as (adapter, _):
        images = await adapter.generate(replace(REQUEST, n=3), no_progress)
    assert len(images) == 3
    assert [(i.width, i.height, i.format) for i in images] == [(96, 64, "png")] * 3
    assert all(size_of(i.data) == (96, 64) for i in images)
    assert {i.seed for i in images} == {REQUEST.seed}
    assert len({i.data for i in images}) == 3


async def test_img2img_uploads_the_init_image_and_returns_the_requested_size() -> None:
    app = emulator()
    async with comfy(app) as (adapter, url):
        request = replace(REQUEST, init_image=png(50, 40), denoising_strength=0.5)
        images = await adapter.generate(request, no_progress)
        async with httpx.AsyncClient(base_url=url) as client:
            queue_history = (await client.get("/history")).json()
    assert [(i.width, i.height) for i in images] == [(96, 64)]
    [entry] = queue_history.values()
    workflow = entry["prompt"][2]
    [loader] = [n for n in workflow.values() if n["class_type"] == "LoadImage"]
    assert loader["inputs"]["image"].startswith("imagegate-")
    assert app.state.comfy.files.get("input", "", loader["inputs"]["image"]) is not None


async def test_probe_lists_checkpoints_without_extension_and_reports_the_model_last_run() -> None:
    async with comfy() as (adapter, _):
        first = await adapter.probe()
        await adapter.generate(replace(REQUEST, model="dreamshaper_8"), no_progress)
        second = await adapter.probe()
    assert first.models == sorted(MODELS)
    assert first.loaded_model is None
    assert second.loaded_model == "dreamshaper_8"


async def test_switching_models_patches_the_checkpoint_file_the_server_lists() -> None:
    app = emulator()
    async with comfy(app) as (adapter, _):
        await adapter.generate(replace(REQUEST, model="sd_xl_base_1.0"), no_progress)
        assert app.state.comfy.gpu.loaded_model == "sd_xl_base_1.0.safetensors"
        await adapter.generate(replace(REQUEST, model="dreamshaper_8"), no_progress)
        assert app.state.comfy.gpu.loaded_model == "dreamshaper_8.safetensors"
        # No model: the backend's default is what it ran last (no needless checkpoint switch).
        await adapter.generate(REQUEST, no_progress)
        assert app.state.comfy.gpu.loaded_model == "dreamshaper_8.safetensors"


async def test_progress_rises_over_the_websocket_and_ends_at_one() -> None:
    progress = Progress()
    async with comfy(emulator(step_ms=3000.0)) as (adapter, _):  # 64x64: ~12 ms per step
        await adapter.generate(replace(REQUEST, width=64, height=64, steps=12), progress)
    assert len(progress.values) >= 5
    assert progress.values == sorted(progress.values) and len(set(progress.values)) == len(progress.values)
    assert progress.values[-1] == 1.0 and progress.values[-2] < 1.0


async def test_without_a_websocket_the_adapter_polls_history() -> None:
    progress = Progress()
    async with comfy(ws_proxy(emulator(), "refuse"), poll_seconds=0.05) as (adapter, _):
        images = await adapter.generate(replace(REQUEST, n=2), progress)
    assert len(images) == 2 and progress.values == [1.0]  # no step progress without the websocket


async def test_websocket_disabled_by_option_polls_history() -> None:
    async with comfy(websocket=False, poll_seconds=0.05) as (adapter, _):
        images = await adapter.generate(REQUEST, no_progress)
    assert [(i.width, i.height) for i in images] == [(96, 64)]


async def test_a_websocket_dropped_mid_run_falls_back_to_polling_history() -> None:
    progress = Progress()
    app = ws_proxy(emulator(step_ms=3000.0), "cut", after=14)
    async with comfy(app, poll_seconds=0.05) as (adapter, _):
        images = await adapter.generate(replace(REQUEST, width=64, height=64, steps=20), progress)
    assert len(images) == 1
    assert progress.values[-1] == 1.0 and 2 <= len(progress.values) < 10 and progress.values[-2] < 0.5, (
        "some step progress, then none until the end"
    )


async def test_a_silent_websocket_does_not_hang_the_prompt_history_is_checked() -> None:
    async with comfy(ws_proxy(emulator(), "mute"), ws_silence_seconds=0.2) as (adapter, _):
        images = await asyncio.wait_for(adapter.generate(REQUEST, no_progress), 5)
    assert len(images) == 1


async def _queue(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url) as client:
        answer: dict[str, Any] = (await client.get("/queue")).json()
        return answer


async def test_cancel_interrupts_the_running_prompt_on_the_server() -> None:
    progress = Progress()
    app = emulator(step_ms=40000.0)  # 64x64, 40 steps: ~6 s if not interrupted
    async with comfy(app) as (adapter, url):
        task = asyncio.create_task(adapter.generate(replace(REQUEST, width=64, height=64, steps=40), progress))
        await asyncio.wait_for(progress.started.wait(), 5)
        loop = asyncio.get_running_loop()
        began = loop.time()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        while (await _queue(url))["queue_running"]:
            await asyncio.sleep(0.02)
        assert loop.time() - began < 2.0
        [entry] = app.state.comfy.queue.history.values()
    assert entry["status"]["status_str"] == "error"
    assert "execution_interrupted" in [m[0] for m in entry["status"]["messages"]]


async def test_cancel_of_a_pending_prompt_deletes_it_from_the_queue() -> None:
    app = emulator(step_ms=40000.0)
    async with comfy(app) as (first, url):
        second = ComfyUIAdapter(replace(first.spec, name="comfy-2"))
        slow = replace(REQUEST, width=64, height=64, steps=40)
        running = asyncio.create_task(first.generate(slow, no_progress))
        while not (await _queue(url))["queue_running"]:
            await asyncio.sleep(0.02)
        pending = asyncio.create_task(second.generate(replace(slow, prompt="another"), no_progress))
        while not (await _queue(url))["queue_pending"]:
            await asyncio.sleep(0.02)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        queue = await _queue(url)
        assert queue["queue_pending"] == [] and len(queue["queue_running"]) == 1, "the running prompt is not touched"
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        await second.aclose()


async def test_interrupted_by_someone_else_is_a_retryable_interrupted_error() -> None:
    progress = Progress()
    async with comfy(emulator(step_ms=40000.0)) as (adapter, url):
        task = asyncio.create_task(adapter.generate(replace(REQUEST, width=64, height=64, steps=40), progress))
        await asyncio.wait_for(progress.started.wait(), 5)
        async with httpx.AsyncClient(base_url=url) as client:
            await client.post("/interrupt")
        with pytest.raises(BackendError) as caught:
            await task
    assert caught.value.code == "interrupted" and caught.value.retryable


async def test_node_errors_become_backend_rejected_naming_the_node() -> None:
    async with comfy() as (adapter, _):
        with pytest.raises(BackendError) as caught:
            await adapter.generate(replace(REQUEST, model="no_such_model"), no_progress)
    assert caught.value.code == BACKEND_REJECTED and not caught.value.retryable
    assert "node 4 (CheckpointLoaderSimple)" in caught.value.message
    assert "no_such_model" in caught.value.message


async def test_cuda_oom_during_execution_is_out_of_memory() -> None:
    async with comfy(emulator(fail_rate=1.0)) as (adapter, _):
        with pytest.raises(BackendError) as caught:
            await adapter.generate(REQUEST, no_progress)
    assert caught.value.code == OUT_OF_MEMORY and not caught.value.retryable
    assert "KSampler" in caught.value.message


async def test_basic_auth_with_the_right_password_works_over_http_and_websocket() -> None:
    progress = Progress()
    auth = BackendAuth(kind="basic", username="gw", password="s3cret")
    async with comfy(emulator(auth="gw:s3cret", step_ms=3000.0), auth=auth) as (adapter, _):
        assert (await adapter.probe()).models == sorted(MODELS)
        images = await adapter.generate(replace(REQUEST, width=64, height=64, steps=8), progress)
    assert len(images) == 1 and len(progress.values) > 2, "step progress arrived, so the websocket was authenticated"


async def test_basic_auth_with_a_wrong_password_is_backend_auth_failed() -> None:
    auth = BackendAuth(kind="basic", username="gw", password="wrong")
    async with comfy(emulator(auth="gw:s3cret"), auth=auth) as (adapter, _):
        with pytest.raises(BackendError) as probe_error:
            await adapter.probe()
        with pytest.raises(BackendError) as generate_error:
            await adapter.generate(REQUEST, no_progress)
    for caught in (probe_error, generate_error):
        assert caught.value.code == BACKEND_AUTH and caught.value.retryable


async def test_an_unreachable_server_is_backend_unavailable_and_retryable() -> None:
    adapter = ComfyUIAdapter(BackendSpec(name="gone", kind="comfyui", url=f"http://127.0.0.1:{free_port()}"))
    for call in (adapter.probe(), adapter.generate(REQUEST, no_progress)):
        with pytest.raises(BackendError) as caught:
            await call
        assert caught.value.code == BACKEND_UNAVAILABLE and caught.value.retryable
    await adapter.aclose()


async def test_img2img_with_n_images_batches_the_encoded_latent() -> None:
    async with comfy() as (adapter, _):
        images = await adapter.generate(replace(REQUEST, n=2, init_image=png(40, 40)), no_progress)
    assert len(images) == 2
