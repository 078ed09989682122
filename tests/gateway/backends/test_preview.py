"""The preview backend: real images of the requested size and format, deterministic, visibly a preview."""

from __future__ import annotations

import asyncio
import io
from dataclasses import replace

import pytest
from PIL import Image

from gateway.backends.base import GenerationRequest
from gateway.backends.preview import PreviewAdapter, preview_spec, render

BASE = GenerationRequest(
    prompt="a ceramic teapot on a wooden table, studio light",
    negative_prompt="blurry",
    width=512,
    height=384,
    steps=20,
    guidance_scale=7.0,
    seed=42,
    n=1,
    model=None,
    output_format="png",
)


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize(("fmt", "pil"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_renders_the_requested_size_and_format(fmt: str, pil: str) -> None:
    for width, height in [(64, 64), (512, 384), (1200, 1200), (1600, 904), (64, 2048)]:
        image = render(replace(BASE, width=width, height=height, output_format=fmt), 0)
        decoded = _open(image.data)
        assert decoded.format == pil
        assert decoded.size == (width, height) == (image.width, image.height)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_same_inputs_give_the_same_bytes(fmt: str) -> None:
    request = replace(BASE, output_format=fmt)
    assert render(request, 0).data == render(request, 0).data


@pytest.mark.parametrize(
    "change",
    [{"seed": 43}, {"prompt": "a ceramic teapot on a stone table"}, {"negative_prompt": "dark"}],
    ids=["seed", "prompt", "negative"],
)
def test_a_changed_input_gives_another_image(change: dict[str, object]) -> None:
    assert render(BASE, 0).data != render(replace(BASE, **change), 0).data  # type: ignore[arg-type]


def test_images_of_one_request_use_consecutive_seeds_and_differ() -> None:
    first, second = render(BASE, 0), render(BASE, 1)
    assert (first.seed, second.seed) == (42, 43)
    assert first.data != second.data
    assert render(replace(BASE, seed=43), 0).data == second.data


def _count(image: Image.Image, box: tuple[int, int, int, int], match) -> int:  # type: ignore[no-untyped-def]
    raw = image.crop(box).tobytes()
    return sum(1 for i in range(0, len(raw), 3) if match(raw[i : i + 3]))


def test_it_is_visibly_a_preview_with_the_prompt_written_on_it() -> None:
    image = _open(render(BASE, 0).data).convert("RGB")
    # The yellow PREVIEW badge in the top-left corner.
    yellow = _count(image, (0, 0, 200, 40), lambda p: p[0] > 230 and p[1] > 190 and p[2] < 60)
    assert yellow > 1500
    # White text on the darkened band at the bottom: the prompt (the band itself is never that bright).
    band = (0, BASE.height - 50, BASE.width, BASE.height)
    white = _count(image, band, lambda p: min(p) > 230)
    assert white > 100
    # A longer prompt writes more text.
    longer = _open(render(replace(BASE, prompt=BASE.prompt + ", " + BASE.prompt), 0).data).convert("RGB")
    two_lines = (0, BASE.height - 80, BASE.width, BASE.height)
    assert _count(longer, two_lines, lambda p: min(p) > 230) > white


def test_chinese_prompt_renders() -> None:
    image = render(replace(BASE, prompt="一款智能手表，放在现代家庭办公室的桌面上，产品摄影，高清"), 0)
    assert _open(image.data).size == (512, 384)


async def test_adapter_reports_progress_and_returns_n_images() -> None:
    adapter = PreviewAdapter(preview_spec(step_ms=1))
    seen: list[float] = []

    async def progress(value: float) -> None:
        seen.append(value)

    images = await adapter.generate(replace(BASE, n=3, steps=5), progress)
    assert len(images) == 3
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) == 16


async def test_cancelling_generate_stops_the_work() -> None:
    adapter = PreviewAdapter(preview_spec(step_ms=20))
    seen: list[float] = []

    async def progress(value: float) -> None:
        seen.append(value)

    task = asyncio.create_task(adapter.generate(replace(BASE, steps=100), progress))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stopped_at = len(seen)
    await asyncio.sleep(0.2)
    assert 0 < stopped_at < 100 and len(seen) == stopped_at  # no step ran after the cancel


def test_preview_spec_lists_models_or_serves_any() -> None:
    assert preview_spec().models == ()
    assert preview_spec(models="preview, sd15").models == ("preview", "sd15")
    assert preview_spec(models="sd15,*").models == ()
