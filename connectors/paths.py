"""Path templates shared by the folder, S3 and WebDAV connectors: where each image goes, as path segments.

A template (a folder layout, an object key, a WebDAV folder) is checked once when it is configured
(:func:`check_template`) and rendered per image (:func:`render_template`): every placeholder's value becomes one
harmless path segment (:func:`safe_segment`), and the date comes from the job id (:func:`job_time`), so the path is
the same on every attempt of a delivery. :func:`alternate_name` is where an image goes when a different one already
has its name; :func:`check_subfolder` checks a per-delivery subfolder (:data:`Subfolder` as a field type).
"""

from __future__ import annotations

import contextlib
import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator

from connectors.base import DeliveredAsset, Delivery, PermanentError, parse_template

TEMPLATE_FIELDS: dict[str, str] = {
    "system": "the calling system's name",
    "yyyy": "year the job was created (UTC, from the job id: the same on every retry)",
    "mm": "month, two digits",
    "dd": "day, two digits",
    "record_id": "the delivery's record id (metadata), or 'none'",
    "role": "the image's role (metadata), or 'none'",
    "template": "the generation template's name (metadata), or 'none'",
    "job_id": "the asset's job id",
    "batch_id": "the batch id, or 'none'",
    "asset_id": "the asset id (unique)",
    "index": "the image's index in its job",
    "sha256": "hex SHA-256 of the image bytes",
    "ext": "file extension (the image format: png, jpeg, webp)",
    "filename": "the readable file name <record>_<job name>[_<n>].<ext>",
    "stem": "the file name without its extension",
}
#: Placeholders that make a name unique per image (a file name template must use one of them).
UNIQUE_FIELDS = frozenset({"filename", "stem", "asset_id", "sha256"})

_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')
_ID_TIME = re.compile(r"^[a-z]{3}_([0-9a-f]{12})[0-9a-f]{16}$")
_SAMPLE = {name: "x" for name in TEMPLATE_FIELDS}
MAX_SEGMENT_BYTES = 255


def safe_segment(value: object, limit: int = 100) -> str:
    """``value`` as one harmless path segment: no separators or control characters, no leading or trailing dots or
    spaces (so never ``.``/``..`` nor a hidden file), at most ``limit`` UTF-8 bytes, never empty."""
    text = _UNSAFE_CHARS.sub("_", str(value)).strip(" .")
    text = text.encode("utf-8")[:limit].decode("utf-8", "ignore").rstrip(" .")
    return text or "_"


def check_template(template: str, *, file_name: bool) -> str:
    """Validate a path template: only :data:`TEMPLATE_FIELDS` as plain ``{name}`` fields (no conversions, format specs,
    attribute or index access), relative, no empty, ``.`` or ``..`` segment. With ``file_name`` the last segment must
    hold a placeholder that is unique per image. Returns the template; raises ValueError."""
    for literal, name, spec, conversion in parse_template(template):
        if _UNSAFE_CHARS.search(literal.replace("/", "")):
            raise ValueError('must not contain control characters, backslashes or any of : * ? " < > |')
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS:
            allowed = ", ".join("{" + n + "}" for n in TEMPLATE_FIELDS)
            raise ValueError(f"unknown placeholder {{{name}}}; the placeholders are {allowed}")
        if spec or conversion:
            raise ValueError(f"placeholder {{{name}}} must be plain (no !conversion or :format)")
    if template.startswith("/"):
        raise ValueError("must be relative (no leading '/')")
    if template == "":
        if file_name:
            raise ValueError("must not be empty")
        return template
    segments = template.format_map(_SAMPLE).split("/")
    if any(segment in ("", ".", "..") or segment != segment.strip(" ") for segment in segments):
        raise ValueError("must not have empty, '.' or '..' segments, nor segments starting or ending with a space")
    if file_name:
        last = template.rsplit("/", 1)[-1]
        if not any("{" + name + "}" in last for name in UNIQUE_FIELDS):
            raise ValueError("the last segment must contain {filename}, {stem}, {asset_id} or {sha256}")
    return template


