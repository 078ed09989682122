"""ComfyUI's input/, output/ and temp/ folders, kept in memory.

Paths follow ``folder_paths`` and ``server.py``: a file is (folder type, subfolder, filename); a subfolder that
normalises outside its folder is refused; ``"name.png [output]"`` annotations pick the folder. SaveImage names
are ``<prefix>_<counter:05>_.png`` with the counter one past the highest existing one for that prefix
(``get_save_image_path``). Output and temp files beyond ``max_bytes`` are dropped oldest first (a real server
keeps them on disk; asking for an evicted one then answers 404, as for a file deleted by hand).
"""

from __future__ import annotations

import hashlib
import mimetypes
import posixpath
import re
from collections import OrderedDict

FOLDER_TYPES = ("input", "output", "temp")
ANNOTATION = re.compile(r"^(?P<name>.*) \[(?P<type>input|output|temp)\]$")
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}

Key = tuple[str, str, str]


class PathEscape(ValueError):
    """A subfolder or file name that leaves its folder."""


def normalise_subfolder(subfolder: str) -> str:
    """``subfolder`` relative to its folder ("" for the folder itself); PathEscape when it leaves it."""
    root = "/root"
    full = posixpath.normpath(posixpath.join(root, subfolder))
    if posixpath.commonpath((full, root)) != root:
        raise PathEscape(subfolder)
    relative = posixpath.relpath(full, root)
    return "" if relative == "." else relative


def split_annotation(name: str, default_type: str) -> tuple[str, str]:
    """``"x.png [output]"`` -> ("x.png", "output"); a plain name keeps ``default_type``."""
    match = ANNOTATION.match(name)
    if match:
        return match.group("name"), match.group("type")
    return name, default_type


def content_type(filename: str) -> str:
    """What aiohttp's FileResponse sends for ``filename``."""
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


class FileStore:
    """The three ComfyUI folders; thread-unsafe, used from the event loop only."""

    def __init__(self, max_bytes: int = 512 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._files: OrderedDict[Key, bytes] = OrderedDict()
        self._evictable_bytes = 0
        self._counters: dict[tuple[str, str, str], int] = {}

    def get(self, folder: str, subfolder: str, filename: str) -> bytes | None:
        return self._files.get((folder, subfolder, filename))

    def exists(self, folder: str, subfolder: str, filename: str) -> bool:
        return (folder, subfolder, filename) in self._files

    def put(self, folder: str, subfolder: str, filename: str, data: bytes) -> None:
        key = (folder, subfolder, filename)
        old = self._files.pop(key, None)
        if old is not None and folder != "input":
            self._evictable_bytes -= len(old)
        self._files[key] = data
        if folder != "input":
            self._evictable_bytes += len(data)
            self._evict()

    def _evict(self) -> None:
        for key in list(self._files):
            if self._evictable_bytes <= self.max_bytes:
                return
            if key[0] != "input":
                self._evictable_bytes -= len(self._files.pop(key))

    def input_images(self) -> list[str]:
        """LoadImage's list: the image files directly in input/, sorted (subfolders are not listed)."""
        names = [
            name
            for folder, subfolder, name in self._files
            if folder == "input" and subfolder == "" and posixpath.splitext(name)[1].lower() in IMAGE_EXTENSIONS
        ]
        return sorted(names)

    def resolve(self, name: str, default_type: str = "input") -> Key:
        """Where an annotated relative path (``"sub/x.png [input]"``) points; PathEscape when outside."""
        path, folder = split_annotation(name, default_type)
        directory, filename = posixpath.split(path)
        return folder, normalise_subfolder(directory), filename

    def digest(self, key: Key) -> str:
        data = self._files.get(key)
        return hashlib.sha256(data).hexdigest() if data is not None else ""

    def next_counter(self, folder: str, subfolder: str, prefix: str) -> int:
        """One past the highest ``<prefix>_NNNNN_`` counter in that folder (1 for a new prefix)."""
        key = (folder, subfolder, prefix)
        if key not in self._counters:
            pattern = re.compile(re.escape(prefix) + r"_(\d{5,})_?\.")
            found = [
                int(match.group(1))
                for (f, s, name) in self._files
                if f == folder and s == subfolder and (match := pattern.match(name))
            ]
            self._counters[key] = max(found, default=0)
        self._counters[key] += 1
        return self._counters[key]

    def upload_name(self, folder: str, subfolder: str, filename: str, data: bytes, overwrite: bool) -> tuple[str, bool]:
        """The name an upload is stored under and whether it is a duplicate (same bytes already there).

        As ``image_upload``: without ``overwrite`` an existing different file makes ``"name (1).png"``, ...
        """
        if overwrite:
            return filename, False
        stem, ext = posixpath.splitext(filename)
        candidate, i = filename, 1
        while (existing := self.get(folder, subfolder, candidate)) is not None:
            if hashlib.sha256(existing).digest() == hashlib.sha256(data).digest():
                return candidate, True
            candidate = f"{stem} ({i}){ext}"
            i += 1
        return candidate, False
