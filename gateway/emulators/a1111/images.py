"""Pictures for the A1111 emulator: decoding inputs, encoding outputs the way ``encode_pil_to_base64`` does.

Outputs are real images of the requested size (the preview renderer's drawing). PNGs carry the infotext in a
``parameters`` text chunk, as A1111 writes it with ``enable_pnginfo``. An img2img output is the rendering blended
over the (resized) init image by ``denoising_strength``; an image cut short by an interrupt or a skip is blurred
by how much of its sampling was left, the way a partly denoised latent looks.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import struct
import zlib
from urllib.parse import urlparse

from fastapi import HTTPException
from PIL import Image, ImageFilter, UnidentifiedImageError

from gateway.emulators.core import render_image

FORMATS = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "webp": "webp"}


def output_format(samples_format: str) -> str:
    """The encoder for the ``samples_format`` setting; anything else fails like upstream (500)."""
    fmt = FORMATS.get(str(samples_format).lower())
    if fmt is None:
        raise HTTPException(status_code=500, detail="Invalid image format")
    return fmt


def _is_global(host: str) -> bool:
    """``verify_url`` without DNS: names other than localhost count as global, addresses by their range."""
    if host.lower() in {"", "localhost"} or host.lower().endswith(".localhost"):
        return False
    try:
        return ipaddress.ip_address(host).is_global
    except ValueError:
        return True


def decode_image(encoding: str) -> Image.Image:
    """``decode_base64_to_image``: base64 with an optional ``data:image/...;base64,`` prefix.

    URLs: with the default settings (``api_forbid_local_requests``) local addresses are refused; the emulator
    never goes to the network, so any other URL fails as an unreadable download would.
    """
    if encoding.startswith(("http://", "https://")):
        if not _is_global(urlparse(encoding).hostname or ""):
            raise HTTPException(status_code=500, detail="Request to local resource not allowed")
        raise HTTPException(status_code=500, detail="Invalid image url")
    if encoding.startswith("data:image/"):
        encoding = encoding.split(";")[1].split(",")[1]
    try:
        image = Image.open(io.BytesIO(base64.b64decode(encoding)))
        image.load()
        return image
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError) as exc:
        raise HTTPException(status_code=500, detail="Invalid encoded image") from exc


def _png_text_chunk(key: str, text: str) -> bytes:
    """A ``tEXt`` chunk (``iTXt`` when the text is not Latin-1), as Pillow's ``PngInfo.add_text`` writes it."""
    try:
        kind, data = b"tEXt", key.encode("latin-1") + b"\0" + text.encode("latin-1")
    except UnicodeEncodeError:
        kind, data = b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + text.encode("utf-8")
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def with_parameters(png: bytes, infotext: str) -> bytes:
    """``png`` with a ``parameters`` text chunk inserted before the first IDAT chunk."""
    position = 8
    while position < len(png):
        (length,) = struct.unpack(">I", png[position : position + 4])
        if png[position + 4 : position + 8] == b"IDAT":
            return png[:position] + _png_text_chunk("parameters", infotext) + png[position:]
        position += 12 + length
    return png


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, format="PNG", compress_level=6)
    else:
        image.convert("RGB").save(buffer, format=fmt.upper(), quality=80)
    return buffer.getvalue()


def make_image(
    *,
    prompt: str,
    negative_prompt: str,
    width: int,
    height: int,
    seed: int,
    fmt: str,
    infotext: str,
    done: float = 1.0,
    init_image: Image.Image | None = None,
    denoising_strength: float = 0.75,
) -> str:
    """One output image, base64 (no ``data:`` prefix), as the API returns it."""
    data = render_image(
        prompt=prompt, negative_prompt=negative_prompt, width=width, height=height, seed=seed, output_format=fmt
    )
    if init_image is not None or done < 1.0:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        if init_image is not None:
            base = init_image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
            image = Image.blend(base, image, max(0.0, min(1.0, denoising_strength)))
        if done < 1.0:
            image = image.filter(ImageFilter.GaussianBlur(radius=max(1.0, (1.0 - done) * min(width, height) / 16)))
        data = _encode(image, fmt)
    if fmt == "png":
        data = with_parameters(data, infotext)
    return base64.b64encode(data).decode()


def preview(*, prompt: str, negative_prompt: str, width: int, height: int, seed: int, done: float) -> str:
    """A live preview (``current_image``): the picture so far, small and blurred by what is left to do."""
    scale = max(1, max(width, height) // 256)
    small_w, small_h = max(8, width // scale), max(8, height // scale)
    data = render_image(prompt=prompt, negative_prompt=negative_prompt, width=small_w, height=small_h, seed=seed)
    image = Image.open(io.BytesIO(data)).convert("RGB")
    image = image.filter(ImageFilter.GaussianBlur(radius=max(0.5, (1.0 - done) * min(small_w, small_h) / 10)))
    return base64.b64encode(_encode(image.resize((width, height), Image.Resampling.BILINEAR), "png")).decode()
