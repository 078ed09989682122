"""Finishing a generated image before it is stored: the exact output size, an optional watermark, the format.

Everything here is pure and CPU-bound (the caller runs it in a thread); the only process-wide state is the font
cache of :mod:`gateway.assets.fonts`.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from PIL import Image, ImageChops, ImageDraw, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.assets.fonts import has_cjk, load_font
from gateway.common.text import NonBlankText

OutputFormat = Literal["png", "jpeg", "webp"]
Position = Literal["top-left", "top-right", "bottom-left", "bottom-right", "center"]

MAX_LOGO_BYTES = 2 * 1024 * 1024
MAX_LOGO_SIDE = 4096
STORED_LOGO_SIDE = 1024
MAX_OUTPUT_SIDE = 8192
_LOGO_FORMATS = ("PNG", "JPEG", "WEBP")
_SAVE_OPTIONS: dict[str, dict[str, Any]] = {
    "png": {"format": "PNG", "compress_level": 6},
    "jpeg": {"format": "JPEG", "quality": 90},
    "webp": {"format": "WEBP", "quality": 90},
}

# Text look: white glyphs with a thin, slightly transparent dark outline, so the text shows on light and dark images.
_TEXT_FILL = (255, 255, 255)
_OUTLINE_FILL = (16, 16, 16)
_OUTLINE_ALPHA = 0.8
_REFERENCE_FONT_SIZE = 100  # text is measured at this size, then drawn at the size that gives the wanted width
# Logo and text side by side: the text's font size and the gap, as fractions of the logo's height.
_TEXT_TO_LOGO = 0.5
_GAP_TO_LOGO = 0.2


class Watermark(BaseModel):
    """A brand mark drawn on every image: the calling system's logo, a text, or the logo with the text on its right.

    The mark is ``scale`` of the image width wide (shrunk, keeping its proportions, if it would not fit inside the
    margins), placed at ``position`` ``margin`` away from the edges, and blended in with ``opacity``.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    text: Annotated[NonBlankText, Field(min_length=1, max_length=100)] | None = Field(
        default=None,
        description=(
            "Text to draw, e.g. the brand name (one line: runs of spaces and line breaks become one space). White with"
            " a thin dark outline. Chinese, Japanese and Korean text needs a CJK font installed on the gateway"
        ),
    )
    logo: bool = Field(
        default=False,
        description="Draw the calling system's logo image (kept in its proportions and transparency); with `text`,"
        " the text goes on the logo's right",
    )
    position: Position = Field(default="bottom-right", description="Where the watermark goes")
    opacity: Annotated[float, Field(ge=0.05, le=1.0)] = Field(
        default=0.6, description="1: fully opaque; lower values let the image show through"
    )
    scale: Annotated[float, Field(ge=0.05, le=0.5)] = Field(
        default=0.2,
        description="Width of the watermark (logo, text, or both together) as a fraction of the image width",
    )
    margin: Annotated[float, Field(ge=0.0, le=0.2)] = Field(
        default=0.03, description="Distance from the image edges as a fraction of the image's shorter side"
    )

    @model_validator(mode="after")
    def _text_or_logo(self) -> Watermark:
        if self.text is None and not self.logo:
            raise ValueError("a watermark needs a text, the logo (logo: true), or both")
        return self


@dataclass(frozen=True, slots=True)
class Finished:
    """The encoded image and its size in pixels."""

    data: bytes
    width: int
    height: int


