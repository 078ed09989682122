"""Emulator of the GLM-4.6V-Flash-WEB REST API of seed 001 (``api_server.py``, FastAPI, port 8080).

* ``GET /health`` -> ``{"status": "healthy", "model": "GLM-4.6V-Flash", "device": "cuda:0"}``.
* ``POST /v1/multimodal/completions`` ``{"image", "prompt", "max_new_tokens": 512, "temperature": 0.7}`` ->
  ``{"id": "cmpl-...", "object": "multimodal.completion", "created", "model": "GLM-4.6V-Flash", "choices":
  [{"index": 0, "message": {"role": "assistant", "content"}}], "usage": {prompt_tokens, completion_tokens,
  total_tokens}}``.
* ``image``: a ``data:image/...;base64,`` URL, bare base64, or an http(s) URL. The seed's checks answer 400
  ``{"detail": "image字段必须为非空字符串"}`` for a missing/empty image and ``{"detail": "图片大小不能超过10MB"}`` when
  the string is over 10 MB; an undecodable image is 400 ``{"detail": "图片解码失败: ..."}``. URLs: the emulator
  never leaves the machine, so only loopback URLs are fetched; any other host is 400 with a detail saying so.
  ``prompt`` missing is FastAPI's 422.
* The answer really describes the pixels (size, orientation, dominant colours, brightness, contrast, where the
  light is), deterministically for one image and prompt, in Chinese when the prompt is Chinese. When the
  prompt asks for tags it answers as the model follows such an instruction: a one-sentence caption, then
  ``Tags: a, b, c`` (3-8 lower-case tags). ``max_new_tokens`` truncates the answer.
* Each call spends a little simulated GPU time (``step_ms``-based, ``options.slots`` at once).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import colorsys
import io
import ipaddress
import re
import secrets
import string
import time
from collections import Counter
from typing import Any
from urllib.parse import urlparse

import httpx
from fastapi import FastAPI, HTTPException
from fastapi.responses import PlainTextResponse
from PIL import Image, ImageFilter, ImageStat, UnidentifiedImageError
from pydantic import BaseModel

from gateway.emulators.core import EmulatorOptions, SimulatedGPU
from gateway.emulators.proxy import ProxyBasicAuth

MODEL = "GLM-4.6V-Flash"
MAX_IMAGE_CHARS = 10 * 1024 * 1024
TOKEN = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af]|\w+|[^\w\s]")
CJK = re.compile(r"[\u2e80-\u9fff]")
COLOUR_ZH = {
    "black": "黑色",
    "white": "白色",
    "gray": "灰色",
    "red": "红色",
    "orange": "橙色",
    "yellow": "黄色",
    "green": "绿色",
    "teal": "青色",
    "blue": "蓝色",
    "purple": "紫色",
    "pink": "粉色",
    "brown": "棕色",
}
ZH = {
    "orientation": {"square": "正方形", "landscape": "横向", "portrait": "竖向"},
    "brightness": {"dark": "偏暗", "dim": "略暗", "bright": "明亮", "moderately lit": "亮度适中"},
    "detail": {"busy and detailed": "细节丰富", "smooth and simple": "画面简洁平滑"},
    "light": {"top": "上方", "bottom": "下方", "left": "左侧", "right": "右侧"},
}


class CompletionRequest(BaseModel):
    """The body the seed documents (``image`` is checked by hand, as the seed's ``api_server.py`` does)."""

    image: str | None = None
    prompt: str
    max_new_tokens: int = 512
    temperature: float = 0.7


def colour_name(r: int, g: int, b: int) -> str:
    """A plain colour word for one RGB value."""
    h, lightness, s = colorsys.rgb_to_hls(r / 255, g / 255, b / 255)
    if lightness < 0.14:
        return "black"
    if lightness > 0.88 and s < 0.5:
        return "white"
    if s < 0.18:
        return "gray"
    hue = h * 360
    if 10 <= hue < 45 and lightness < 0.38:
        return "brown"
    for limit, name in (
        (15, "red"),
        (40, "orange"),
        (68, "yellow"),
        (160, "green"),
        (195, "teal"),
        (255, "blue"),
        (290, "purple"),
        (345, "pink"),
        (361, "red"),
    ):
        if hue < limit:
            return name
    return "red"


def analyse(image: Image.Image) -> dict[str, Any]:
    """What the pixels say: size, orientation, colour shares, brightness, contrast, detail, light position."""
    width, height = image.size
    has_alpha = image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info)
    rgba = image.convert("RGBA")
    transparent = has_alpha and ImageStat.Stat(rgba.getchannel("A")).mean[0] < 250
    rgb = Image.new("RGB", rgba.size, (255, 255, 255))
    rgb.paste(rgba, mask=rgba.getchannel("A"))
    small = rgb.resize((48, 48), Image.Resampling.BILINEAR)
    raw = small.tobytes()
    shares = Counter(colour_name(raw[i], raw[i + 1], raw[i + 2]) for i in range(0, len(raw), 3))
    grey = small.convert("L")
    stat = ImageStat.Stat(grey)
    top = ImageStat.Stat(grey.crop((0, 0, 48, 24))).mean[0]
    bottom = ImageStat.Stat(grey.crop((0, 24, 48, 48))).mean[0]
    left = ImageStat.Stat(grey.crop((0, 0, 24, 48))).mean[0]
    right = ImageStat.Stat(grey.crop((24, 0, 48, 48))).mean[0]
    edges = ImageStat.Stat(rgb.convert("L").resize((128, 128)).filter(ImageFilter.FIND_EDGES)).mean[0]
    saturation = ImageStat.Stat(small.convert("HSV").getchannel("S")).mean[0]
    total = sum(shares.values())
    colours = [(name, count / total) for name, count in shares.most_common() if count / total >= 0.08][:3]
    return {
        "width": width,
        "height": height,
        "orientation": "square"
        if abs(width - height) <= 0.05 * max(width, height)
        else ("landscape" if width > height else "portrait"),
        "colours": colours or [(shares.most_common(1)[0][0], 1.0)],
        "brightness": stat.mean[0],
        "contrast": stat.stddev[0],
        "detail": edges,
        "saturation": saturation,
        "light": _light(top, bottom, left, right),
        "transparent": transparent,
    }


