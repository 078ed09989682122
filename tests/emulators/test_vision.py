"""The GLM-4.6V-Flash-WEB emulator answers like the seed 001 REST API (reference section 5)."""

from __future__ import annotations

import base64
import contextlib
import io
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI, Response
from PIL import Image

from gateway.emulators.core import EmulatorOptions
from gateway.emulators.vision import create_app
from tests.live import serve_asgi

DESCRIBE = "Describe this image."
TAGS = "Describe the image in one sentence, then give a line 'Tags:' with a few comma-separated tags."


@contextlib.asynccontextmanager
async def emulator(**options: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(EmulatorOptions(**{"step_ms": 2.0, **options}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emu", timeout=30) as client:
        yield client


def png(size: tuple[int, int], colour: Any) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


async def ask(client: httpx.AsyncClient, image: str, prompt: str = DESCRIBE, **extra: Any) -> httpx.Response:
    return await client.post("/v1/multimodal/completions", json={"image": image, "prompt": prompt, **extra})


def content(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    text: str = response.json()["choices"][0]["message"]["content"]
    return text


async def test_health_reports_the_model_and_device() -> None:
    async with emulator() as client:
        response = await client.get("/health")
    assert response.json() == {"status": "healthy", "model": "GLM-4.6V-Flash", "device": "cuda:0"}


async def test_completion_has_the_reference_shape() -> None:
    async with emulator() as client:
        body = (await ask(client, data_url(png((64, 64), "red")))).json()
    assert re.fullmatch(r"cmpl-[a-z0-9]+", body["id"])
    assert (body["object"], body["model"], isinstance(body["created"], int)) == (
        "multimodal.completion",
        "GLM-4.6V-Flash",
        True,
    )
    assert body["choices"][0]["index"] == 0 and body["choices"][0]["message"]["role"] == "assistant"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


async def test_answer_describes_size_orientation_and_dominant_colour() -> None:
    async with emulator() as client:
        landscape = content(await ask(client, data_url(png((640, 480), (220, 20, 20)))))
        portrait = content(await ask(client, data_url(png((300, 600), (20, 40, 220)))))
    assert "640x480" in landscape and "landscape" in landscape and "red" in landscape
    assert "300x600" in portrait and "portrait" in portrait and "blue" in portrait


async def test_answer_describes_brightness() -> None:
    async with emulator() as client:
        dark = content(await ask(client, data_url(png((64, 64), (10, 10, 12)))))
        bright = content(await ask(client, data_url(png((64, 64), (250, 250, 250)))))
    assert "dark" in dark and "black" in dark
    assert "bright" in bright and "white" in bright


async def test_answer_is_deterministic_for_one_image_and_prompt() -> None:
    image = data_url(png((96, 64), (30, 160, 60)))
    async with emulator() as client:
        answers = {content(await ask(client, image)) for _ in range(2)}
    assert len(answers) == 1


async def test_tag_prompt_gets_a_caption_then_three_to_eight_lower_case_tags() -> None:
    async with emulator() as client:
        text = content(await ask(client, data_url(png((256, 128), (240, 200, 20))), TAGS))
    caption, tags_line = text.split("\n")
    assert caption.endswith(".") and caption.count(". ") == 0
    assert tags_line.startswith("Tags: ")
    tags = tags_line.removeprefix("Tags: ").split(", ")
    assert 3 <= len(tags) <= 8 and all(tag == tag.lower() for tag in tags) and "yellow" in tags


async def test_chinese_prompt_gets_a_chinese_answer() -> None:
    async with emulator() as client:
        text = content(await ask(client, data_url(png((64, 64), "red")), "请描述这张图片"))
    assert "红色" in text and "正方形" in text


async def test_max_new_tokens_truncates_the_answer() -> None:
    image = data_url(png((64, 64), "red"))
    async with emulator() as client:
        full = (await ask(client, image)).json()
        short = (await ask(client, image, max_new_tokens=5)).json()
    assert short["usage"]["completion_tokens"] == 5 < full["usage"]["completion_tokens"]
    assert full["choices"][0]["message"]["content"].startswith(short["choices"][0]["message"]["content"])


async def test_bare_base64_without_a_data_url_prefix_is_accepted() -> None:
    async with emulator() as client:
        text = content(await ask(client, base64.b64encode(png((50, 40), "red")).decode()))
    assert "50x40" in text


async def test_missing_or_empty_image_is_400_with_the_seed_detail() -> None:
    async with emulator() as client:
        missing = await client.post("/v1/multimodal/completions", json={"prompt": DESCRIBE})
        empty = await ask(client, "")
    assert missing.status_code == empty.status_code == 400
    assert missing.json() == empty.json() == {"detail": "image字段必须为非空字符串"}


async def test_image_over_10_mb_is_400() -> None:
    async with emulator() as client:
        response = await ask(client, "data:image/png;base64," + "A" * (10 * 1024 * 1024 + 1))
    assert (response.status_code, response.json()) == (400, {"detail": "图片大小不能超过10MB"})


async def test_undecodable_image_is_400() -> None:
    async with emulator() as client:
        response = await ask(client, data_url(b"this is not an image"))
    assert response.status_code == 400 and response.json()["detail"].startswith("图片解码失败")


async def test_non_loopback_image_url_is_refused_without_fetching() -> None:
    async with emulator() as client:
        response = await ask(client, "https://example.com/photo.jpg")
    assert response.status_code == 400 and "loopback" in response.json()["detail"]


async def test_loopback_image_url_is_fetched() -> None:
    images = FastAPI()

    @images.get("/photo.png")
    async def photo() -> Response:
        return Response(png((120, 80), "red"), media_type="image/png")

    async with serve_asgi(images) as base, emulator() as client:
        text = content(await ask(client, f"{base}/photo.png"))
    assert "120x80" in text and "red" in text


async def test_missing_prompt_is_a_422_validation_error() -> None:
    async with emulator() as client:
        response = await client.post("/v1/multimodal/completions", json={"image": data_url(png((8, 8), "red"))})
    assert response.status_code == 422


async def test_fail_rate_makes_completions_fail_with_a_plain_500() -> None:
    async with emulator(fail_rate=1.0) as client:
        response = await ask(client, data_url(png((32, 32), "red")))
    assert (response.status_code, response.text) == (500, "Internal Server Error")


async def test_with_auth_it_sits_behind_http_basic_like_a_proxied_service() -> None:
    async with emulator(auth="gw:s3cret") as client:
        anonymous = await client.get("/health")
        right = await client.get("/health", auth=("gw", "s3cret"))
    assert (anonymous.status_code, right.status_code) == (401, 200)
    assert right.json()["status"] == "healthy"
