"""Content-addressed image storage on a local folder: ``<root>/<sha[:2]>/<sha[2:4]>/<sha>.<ext>``."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


@dataclass(frozen=True)
class StoredObject:
    sha256: str
    size: int
    path: Path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalAssetStore:
    """Writes are atomic (temp file + rename) and idempotent: the same bytes land at the same path once."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, sha256: str, fmt: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / f"{sha256}.{EXTENSIONS[fmt]}"

    def _put(self, data: bytes, fmt: str) -> StoredObject:
        sha = hashlib.sha256(data).hexdigest()
        path = self.path_for(sha, fmt)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
                _fsync_dir(path.parent)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return StoredObject(sha256=sha, size=len(data), path=path)

    async def put(self, data: bytes, fmt: str) -> StoredObject:
        return await asyncio.to_thread(self._put, data, fmt)

    async def read(self, sha256: str, fmt: str) -> bytes:
        """The stored bytes (FileNotFoundError if they are gone)."""
        return await asyncio.to_thread(self.path_for(sha256, fmt).read_bytes)
