"""The Z-Image-Turbo emulator answers like the seed 003 FastAPI service (reference section 3)."""

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

from gateway.emulators.core import EmulatorOptions
from gateway.emulators.zimage import create_app

SMALL = {"prompt": "一只橘猫坐在窗台晒太阳", "width": 128, "height": 64}


@contextlib.asynccontextmanager
async def emulator(**options: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(EmulatorOptions(**{"step_ms": 5.0, **options}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emu", timeout=30) as client:
        yield client


def decode(image: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(image)))


async def test_generate_answers_a_bare_base64_png_of_the_requested_size() -> None:
    async with emulator() as client:
        response = await client.post("/v1/generate", json=SMALL)
    body = response.json()
    assert response.status_code == 200 and set(body) == {"image"}
    image = decode(body["image"])
    assert (image.format, image.size) == ("PNG", (128, 64))


async def test_openapi_documents_the_seed_fields_and_their_defaults() -> None:
    async with emulator() as client:
        schema = (await client.get("/openapi.json")).json()
        docs = await client.get("/docs")
    fields = schema["components"]["schemas"]["GenerateRequest"]["properties"]
    defaults = {name: fields[name].get("default") for name in fields}
    assert defaults == {
        "prompt": None,
        "negative_prompt": "",
        "width": 1024,
        "height": 1024,
        "num_inference_steps": 8,
        "guidance_scale": 0.0,
        "seed": None,
        "output_format": "png",
    }
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


async def test_jpeg_output_format_returns_a_jpeg() -> None:
    async with emulator() as client:
        body = (await client.post("/v1/generate", json={**SMALL, "output_format": "jpeg"})).json()
    assert decode(body["image"]).format == "JPEG"


async def test_webp_is_400_not_supported() -> None:
    async with emulator() as client:
        response = await client.post("/v1/generate", json={**SMALL, "output_format": "webp"})
    assert (response.status_code, response.json()) == (400, {"detail": "webp not supported"})


async def test_width_not_a_multiple_of_64_is_a_422_validation_error() -> None:
    async with emulator() as client:
        response = await client.post("/v1/generate", json={**SMALL, "width": 1000})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert (error["loc"], error["type"]) == (["body", "width"], "value_error") and "multiple of 64" in error["msg"]


async def test_missing_prompt_is_a_422_validation_error() -> None:
    async with emulator() as client:
        response = await client.post("/v1/generate", json={"width": 64, "height": 64})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "prompt"]


async def test_non_zero_guidance_scale_answers_an_empty_image() -> None:
    async with emulator() as client:
        response = await client.post("/v1/generate", json={**SMALL, "guidance_scale": 3.5})
    assert (response.status_code, response.json()) == (200, {"image": ""})


async def test_the_same_seed_gives_the_same_image_and_another_seed_another() -> None:
    async with emulator() as client:
        images = [(await client.post("/v1/generate", json={**SMALL, "seed": s})).json()["image"] for s in (7, 7, 8)]
    assert images[0] == images[1] != images[2]


async def test_nine_steps_cost_eight_dit_forwards() -> None:
    async def timed(client: httpx.AsyncClient, steps: int) -> float:
        started = time.monotonic()
        await client.post("/v1/generate", json={**SMALL, "width": 256, "height": 256, "num_inference_steps": steps})
        return time.monotonic() - started

    async with emulator(step_ms=800.0) as client:  # one forward at 256x256: 50 ms
        await timed(client, 2)  # warm up
        nine, five = await timed(client, 9), await timed(client, 5)
    assert nine >= 0.4 and five >= 0.2  # 8 forwards against 4
    assert 0.12 < nine - five < 0.32


async def test_concurrent_requests_wait_for_the_gpu_slot() -> None:
    async with emulator(step_ms=800.0) as client:
        body = {**SMALL, "width": 256, "height": 256, "num_inference_steps": 5}
        started = time.monotonic()
        responses = await asyncio.gather(*(client.post("/v1/generate", json=body) for _ in range(2)))
        elapsed = time.monotonic() - started
    assert [r.status_code for r in responses] == [200, 200] and elapsed >= 0.38


async def test_fail_rate_one_is_500_internal_server_error_like_a_cuda_oom() -> None:
    async with emulator(fail_rate=1.0) as client:
        response = await client.post("/v1/generate", json=SMALL)
    assert (response.status_code, response.json()) == (500, {"detail": "Internal Server Error"})


async def test_with_auth_it_sits_behind_http_basic_like_a_proxied_service() -> None:
    async with emulator(auth="gw:s3cret") as client:
        anonymous = await client.post("/v1/generate", json=SMALL)
        wrong = await client.post("/v1/generate", json=SMALL, auth=("gw", "nope"))
        right = await client.post("/v1/generate", json=SMALL, auth=("gw", "s3cret"))
    assert (anonymous.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
    assert anonymous.headers["www-authenticate"].startswith("Basic ")
    assert decode(right.json()["image"]).size == (128, 64)
