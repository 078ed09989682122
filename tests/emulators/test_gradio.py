"""The GLM-Image WebUI emulator answers as reference section 4 (and upstream gradio routes.py) say."""

from __future__ import annotations

import io
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse
from PIL import Image

from gateway.emulators.core import EmulatorOptions
from gateway.emulators.gradio import create_app
from tests.live import serve_asgi

# prompt, negative_prompt, width, height, steps, guidance_scale, seed (seed 002's order)
DATA = ["a lighthouse at dawn", "blurry", 256, 192, 10, 1.5, 42]
FILE_KEYS = {"path", "url", "size", "orig_name", "mime_type", "meta"}


def client_for(**options: Any) -> httpx.AsyncClient:
    app = create_app(EmulatorOptions(**{"step_ms": 20, **options}))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emu", timeout=10)


@pytest.fixture
async def live(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    """A WebUI on a real port (for the queue workers and SSE)."""
    app = create_app(EmulatorOptions(**{"step_ms": 20, **getattr(request, "param", {})}))
    async with serve_asgi(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        yield client


async def sse_events(client: httpx.AsyncClient, path: str) -> list[tuple[str, Any]]:
    async with aconnect_sse(client, "GET", path) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        return [(event.event, json.loads(event.data)) async for event in source.aiter_sse()]


async def test_legacy_api_predict_returns_filedata_and_durations() -> None:
    async with client_for() as client:
        response = await client.post("/api/predict", json={"data": DATA})
    assert response.status_code == 200
    body = response.json()
    assert {"data", "is_generating", "duration", "average_duration"} <= set(body)
    assert body["is_generating"] is False and body["duration"] > 0 and body["average_duration"] > 0
    (image,) = body["data"]
    assert set(image) >= FILE_KEYS and image["meta"] == {"_type": "gradio.FileData"}
    assert image["path"].endswith("/image.webp") and image["url"] == f"http://emu/file={image['path']}"


async def test_run_route_and_fn_index_work_under_the_gradio5_prefix() -> None:
    async with client_for() as client:
        by_name = await client.post("/gradio_api/run/predict", json={"data": DATA})
        by_index = await client.post("/gradio_api/api/anything", json={"data": DATA, "fn_index": 0})
    for response in (by_name, by_index):
        assert response.status_code == 200
        image = response.json()["data"][0]
        assert image["url"] == f"http://emu/gradio_api/file={image['path']}"


async def test_file_routes_serve_a_webp_of_the_requested_size() -> None:
    async with client_for() as client:
        image = (await client.post("/run/predict", json={"data": DATA})).json()["data"][0]
        for url in (image["url"], f"/gradio_api/file={image['path']}"):
            response = await client.get(url)
            assert response.status_code == 200 and response.headers["content-type"] == "image/webp"
            assert Image.open(io.BytesIO(response.content)).size == (256, 192)


async def test_a_path_gradio_did_not_create_is_forbidden() -> None:
    async with client_for() as client:
        response = await client.get("/gradio_api/file=/etc/passwd")
    assert response.status_code == 403
    assert response.json() == {"detail": "File not allowed: /etc/passwd."}


async def test_too_few_inputs_fail_with_gradios_message() -> None:
    async with client_for() as client:
        response = await client.post("/api/predict", json={"data": DATA[:3]})
    assert response.status_code == 500
    assert response.json()["error"].startswith(
        "An event handler (generate_image) didn't receive enough input values (needed: 7, got: 3)."
    )


async def test_size_that_is_not_a_multiple_of_32_fails_in_the_pipeline() -> None:
    async with client_for() as client:
        response = await client.post("/api/predict", json={"data": ["x", "", 1200, 1200, 30, 1.5, 1]})
    assert response.status_code == 500
    assert response.json() == {"error": "`height` and `width` have to be divisible by 32 but are 1200 and 1200."}


async def test_unknown_api_name_is_a_plain_500() -> None:
    async with client_for() as client:
        response = await client.post("/api/generate", json={"data": DATA})
    assert response.status_code == 500 and response.text == "Internal Server Error"


async def test_body_without_data_is_fastapis_422() -> None:
    async with client_for() as client:
        response = await client.post("/api/predict", json={"fn_index": 0})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "data"]


@pytest.mark.parametrize("live", [{"fail_rate": 1.0}], indirect=True)
async def test_fail_rate_one_makes_legacy_calls_fail_with_cuda_oom(live: httpx.AsyncClient) -> None:
    response = await live.post("/api/predict", json={"data": DATA})
    assert response.status_code == 500
    assert response.json()["error"].startswith("CUDA out of memory.")


async def test_call_gives_an_event_id_and_the_stream_completes_with_the_outputs(live: httpx.AsyncClient) -> None:
    posted = await live.post("/call/predict", json={"data": DATA})
    assert posted.status_code == 200 and set(posted.json()) == {"event_id"}
    events = await sse_events(live, f"/call/predict/{posted.json()['event_id']}")
    assert [kind for kind, _ in events] == ["complete"]
    (image,) = events[0][1]
    assert set(image) >= FILE_KEYS
    assert (await live.get(image["url"])).status_code == 200


async def test_gradio5_call_route_streams_the_same_way(live: httpx.AsyncClient) -> None:
    event_id = (await live.post("/gradio_api/call/predict", json={"data": DATA})).json()["event_id"]
    events = await sse_events(live, f"/gradio_api/call/predict/{event_id}")
    assert events[0][0] == "complete" and "/gradio_api/file=" in events[0][1][0]["url"]


@pytest.mark.parametrize("live", [{"fail_rate": 1.0}], indirect=True)
async def test_a_failing_call_streams_an_error_event_with_null_data(live: httpx.AsyncClient) -> None:
    event_id = (await live.post("/call/predict", json={"data": DATA})).json()["event_id"]
    assert await sse_events(live, f"/call/predict/{event_id}") == [("error", None)]


async def test_a_call_with_too_few_inputs_streams_an_error_event(live: httpx.AsyncClient) -> None:
    event_id = (await live.post("/call/predict", json={"data": ["only a prompt"]})).json()["event_id"]
    assert await sse_events(live, f"/call/predict/{event_id}") == [("error", None)]


async def test_unknown_event_id_streams_session_not_found(live: httpx.AsyncClient) -> None:
    assert await sse_events(live, "/call/predict/0123456789abcdef") == [("error", "404: Session not found.")]


async def test_queued_calls_run_one_at_a_time() -> None:
    expected = 0.3  # 15 steps x 1/16 MP x 320 ms per megapixel-step
    big = ["a", "", 256, 256, 15, 1.5, 1]
    app = create_app(EmulatorOptions(step_ms=320))
    async with serve_asgi(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        warm = (await client.post("/call/predict", json={"data": ["a", "", 64, 64, 1, 1.5, 1]})).json()["event_id"]
        await sse_events(client, f"/call/predict/{warm}")
        started = time.monotonic()
        ids = [(await client.post("/call/predict", json={"data": big})).json()["event_id"] for _ in range(2)]
        finished = []
        for event_id in ids:
            await sse_events(client, f"/call/predict/{event_id}")
            finished.append(time.monotonic() - started)
    assert finished[1] - finished[0] >= 0.9 * expected  # the second ran only after the first was done
    assert 2 * expected <= finished[1] < 2 * expected + 1.5


async def test_one_seed_still_gives_different_images() -> None:
    async with client_for() as client:
        paths = [(await client.post("/api/predict", json={"data": DATA})).json()["data"][0]["path"] for _ in range(2)]
    assert paths[0] != paths[1]  # GLM-Image's sampling varies even with a fixed seed (reference section 3)


async def test_info_describes_the_predict_endpoint_and_its_parameters() -> None:
    async with client_for() as client:
        plain, prefixed = (await client.get("/info")).json(), (await client.get("/gradio_api/info")).json()
    assert plain == prefixed
    endpoint = plain["named_endpoints"]["/predict"]
    names = [p["parameter_name"] for p in endpoint["parameters"]]
    assert names == ["prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "seed"]
    assert endpoint["returns"][0]["component"] == "Image"


async def test_config_has_the_version_and_the_one_dependency() -> None:
    async with client_for() as client:
        config = (await client.get("/config")).json()
    assert config["version"].startswith("5.") and config["api_prefix"] == "/gradio_api"
    (dependency,) = config["dependencies"]
    assert dependency["api_name"] == "predict" and len(dependency["inputs"]) == 7


async def test_auth_requires_http_basic_like_a_reverse_proxy() -> None:
    async with client_for(auth="crm:pw") as client:
        refused = await client.post("/api/predict", json={"data": DATA})
        allowed = await client.get("/config", auth=("crm", "pw"))
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
    assert allowed.status_code == 200
