"""What happens to an image between the backend and the store: the exact size asked for, the watermark,
the job's tags on its assets, and the system's logo behind `watermark: {"logo": true}`."""

from __future__ import annotations

import io

from PIL import Image, ImageChops

from tests.conftest import Stack, auth


async def download(stack: Stack, token: str, url: str) -> Image.Image:
    response = await stack.client.get(url, headers=auth(token))
    assert response.status_code == 200
    return Image.open(io.BytesIO(response.content))


def png(size: tuple[int, int], colour: tuple[int, int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_any_size_is_generated_in_multiples_of_8_and_stored_exactly(embedded: Stack) -> None:
    token = await embedded.system()

    job = await embedded.wait(token, (await embedded.submit(token, width=500, height=333))["id"])

    assert job["status"] == "succeeded", job
    assert (job["width"], job["height"]) == (500, 333)
    assert (job["assets"][0]["width"], job["assets"][0]["height"]) == (500, 333)
    assert (await download(embedded, token, job["assets"][0]["url"])).size == (500, 333)
    assert any("Generated at 504x336 and fitted to exactly 500x333" in note for note in job["notes"]), job["notes"]


async def test_a_multiple_of_8_is_stored_as_generated_without_a_note(embedded: Stack) -> None:
    token = await embedded.system()

    job = await embedded.wait(token, (await embedded.submit(token, width=512, height=256))["id"])

    assert (job["assets"][0]["width"], job["assets"][0]["height"]) == (512, 256)
    assert not any("fitted" in note for note in job["notes"])


async def test_a_text_watermark_marks_only_its_corner(embedded: Stack) -> None:
    token = await embedded.system()
    body = {"prompt": "a quiet harbour", "width": 512, "height": 512, "steps": 2, "seed": 11}

    plain = await embedded.wait(token, (await embedded.submit(token, **body))["id"])
    marked = await embedded.wait(
        token,
        (
            await embedded.submit(
                token, **body, watermark={"text": "ACME 品牌", "position": "top-left", "opacity": 1}, tags=["harbour"]
            )
        )["id"],
    )

    assert marked["watermark"]["text"] == "ACME 品牌" and marked["watermark"]["position"] == "top-left"
    a = (await download(embedded, token, plain["assets"][0]["url"])).convert("RGB")
    b = (await download(embedded, token, marked["assets"][0]["url"])).convert("RGB")
    box = ImageChops.difference(a, b).getbbox()
    assert box is not None and box[2] <= 256 and box[3] <= 256, box  # only the top-left quarter changed
    assert marked["tags"] == ["harbour"] and marked["assets"][0]["tags"] == ["harbour"]


async def test_the_logo_is_uploaded_read_back_and_removed(embedded: Stack) -> None:
    token = await embedded.system()
    other = await embedded.system()
    headers = {**auth(token), "Content-Type": "image/png"}

    missing = await embedded.client.get("/v1/logo", headers=auth(token))
    wrong_type = await embedded.client.put(
        "/v1/logo", content=b"GIF89a", headers={**auth(token), "Content-Type": "image/gif"}
    )
    not_an_image = await embedded.client.put("/v1/logo", content=b"not a png", headers=headers)
    too_big = await embedded.client.put("/v1/logo", content=b"\x89PNG" + b"0" * (2 * 1024 * 1024), headers=headers)
    put = await embedded.client.put("/v1/logo", content=png((120, 40), (0, 0, 255, 128)), headers=headers)
    back = await embedded.client.get("/v1/logo", headers=auth(token))
    others = await embedded.client.get("/v1/logo", headers=auth(other))

    assert missing.status_code == 404
    assert [r.status_code for r in (wrong_type, not_an_image, too_big)] == [422, 422, 422]
    assert "2 MB" in too_big.json()["error"]["message"]
    assert put.status_code == 204, put.text
    logo = Image.open(io.BytesIO(back.content))
    assert (back.status_code, logo.size, logo.mode, logo.getpixel((5, 5))) == (200, (120, 40), "RGBA", (0, 0, 255, 128))
    assert others.status_code == 404  # one system's logo is not another's

    accepted = await embedded.submit(token, watermark={"logo": True})
    deleted = await embedded.client.delete("/v1/logo", headers=auth(token))
    job = await embedded.wait(token, accepted["id"])
    refused = await embedded.client.post(
        "/v1/jobs", json={"prompt": "x", "watermark": {"logo": True}}, headers=auth(token)
    )

    assert deleted.status_code == 204
    assert job["status"] == "succeeded"  # it keeps the logo it was accepted with
    assert (refused.status_code, refused.json()["error"]["code"]) == (422, "logo_missing")
    assert (await embedded.client.get("/v1/logo", headers=auth(token))).status_code == 404


def test_an_out_of_memory_fallback_keeps_the_aspect_asked_for_without_enlarging() -> None:
    from gateway.backends.generation import Generated
    from gateway.jobs.models import Job
    from gateway.jobs.runner import _target

    job = Job(
        system_id="sys_x",
        prompt="p",
        width=1600,
        height=900,
        steps=1,
        guidance_scale=0,
        seed=1,
        n=1,
        output_format="png",
    )
    normal = Generated(images=[], backend="b", request=None, notes=[])  # type: ignore[arg-type]
    smaller = Generated(images=[], backend="b", request=None, notes=[], fell_back=True)  # type: ignore[arg-type]

    assert _target(job, normal, 1600, 904) == (1600, 900)
    assert _target(job, smaller, 640, 384) == (640, 360)  # cropped to 16:9, never scaled back up
    assert _target(job, smaller, 512, 512) == (512, 288)