def job_time(delivery: Delivery, asset: DeliveredAsset | None = None) -> datetime:
    """When the job was created, read from the time-ordered id (the asset's job, else the batch, job or delivery id):
    a path built from it is the same on every attempt, whatever day the retry runs. Falls back to now."""
    candidates = (asset.job_id if asset else None, delivery.batch_id, delivery.job_id, delivery.id)
    for candidate in candidates:
        match = _ID_TIME.match(candidate or "")
        if match:
            with contextlib.suppress(OverflowError, OSError, ValueError):
                return datetime.fromtimestamp(int(match.group(1), 16) / 1000, UTC)
    return datetime.now(UTC)


def template_values(delivery: Delivery, asset: DeliveredAsset) -> dict[str, str]:
    """The placeholder values for one asset, each already a safe path segment."""
    when = job_time(delivery, asset)
    meta = delivery.metadata
    stem, dot, suffix = asset.filename.rpartition(".")
    if not dot:
        stem, suffix = asset.filename, asset.format
    ext = safe_segment(suffix or asset.format, 16)
    safe_stem = safe_segment(stem, 180)
    return {
        "system": safe_segment(delivery.system),
        "yyyy": f"{when.year:04d}",
        "mm": f"{when.month:02d}",
        "dd": f"{when.day:02d}",
        "record_id": safe_segment(meta.get("record_id") or "none"),
        "role": safe_segment(meta.get("role") or "none"),
        "template": safe_segment(meta.get("template") or "none"),
        "job_id": safe_segment(asset.job_id),
        "batch_id": safe_segment(delivery.batch_id or "none"),
        "asset_id": safe_segment(asset.id),
        "index": str(int(asset.index)),
        "sha256": safe_segment(asset.sha256, 64),
        "ext": ext,
        "filename": f"{safe_stem}.{ext}",
        "stem": safe_stem,
    }


def render_template(template: str, delivery: Delivery, asset: DeliveredAsset) -> list[str]:
    """The template's path segments for one asset; raises PermanentError if the result is not a clean relative
    path (checked again here, not only when the template was configured)."""
    if template == "":
        return []
    segments = template.format_map(template_values(delivery, asset)).split("/")
    for segment in segments:
        if segment in ("", ".", "..") or _UNSAFE_CHARS.search(segment) or len(segment.encode()) > MAX_SEGMENT_BYTES:
            raise PermanentError(f"the path template gives an unusable path segment {segment[:80]!r}")
    return segments


def alternate_name(name: str, sha256: str) -> str:
    """Where an image goes when another image already has its name: ``<stem>~<sha256[:12]>.<ext>``."""
    stem, dot, ext = name.rpartition(".")
    if not dot:
        return f"{name}~{sha256[:12]}"
    return f"{stem}~{sha256[:12]}.{ext}"


def check_subfolder(value: str | None) -> str | None:
    """A per-delivery subfolder: relative, ``/``-separated, at most 5 levels of plain names (no ``..``)."""
    if value is None:
        return None
    value = value.strip().rstrip("/")
    if not value:
        return None
    if value.startswith("/"):
        raise ValueError("must be relative (no leading '/')")
    parts = value.split("/")
    if len(parts) > 5 or len(value) > 200:
        raise ValueError("at most 5 levels and 200 characters")
    for part in parts:
        if part in ("", ".", "..") or part != safe_segment(part, 100):
            raise ValueError(
                f"{part!r} is not a plain folder name "
                "(no '..', control characters, leading dots or any of \\ : * ? \" < > |)"
            )
    return value


#: An optional per-delivery subfolder field, checked by :func:`check_subfolder`.
Subfolder = Annotated[str | None, AfterValidator(check_subfolder)]
