"""The ComfyUI emulator answers as reference section 2 (and upstream server.py / execution.py) say."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from PIL import Image
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from gateway.emulators.comfyui import create_app
from gateway.emulators.core import EmulatorOptions
from tests.live import serve_asgi
from tests.processes import free_port

# The reference's minimal valid workflow (no checkpoint needed).
MINIMAL = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 16711680}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "gw"}},
}


def txt2img(
    *,
    text: str = "a red fox",
    seed: int = 1,
    steps: int = 8,
    width: int = 256,
    height: int = 256,
    batch: int = 1,
    ckpt: str = "sd_xl_base_1.0.safetensors",
) -> dict[str, Any]:
    """The classic text-to-image workflow a gateway patches."""
    sampler = {"seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}
    links = {"model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}},
        "3": {"class_type": "KSampler", "inputs": {**sampler, **links}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "gw"}},
    }


def asgi_client(**options: Any) -> httpx.AsyncClient:
    app = create_app(EmulatorOptions(**options))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emu")


class Comfy:
    """A live emulator: its HTTP client and websocket helpers."""

    def __init__(self, base: str, client: httpx.AsyncClient) -> None:
        self.base, self.http = base, client

    def ws(self, client_id: str, path: str = "/ws", **kwargs: Any) -> Any:
        return connect(self.base.replace("http://", "ws://") + f"{path}?clientId={client_id}", **kwargs)

    async def submit(self, prompt: dict[str, Any], client_id: str | None = None, **extra: Any) -> str:
        body: dict[str, Any] = {"prompt": prompt, **extra}
        if client_id:
            body["client_id"] = client_id
        response = await self.http.post("/prompt", json=body)
        assert response.status_code == 200, response.text
        return str(response.json()["prompt_id"])

    async def history(self, prompt_id: str, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = (await self.http.get(f"/history/{prompt_id}")).json()
            if prompt_id in entry:
                return dict(entry[prompt_id])
            await asyncio.sleep(0.02)
        raise AssertionError(f"{prompt_id} did not finish")


async def messages_until_done(ws: ClientConnection, prompt_id: str, timeout: float = 10) -> list[dict[str, Any]]:
    """Every text frame up to and including ``executing {node: null}`` of ``prompt_id``."""
    messages = []
    async with asyncio.timeout(timeout):
        while True:
            message = json.loads(await ws.recv())
            messages.append(message)
            data = message["data"]
            if message["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                return messages


@pytest.fixture
async def comfy(request: pytest.FixtureRequest) -> AsyncIterator[Comfy]:
    options = getattr(request, "param", {})
    app = create_app(EmulatorOptions(**{"step_ms": 20, "load_ms": 10, **options}))
    async with serve_asgi(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        yield Comfy(base, client)


async def test_every_route_is_also_served_under_api() -> None:
    async with asgi_client() as client:
        for path in ("/object_info/KSampler", "/prompt", "/queue", "/history", "/system_stats", "/models/checkpoints"):
            plain, api = await client.get(path), await client.get("/api" + path)
            assert plain.status_code == api.status_code == 200, path
            assert plain.json() == api.json(), path


async def test_object_info_lists_checkpoints_from_the_models_option() -> None:
    async with asgi_client(models=["sd_xl_base_1.0", "flux1-dev.safetensors"]) as client:
        info = (await client.get("/object_info/CheckpointLoaderSimple")).json()["CheckpointLoaderSimple"]
    assert info["input"]["required"]["ckpt_name"][0] == ["sd_xl_base_1.0.safetensors", "flux1-dev.safetensors"]
    fields = {"input", "input_order", "output", "output_is_list", "output_name", "name", "display_name"}
    assert fields | {"description", "category", "output_node"} <= set(info)
    assert info["output"] == ["MODEL", "CLIP", "VAE"] and info["output_node"] is False


async def test_object_info_has_every_required_node_and_an_unknown_class_gives_empty_object() -> None:
    async with asgi_client() as client:
        info = (await client.get("/object_info")).json()
        unknown = (await client.get("/object_info/NoSuchNode")).json()
    required = {"CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode", "VAEEncode"}
    required |= {"SaveImage", "PreviewImage", "LoadImage", "EmptyImage", "ImageInvert", "ImageScale", "ImageScaleBy"}
    assert required | {"ImageBatch"} <= set(info)
    assert info["KSampler"]["input_order"]["required"][:3] == ["model", "seed", "steps"]
    assert info["SaveImage"]["output_node"] is True and unknown == {}


async def test_prompt_without_prompt_key_is_no_prompt() -> None:
    async with asgi_client() as client:
        response = await client.post("/prompt", json={"client_id": "x"})
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "type": "no_prompt",
            "message": "No prompt provided",
            "details": "No prompt provided",
            "extra_info": {},
        },
        "node_errors": {},
    }


async def test_unknown_class_type_is_invalid_prompt() -> None:
    async with asgi_client() as client:
        response = await client.post("/prompt", json={"prompt": {**MINIMAL, "7": {"class_type": "Nope", "inputs": {}}}})
    assert response.status_code == 400
    assert response.json()["error"] == {
        "type": "invalid_prompt",
        "message": "Cannot execute because node Nope does not exist.",
        "details": "Node ID '#7'",
        "extra_info": {},
    }


async def test_workflow_without_output_node_is_prompt_no_outputs() -> None:
    async with asgi_client() as client:
        response = await client.post("/prompt", json={"prompt": {"1": MINIMAL["1"], "2": MINIMAL["2"]}})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "prompt_no_outputs"
    assert response.json()["node_errors"] == {}


async def test_missing_required_input_gives_node_errors_shaped_as_the_reference() -> None:
    prompt = {**MINIMAL, "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "gw"}}}
    async with asgi_client() as client:
        response = await client.post("/prompt", json={"prompt": prompt})
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": "Required input is missing: images",
            "extra_info": {},
        },
        "node_errors": {
            "3": {
                "errors": [
                    {
                        "type": "required_input_missing",
                        "message": "Required input is missing",
                        "details": "images",
                        "extra_info": {"input_name": "images"},
                    }
                ],
                "dependent_outputs": ["3"],
                "class_type": "SaveImage",
            }
        },
    }


async def test_checkpoint_not_in_list_is_value_not_in_list_on_the_loader() -> None:
    async with asgi_client() as client:
        response = await client.post("/prompt", json={"prompt": txt2img(ckpt="missing.safetensors")})
    assert response.status_code == 400
    errors = response.json()["node_errors"]["4"]
    assert errors["class_type"] == "CheckpointLoaderSimple" and errors["dependent_outputs"] == ["9"]
    assert errors["errors"][0]["type"] == "value_not_in_list"
    assert errors["errors"][0]["extra_info"]["received_value"] == "missing.safetensors"


async def test_bad_values_and_links_are_reported_per_input() -> None:
    prompt = txt2img()
    prompt["3"]["inputs"]["steps"] = 0
    prompt["3"]["inputs"]["cfg"] = "high"
    prompt["8"]["inputs"]["vae"] = ["4", 0]  # a MODEL where a VAE belongs
    async with asgi_client() as client:
        body = (await client.post("/prompt", json={"prompt": prompt})).json()
    kinds = {node: [e["type"] for e in entry["errors"]] for node, entry in body["node_errors"].items()}
    assert kinds == {"3": ["value_smaller_than_min", "invalid_input_type"], "8": ["return_type_mismatch"]}


async def test_link_to_a_missing_node_is_exception_during_validation() -> None:
    prompt = {**MINIMAL, "2": {"class_type": "ImageInvert", "inputs": {"image": ["99", 0]}}}
    async with asgi_client() as client:
        body = (await client.post("/prompt", json={"prompt": prompt})).json()
    assert body["node_errors"]["3"]["errors"][0]["type"] == "exception_during_validation"


async def test_a_prompt_with_one_valid_output_is_queued_with_the_others_in_node_errors(comfy: Comfy) -> None:
    broken = {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}
    response = await comfy.http.post("/prompt", json={"prompt": {**MINIMAL, "4": broken}, "prompt_id": "p1"})
    assert response.status_code == 200 and response.json()["prompt_id"] == "p1"
    assert response.json()["node_errors"]["4"]["errors"][0]["type"] == "required_input_missing"
    assert list((await comfy.history("p1"))["outputs"]) == ["3"]


async def test_accepted_prompt_answers_id_number_and_empty_node_errors(comfy: Comfy) -> None:
    given = str(uuid.uuid4())
    first = (await comfy.http.post("/prompt", json={"prompt": MINIMAL})).json()
    second = (await comfy.http.post("/api/prompt", json={"prompt": MINIMAL, "prompt_id": given})).json()
    assert set(first) == {"prompt_id", "number", "node_errors"} and first["node_errors"] == {}
    assert str(uuid.UUID(first["prompt_id"])) == first["prompt_id"]
    assert second["prompt_id"] == given and second["number"] == first["number"] + 1


async def test_websocket_sends_the_reference_sequence_with_moving_progress(comfy: Comfy) -> None:
    async with comfy.ws("cid") as ws:
        hello = json.loads(await ws.recv())
        prompt_id = await comfy.submit(txt2img(steps=12, width=512, height=512), "cid")
        messages = await messages_until_done(ws, prompt_id)
    assert hello == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "cid"}}
    kinds = [m["type"] for m in messages if m["type"] != "status"]
    assert kinds[:2] == ["execution_start", "execution_cached"]
    assert kinds[-3:] == ["executed", "execution_success", "executing"]
    progress = [m["data"] for m in messages if m["type"] == "progress"]
    assert [p["value"] for p in progress] == list(range(1, 13))
    assert {(p["max"], p["node"], p["prompt_id"]) for p in progress} == {(12, "3", prompt_id)}
    executing = [m["data"]["node"] for m in messages if m["type"] == "executing"]
    assert set(executing[:-1]) == {"3", "4", "5", "6", "7", "8", "9"} and executing[-1] is None
    executed = next(m["data"] for m in messages if m["type"] == "executed")
    assert executed["node"] == "9" and executed["output"]["images"][0]["type"] == "output"
    assert "timestamp" in next(m["data"] for m in messages if m["type"] == "execution_success")


async def test_prompt_messages_go_only_to_the_submitting_client(comfy: Comfy) -> None:
    async with comfy.ws("owner") as owner, comfy.ws("other", path="/api/ws") as other:
        await owner.recv(), await other.recv()
        prompt_id = await comfy.submit(MINIMAL, "owner")
        await messages_until_done(owner, prompt_id)
        await asyncio.sleep(0.05)
        seen = []
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                while True:
                    seen.append(json.loads(await other.recv())["type"])
    assert seen and set(seen) == {"status"}


async def test_history_and_view_give_real_images_of_the_latent_size(comfy: Comfy) -> None:
    prompt_id = await comfy.submit(txt2img(width=200, height=136, batch=2))
    entry = await comfy.history(prompt_id)
    assert entry["prompt"][:2] == [0, prompt_id] and entry["prompt"][4] == ["9"]
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached", "execution_success"]
    images = entry["outputs"]["9"]["images"]
    assert [i["filename"] for i in images] == ["gw_00001_.png", "gw_00002_.png"]
    for image in images:
        response = await comfy.http.get("/view", params=image)
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(response.content)).size == (200, 136)  # latent is width // 8 x height // 8


async def test_view_refuses_bad_names_escapes_unknown_types_and_missing_files() -> None:
    async with asgi_client() as client:
        cases = {
            "../secret.png": 400,
            "/etc/passwd": 400,
        }
        for name, status in cases.items():
            assert (await client.get("/view", params={"filename": name})).status_code == status
        assert (await client.get("/view", params={"filename": "a.png", "type": "models"})).status_code == 400
        assert (await client.get("/view", params={"filename": "a.png", "subfolder": "../../x"})).status_code == 403
        assert (await client.get("/view", params={"filename": "nope.png"})).status_code == 404
        example = await client.get("/view", params={"filename": "example.png", "type": "input"})
        assert example.status_code == 200 and example.content.startswith(b"\x89PNG")


async def test_two_prompts_run_one_after_the_other_taking_twice_as_long() -> None:
    expected = 0.3  # 10 steps x 1/4 MP x 120 ms per megapixel-step
    app = create_app(EmulatorOptions(step_ms=120, load_ms=0))
    async with serve_asgi(app) as base, httpx.AsyncClient(base_url=base) as client:
        live = Comfy(base, client)
        await live.history(await live.submit(txt2img(seed=1, steps=1, width=64, height=64)))  # warm up
        started = time.monotonic()
        ids = [await live.submit(txt2img(seed=seed, steps=10, width=512, height=512)) for seed in (2, 3)]
        one, two = [await live.history(prompt_id) for prompt_id in ids]
        both = time.monotonic() - started
    spans = [
        (e["status"]["messages"][0][1]["timestamp"], e["status"]["messages"][-1][1]["timestamp"]) for e in (one, two)
    ]
    assert all(end - start >= expected * 1000 * 0.95 for start, end in spans)
    assert spans[1][0] >= spans[0][1]  # the second starts once the first is done
    assert 2 * expected <= both < 2 * expected + 1.5


async def test_interrupt_stops_the_running_prompt(comfy: Comfy) -> None:
    async with comfy.ws("cid") as ws:
        await ws.recv()
        prompt_id = await comfy.submit(txt2img(steps=200, width=1024, height=1024), "cid")  # 4 s
        while json.loads(await ws.recv())["type"] != "progress":
            pass
        started = time.monotonic()
        response = await comfy.http.post("/interrupt")
        messages = await messages_until_done(ws, prompt_id)
    assert response.status_code == 200 and response.content == b""
    assert time.monotonic() - started < 1
    stopped = next(m["data"] for m in messages if m["type"] == "execution_interrupted")
    assert stopped["node_id"] == "3" and stopped["node_type"] == "KSampler" and stopped["prompt_id"] == prompt_id
    entry = await comfy.history(prompt_id)
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert entry["outputs"] == {}


async def test_interrupt_naming_another_prompt_leaves_the_running_one_alone(comfy: Comfy) -> None:
    prompt_id = await comfy.submit(txt2img(steps=10, width=1024, height=1024))  # 0.2 s
    await asyncio.sleep(0.05)
    await comfy.http.post("/interrupt", json={"prompt_id": "not-running"})
    assert (await comfy.history(prompt_id))["status"]["status_str"] == "success"


async def test_queue_shows_running_and_pending_and_delete_drops_a_pending_prompt(comfy: Comfy) -> None:
    running = await comfy.submit(txt2img(steps=100, width=1024, height=1024))  # 2 s
    pending = await comfy.submit(txt2img(seed=2))
    await asyncio.sleep(0.05)
    queue = (await comfy.http.get("/queue")).json()
    assert [row[1] for row in queue["queue_running"]] == [running]
    assert [row[1] for row in queue["queue_pending"]] == [pending] and len(queue["queue_pending"][0]) == 5
    assert (await comfy.http.get("/prompt")).json() == {"exec_info": {"queue_remaining": 2}}
    assert (await comfy.http.post("/queue", json={"delete": [pending]})).status_code == 200
    assert (await comfy.http.get("/queue")).json()["queue_pending"] == []
    await comfy.http.post("/interrupt")
    await comfy.history(running)
    assert (await comfy.http.get(f"/history/{pending}")).json() == {}


async def test_queue_clear_empties_the_pending_list(comfy: Comfy) -> None:
    running = await comfy.submit(txt2img(steps=100, width=1024, height=1024))
    for seed in (2, 3):
        await comfy.submit(txt2img(seed=seed))
    await comfy.http.post("/queue", json={"clear": True})
    assert (await comfy.http.get("/queue")).json()["queue_pending"] == []
    await comfy.http.post("/interrupt", json={"prompt_id": running})
    await comfy.history(running)


async def test_uploaded_image_is_used_by_load_image(comfy: Comfy) -> None:
    picture = io.BytesIO()
    Image.new("RGB", (40, 24), (10, 200, 30)).save(picture, format="PNG")
    files = {"image": ("green.png", picture.getvalue(), "image/png")}
    uploaded = (await comfy.http.post("/upload/image", files=files, data={"type": "input"})).json()
    assert uploaded == {"name": "green.png", "subfolder": "", "type": "input"}
    info = (await comfy.http.get("/object_info/LoadImage")).json()["LoadImage"]
    assert "green.png" in info["input"]["required"]["image"][0]
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "green.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv/out"}},
    }
    entry = await comfy.history(await comfy.submit(prompt))
    image = entry["outputs"]["3"]["images"][0]
    assert image == {"filename": "out_00001_.png", "subfolder": "inv", "type": "output"}
    saved = Image.open(io.BytesIO((await comfy.http.get("/view", params=image)).content)).convert("RGB")
    assert saved.size == (40, 24) and saved.getpixel((0, 0)) == (245, 55, 225)


async def test_upload_of_different_bytes_under_a_taken_name_is_renamed(comfy: Comfy) -> None:
    for content, expected in ((b"one", "a.png"), (b"one", "a.png"), (b"two", "a (1).png")):
        response = await comfy.http.post("/upload/image", files={"image": ("a.png", content, "image/png")})
        assert response.json()["name"] == expected
    assert (await comfy.http.post("/upload/image", data={"type": "input"})).status_code == 400


@pytest.mark.parametrize("comfy", [{"fail_rate": 1.0}], indirect=True)
async def test_fail_rate_one_reports_a_cuda_oom_execution_error(comfy: Comfy) -> None:
    async with comfy.ws("cid") as ws:
        await ws.recv()
        prompt_id = await comfy.submit(txt2img(), "cid")
        messages = await messages_until_done(ws, prompt_id)
    error = next(m["data"] for m in messages if m["type"] == "execution_error")
    fields = {"prompt_id", "node_id", "node_type", "executed", "exception_message", "exception_type", "traceback"}
    assert fields | {"current_inputs", "current_outputs", "timestamp"} == set(error)
    assert error["exception_type"] == "torch.OutOfMemoryError" and error["node_type"] == "KSampler"
    assert error["exception_message"].startswith("Allocation on device")
    entry = await comfy.history(prompt_id)
    assert entry["status"]["status_str"] == "error" and entry["status"]["messages"][-1][0] == "execution_error"


async def test_resubmitting_the_same_workflow_is_served_from_the_cache(comfy: Comfy) -> None:
    first = await comfy.history(await comfy.submit(txt2img()))
    async with comfy.ws("cid") as ws:
        await ws.recv()
        prompt_id = await comfy.submit(txt2img(), "cid")
        messages = await messages_until_done(ws, prompt_id)
    cached = next(m["data"]["nodes"] for m in messages if m["type"] == "execution_cached")
    assert sorted(cached) == ["3", "4", "5", "6", "7", "8", "9"]
    assert not [m for m in messages if m["type"] in ("progress", "executing") and m["data"]["node"] is not None]
    assert (await comfy.history(prompt_id))["outputs"] == first["outputs"]


async def test_switching_checkpoint_costs_load_time() -> None:
    app = create_app(EmulatorOptions(step_ms=1, load_ms=300))
    async with serve_asgi(app) as base, httpx.AsyncClient(base_url=base) as client:
        live, spent = Comfy(base, client), []
        sdxl, sd15 = "sd_xl_base_1.0.safetensors", "v1-5-pruned-emaonly.safetensors"
        for seed, ckpt in ((1, sdxl), (2, sdxl), (3, sd15)):
            started = time.monotonic()
            await live.history(await live.submit(txt2img(seed=seed, ckpt=ckpt)))
            spent.append(time.monotonic() - started)
    assert spent[0] > 0.3 and spent[1] < 0.25 and spent[2] > 0.3


async def test_history_delete_and_clear(comfy: Comfy) -> None:
    ids = [await comfy.submit(txt2img(seed=seed, width=64, height=64)) for seed in (1, 2, 3)]
    for prompt_id in ids:
        await comfy.history(prompt_id)
    assert list((await comfy.http.get("/history", params={"max_items": 2})).json()) == ids[1:]
    await comfy.http.post("/history", json={"delete": [ids[0]]})
    assert list((await comfy.http.get("/history")).json()) == ids[1:]
    await comfy.http.post("/api/history", json={"clear": True})
    assert (await comfy.http.get("/history")).json() == {}


@pytest.mark.parametrize("comfy", [{"auth": "alice:secret"}], indirect=True)
async def test_auth_requires_http_basic_on_every_route_and_the_websocket(comfy: Comfy) -> None:
    refused = await comfy.http.get("/object_info/KSampler")
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
    assert (await comfy.http.get("/prompt", auth=("alice", "wrong"))).status_code == 401
    assert (await comfy.http.get("/api/prompt", auth=("alice", "secret"))).status_code == 200
    with pytest.raises(InvalidStatus) as denied:
        async with comfy.ws("cid"):
            pass
    assert denied.value.response.status_code == 401
    token = base64.b64encode(b"alice:secret").decode()
    async with comfy.ws("cid", additional_headers={"Authorization": f"Basic {token}"}) as ws:
        assert json.loads(await ws.recv())["type"] == "status"


def test_cli_runs_the_emulator_as_a_process() -> None:
    port = free_port()
    command = [sys.executable, "-m", "gateway.cli", "emulate", "comfyui", "--port", str(port), "--step-ms", "2"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"the emulator exited with {proc.returncode}"
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/system_stats", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the emulator did not answer"
                time.sleep(0.1)
        assert response.status_code == 200 and response.json()["devices"][0]["type"] == "cuda"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