def load_logo(data: bytes) -> bytes:
    """Check a logo upload (PNG, JPEG or WEBP; at most 2 MB and 4096x4096 px) and return it as RGBA PNG bytes,
    at most ``STORED_LOGO_SIDE`` px on its longer side (a watermark is at most half an image's width).

    Raises ``ValueError`` with a reason a person can act on.
    """
    image = _open_logo(data)
    image.thumbnail((STORED_LOGO_SIDE, STORED_LOGO_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def finish(
    data: bytes,
    *,
    output_format: OutputFormat,
    size: tuple[int, int] | None = None,
    watermark: Watermark | None = None,
    logo: bytes | None = None,
) -> Finished:
    """Fit ``data`` to ``size`` (cover, then centre crop), draw ``watermark`` on it and encode it as ``output_format``.

    ``logo`` is the calling system's logo, needed when ``watermark.logo`` is set (checked as by :func:`load_logo`).
    Raises ``ValueError`` for a bad size, format or logo, and when the watermark asks for a logo there is not.
    """
    if output_format not in _SAVE_OPTIONS:
        raise ValueError(f"unknown output format {output_format!r}: png, jpeg or webp")
    if size is not None:
        width, height = size
        if not (1 <= width <= MAX_OUTPUT_SIDE and 1 <= height <= MAX_OUTPUT_SIDE):
            raise ValueError(f"the output size must be 1 to {MAX_OUTPUT_SIDE} px on each side, not {width}x{height}")
    logo_image = None
    if watermark is not None and watermark.logo:
        if logo is None:
            raise ValueError("the watermark asks for the calling system's logo, but there is no logo")
        logo_image = _open_logo(logo, max_bytes=None)  # the stored PNG: its upload was checked, it may be larger

    image = _open(data)
    if size is not None and image.size != tuple(size):
        image = _cover(image, (size[0], size[1]))
    if watermark is not None:
        image = _apply_watermark(image, watermark, logo_image)
    return Finished(data=_encode(image, output_format), width=image.width, height=image.height)


def _open(data: bytes) -> Image.Image:
    """Decode ``data`` upright (EXIF orientation applied) as RGB, or RGBA when it has transparency."""
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        image = ImageOps.exif_transpose(opened)
        return image.convert("RGBA" if image.has_transparency_data else "RGB")


def _open_logo(data: bytes, max_bytes: int | None = MAX_LOGO_BYTES) -> Image.Image:
    if not data:
        raise ValueError("the logo is empty")
    if max_bytes is not None and len(data) > max_bytes:
        raise ValueError(f"the logo is {len(data) / 1024 / 1024:.1f} MB; at most {MAX_LOGO_BYTES // 1024 // 1024} MB")
    try:
        opened = Image.open(io.BytesIO(data), formats=_LOGO_FORMATS)
    except Image.DecompressionBombError:
        raise ValueError(f"the logo has too many pixels; at most {MAX_LOGO_SIDE}x{MAX_LOGO_SIDE}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ValueError("the logo is not a PNG, JPEG or WEBP image") from None
    with opened:
        width, height = opened.size  # from the header: checked before any pixel is decoded
        if width > MAX_LOGO_SIDE or height > MAX_LOGO_SIDE:
            raise ValueError(f"the logo is {width}x{height} px; at most {MAX_LOGO_SIDE}x{MAX_LOGO_SIDE}")
        try:
            opened.load()
            return ImageOps.exif_transpose(opened).convert("RGBA")
        except Exception:  # any decoder failure of an uploaded file is the file's fault
            raise ValueError(f"the logo is a damaged or truncated {opened.format} image") from None


def _cover(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale ``image`` to cover ``size`` and crop the overflow evenly from both sides (sub-pixel exact)."""
    src_w, src_h = image.size
    out_w, out_h = size
    factor = max(out_w / src_w, out_h / src_h)
    box_w, box_h = out_w / factor, out_h / factor  # the part of the source that ends up in the output
    left, top = (src_w - box_w) / 2, (src_h - box_h) / 2
    return image.resize(size, Image.Resampling.LANCZOS, box=(left, top, left + box_w, top + box_h))


def _apply_watermark(image: Image.Image, watermark: Watermark, logo: Image.Image | None) -> Image.Image:
    width, height = image.size
    margin = round(watermark.margin * min(width, height))
    mark = _mark(watermark, logo, max(1.0, watermark.scale * width))

    room_w, room_h = max(1, width - 2 * margin), max(1, height - 2 * margin)
    if mark.width > room_w or mark.height > room_h:
        shrink = min(room_w / mark.width, room_h / mark.height)
        mark = mark.resize(
            (max(1, round(mark.width * shrink)), max(1, round(mark.height * shrink))), Image.Resampling.LANCZOS
        )

    alpha = mark.getchannel("A").point([round(a * watermark.opacity) for a in range(256)])
    mark.putalpha(alpha)

    row, _, column = watermark.position.partition("-")
    if watermark.position == "center":
        x, y = (width - mark.width) // 2, (height - mark.height) // 2
    else:
        x = margin if column == "left" else width - margin - mark.width
        y = margin if row == "top" else height - margin - mark.height

    mode = image.mode
    canvas = image.convert("RGBA") if mode != "RGBA" else image.copy()
    canvas.alpha_composite(mark, dest=(x, y))
    return canvas if mode == "RGBA" else canvas.convert(mode)


def _mark(watermark: Watermark, logo: Image.Image | None, target_width: float) -> Image.Image:
    """The watermark as an RGBA tile about ``target_width`` wide (before opacity and fitting)."""
    text = " ".join(watermark.text.split()) if watermark.text is not None else None
    if logo is None:
        assert text is not None  # the model guarantees text or logo; finish() guarantees the logo when asked for
        reference = _text_width(text, _REFERENCE_FONT_SIZE)
        return _text_tile(text, _REFERENCE_FONT_SIZE * target_width / reference)

    aspect = logo.width / logo.height
    if text is None:
        return _resized(logo, target_width, target_width / aspect)

    # Side by side: logo of height h, a gap, then the text at font size h * _TEXT_TO_LOGO, all target_width wide.
    text_per_font_px = _text_width(text, _REFERENCE_FONT_SIZE) / _REFERENCE_FONT_SIZE
    logo_h = target_width / (aspect + _GAP_TO_LOGO + _TEXT_TO_LOGO * text_per_font_px)
    logo_tile = _resized(logo, logo_h * aspect, logo_h)
    text_tile = _text_tile(text, logo_h * _TEXT_TO_LOGO)
    gap = round(logo_h * _GAP_TO_LOGO)
    tile = Image.new("RGBA", (logo_tile.width + gap + text_tile.width, max(logo_tile.height, text_tile.height)))
    tile.paste(logo_tile, (0, (tile.height - logo_tile.height) // 2))
    tile.paste(text_tile, (logo_tile.width + gap, (tile.height - text_tile.height) // 2))
    return tile


def _resized(image: Image.Image, width: float, height: float) -> Image.Image:
    size = (max(1, round(width)), max(1, round(height)))
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def _stroke(font_size: int) -> int:
    return max(1, round(font_size / 18))


def _text_box(text: str, font_size: int) -> tuple[int, int, int, int]:
    left, top, right, bottom = load_font(font_size, has_cjk(text)).getbbox(text, stroke_width=_stroke(font_size))
    return math.floor(left), math.floor(top), math.ceil(right), math.ceil(bottom)


def _text_width(text: str, font_size: int) -> float:
    left, _, right, _ = _text_box(text, font_size)
    return max(1, right - left)


def _text_tile(text: str, font_size: float) -> Image.Image:
    """``text`` in white with a dark outline on a transparent tile that fits it tightly."""
    size = max(1, round(font_size))
    font, stroke = load_font(size, has_cjk(text)), _stroke(size)
    left, top, right, bottom = _text_box(text, size)
    tile_size = (max(1, right - left), max(1, bottom - top))
    glyphs = Image.new("L", tile_size, 0)
    ImageDraw.Draw(glyphs).text((-left, -top), text, font=font, fill=255)
    outlined = Image.new("L", tile_size, 0)
    ImageDraw.Draw(outlined).text((-left, -top), text, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
    # White glyphs over the dark outline: colour by glyph coverage, alpha of the two layered (screen = "over").
    # Built from masks rather than drawn on a transparent RGBA tile, which would leave a dark fringe on the white.
    tile = Image.composite(Image.new("RGB", tile_size, _TEXT_FILL), Image.new("RGB", tile_size, _OUTLINE_FILL), glyphs)
    outline_alpha = outlined.point([round(a * _OUTLINE_ALPHA) for a in range(256)])
    tile.putalpha(ImageChops.screen(glyphs, outline_alpha))
    return tile


def _encode(image: Image.Image, output_format: str) -> bytes:
    if output_format == "jpeg" and image.mode == "RGBA":  # JPEG has no alpha: flattened on white
        image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, **_SAVE_OPTIONS[output_format])
    return buffer.getvalue()
