"""The preview backend: a CPU renderer that draws a deterministic picture from the prompt.

It makes the whole pipeline usable with no GPU. Same prompt, negative prompt, seed, size and format give the
same bytes; the picture is visibly a preview (a PREVIEW badge and the prompt text drawn on it).
"""

from __future__ import annotations

import asyncio
import colorsys
import hashlib
import io
import random
from typing import Any

import httpx
from PIL import Image, ImageDraw, ImageOps

from gateway.assets.fonts import Font, has_cjk, load_font
from gateway.backends.base import (
    Adapter,
    BackendSpec,
    GeneratedImage,
    GenerationRequest,
    ProbeResult,
    ProgressCallback,
)

_SAVE_OPTIONS: dict[str, dict[str, Any]] = {
    "png": {"format": "PNG", "compress_level": 6},
    "jpeg": {"format": "JPEG", "quality": 90},
    "webp": {"format": "WEBP", "quality": 85, "method": 4},
}


def _palette(prompt: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Two colours that depend only on the prompt, so one prompt keeps its look across seeds."""
    digest = hashlib.sha256(prompt.encode()).digest()
    hue = digest[0] / 255

    def rgb(h: float, lightness: float, saturation: float) -> tuple[int, int, int]:
        r, g, b = colorsys.hls_to_rgb(h % 1.0, lightness, saturation)
        return int(r * 255), int(g * 255), int(b * 255)

    return rgb(hue, 0.22, 0.55), rgb(hue + 0.12 + digest[1] / 1020, 0.62, 0.65)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Font, max_width: float, max_lines: int) -> list[str]:
    """Greedy wrap that also breaks inside long words and CJK runs (which have no spaces)."""
    lines: list[str] = []
    line = ""
    for char in " ".join(text.split()):
        candidate = line + char
        if draw.textlength(candidate, font=font) <= max_width or not line:
            line = candidate
            continue
        cut = line.rfind(" ")
        if char != " " and cut > len(line) // 2:
            lines.append(line[:cut])
            line = line[cut + 1 :] + char
        else:
            lines.append(line.rstrip())
            line = char.lstrip()
        if len(lines) == max_lines:
            break
    if len(lines) < max_lines and line:
        lines.append(line)
    if len(lines) == max_lines and draw.textlength(" ".join(text.split()), font=font) > max_width * max_lines:
        lines[-1] = lines[-1][: max(0, len(lines[-1]) - 1)] + "…"
    return lines


def render(request: GenerationRequest, index: int) -> GeneratedImage:
    """Draw image ``index`` of ``request`` (seed ``request.seed + index``) and encode it."""
    width, height, seed = request.width, request.height, request.seed + index
    rng = random.Random(f"{request.prompt}\x00{request.negative_prompt}\x00{seed}")  # noqa: S311 - not crypto
    dark, light = _palette(request.prompt)

    linear = Image.linear_gradient("L").rotate(rng.choice((0, 90, 180, 270)))
    ox, oy = rng.randint(0, 128), rng.randint(0, 128)
    radial = Image.radial_gradient("L").resize((384, 384)).crop((ox, oy, ox + 256, oy + 256))
    gradient = Image.blend(linear, radial, 0.5)
    image = ImageOps.colorize(gradient.resize((width, height), Image.Resampling.BILINEAR), dark, light).convert("RGBA")

    overlay = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    shapes = ImageDraw.Draw(overlay)
    for _ in range(rng.randint(6, 12)):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(0.05, 0.3) * min(width, height)
        colour = (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255), rng.randint(50, 140))
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        if rng.random() < 0.6:
            shapes.ellipse(box, fill=colour)
        else:
            shapes.rounded_rectangle(box, radius=radius / 4, fill=colour)
    image = Image.alpha_composite(image, overlay)

    draw = ImageDraw.Draw(image)
    cjk = has_cjk(request.prompt)
    unit = max(8, min(width, height) // 24)
    margin = unit
    badge_font = load_font(unit, False)
    badge = f"PREVIEW  seed {seed}"
    badge_w = draw.textlength(badge, font=badge_font)
    draw.rounded_rectangle(
        (margin // 2, margin // 2, margin // 2 + badge_w + unit, margin // 2 + unit * 1.6),
        radius=unit // 3,
        fill=(255, 214, 0, 235),
    )
    draw.text((margin // 2 + unit // 2, margin // 2 + unit * 0.3), badge, font=badge_font, fill=(20, 20, 20, 255))

    text_font = load_font(max(8, unit * 3 // 4), cjk)
    lines = _wrap(draw, request.prompt, text_font, width - 2 * margin, max_lines=6)
    line_h = int(unit * 1.05)
    panel_top = height - margin - line_h * len(lines)
    panel = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    ImageDraw.Draw(panel).rectangle((0, panel_top - margin // 2, width, height), fill=(0, 0, 0, 150))
    image = Image.alpha_composite(image, panel)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((margin, panel_top + i * line_h), line, font=text_font, fill=(255, 255, 255, 255))

    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, **_SAVE_OPTIONS[request.output_format])
    return GeneratedImage(data=buffer.getvalue(), format=request.output_format, width=width, height=height, seed=seed)


class PreviewAdapter(Adapter):
    """The built-in renderer (no server). ``options["step_ms"]`` simulates GPU time per step so that progress,
    cancel and scheduling can be seen."""

    kind = "preview"
    default_slots = 2
    local = True

    def __init__(self, spec: BackendSpec, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(spec, client)
        self.step_ms = float(spec.options.get("step_ms", 0.0))

    async def probe(self) -> ProbeResult:
        return ProbeResult(models=None, loaded_model=None)

    async def generate(self, request: GenerationRequest, progress: ProgressCallback) -> list[GeneratedImage]:
        total = request.steps * request.n
        if self.step_ms > 0:
            for step in range(total):
                await asyncio.sleep(self.step_ms / 1000)
                await progress((step + 1) / (total + 1))
        images = []
        for index in range(request.n):
            # Off the event loop: Pillow releases the GIL while it draws and encodes.
            images.append(await asyncio.to_thread(render, request, index))
        await progress(1.0)
        return images


def preview_spec(*, step_ms: float = 0.0, models: str = "*", slots: int = 2) -> BackendSpec:
    """The spec of the built-in preview backend (``models`` "*": any model)."""
    names = tuple(m.strip() for m in models.split(",") if m.strip() and m.strip() != "*")
    if "*" in {m.strip() for m in models.split(",")}:
        names = ()
    return BackendSpec(
        name="preview",
        kind="preview",
        url="http://preview.invalid",
        slots=slots,
        models=names,
        options={"step_ms": step_ms},
    )
