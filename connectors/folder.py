"""Folder connector: writes each image, with a JSON sidecar of its metadata, under a root folder.

The root is a local or mounted folder (an NFS/SMB share a DAM ingests from). Each asset lands at
``<path>/[<subfolder>/]<layout>``, e.g. ``/srv/dam/crm/2025/06/P-1_main.png``, next to ``P-1_main.png.json``.

* Atomic: the bytes go to a hidden temporary file in the destination folder, are flushed to disk, then linked (or
  renamed) into place, so a reader never sees half a file. The sidecar is written the same way, after the image.
* Idempotent: the path is a function of the delivery (the date comes from the job id, not from the clock), so a retry
  finds its own file; a file already there with the same SHA-256 is left alone.
* Never destructive by default (``on_conflict="keep_both"``): a *different* image already at that path (a second job
  for the same record and template in the same month) is kept, and the new one is written as
  ``<stem>~<first 12 hex of its sha256>.<ext>``. ``on_conflict="replace"`` replaces it instead.
* Contained: every value substituted into the layout becomes a single path segment (separators, control characters
  and leading dots removed), the layout itself is checked when configured, and every folder is resolved (symlinks
  followed) and must stay under the resolved root. Symlinks inside the root that point inside it are followed.

The layout is a path template of :mod:`connectors.paths` (shared with the S3 and WebDAV connectors).

A root that is missing at delivery time (an unmounted share) is a RetryableError; no permission (or a read-only
file system) is a PermanentError; other I/O errors (a full disk) are retryable. ``test_connection`` checks that the
root exists, is a folder, and that a probe file can be created and removed in it.

Limits: containment is checked before each write, not enforced by the kernel: a local user who can write inside the
root and swaps a checked folder for a symlink between the check and the write can redirect one file. The root itself
is the operator's choice: the gateway can write wherever its process may.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors.base import (
    DAMConnector,
    Delivered,
    DeliveredAsset,
    Delivery,
    PermanentError,
    RetryableError,
    valid_target,
)
from connectors.paths import TEMPLATE_FIELDS, Subfolder, alternate_name, check_template, job_time, render_template


class FolderConfig(BaseModel):
    """Settings of a folder target."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(
        description="Absolute path of the root folder (a local folder or a mounted share). It must exist; "
        "sub-folders are created as needed.",
        min_length=1,
        max_length=1024,
    )
    layout: str = Field(
        default="{system}/{yyyy}/{mm}/{filename}",
        description="Where each image goes under the root. Placeholders: "
        + ", ".join("{" + k + "} (" + v + ")" for k, v in TEMPLATE_FIELDS.items())
        + ". The last segment must contain {filename}, {stem}, {asset_id} or {sha256}.",
        max_length=512,
    )
    on_conflict: Literal["keep_both", "replace"] = Field(
        default="keep_both",
        description="When a different image already has the path: keep_both writes the new one as "
        "<stem>~<sha256 prefix>.<ext>; replace overwrites the old one (and its sidecar).",
    )

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if "\x00" in value or not os.path.isabs(value):
            raise ValueError("must be an absolute path")
        return value

    @field_validator("layout")
    @classmethod
    def _layout(cls, value: str) -> str:
        return check_template(value, file_name=True)


class FolderTarget(BaseModel):
    """Per-delivery fields of a folder target."""

    model_config = ConfigDict(extra="forbid")

    subfolder: Subfolder = Field(
        default=None,
        description="Optional folder under the root, before the layout (e.g. 'campaigns/summer'); plain names only.",
        max_length=200,
    )


@dataclass(frozen=True)
class _Placed:
    root: Path  # the resolved root
    path: Path  # relative to the root
    reused: bool  # the same bytes were already there


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_TEMP_PREFIX = ".imagegate-"


