"""The one way the gateway fetches caller-given URLs: httpx behind the SSRF guard of :mod:`policies.ssrf`.

The guard sits in the network backend, below httpx and httpcore: every TCP connection resolves its host through
:func:`policies.ssrf.resolve_host` and connects to the validated address itself, so nothing between the check and the
connect can resolve the name again (DNS rebinding). Host header, TLS SNI and certificate checks still use the name in
the URL, because httpcore takes those from the URL, not from the socket. On top of that: no redirects, no proxies or
netrc from the environment, timeouts, and a cap on the body size.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpcore
import httpx

from policies.ssrf import (
    DEFAULT_PORTS,
    OutboundPolicy,
    Resolver,
    UrlRefused,
    normalize_host,
    parse_url,
    resolve_host,
)

if TYPE_CHECKING:
    from gateway.config import Settings

USER_AGENT = "imagegate-outbound"


class FetchFailed(Exception):
    """A permitted URL that could not be fetched: ``reason`` is ``timeout``, ``unreachable`` or ``http_status``."""

    def __init__(self, reason: str, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status_code = status_code


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to addresses the policy validated.

    ``inner`` makes the actual connections and only ever receives IP literals (default: httpcore's anyio backend).
    """

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        resolver: Resolver | None = None,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._policy = policy
        self._resolver = resolver
        self._inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface hands the timeout down
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await resolve_host(host, port, self._policy, self._resolver)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} took longer than {timeout} s") from None
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except httpcore.ConnectError as exc:
                # The next validated address may answer (a name with both an A and an AAAA record).
                error = exc
        assert error is not None  # resolve_host never returns no address
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise UrlRefused("invalid_url", "local sockets are not reachable")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, backend: GuardedBackend, *, verify: ssl.SSLContext | bool) -> None:
        super().__init__(verify=verify, trust_env=False, retries=0)
        # httpx 0.28 has no parameter for the network backend: its pool is replaced by one built the same way
        # (see httpx.AsyncHTTPTransport.__init__) that connects through the guard.
        limits = httpx.Limits()
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            retries=0,
            network_backend=backend,
        )


class OutboundClient:
    """Fetches caller-given URLs: validated addresses only, no redirects, bounded time and size.

    ``timeout`` bounds each phase (connect, each read, each write); ``total_timeout`` (default three times
    ``timeout``) bounds the whole exchange, so a server dripping one byte per second cannot hold a worker. Raises
    :class:`policies.ssrf.UrlRefused` for a URL or answer that is not allowed, :class:`FetchFailed` when a permitted
    URL cannot be fetched.
    """

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        timeout: float,
        max_bytes: int,
        total_timeout: float | None = None,
        resolver: Resolver | None = None,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.policy = policy
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.total_timeout = total_timeout if total_timeout is not None else 3 * timeout
        backend = GuardedBackend(policy, resolver=resolver, inner=network_backend)
        self._client = httpx.AsyncClient(
            transport=_GuardedTransport(backend, verify=verify),
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            trust_env=False,
            # Identity only: a compressed body's decoded size is not bounded by what is read off the wire.
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        )

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> OutboundClient:
        """A client with the allowlist, timeout and size cap of ``settings`` (``IMAGEGATE_OUTBOUND_*``)."""
        return cls(
            OutboundPolicy.from_setting(settings.outbound_allowlist),
            timeout=settings.outbound_timeout_seconds,
            max_bytes=settings.outbound_max_bytes,
            **kwargs,
        )

    async def __aenter__(self) -> OutboundClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self._client.aclose()

    def _check(self, url: str) -> str:
        """Static checks on the URL as both our parser and httpx read it; returns its host for messages."""
        parsed = parse_url(url, self.policy)
        try:
            seen = httpx.URL(url)
            seen_host = normalize_host(seen.raw_host.decode("ascii"))
        except (httpx.InvalidURL, UnicodeError, UrlRefused):
            raise UrlRefused("invalid_url", "the URL cannot be parsed") from None
        if seen.userinfo:
            raise UrlRefused("userinfo_not_allowed", "URLs with a user name or password are not allowed")
        seen_port = seen.port or DEFAULT_PORTS.get(seen.scheme)
        if (seen.scheme, str(seen_host), seen_port) != (parsed.scheme, parsed.host, parsed.port):
            raise UrlRefused("invalid_url", "the URL is ambiguous: its host reads differently to different parsers")
        return parsed.host

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send one request; the returned response's body has been read under the size cap.

        ``kwargs`` go to :meth:`httpx.AsyncClient.build_request` (headers, content, json, ...). A 3xx answer raises
        ``redirect_not_followed``; other statuses are returned as they are.
        """
        host = self._check(url)
        try:
            request = self._client.build_request(method, url, **kwargs)
        except (httpx.InvalidURL, UnicodeError):  # e.g. an IDNA label httpx cannot encode: "http://xn--a/"
            raise UrlRefused("invalid_url", "the URL cannot be parsed") from None
        try:
            async with asyncio.timeout(self.total_timeout):
                return await self._exchange(host, request)
        except (TimeoutError, httpx.TimeoutException):
            raise FetchFailed("timeout", f"{host} did not answer in time") from None
        except httpx.TransportError as exc:
            raise FetchFailed("unreachable", f"{host} could not be reached ({type(exc).__name__})") from None

    async def _exchange(self, host: str, request: httpx.Request) -> httpx.Response:
        response = await self._client.send(request, stream=True)
        try:
            if 300 <= response.status_code < 400:
                raise UrlRefused(
                    "redirect_not_followed",
                    f"{host} answered with a redirect (HTTP {response.status_code}); redirects are not followed",
                )
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise UrlRefused("content_encoding_not_allowed", f"{host} sent a {encoding}-encoded body")
            declared = response.headers.get("content-length", "").strip()
            if declared.isdigit() and int(declared) > self.max_bytes:
                raise UrlRefused("too_large", f"the body from {host} is larger than {self.max_bytes} bytes")
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > self.max_bytes:
                    raise UrlRefused("too_large", f"the body from {host} is larger than {self.max_bytes} bytes")
        finally:
            await response.aclose()
        extensions = {k: v for k, v in response.extensions.items() if k in ("http_version", "reason_phrase")}
        return httpx.Response(
            response.status_code, headers=response.headers, content=bytes(body), request=request, extensions=extensions
        )

    async def get_bytes(self, url: str) -> bytes:
        """GET ``url`` and return its body; a non-2xx answer raises :class:`FetchFailed` (``http_status``)."""
        response = await self.request("GET", url)
        if not response.is_success:
            raise FetchFailed(
                "http_status",
                f"{response.request.url.host} answered HTTP {response.status_code}",
                status_code=response.status_code,
            )
        return response.content
