"""Input images of image-to-image jobs: given inline (base64 / data URL), as one of the caller's assets or as a URL.

They are checked (a real image, bounded size), normalised to PNG and kept in the content-addressed store; the
job row keeps only their SHA-256, so a retried or re-run job reads the very same bytes. A URL is fetched once, at
submission, through the caller-supplied ``fetch`` (the SSRF-guarded outbound client).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import re
from collections.abc import Awaitable, Callable

from PIL import Image, UnidentifiedImageError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.assets import repository as asset_repository
from gateway.assets.storage import LocalAssetStore
from gateway.common.ids import is_id
from gateway.common.outbound import FetchFailed
from gateway.errors import ValidationFailed
from policies.ssrf import UrlRefused

MAX_INPUT_PIXELS = 4096 * 4096

Fetch = Callable[[str], Awaitable[bytes]]

URL_PREFIXES = ("http://", "https://")
# Any other "scheme://" (file://, gopher://, ...) is refused as such instead of failing as bad base64; base64 never
# contains ":", so nothing inline is mistaken for a URL.
_OTHER_URL = re.compile(r"[a-z][a-z0-9+.-]*://", re.IGNORECASE)


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


def is_url(value: str) -> bool:
    """True when an input image is given as a URL to fetch (``http://`` or ``https://``)."""
    return value.startswith(URL_PREFIXES)


async def fetch_input(value: str, field: str, fetch: Fetch | None) -> bytes:
    """Fetch an input image URL; the guard's refusals and fetch failures become 422s naming ``field``.

    Refused: code ``url_refused``; could not be fetched: ``url_unreachable``; both carry the reason code in the
    details. Without ``fetch`` a URL is a plain validation error.
    """
    if fetch is None:
        raise _invalid(field, "image URLs are not accepted here")
    try:
        data = await fetch(value)
    except UrlRefused as exc:
        raise _url_error("url_refused", field, exc.message, exc.reason) from exc
    except FetchFailed as exc:
        raise _url_error("url_unreachable", field, exc.message, exc.reason) from exc
    if not data:
        raise _invalid(field, "the image is empty")
    return data


def _url_error(code: str, field: str, message: str, reason: str) -> ValidationFailed:
    detail = {"field": field, "message": message, "reason": reason}
    return ValidationFailed(f"{field}: {message}", code=code, details=[detail])


async def store_input(
    session: AsyncSession,
    store: LocalAssetStore,
    *,
    system_id: str,
    value: str,
    field: str,
    fetch: Fetch | None = None,
) -> str:
    """Store an input image given as an asset id of the caller, as base64 or as a URL; returns its SHA-256.

    A URL is fetched with ``fetch``; without one, a URL is a 422. A refused URL is a 422 ``url_refused`` and a URL
    that cannot be fetched a 422 ``url_unreachable``, both with the guard's reason code in the details.
    """
    if is_url(value):
        data = await fetch_input(value, field, fetch)
    elif _OTHER_URL.match(value):
        raise _url_error("url_refused", field, "only http:// and https:// URLs can be fetched", "scheme_not_allowed")
    elif is_id(value, "ast"):
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