def _light(top: float, bottom: float, left: float, right: float) -> str | None:
    diffs = {"top": top - bottom, "bottom": bottom - top, "left": left - right, "right": right - left}
    side, diff = max(diffs.items(), key=lambda item: item[1])
    return side if diff > 25 else None


def _words(facts: dict[str, Any]) -> dict[str, str]:
    b, c, d, s = facts["brightness"], facts["contrast"], facts["detail"], facts["saturation"]
    return {
        "brightness": "dark" if b < 70 else "dim" if b < 110 else "bright" if b > 170 else "moderately lit",
        "contrast": "high contrast" if c > 60 else "soft contrast" if c < 25 else "moderate contrast",
        "detail": "busy and detailed" if d > 28 else "smooth and simple" if d < 8 else "with some fine detail",
        "saturation": "vivid" if s > 140 else "muted" if s < 60 else "moderately saturated",
    }


def describe(facts: dict[str, Any], prompt: str) -> str:
    """The model's answer to ``prompt`` about an image with ``facts``."""
    words = _words(facts)
    names = [name for name, _ in facts["colours"]]
    size = f"{facts['width']}x{facts['height']}"
    if "tags:" in prompt.lower() or "tags" in prompt.lower():
        palette = " and ".join(names[:2])
        caption = (
            f"A {words['brightness']} {facts['orientation']} image dominated by {palette} tones, "
            f"{words['detail']}, with {words['contrast']}."
        )
        tags = [*names, words["brightness"], facts["orientation"], words["saturation"], words["contrast"]]
        if facts["transparent"]:
            tags.append("transparent background")
        tags = list(dict.fromkeys(t.lower() for t in tags))[:8]
        return f"{caption}\nTags: {', '.join(tags)}"
    if CJK.search(prompt):
        zh_colours = "、".join(f"{COLOUR_ZH[n]}（约{round(share * 100)}%）" for n, share in facts["colours"])
        orientation = ZH["orientation"][facts["orientation"]]
        brightness = ZH["brightness"][words["brightness"]]
        detail = ZH["detail"].get(words["detail"], "有一定细节")
        light = ZH["light"].get(facts["light"] or "")
        text = f"这是一张{size}的{orientation}图片，主要颜色为{zh_colours}。整体{brightness}，{detail}。"
        return text + (f"画面{light}更亮。" if light else "") + ("图片包含透明区域。" if facts["transparent"] else "")
    shares = ", ".join(f"{name} (about {round(share * 100)}%)" for name, share in facts["colours"])
    text = (
        f"The image is a {facts['orientation']} picture of {size} pixels. Its dominant colours are {shares}. "
        f"Overall it is {words['brightness']} and {words['saturation']}, {words['detail']}, with {words['contrast']}."
    )
    if facts["light"]:
        text += f" The {facts['light']} side is noticeably brighter than the opposite side."
    if facts["transparent"]:
        text += " Part of the image is transparent."
    return text