class FolderConnector(DAMConnector[FolderConfig]):
    """Writes each image (atomically, with a ``<file>.json`` sidecar) under a folder; see the module docstring."""

    kind: ClassVar[str] = "folder"
    title: ClassVar[str] = "Folder (local or mounted share)"
    Config: ClassVar[type[BaseModel]] = FolderConfig
    Target: ClassVar[type[BaseModel]] = FolderTarget

    async def test_connection(self) -> str:
        return await asyncio.to_thread(self._probe)

    def _probe(self) -> str:
        root = Path(self.config.path)
        if not root.exists():
            raise PermanentError(f"the folder {root} does not exist")
        if not root.is_dir():
            raise PermanentError(f"{root} is not a folder")
        probe = root / f"{_TEMP_PREFIX}probe-{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
            try:
                os.write(fd, b"imagegate")
            finally:
                os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise PermanentError(f"the folder {root} is not writable: {exc.strerror or exc}") from None
        return f"the folder {root} exists and is writable"

    async def deliver(self, delivery: Delivery) -> Delivered:
        target = valid_target(FolderTarget, delivery)
        prefix = target.subfolder.split("/") if target.subfolder else []
        files: list[dict[str, Any]] = []
        root = Path(self.config.path)
        for asset in delivery.assets:
            segments = prefix + render_template(self.config.layout, delivery, asset)
            if segments[-1].endswith(".json"):
                raise PermanentError("the layout gives a .json file name, which is reserved for sidecars")
            data = await asset.read()
            digest = hashlib.sha256(data).hexdigest()
            if digest != asset.sha256:
                raise PermanentError(f"the bytes of {asset.id} do not match its recorded sha256")
            sidecar = _sidecar(delivery, asset, len(data))
            placed = await asyncio.to_thread(self._write, segments, data, asset.sha256, sidecar)
            root = placed.root
            files.append(
                {
                    "asset_id": asset.id,
                    "path": placed.path.as_posix(),
                    "sidecar": placed.path.as_posix() + ".json",
                    "reused": placed.reused,
                }
            )
        return Delivered(
            external_id="\n".join(f["path"] for f in files),
            url=(root / files[0]["path"]).as_uri() if files else None,
            detail={"root": str(root), "files": files},
        )

    # -- blocking part, run in a worker thread ------------------------------------------------------------------

    def _write(self, segments: list[str], data: bytes, sha256: str, sidecar: dict[str, Any]) -> _Placed:
        try:
            root = Path(self.config.path).resolve(strict=True)
        except OSError:
            # An unmounted share looks like this: the operator can fix it, so the relay should come back.
            raise RetryableError(f"the folder {self.config.path} does not exist (not mounted?)") from None
        try:
            if not root.is_dir():
                raise PermanentError(f"{root} is not a folder")
            directory = _make_dirs(root, segments[:-1])
            name, reused = _place(directory, segments[-1], data, sha256, replace=self.config.on_conflict == "replace")
            sidecar["file"] = name
            _atomic_write(directory, name + ".json", _json_bytes(sidecar), replace=True)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise PermanentError(f"cannot write under {root}: {exc.strerror}") from None
            raise RetryableError(f"writing under {root} failed: {exc.strerror or exc}") from None
        return _Placed(root=root, path=(directory / name).relative_to(root), reused=reused)


def _make_dirs(root: Path, segments: list[str]) -> Path:
    """Create ``segments`` under ``root`` one level at a time; every level, resolved, must stay under ``root``."""
    current = root
    for segment in segments:
        candidate = current / segment
        with contextlib.suppress(FileExistsError):
            candidate.mkdir(mode=0o755)
        real = candidate.resolve(strict=True)
        if not real.is_relative_to(root):
            raise PermanentError(f"{candidate.relative_to(root)} leads outside the root folder")
        if not real.is_dir():
            raise PermanentError(f"{candidate.relative_to(root)} exists and is not a folder")
        current = real
    return current


def _existing_sha256(path: Path, size: int) -> str | None:
    """SHA-256 of the regular file at ``path``; None if nothing is there; "" if something else is (a folder, a
    symlink, a file of another size)."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            return ""
        raise
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size != size:
            return ""
        digest = hashlib.sha256()
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
        return digest.hexdigest()


def _place(directory: Path, name: str, data: bytes, sha256: str, *, replace: bool) -> tuple[str, bool]:
    """Put ``data`` at ``directory/name`` (or its alternate name); returns the name used and whether the same bytes
    were already there."""
    candidates = [name] if replace else [name, alternate_name(name, sha256)]
    for candidate in candidates:
        existing = _existing_sha256(directory / candidate, len(data))
        if existing == sha256:
            return candidate, True
        if existing is not None and not replace:
            continue
        if _atomic_write(directory, candidate, data, replace=replace):
            return candidate, False
        # Someone else created it between our look and our link: look again.
        if _existing_sha256(directory / candidate, len(data)) == sha256:
            return candidate, True
    raise PermanentError(f"{name} and {candidates[-1]} already exist in {directory} with other content")


def _atomic_write(directory: Path, name: str, data: bytes, *, replace: bool) -> bool:
    """Write ``data`` to a temporary file in ``directory``, flush it, then move it to ``name``. Without ``replace`` the
    move is a hard link, which fails if ``name`` exists (returns False); file systems without hard links fall back to
    a rename after an existence check."""
    temp = directory / f"{_TEMP_PREFIX}{secrets.token_hex(8)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        final = directory / name
        if replace:
            os.replace(temp, final)
        else:
            try:
                os.link(temp, final, follow_symlinks=False)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
                if os.path.lexists(final):
                    return False
                os.rename(temp, final)
        _fsync_dir(directory)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _sidecar(delivery: Delivery, asset: DeliveredAsset, size: int) -> dict[str, Any]:
    """The sidecar's content: no timestamp of its own, so a re-delivery writes the same bytes."""
    return {
        "asset_id": asset.id,
        "file": None,  # filled in with the name actually used
        "sha256": asset.sha256,
        "bytes": size,
        "width": asset.width,
        "height": asset.height,
        "format": asset.format,
        "content_type": asset.content_type,
        "seed": asset.seed,
        "index": asset.index,
        "tags": list(asset.tags),
        "caption": asset.caption,
        "prompt": delivery.metadata.get("prompt"),
        "metadata": delivery.metadata,
        "job_id": asset.job_id,
        "batch_id": delivery.batch_id,
        "system": delivery.system,
        "event": delivery.event,
        "delivery_id": delivery.id,
        "idempotency_key": delivery.idempotency_key,
        "job_created_at": job_time(delivery, asset).isoformat(timespec="milliseconds"),
    }


def _json_bytes(value: dict[str, Any]) -> bytes:
    return (json.dumps(value, ensure_ascii=False, indent=2, sort_keys=False, default=str) + "\n").encode("utf-8")
