"""The OpenAI Images emulator answers like the OpenAI API (reference section 6), also for the official client."""

from __future__ import annotations

import base64
import contextlib
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from PIL import Image

from gateway.emulators.core import EmulatorOptions
from gateway.emulators.openai import create_app
from tests.live import serve_asgi

KEY = "sk-emulator-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


@contextlib.asynccontextmanager
async def emulator(**options: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(EmulatorOptions(**{"step_ms": 2.0, "load_ms": 20.0, **options}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emu", timeout=30) as client:
        yield client


async def generate(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post("/v1/images/generations", json=body)


def decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def png(size: tuple[int, int], mode: str = "RGBA") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, (0, 0, 255, 0) if mode == "RGBA" else "blue").save(buffer, format="PNG")
    return buffer.getvalue()


async def test_generation_answers_created_and_data_items_with_b64_json() -> None:
    async with emulator() as client:
        body = (await generate(client, prompt="a red fox", size="256x256", response_format="b64_json")).json()
    assert isinstance(body["created"], int)
    [item] = body["data"]
    assert set(item) == {"b64_json", "url", "revised_prompt"} and item["url"] is None
    assert decode(item["b64_json"]).size == (256, 256)


async def test_default_model_is_dall_e_2_and_its_default_response_format_is_a_url_serving_the_image() -> None:
    app = create_app(EmulatorOptions(step_ms=2.0))
    async with serve_asgi(app) as base, httpx.AsyncClient(base_url=base) as client:
        body = (await client.post("/v1/images/generations", json={"prompt": "a fox", "size": "512x512"})).json()
        url = body["data"][0]["url"]
        fetched = await client.get(url)
    assert url.startswith(base) and body["data"][0]["b64_json"] is None
    assert fetched.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(fetched.content)).size == (512, 512)


async def test_n_images_are_returned() -> None:
    async with emulator() as client:
        body = (await generate(client, prompt="a fox", size="256x256", n=3, response_format="b64_json")).json()
    assert len(body["data"]) == 3 and len({item["b64_json"] for item in body["data"]}) == 3


async def test_gpt_image_returns_base64_with_usage_and_honours_output_format() -> None:
    async with emulator() as client:
        body = (await generate(client, prompt="a fox", model="gpt-image-1", quality="low", output_format="jpeg")).json()
    assert decode(body["data"][0]["b64_json"]).format == "JPEG"
    assert body["usage"]["output_tokens"] == 272 and body["size"] == "1024x1024"


async def test_gpt_image_refuses_response_format() -> None:
    async with emulator() as client:
        response = await generate(client, prompt="a fox", model="gpt-image-1", response_format="url")
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "Unknown parameter: 'response_format'.",
        "type": "invalid_request_error",
        "param": "response_format",
        "code": "unknown_parameter",
    }


async def test_dall_e_3_revises_the_prompt_and_allows_only_one_image() -> None:
    async with emulator() as client:
        one = (await generate(client, prompt="a fox", model="dall-e-3", response_format="b64_json")).json()
        two = await generate(client, prompt="a fox", model="dall-e-3", n=2)
    assert one["data"][0]["revised_prompt"] == "a fox"
    assert (two.status_code, two.json()["error"]["param"]) == (400, "n")


async def test_missing_prompt_is_400_missing_required_parameter() -> None:
    async with emulator() as client:
        response = await generate(client, size="256x256")
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "Missing required parameter: 'prompt'.",
            "type": "invalid_request_error",
            "param": "prompt",
            "code": "missing_required_parameter",
        }
    }


async def test_unsupported_size_is_400_naming_the_size_param() -> None:
    async with emulator() as client:
        response = await generate(client, prompt="a fox", size="1000x1000")
    error = response.json()["error"]
    assert (response.status_code, error["param"], error["code"]) == (400, "size", "invalid_value")
    assert "'256x256', '512x512', and '1024x1024'" in error["message"]


async def test_n_above_ten_is_400_integer_above_max_value() -> None:
    async with emulator() as client:
        response = await generate(client, prompt="a fox", n=11)
    assert (response.status_code, response.json()["error"]["code"]) == (400, "integer_above_max_value")


