"""The newer fields of POST /v1/jobs: image-to-image inputs (inline or an asset of the caller) and options."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image

from tests.conftest import Stack, auth


def _image(fmt: str = "PNG", size: tuple[int, int] = (96, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 90)).save(buffer, format=fmt)
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def _post(stack: Stack, token: str, **body: Any) -> Any:
    body = {"prompt": "the same scene in autumn", "width": 128, "height": 128, "steps": 2, **body}
    return await stack.client.post("/v1/jobs", json=body, headers=auth(token))


async def _job_count(stack: Stack, token: str) -> int:
    response = await stack.client.get("/v1/jobs", headers=auth(token))
    assert response.status_code == 200, response.text
    return len(response.json()["items"])


def _assert_invalid(response: Any, field: str) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert field in error["message"]
    assert any(d["field"] == field for d in error["details"]), error


async def test_an_inline_base64_png_init_image_makes_an_image_to_image_job_that_succeeds(embedded: Stack) -> None:
    token = await embedded.system()
    job = await embedded.submit(token, init_image=_b64(_image()), denoising_strength=0.35, width=128, height=128)
    assert job["image_to_image"] is True
    assert job["denoising_strength"] == 0.35
    done = await embedded.wait(token, job["id"])
    assert done["status"] == "succeeded", done
    assert done["image_to_image"] is True
    assert len(done["assets"]) == 1


async def test_a_data_url_jpeg_init_image_is_accepted(embedded: Stack) -> None:
    token = await embedded.system()
    data_url = "data:image/jpeg;base64," + _b64(_image("JPEG"))
    job = await embedded.submit(token, init_image=data_url, mask=_b64(_image()))
    assert job["image_to_image"] is True
    assert (await embedded.wait(token, job["id"]))["status"] == "succeeded"


async def test_an_asset_of_an_earlier_job_can_be_the_init_image(embedded: Stack) -> None:
    token = await embedded.system()
    first = await embedded.wait(token, (await embedded.submit(token))["id"])
    asset_id = first["assets"][0]["id"]
    job = await embedded.submit(token, init_image=asset_id, prompt="the same lighthouse at night")
    assert job["image_to_image"] is True
    done = await embedded.wait(token, job["id"])
    assert done["status"] == "succeeded", done


async def test_a_plain_text_to_image_job_is_not_image_to_image(embedded: Stack) -> None:
    token = await embedded.system()
    job = await embedded.submit(token)
    assert (job["image_to_image"], job["denoising_strength"]) == (False, None)


async def test_another_systems_asset_is_422_naming_init_image_and_creates_no_job(embedded: Stack) -> None:
    owner, other = await embedded.system(), await embedded.system()
    first = await embedded.wait(owner, (await embedded.submit(owner))["id"])
    asset_id = first["assets"][0]["id"]
    response = await _post(embedded, other, init_image=asset_id)
    _assert_invalid(response, "init_image")
    assert "no such asset" in response.json()["error"]["message"]
    assert await _job_count(embedded, other) == 0
    assert await _job_count(embedded, owner) == 1


@pytest.mark.parametrize(
    "value",
    [
        "not base64 at all!",
        _b64(b"just some text, not an image"),
        "data:image/png;base64," + _b64(b"\x89PNG\r\n\x1a\n truncated"),
        "data:image/png;base64,",
        "ast_000000000000ffffffffffffffff",
    ],
    ids=["garbage", "text-bytes", "truncated-png", "empty-data-url", "unknown-asset"],
)
async def test_an_init_image_that_is_not_an_image_is_422_naming_it(embedded: Stack, value: str) -> None:
    token = await embedded.system()
    _assert_invalid(await _post(embedded, token, init_image=value), "init_image")
    assert await _job_count(embedded, token) == 0


async def test_an_init_image_over_the_pixel_limit_is_422(embedded: Stack) -> None:
    token = await embedded.system()
    response = await _post(embedded, token, init_image=_b64(_image(size=(4097, 4096))))
    _assert_invalid(response, "init_image")
    assert "larger than" in response.json()["error"]["message"]
    assert await _job_count(embedded, token) == 0


async def test_a_mask_that_is_not_an_image_is_422_naming_mask(embedded: Stack) -> None:
    token = await embedded.system()
    _assert_invalid(await _post(embedded, token, init_image=_b64(_image()), mask=_b64(b"nope")), "mask")
    assert await _job_count(embedded, token) == 0


@pytest.mark.parametrize(
    "body", [{"mask": _b64(_image())}, {"denoising_strength": 0.5}], ids=["mask", "denoising_strength"]
)
async def test_mask_or_denoising_strength_without_init_image_is_422(embedded: Stack, body: dict[str, Any]) -> None:
    token = await embedded.system()
    response = await _post(embedded, token, **body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert "init_image" in error["message"]
    assert await _job_count(embedded, token) == 0


@pytest.mark.parametrize("strength", [1.5, -0.1, "0.5"])
async def test_denoising_strength_out_of_range_is_422(embedded: Stack, strength: Any) -> None:
    token = await embedded.system()
    response = await _post(embedded, token, init_image=_b64(_image()), denoising_strength=strength)
    _assert_invalid(response, "denoising_strength")
    assert await _job_count(embedded, token) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"init_image": ""}, "init_image"),
        ({"init_image": 42}, "init_image"),
        ({"sampler": ""}, "sampler"),
        ({"scheduler": "x" * 101}, "scheduler"),
        ({"describe": "yes"}, "describe"),
        ({"oom_fallback": 1}, "oom_fallback"),
    ],
    ids=["empty-init", "number-init", "empty-sampler", "long-scheduler", "describe-string", "oom-int"],
)
async def test_bad_option_types_are_422_naming_the_field(embedded: Stack, body: dict[str, Any], field: str) -> None:
    token = await embedded.system()
    _assert_invalid(await _post(embedded, token, **body), field)


async def test_describe_without_a_vision_backend_succeeds_with_a_note(embedded: Stack) -> None:
    token = await embedded.system()
    job = await embedded.submit(token, describe=True, n=2)
    assert job["describe"] is True
    done = await embedded.wait(token, job["id"])
    assert done["status"] == "succeeded", done
    assert len(done["assets"]) == 2
    assert done["notes"], done
    assert any("not described" in note and "vision" in note for note in done["notes"]), done["notes"]


async def test_sampler_scheduler_and_oom_fallback_are_echoed_in_the_job(embedded: Stack) -> None:
    token = await embedded.system()
    job = await embedded.submit(token, sampler="DPM++ 2M", scheduler="Karras", oom_fallback=True)
    assert (job["sampler"], job["scheduler"], job["oom_fallback"], job["describe"]) == (
        "DPM++ 2M",
        "Karras",
        True,
        False,
    )
    done = await embedded.wait(token, job["id"])
    assert done["status"] == "succeeded", done
    assert (done["sampler"], done["scheduler"]) == ("DPM++ 2M", "Karras")
    assert done["notes"] == []
    defaults = await embedded.submit(token)
    assert (defaults["sampler"], defaults["scheduler"], defaults["oom_fallback"]) == (None, None, False)
