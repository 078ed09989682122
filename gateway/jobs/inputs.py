"""Input images of image-to-image jobs: given inline (base64 / data URL) or as one of the caller's assets.

They are checked (a real image, bounded size), normalised to PNG and kept in the content-addressed store; the
job row keeps only their SHA-256, so a retried or re-run job reads the very same bytes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io

from PIL import Image, UnidentifiedImageError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.assets import repository as asset_repository
from gateway.assets.storage import LocalAssetStore
from gateway.common.ids import is_id
from gateway.errors import ValidationFailed

MAX_INPUT_PIXELS = 4096 * 4096


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{field}: {message}", details=[{"field": field, "message": message}])


def _to_png(data: bytes, field: str) -> bytes:
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_INPUT_PIXELS:
                raise _invalid(field, f"the image is larger than {MAX_INPUT_PIXELS} pixels")
            image.load()
            if image.format == "PNG":
                return data
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return buffer.getvalue()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as exc:
        raise _invalid(field, "not a PNG, JPEG or WebP image") from exc


async def store_input(session: AsyncSession, store: LocalAssetStore, *, system_id: str, value: str, field: str) -> str:
    """Store an input image given as an asset id of the caller or as base64; returns its SHA-256."""
    if is_id(value, "ast"):
        asset = await asset_repository.get_for_system(session, value, system_id)
        if asset is None:
            raise _invalid(field, "no such asset")
        try:
            data = await store.read(asset.sha256, asset.format)
        except FileNotFoundError as exc:
            raise _invalid(field, "the asset's file is no longer stored") from exc
    else:
        encoded = value.partition(",")[2] if value.startswith("data:") else value
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _invalid(field, "expected an asset id (ast_...) or base64 image data") from exc
        if not data:
            raise _invalid(field, "the image is empty")
    png = await asyncio.to_thread(_to_png, data, field)
    return (await store.put(png, "png")).sha256
