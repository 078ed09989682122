"""The WebDAV connector against a real WsgiDAV server (served by cheroot) on a free loopback port."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from cheroot import wsgi
from pydantic import ValidationError
from wsgidav.wsgidav_app import WsgiDAVApp

from connectors.base import PermanentError, RetryableError
from connectors.paths import job_time
from connectors.webdav import NS, WebDAVConfig, WebDAVConnector
from tests.connectors.support import asset, delivery, outbound, png
from tests.processes import free_port

USER, PASSWORD = "imagegate", "s3cret-pw"


@dataclasses.dataclass
class Dav:
    url: str
    root: Path
    auth: tuple[str, str] | None

    def propfind(self, path: str) -> dict[str, str | None]:
        """Our properties of ``path``, read back with a plain PROPFIND."""
        body = (
            f'<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:ig="{NS}"><D:prop>'
            "<ig:asset-id/><ig:sha256/><ig:job-id/><ig:record-id/><ig:role/><ig:tags/><ig:prompt/>"
            "</D:prop></D:propfind>"
        )
        answer = httpx.request("PROPFIND", self.url + path, headers={"Depth": "0"}, content=body, auth=self.auth)
        assert answer.status_code == 207, answer.text
        found: dict[str, str | None] = {}
        for propstat in ET.fromstring(answer.content).iter("{DAV:}propstat"):
            props = propstat.find("{DAV:}prop")
            if "200" in (propstat.findtext("{DAV:}status") or "") and props is not None:
                for prop in props:
                    found[prop.tag.split("}")[1]] = prop.text
        return found


@contextmanager
def dav_server(root: Path, *, auth: bool = False, properties: bool = True) -> Iterator[Dav]:
    users: dict[str, Any] = {USER: {"password": PASSWORD}} if auth else {}
    config = {
        "provider_mapping": {"/dav": str(root)},
        "simple_dc": {"user_mapping": {"*": users if auth else True}},
        "http_authenticator": {"accept_basic": True, "accept_digest": False, "default_to_digest": False},
        "property_manager": True if properties else None,
        "lock_storage": True,
        "verbose": 0,
        "dir_browser": {"enable": False},
    }
    server = wsgi.Server(("127.0.0.1", 0), WsgiDAVApp(config), numthreads=4)
    server.prepare()
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield Dav(f"http://127.0.0.1:{server.bind_addr[1]}/dav/", root, (USER, PASSWORD) if auth else None)
    finally:
        server.stop()
        thread.join(timeout=10)


@pytest.fixture
def dav(tmp_path: Path) -> Iterator[Dav]:
    (tmp_path / "dav").mkdir()
    with dav_server(tmp_path / "dav") as server:
        yield server


def connector(dav: Dav, **config: Any) -> WebDAVConnector:
    values: dict[str, Any] = {"base_url": dav.url}
    if dav.auth:
        values.update(username=dav.auth[0], password=dav.auth[1])
    values.update(config)
    return WebDAVConnector(WebDAVConfig.model_validate(values), http=outbound())


def month(item: Any) -> str:
    when = job_time(item)
    return f"crm/{when.year:04d}/{when.month:02d}"


async def test_folders_created_file_stored_and_properties_set(dav: Dav) -> None:
    image = asset()
    item = delivery(image)
    result = await connector(dav).deliver(item)

    path = f"{month(item)}/P-1_main.png"
    assert result.external_id == dav.url + path
    assert (dav.root / path).read_bytes() == png()  # byte-identical on the server's disk
    for depth in (1, 2, 3):
        assert (dav.root / "/".join(path.split("/")[:depth])).is_dir()
    got = httpx.get(dav.url + path)
    assert got.content == png() and got.headers["content-type"] == "image/png"
    props = dav.propfind(path)
    assert props == {
        "asset-id": image.id,
        "sha256": image.sha256,
        "job-id": image.job_id,
        "record-id": "P-1",
        "role": "main",
        "tags": "product, main",
        "prompt": "a lamp",
    }
    assert result.detail["files"][0]["uploaded"] is True


async def test_redelivery_does_not_upload_again(dav: Dav) -> None:
    item = delivery(asset())
    first = await connector(dav).deliver(item)
    stored = dav.root / month(item) / "P-1_main.png"
    mtime = stored.stat().st_mtime_ns
    second = await connector(dav).deliver(dataclasses.replace(item, attempt=2))
    assert second.external_id == first.external_id
    assert second.detail["files"][0]["uploaded"] is False
    assert stored.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in stored.parent.iterdir()) == ["P-1_main.png"]


async def test_a_file_left_without_properties_is_recognised_by_its_bytes(dav: Dav) -> None:
    # An earlier attempt stored the file, then failed before PROPPATCH: the retry must not make a second copy.
    item = delivery(asset())
    folder = dav.root / month(item)
    folder.mkdir(parents=True)
    (folder / "P-1_main.png").write_bytes(png())
    result = await connector(dav).deliver(item)
    assert result.detail["files"][0]["uploaded"] is False
    assert sorted(p.name for p in folder.iterdir()) == ["P-1_main.png"]
    assert dav.propfind(f"{month(item)}/P-1_main.png")["sha256"] == item.assets[0].sha256


async def test_another_image_under_the_same_name_is_kept_beside(dav: Dav) -> None:
    await connector(dav).deliver(delivery(asset()))
    other = png(colour=(0, 0, 255))
    result = await connector(dav).deliver(delivery(asset(other)))
    folder = dav.root / month(delivery(asset()))
    sha = hashlib.sha256(other).hexdigest()
    assert (folder / "P-1_main.png").read_bytes() == png()
    assert (folder / f"P-1_main~{sha[:12]}.png").read_bytes() == other
    assert result.external_id.endswith(f"P-1_main~{sha[:12]}.png")  # type: ignore[union-attr]


async def test_replace_mode_overwrites(dav: Dav) -> None:
    await connector(dav, on_conflict="replace").deliver(delivery(asset()))
    other = png(colour=(0, 0, 255))
    await connector(dav, on_conflict="replace").deliver(delivery(asset(other)))
    stored = dav.root / month(delivery(asset())) / "P-1_main.png"
    assert stored.read_bytes() == other
    assert dav.propfind(f"{month(delivery(asset()))}/P-1_main.png")["sha256"] == hashlib.sha256(other).hexdigest()


async def test_odd_names_are_encoded_and_stay_inside(dav: Dav) -> None:
    image = dataclasses.replace(asset(), filename="../报价 #1?.png")
    item = delivery(image, target={"subfolder": "campaigns/summer sale"})
    result = await connector(dav, folder_template="{record_id}").deliver(item)
    assert result.external_id == dav.url + "P-1/campaigns/summer%20sale/_报价%20%231_.png".replace(
        "报价", "%E6%8A%A5%E4%BB%B7"
    )
    assert (dav.root / "P-1" / "campaigns" / "summer sale" / "_报价 #1_.png").read_bytes() == png()


async def test_properties_refused_are_a_permanent_error(tmp_path: Path) -> None:
    # WsgiDAV without a property manager keeps no dead properties: its PROPPATCH multistatus says 403 for each.
    with dav_server(tmp_path, properties=False) as dav, pytest.raises(PermanentError, match="PROPPATCH refused"):
        await connector(dav).deliver(delivery(asset()))


async def test_basic_auth(tmp_path: Path) -> None:
    with dav_server(tmp_path, auth=True) as dav:
        assert "a WebDAV folder" in await connector(dav).test_connection()
        await connector(dav).deliver(delivery(asset()))
        assert dav.propfind(f"{month(delivery(asset()))}/P-1_main.png")["asset-id"] == asset().id


async def test_wrong_password_is_permanent(tmp_path: Path) -> None:
    with dav_server(tmp_path, auth=True) as dav:
        with pytest.raises(PermanentError, match="401") as caught:
            await connector(dav, password="wrong").deliver(delivery(asset()))
        assert caught.value.status == 401
        with pytest.raises(PermanentError, match="wrong username or password"):
            await connector(dav, password="wrong").test_connection()
        assert not any(tmp_path.rglob("*.png"))


async def test_server_down_is_retryable() -> None:
    down = Dav(f"http://127.0.0.1:{free_port()}/dav/", Path("/nonexistent"), None)
    with pytest.raises(RetryableError, match="could not be reached"):
        await connector(down).deliver(delivery(asset()))
    with pytest.raises(RetryableError):
        await connector(down).test_connection()


async def test_connection_ok_and_not_a_folder(dav: Dav) -> None:
    assert "a WebDAV folder" in await connector(dav).test_connection()
    (dav.root / "file.txt").write_text("x")
    with pytest.raises(PermanentError, match="not a WebDAV folder"):
        await connector(dav, base_url=dav.url + "file.txt").test_connection()
    with pytest.raises(PermanentError, match="404"):
        await connector(dav, base_url=dav.url + "missing/").test_connection()


async def test_refused_address_is_permanent() -> None:
    metadata = Dav("http://169.254.169.254/latest/", Path("/nonexistent"), None)
    with pytest.raises(PermanentError, match="not a public address"):
        await connector(metadata).deliver(delivery(asset()))


@pytest.mark.parametrize(
    "config",
    [
        {"base_url": "http://user:pw@dav.example/"},
        {"base_url": "ftp://dav.example/"},
        {"base_url": "https://dav.example/?x=1"},
        {"base_url": "https://dav.example/", "folder_template": "../{system}"},
        {"base_url": "https://dav.example/", "password": "x"},
        {"base_url": "https://dav.example/", "username": "a:b", "password": "x"},
    ],
)
def test_bad_configs_are_refused(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        WebDAVConfig.model_validate(config)


async def test_bad_subfolder_is_permanent(dav: Dav) -> None:
    with pytest.raises(PermanentError, match="invalid target"):
        await connector(dav).deliver(delivery(asset(), target={"subfolder": "../../etc"}))
