"""Image-to-image inputs given as URLs (gateway.jobs.inputs.store_input): fetched through the guard, or a 422."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any, cast

import pytest
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.assets.storage import LocalAssetStore
from gateway.common.outbound import FetchFailed, OutboundClient
from gateway.errors import ValidationFailed
from gateway.jobs.inputs import store_input
from policies.ssrf import OutboundPolicy, UrlRefused
from tests.gateway.security.loopback import Listener, answer, closed_port, http_response

# The URL path never touches the database.
NO_SESSION = cast(AsyncSession, None)


def _image(fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 32), (20, 120, 200)).save(buffer, format=fmt)
    return buffer.getvalue()


async def _store(tmp_path: Path, value: str, fetch: Any = None) -> str:
    store = LocalAssetStore(tmp_path / "assets")
    return await store_input(NO_SESSION, store, system_id="sys_test", value=value, field="init_image", fetch=fetch)


def _error(exc: pytest.ExceptionInfo[ValidationFailed]) -> dict[str, Any]:
    assert exc.value.status_code == 422
    body = exc.value.envelope()["error"]
    assert body["details"][0]["field"] == "init_image"
    return cast(dict[str, Any], body)


class FakeFetch:
    """Answers every URL with ``result`` (bytes, or an exception to raise) and records the URLs."""

    def __init__(self, result: bytes | Exception) -> None:
        self.result = result
        self.urls: list[str] = []

    async def __call__(self, url: str) -> bytes:
        self.urls.append(url)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


async def test_a_fetched_png_is_stored_as_it_is(tmp_path: Path) -> None:
    png = _image()
    fetch = FakeFetch(png)
    sha = await _store(tmp_path, "https://images.example.com/cat.png", fetch)
    assert sha == hashlib.sha256(png).hexdigest()
    assert LocalAssetStore(tmp_path / "assets").path_for(sha, "png").read_bytes() == png
    assert fetch.urls == ["https://images.example.com/cat.png"]


async def test_a_fetched_jpeg_is_stored_as_png(tmp_path: Path) -> None:
    sha = await _store(tmp_path, "http://images.example.com/cat.jpg", FakeFetch(_image("JPEG")))
    stored = LocalAssetStore(tmp_path / "assets").path_for(sha, "png").read_bytes()
    with Image.open(io.BytesIO(stored)) as image:
        assert (image.format, image.size) == ("PNG", (48, 32))


async def test_a_url_without_a_fetcher_is_422(tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed) as exc:
        await _store(tmp_path, "https://images.example.com/cat.png")
    assert _error(exc)["code"] == "validation_error"


async def test_a_refused_url_is_422_url_refused_with_the_reason(tmp_path: Path) -> None:
    fetch = FakeFetch(UrlRefused("address_not_public", "169.254.169.254 is not a public address"))
    with pytest.raises(ValidationFailed) as exc:
        await _store(tmp_path, "http://169.254.169.254/latest/meta-data/", fetch)
    body = _error(exc)
    assert body["code"] == "url_refused"
    assert body["details"][0]["reason"] == "address_not_public"
    assert "init_image" in body["message"]


async def test_a_failed_fetch_is_422_url_unreachable_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed) as exc:
        await _store(tmp_path, "https://images.example.com/slow.png", FakeFetch(FetchFailed("timeout", "slow")))
    body = _error(exc)
    assert (body["code"], body["details"][0]["reason"]) == ("url_unreachable", "timeout")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://127.0.0.1:6379/_INFO", "HTTP://example.com/a.png"])
async def test_other_schemes_are_refused_without_fetching(tmp_path: Path, url: str) -> None:
    fetch = FakeFetch(_image())
    with pytest.raises(ValidationFailed) as exc:
        await _store(tmp_path, url, fetch)
    body = _error(exc)
    assert (body["code"], body["details"][0]["reason"]) == ("url_refused", "scheme_not_allowed")
    assert fetch.urls == []


@pytest.mark.parametrize("data", [b"", b"<html>not an image</html>"])
async def test_a_fetched_body_that_is_not_an_image_is_422(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(ValidationFailed) as exc:
        await _store(tmp_path, "https://images.example.com/cat.png", FakeFetch(data))
    assert _error(exc)["code"] == "validation_error"


def _client(allowlist: str = "") -> OutboundClient:
    return OutboundClient(OutboundPolicy.from_setting(allowlist), timeout=2.0, max_bytes=1024 * 1024)


async def test_a_png_from_an_allowlisted_loopback_server_is_stored(tmp_path: Path) -> None:
    png = _image()
    async with Listener(answer(http_response(body=png))) as listener, _client("127.0.0.1/32") as outbound:
        sha = await _store(tmp_path, listener.url("/cat.png"), outbound.get_bytes)
    assert sha == hashlib.sha256(png).hexdigest()
    assert listener.connections == 1


async def test_a_loopback_url_without_allowlist_is_url_refused_and_never_connected(tmp_path: Path) -> None:
    async with Listener(answer(http_response(body=_image()))) as listener, _client() as outbound:
        with pytest.raises(ValidationFailed) as exc:
            await _store(tmp_path, listener.url("/cat.png"), outbound.get_bytes)
    body = _error(exc)
    assert (body["code"], body["details"][0]["reason"]) == ("url_refused", "address_not_public")
    assert listener.connections == 0


async def test_a_closed_port_is_url_unreachable(tmp_path: Path) -> None:
    async with _client("127.0.0.1/32") as outbound:
        with pytest.raises(ValidationFailed) as exc:
            await _store(tmp_path, f"http://127.0.0.1:{closed_port()}/cat.png", outbound.get_bytes)
    body = _error(exc)
    assert (body["code"], body["details"][0]["reason"]) == ("url_unreachable", "unreachable")


async def test_a_404_is_url_unreachable(tmp_path: Path) -> None:
    async with Listener(answer(http_response(404))) as listener, _client("127.0.0.1/32") as outbound:
        with pytest.raises(ValidationFailed) as exc:
            await _store(tmp_path, listener.url("/missing.png"), outbound.get_bytes)
    body = _error(exc)
    assert (body["code"], body["details"][0]["reason"]) == ("url_unreachable", "http_status")
