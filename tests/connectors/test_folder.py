"""The folder connector against a real temporary folder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from connectors.base import DeliveryError, PermanentError
from connectors.folder import FolderConfig, FolderConnector
from connectors.paths import job_time
from gateway.common.ids import new_id
from tests.connectors.support import asset, delivery, outbound, png


def connector(root: Path, **config: object) -> FolderConnector:
    return FolderConnector(FolderConfig.model_validate({"path": str(root), **config}), http=outbound())


def month_dir(root: Path, item: object) -> Path:
    when = job_time(item)  # type: ignore[arg-type]
    return root / "crm" / f"{when.year:04d}" / f"{when.month:02d}"


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


async def test_writes_the_file_and_its_sidecar(tmp_path: Path) -> None:
    image = asset()
    item = delivery(image)
    result = await connector(tmp_path).deliver(item)

    folder = month_dir(tmp_path, item)
    written = folder / "P-1_main.png"
    assert written.read_bytes() == png()
    sidecar = json.loads((folder / "P-1_main.png.json").read_text())
    assert sidecar["asset_id"] == image.id
    assert sidecar["sha256"] == hashlib.sha256(png()).hexdigest()
    assert (sidecar["bytes"], sidecar["width"], sidecar["height"]) == (len(png()), 64, 48)
    assert sidecar["tags"] == ["product", "main"]
    assert sidecar["prompt"] == "a lamp"
    assert sidecar["metadata"]["record_id"] == "P-1"
    assert sidecar["idempotency_key"] == item.idempotency_key
    assert sidecar["file"] == "P-1_main.png"
    assert result.external_id == written.relative_to(tmp_path).as_posix()
    assert result.url == written.as_uri()
    # No temporary file left behind; the image is readable by others (a DAM ingest), not 0600.
    assert tree(tmp_path) == [
        written.relative_to(tmp_path).as_posix(),
        written.relative_to(tmp_path).as_posix() + ".json",
    ]
    assert written.stat().st_mode & stat.S_IRGRP


async def test_the_date_folders_come_from_the_job_id_not_the_clock(tmp_path: Path) -> None:
    job_id = new_id("job")
    item = delivery(dataclasses.replace(asset(), job_id=job_id), job_id=job_id)
    await connector(tmp_path).deliver(item)
    now = datetime.now(UTC)
    assert (tmp_path / "crm" / f"{now.year:04d}" / f"{now.month:02d}" / "P-1_main.png").exists()
    # A retry months later (same ids) goes to the same place.
    assert job_time(item) == job_time(dataclasses.replace(item, attempt=7))


async def test_redelivery_is_harmless(tmp_path: Path) -> None:
    item = delivery(asset())
    first = await connector(tmp_path).deliver(item)
    before = tree(tmp_path)
    mtime = (tmp_path / first.external_id).stat().st_mtime_ns  # type: ignore[operator]
    second = await connector(tmp_path).deliver(dataclasses.replace(item, attempt=2))
    assert second.external_id == first.external_id
    assert tree(tmp_path) == before
    assert (tmp_path / second.external_id).stat().st_mtime_ns == mtime  # type: ignore[operator]
    assert second.detail["files"][0]["reused"] is True


async def test_different_image_under_the_same_name_is_kept_beside(tmp_path: Path) -> None:
    await connector(tmp_path).deliver(delivery(asset()))
    other = png(colour=(10, 200, 10))
    result = await connector(tmp_path).deliver(delivery(asset(other)))
    folder = month_dir(tmp_path, delivery(asset()))
    sha = hashlib.sha256(other).hexdigest()
    assert (folder / "P-1_main.png").read_bytes() == png()  # the first is untouched
    assert (folder / f"P-1_main~{sha[:12]}.png").read_bytes() == other
    assert json.loads((folder / f"P-1_main~{sha[:12]}.png.json").read_text())["sha256"] == sha
    assert result.external_id.endswith(f"P-1_main~{sha[:12]}.png")  # type: ignore[union-attr]
    # ... and delivering it again finds it there.
    again = await connector(tmp_path).deliver(delivery(asset(other)))
    assert again.external_id == result.external_id


async def test_replace_mode_overwrites(tmp_path: Path) -> None:
    await connector(tmp_path, on_conflict="replace").deliver(delivery(asset()))
    other = png(colour=(10, 200, 10))
    await connector(tmp_path, on_conflict="replace").deliver(delivery(asset(other)))
    folder = month_dir(tmp_path, delivery(asset()))
    assert (folder / "P-1_main.png").read_bytes() == other
    assert len(list(folder.iterdir())) == 2


async def test_subfolder_and_custom_layout(tmp_path: Path) -> None:
    item = delivery(asset(), target={"subfolder": "campaigns/summer"})
    result = await connector(tmp_path, layout="{record_id}/{role}/{asset_id}.{ext}").deliver(item)
    expected = f"campaigns/summer/P-1/main/{item.assets[0].id}.png"
    assert result.external_id == expected
    assert (tmp_path / expected).read_bytes() == png()


@pytest.mark.parametrize("subfolder", ["../escape", "a/../../b", "/etc", "a\\..\\b", ".hidden", "a/./b", "x\x00y"])
async def test_traversal_through_the_target_is_refused(tmp_path: Path, subfolder: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(PermanentError, match="invalid target"):
        await connector(root).deliver(delivery(asset(), target={"subfolder": subfolder}))
    assert tree(tmp_path) == []


async def test_traversal_through_values_stays_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    image = dataclasses.replace(asset(), filename="../../../../escape.png")
    item = delivery(
        image,
        system="../..",
        metadata={"record_id": "../../etc/passwd", "role": "..", "prompt": "x"},
    )
    result = await connector(root, layout="{system}/{record_id}/{role}/{filename}").deliver(item)
    files = tree(tmp_path)
    assert all(f.startswith("root/") for f in files), files
    # Each value is one segment: separators become "_", leading dots go; nothing can climb out.
    assert result.external_id == "_/_.._etc_passwd/_/_.._.._.._escape.png"


@pytest.mark.parametrize(
    "layout",
    [
        "../{filename}",
        "/abs/{filename}",
        "{system}/../{filename}",
        "{system}",
        "{nope}/{filename}",
        "{system!r}/{filename}",
    ],
)
def test_unsafe_layouts_are_refused_when_configured(tmp_path: Path, layout: str) -> None:
    with pytest.raises(ValidationError):
        FolderConfig(path=str(tmp_path), layout=layout)


def test_relative_root_is_refused() -> None:
    with pytest.raises(ValidationError):
        FolderConfig(path="relative/dir")


async def test_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "crm").symlink_to(outside, target_is_directory=True)
    with pytest.raises(PermanentError, match="outside the root"):
        await connector(root).deliver(delivery(asset()))
    assert list(outside.iterdir()) == []


async def test_symlinked_file_in_the_way_is_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    folder = month_dir(root, delivery(asset()))
    folder.mkdir(parents=True)
    (folder / "P-1_main.png").symlink_to(victim)
    await connector(root).deliver(delivery(asset()))
    assert victim.read_text() == "keep me"
    assert (folder / "P-1_main.png").is_symlink()  # left alone; the image went beside it


async def test_missing_root_on_delivery_is_retryable(tmp_path: Path) -> None:
    with pytest.raises(DeliveryError) as caught:
        await connector(tmp_path / "not-mounted").deliver(delivery(asset()))
    assert caught.value.retryable


async def test_connection_ok(tmp_path: Path) -> None:
    assert "writable" in await connector(tmp_path).test_connection()
    assert list(tmp_path.iterdir()) == []  # the probe file is gone


async def test_connection_on_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="does not exist"):
        await connector(tmp_path / "missing").test_connection()


async def test_connection_on_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(PermanentError, match="not a folder"):
        await connector(tmp_path / "file").test_connection()


_PROBE = """
import asyncio, sys
from connectors.base import DeliveryError
from connectors.folder import FolderConfig, FolderConnector
connector = FolderConnector(FolderConfig(path=sys.argv[1]), http=None)
try:
    print(asyncio.run(connector.test_connection()))
except DeliveryError as exc:
    print(type(exc).__name__, exc.message)
"""


def _without_dac_override() -> None:
    """In the child, before exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so that root
    (which the test suite may run as) is held to permission bits after exec."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _probe_in_child(path: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
        preexec_fn=_without_dac_override if os.geteuid() == 0 else None,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_connection_on_a_read_only_folder(tmp_path: Path) -> None:
    writable = tmp_path / "writable"
    readonly = tmp_path / "readonly"
    writable.mkdir()
    readonly.mkdir()
    readonly.chmod(0o555)
    try:
        # The same child setup succeeds on a writable folder, so the refusal below is the permission bits.
        assert "exists and is writable" in _probe_in_child(writable)
        answer = _probe_in_child(readonly)
        assert answer.startswith("PermanentError"), answer
        assert "not writable" in answer
        assert list(readonly.iterdir()) == []
    finally:
        readonly.chmod(0o755)
