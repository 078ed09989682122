"""Format conversion for images a backend returned in another format than the job asked for."""

from __future__ import annotations

import io

from PIL import Image

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def convert(data: bytes, fmt: str) -> bytes:
    """Re-encode ``data`` as ``fmt`` (JPEG has no alpha: flattened on white)."""
    with Image.open(io.BytesIO(data)) as opened:
        image: Image.Image = opened
        image.load()
        if fmt == "jpeg" and image.mode not in ("RGB", "L"):
            rgba = image.convert("RGBA")
            image = Image.new("RGB", image.size, (255, 255, 255))
            image.paste(rgba, mask=rgba.getchannel("A"))
        buffer = io.BytesIO()
        image.save(buffer, format=_PIL_FORMATS[fmt], **({"quality": 90} if fmt != "png" else {}))
        return buffer.getvalue()