def count_tokens(text: str) -> int:
    return len(TOKEN.findall(text))


def truncate(text: str, max_tokens: int) -> str:
    """``text`` cut after its first ``max_tokens`` tokens."""
    if max_tokens <= 0:
        return ""
    matches = list(TOKEN.finditer(text))
    return text if len(matches) <= max_tokens else text[: matches[max_tokens - 1].end()]


def image_tokens(width: int, height: int) -> int:
    """Visual tokens: 28x28-pixel cells after fitting the image into 1120x1120."""
    scale = min(1.0, 1120 / max(width, height))
    return max(4, -(-int(width * scale) // 28) * -(-int(height * scale) // 28))


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def load_image(value: str | None) -> Image.Image:
    """The request's image, checked the way the seed's service does (400 with a ``detail``)."""
    if not value or not isinstance(value, str):
        raise HTTPException(status_code=400, detail="image字段必须为非空字符串")
    if len(value) > MAX_IMAGE_CHARS:
        raise HTTPException(status_code=400, detail="图片大小不能超过10MB")
    if value.startswith(("http://", "https://")):
        host = urlparse(value).hostname or ""
        if not _is_loopback(host):
            detail = f"image URL host {host!r} is not fetched: this emulator only downloads loopback URLs"
            raise HTTPException(status_code=400, detail=detail)
        async with httpx.AsyncClient(timeout=10, follow_redirects=False) as client:
            try:
                response = await client.get(value)
            except httpx.HTTPError as exc:
                raise HTTPException(status_code=400, detail=f"图片下载失败: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise HTTPException(status_code=400, detail=f"图片下载失败: HTTP {response.status_code}")
        if len(response.content) > MAX_IMAGE_CHARS:
            raise HTTPException(status_code=400, detail="图片大小不能超过10MB")
        data = response.content
    else:
        encoded = value.partition(",")[2] if value.startswith("data:") else value
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise HTTPException(status_code=400, detail="图片解码失败: invalid base64") from exc
    try:
        return await asyncio.to_thread(_open, data)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise HTTPException(status_code=400, detail="图片解码失败: unrecognised image data") from exc


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def create_app(options: EmulatorOptions) -> Any:
    """The GLM-4.6V-Flash-WEB API service."""
    gpu = SimulatedGPU(options, default_model=MODEL)
    app = FastAPI(title="GLM-4.6V-Flash-WEB API", version="1.0.0")
    app.state.gpu = gpu

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "healthy", "model": MODEL, "device": "cuda:0"}

    @app.post("/v1/multimodal/completions")
    async def completions(request: CompletionRequest) -> Any:
        image = await load_image(request.image)
        if gpu.should_fail():  # a CUDA OOM escapes the route: Starlette's plain-text 500
            return PlainTextResponse("Internal Server Error", status_code=500)
        facts = await asyncio.to_thread(analyse, image)
        content = truncate(describe(facts, request.prompt), request.max_new_tokens)
        completion = count_tokens(content)
        prompt_tokens = 8 + count_tokens(request.prompt) + image_tokens(*image.size)
        await gpu.run(steps=8 + completion // 4, width=512, height=512)
        alphabet = string.ascii_lowercase + string.digits
        return {
            "id": "cmpl-" + "".join(secrets.choice(alphabet) for _ in range(19)),
            "object": "multimodal.completion",
            "created": int(time.time()),
            "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion,
            },
        }

    # No authentication of its own; ``--auth`` puts it behind a proxy's HTTP Basic, as deployed.
    return ProxyBasicAuth(app, options, realm="GLM-4.6V") if options.auth else app