async def test_a_compatible_model_takes_any_wxh_size_and_is_the_default_when_served_alone() -> None:
    async with emulator(models=["z-image-turbo"]) as client:
        body = (await generate(client, prompt="a fox", size="768x512", response_format="b64_json")).json()
        listed = (await client.get("/v1/models")).json()
    assert decode(body["data"][0]["b64_json"]).size == (768, 512)
    assert listed["data"][0]["id"] == "z-image-turbo"


async def test_models_lists_model_objects() -> None:
    async with emulator() as client:
        body = (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["dall-e-2", "dall-e-3", "gpt-image-1"]
    assert all(set(m) == {"id", "object", "created", "owned_by"} and m["object"] == "model" for m in body["data"])


async def test_missing_key_is_401_when_auth_is_configured() -> None:
    async with emulator(auth=f"svc:{KEY}") as client:
        response = await generate(client, prompt="a fox")
    error = response.json()["error"]
    assert (response.status_code, error["type"], error["code"]) == (401, "invalid_request_error", None)
    assert error["message"].startswith("You didn't provide an API key.")


async def test_wrong_key_is_401_invalid_api_key() -> None:
    async with emulator(auth=f"svc:{KEY}") as client:
        wrong = await client.get("/v1/models", headers={"Authorization": "Bearer sk-wrong-000000000"})
        right = await client.get("/v1/models", headers=AUTH)
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "invalid_api_key")
    assert right.status_code == 200


async def test_edits_take_multipart_and_answer_the_requested_size() -> None:
    async with emulator() as client:
        response = await client.post(
            "/v1/images/edits",
            files={"image": ("in.png", png((64, 64)), "image/png")},
            data={"prompt": "add a cat", "size": "256x256", "response_format": "b64_json"},
        )
    assert response.status_code == 200 and decode(response.json()["data"][0]["b64_json"]).size == (256, 256)


async def test_edits_without_an_image_are_400_missing_required_parameter() -> None:
    async with emulator() as client:
        response = await client.post("/v1/images/edits", data={"prompt": "add a cat"}, files={"x": ("x", b"x")})
    assert (response.status_code, response.json()["error"]["param"]) == (400, "image")


async def test_unknown_route_is_404_invalid_url() -> None:
    async with emulator() as client:
        response = await client.post("/v1/images/variations-nope", json={})
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Invalid URL (POST /v1/images/variations-nope)"


async def test_fail_rate_one_is_500_server_error() -> None:
    async with emulator(fail_rate=1.0) as client:
        response = await generate(client, prompt="a fox", size="256x256")
    assert (response.status_code, response.json()["error"]["type"]) == (500, "server_error")


async def test_generation_time_grows_with_image_count_and_pixels() -> None:
    async def timed(client: httpx.AsyncClient, **body: Any) -> float:
        started = time.monotonic()
        await generate(client, prompt="a fox", response_format="b64_json", **body)
        return time.monotonic() - started

    async with emulator(step_ms=160.0, models=["local"]) as client:  # 256x256, 20 steps: 0.2 s
        await timed(client, size="64x64")  # warm up
        one = await timed(client, size="256x256")
        two = await timed(client, size="256x256", n=2)
        bigger = await timed(client, size="512x256")
    assert one >= 0.2 and two >= 0.4 and bigger >= 0.4
    assert 0.12 < two - one < 0.32 and 0.12 < bigger - one < 0.32  # the overhead of a call cancels out


async def test_the_official_openai_client_generates_edits_and_lists_models() -> None:
    app = create_app(EmulatorOptions(step_ms=2.0, auth=f"svc:{KEY}"))
    async with serve_asgi(app) as base:
        client = AsyncOpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
        generated = await client.images.generate(prompt="a fox", size="256x256", response_format="b64_json")
        edited = await client.images.edit(
            image=[("in.png", png((64, 64)), "image/png")], prompt="add a cat", model="gpt-image-1"
        )
        models = await client.models.list()
        with pytest.raises(openai.AuthenticationError):
            await AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-nope-00000000", max_retries=0).models.list()
    assert generated.data and decode(generated.data[0].b64_json or "").size == (256, 256)
    assert edited.data and decode(edited.data[0].b64_json or "").size == (1024, 1024)
    assert [m.id for m in models.data] == ["dall-e-2", "dall-e-3", "gpt-image-1"]
