"""The outbound client (gateway.common.outbound) against real loopback listeners: refused URLs never connect."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpcore
import pytest

from gateway.common.outbound import FetchFailed, OutboundClient
from policies.ssrf import OutboundPolicy, UrlRefused
from tests.conftest import make_settings
from tests.gateway.security.loopback import Listener, answer, closed_port, http_response
from tests.policies.fake_dns import FakeDNS

PNG_ISH = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


class RecordingBackend(httpcore.AnyIOBackend):
    """The real connecting backend, noting which host each connection was opened to."""

    def __init__(self) -> None:
        super().__init__()
        self.hosts: list[str] = []

    async def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        self.hosts.append(host)
        return await super().connect_tcp(host, port, *args, **kwargs)


def client(allowlist: str = "", **kwargs: Any) -> OutboundClient:
    kwargs.setdefault("timeout", 2.0)
    kwargs.setdefault("max_bytes", 64 * 1024)
    return OutboundClient(OutboundPolicy.from_setting(allowlist), **kwargs)


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("http://127.0.0.1:{port}/", "address_not_public"),
        ("http://127.1:{port}/", "invalid_host"),
        ("http://2130706433:{port}/", "invalid_host"),
        ("http://0x7f000001:{port}/", "invalid_host"),
        ("http://0177.0.0.1:{port}/", "invalid_host"),
        ("http://[::ffff:127.0.0.1]:{port}/", "address_not_public"),
        ("http://[::1]:{port}/", "address_not_public"),
        ("http://localhost:{port}/", "address_not_public"),
        ("http://good.com@127.0.0.1:{port}/", "userinfo_not_allowed"),
        ("http://images.example.test:{port}/", "address_not_public"),  # resolves to 127.0.0.1
        ("http://mixed.example.test:{port}/", "address_not_public"),  # resolves to public + 127.0.0.1
        ("gopher://127.0.0.1:{port}/_GET", "scheme_not_allowed"),
    ],
)
async def test_a_refused_url_never_reaches_the_listener(template: str, reason: str) -> None:
    dns = FakeDNS({"images.example.test": [["127.0.0.1"]], "mixed.example.test": [["93.184.215.14", "127.0.0.1"]]})
    async with Listener(answer(http_response(body=b"secret"))) as listener, client(resolver=dns) as outbound:
        with pytest.raises(UrlRefused) as refused:
            await outbound.get_bytes(template.format(port=listener.port))
    assert refused.value.reason == reason, refused.value.message
    assert listener.connections == 0


async def test_localhost_is_refused_with_the_system_resolver_too() -> None:
    async with Listener() as listener, client() as outbound:
        with pytest.raises(UrlRefused):
            await outbound.get_bytes(listener.url(host="localhost"))
    assert listener.connections == 0


async def test_an_allowlisted_loopback_server_is_fetched() -> None:
    async with Listener(answer(http_response(body=PNG_ISH))) as listener, client("127.0.0.1/32") as outbound:
        assert await outbound.get_bytes(listener.url("/images/cat.png")) == PNG_ISH
    assert listener.connections == 1
    assert listener.requests[0].startswith(b"GET /images/cat.png HTTP/1.1\r\n")
    assert b"accept-encoding: identity" in listener.requests[0].lower()


async def test_host_header_is_the_name_while_the_connection_goes_to_the_validated_address() -> None:
    dns = FakeDNS({"images.example.test": [["127.0.0.1"]]})
    backend = RecordingBackend()
    outbound = client("images.example.test", resolver=dns, network_backend=backend)
    async with Listener(answer(http_response(body=b"ok"))) as listener, outbound:
        assert await outbound.get_bytes(listener.url(host="images.example.test")) == b"ok"
    assert f"host: images.example.test:{listener.port}\r\n".encode() in listener.requests[0].lower()
    assert backend.hosts == ["127.0.0.1"]
    assert dns.calls == ["images.example.test"]


async def test_dns_rebinding_connects_to_the_validated_address_and_a_rebound_answer_is_refused() -> None:
    # First answer 127.0.0.1 (allowlisted), later answers 127.0.0.2 (not): the connection goes to the address that
    # was checked, never to a second lookup's answer.
    dns = FakeDNS({"rebind.example.test": [["127.0.0.1"], ["127.0.0.2"]]})
    backend = RecordingBackend()
    async with Listener(answer(http_response(body=b"first"))) as good:
        # Same port on another loopback address: where a second lookup's answer would lead.
        rebound = Listener(answer(http_response(body=b"rebound")), host="127.0.0.2", port=good.port)
        first = client("127.0.0.1/32", resolver=dns, network_backend=backend)
        # A second client has no pooled connection: it looks the name up again, and that answer is checked too.
        second = client("127.0.0.1/32", resolver=dns, network_backend=backend)
        async with rebound, first, second:
            assert await first.get_bytes(good.url(host="rebind.example.test")) == b"first"
            with pytest.raises(UrlRefused) as refused:
                await second.get_bytes(good.url(host="rebind.example.test"))
    assert refused.value.reason == "address_not_public"
    assert backend.hosts == ["127.0.0.1"]
    assert (good.connections, rebound.connections) == (1, 0)


async def test_a_redirect_is_refused_and_its_target_never_contacted() -> None:
    async with Listener(answer(http_response(body=b"internal"))) as target:
        location = {"Location": target.url("/admin")}
        async with Listener(answer(http_response(302, headers=location))) as first, client("127.0.0.1/32") as outbound:
            with pytest.raises(UrlRefused) as refused:
                await outbound.get_bytes(first.url())
            with pytest.raises(UrlRefused):
                await outbound.request("POST", first.url(), json={"a": 1})
    assert refused.value.reason == "redirect_not_followed"
    assert target.url() not in refused.value.message
    assert (first.connections, target.connections) == (2, 0)


@pytest.mark.parametrize("content_length", [True, False])
async def test_a_body_over_the_cap_is_refused(content_length: bool) -> None:
    big = http_response(body=b"x" * 5000, content_length=content_length)
    async with Listener(answer(big)) as listener, client("127.0.0.1/32", max_bytes=1024) as outbound:
        with pytest.raises(UrlRefused) as refused:
            await outbound.get_bytes(listener.url())
    assert refused.value.reason == "too_large"


@pytest.mark.parametrize("content_length", [True, False])
async def test_a_body_of_exactly_the_cap_is_read(content_length: bool) -> None:
    exact = http_response(body=b"x" * 1024, content_length=content_length)
    async with Listener(answer(exact)) as listener, client("127.0.0.1/32", max_bytes=1024) as outbound:
        assert await outbound.get_bytes(listener.url()) == b"x" * 1024


async def test_a_compressed_body_is_refused() -> None:
    gzipped = http_response(body=b"\x1f\x8b" + b"\0" * 20, headers={"Content-Encoding": "gzip"})
    async with Listener(answer(gzipped)) as listener, client("127.0.0.1/32") as outbound:
        with pytest.raises(UrlRefused) as refused:
            await outbound.get_bytes(listener.url())
    assert refused.value.reason == "content_encoding_not_allowed"


async def test_a_server_that_never_answers_times_out() -> None:
    async with Listener() as listener, client("127.0.0.1/32", timeout=0.3) as outbound:
        started = time.monotonic()
        with pytest.raises(FetchFailed) as failed:
            await outbound.get_bytes(listener.url())
    assert failed.value.reason == "timeout"
    assert "did not answer in time" in failed.value.message
    assert time.monotonic() - started < 3
    assert listener.connections == 1


async def test_a_server_dripping_its_body_hits_the_total_deadline() -> None:
    async def drip(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.05)

    async with Listener(drip) as listener, client("127.0.0.1/32", timeout=0.5, total_timeout=0.8) as outbound:
        started = time.monotonic()
        with pytest.raises(FetchFailed) as failed:
            await outbound.get_bytes(listener.url())
    assert failed.value.reason == "timeout"
    assert time.monotonic() - started < 3


async def test_a_closed_port_is_unreachable() -> None:
    async with client("127.0.0.1/32") as outbound:
        with pytest.raises(FetchFailed) as failed:
            await outbound.get_bytes(f"http://127.0.0.1:{closed_port()}/")
    assert failed.value.reason == "unreachable"


async def test_a_non_2xx_answer_fails_get_bytes_but_request_returns_it() -> None:
    not_found = http_response(404, b"no such image")
    async with Listener(answer(not_found)) as listener, client("127.0.0.1/32") as outbound:
        with pytest.raises(FetchFailed) as failed:
            await outbound.get_bytes(listener.url())
        response = await outbound.request("POST", listener.url("/hook"), json={"event": "job.succeeded"})
    assert (failed.value.reason, failed.value.status_code) == ("http_status", 404)
    assert (response.status_code, response.content) == (404, b"no such image")
    assert listener.requests[1].startswith(b"POST /hook HTTP/1.1\r\n")


async def test_proxy_variables_in_the_environment_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    async with Listener(answer(http_response(body=b"via proxy"))) as proxy:
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, proxy.url())
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with Listener(answer(http_response(body=b"direct"))) as listener, client("127.0.0.1/32") as outbound:
            assert await outbound.get_bytes(listener.url()) == b"direct"
    assert proxy.connections == 0


def test_from_settings_uses_the_outbound_settings(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, outbound_allowlist="crm.internal, 10.1.0.0/16", outbound_timeout_seconds=3.5, outbound_max_bytes=2048
    )
    outbound = OutboundClient.from_settings(settings)
    assert outbound.policy == OutboundPolicy.from_setting("crm.internal, 10.1.0.0/16")
    assert (outbound.timeout, outbound.max_bytes) == (3.5, 2048)
