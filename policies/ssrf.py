"""SSRF guard: which destinations a caller-given URL may reach.

Pure logic over the standard library. The rule: a URL is fetched only over an allowed scheme, without userinfo, from a
host whose every resolved address is public (global unicast, judged after unwrapping the IPv4 address inside the
IPv4-mapped, NAT64, 6to4 and Teredo forms), unless an operator allowlisted the host name or a network holding the
address. The caller then connects to the addresses validated here and never resolves the name again: a second lookup
is what DNS rebinding exploits.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Called as ``resolver(host, port, type=socket.SOCK_STREAM)``; answers like ``loop.getaddrinfo``:
# ``(family, type, proto, canonname, sockaddr)`` tuples whose ``sockaddr[0]`` is the address text.
Resolver = Callable[..., Awaitable[Sequence[tuple[Any, ...]]]]

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_LENGTH = 8192

REASONS = frozenset(
    {
        "invalid_url",  # not an absolute URL we can read unambiguously (control characters, backslash, bad port...)
        "invalid_host",  # not a DNS name or a canonical IP literal, e.g. 127.1, 2130706433, 0x7f000001, 0177.0.0.1
        "scheme_not_allowed",  # file:, gopher:, ftp:, ... (only the policy's schemes)
        "userinfo_not_allowed",  # http://good.com@127.0.0.1/ and friends
        "address_not_public",  # loopback, private, link-local, metadata, localhost, a name resolving to one of those
        "unresolvable",  # the name has no address
        "redirect_not_followed",  # a 3xx answer; redirects are never followed
        "too_large",  # the body is (or announces to be) larger than the cap
        "content_encoding_not_allowed",  # a compressed body although identity was asked for: its size is unbounded
    }
)

# Ranges that Python's ``is_global`` still calls global (3.11) but that are not public unicast destinations.
_NOT_PUBLIC: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(net)
    for net in (
        "100.64.0.0/10",  # carrier-grade NAT (is_private is False for it)
        "192.0.0.0/24",  # IETF protocol assignments (dummy address, PCP/TURN anycast), partly "global" to Python
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "64:ff9b:1::/48",  # NAT64 local-use prefix: translates into the operator's own networks
        "3fff::/20",  # documentation (RFC 9637)
        "5f00::/16",  # SRv6 SIDs
        "fec0::/10",  # deprecated site-local
    )
)
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_NUMERIC_LABEL = re.compile(r"(?:[0-9]+|0x[0-9a-f]*)", re.IGNORECASE)
_DNS_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


class UrlRefused(Exception):
    """A URL the gateway will not fetch.

    ``reason`` is one of :data:`REASONS`, stable for machines; ``message`` is for people. The message names the URL's
    host at most, never an address a name resolved to: that would map the internal network for the caller.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class OutboundPolicy:
    """Where caller-given URLs may go: the allowed schemes plus the operator's allowlist of internal destinations.

    ``allowed_hosts`` are exact host names (compared case-insensitively, no wildcards): every address they resolve to
    is accepted. ``allowed_networks`` accept the addresses inside them, whatever the name. Everything else must be
    public.
    """

    allowed_schemes: frozenset[str] = frozenset({"https", "http"})
    allowed_hosts: frozenset[str] = frozenset()
    allowed_networks: tuple[IPNetwork, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_schemes", frozenset(s.lower() for s in self.allowed_schemes))
        object.__setattr__(self, "allowed_hosts", frozenset(_allowlist_host(h) for h in self.allowed_hosts))

    @classmethod
    def from_setting(cls, raw: str, *, allowed_schemes: Iterable[str] = ("https", "http")) -> OutboundPolicy:
        """Parse ``"crm.internal, 10.1.0.0/16, 127.0.0.1/32"``; an entry that is neither raises ValueError naming it."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for item in raw.split(","):
            entry = item.strip()
            if not entry:
                continue
            network = _allowlist_network(entry)
            if network is not None:
                networks.append(network)
            else:
                hosts.add(_allowlist_host(entry))
        return cls(frozenset(allowed_schemes), frozenset(hosts), tuple(networks))

    def allows_host(self, host: str) -> bool:
        """True when the (normalised) host name is allowlisted by name."""
        return host in self.allowed_hosts

    def permits(self, ip: IPAddress) -> bool:
        """True when a connection to ``ip`` is allowed: public, or inside an allowlisted network."""
        return is_public(ip) or self._allowlisted(ip)

    def _allowlisted(self, ip: IPAddress) -> bool:
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            # ::ffff:a.b.c.d is the IPv4 host itself on a dual-stack socket.
            candidates.append(ip.ipv4_mapped)
        return any(c in net for c in candidates for net in self.allowed_networks if c.version == net.version)


@dataclass(frozen=True)
class ParsedUrl:
    """The parts of a URL that decide where it connects to; ``host`` is normalised (lowercase, ASCII, no brackets)."""

    scheme: str
    host: str
    port: int


@dataclass(frozen=True)
class Target:
    """A URL checked and resolved: connect to ``addresses`` (all validated), send ``host`` as Host header and SNI."""

    scheme: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


def _allowlist_network(entry: str) -> IPNetwork | None:
    text = entry[1:-1] if entry.startswith("[") and entry.endswith("]") else entry
    try:
        if "/" in text:
            return ipaddress.ip_network(text, strict=False)
        return ipaddress.ip_network(ipaddress.ip_address(text))
    except ValueError:
        if "/" in text or ":" in text:
            raise ValueError(f"outbound allowlist: {entry!r} is not a valid address or CIDR") from None
        return None


def _allowlist_host(entry: str) -> str:
    try:
        host = normalize_host(entry)
    except UrlRefused:
        raise ValueError(f"outbound allowlist: {entry!r} is not a valid host name, address or CIDR") from None
    if not isinstance(host, str):
        raise ValueError(f"outbound allowlist: {entry!r} is an address: it belongs among the networks")
    return host


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address] | None:
    """The IPv4 address(es) an IPv6 transition form carries, or None for a native IPv6 address."""
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip in _NAT64_WELL_KNOWN:
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        server, client = ip.teredo
        return [server, client]
    return None


def is_public(ip: IPAddress) -> bool:
    """True only for a global unicast address; the IPv6 transition forms are judged by the IPv4 address(es) inside.

    ``ipaddress`` alone is not enough: ``100.64.0.1`` is not ``is_private``, ``::ffff:127.0.0.1`` is not
    ``is_loopback``, and the NAT64/6to4 forms of ``169.254.169.254`` as well as multicast report ``is_global``.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return False
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            # The wrapper is a translation mechanism; where the packets end up is the IPv4 address.
            return all(is_public(v4) for v4 in embedded)
        if ip.is_site_local:
            return False
    if (
        ip.is_multicast
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_unspecified
        or ip.is_reserved
        or any(ip in net for net in _NOT_PUBLIC if net.version == ip.version)
    ):
        return False
    return ip.is_global


def normalize_host(host: str) -> str | IPAddress:
    """A URL host as a lowercase ASCII DNS name (one trailing dot dropped) or an IP address; else ``invalid_host``.

    A host whose last label is a number (``127.1``, ``2130706433``, ``0x7f000001``, ``0177.0.0.1``) is an IPv4
    address to URL parsers and libc alike (inet_aton reads hex, octal and short forms); only the canonical dotted
    quad is accepted, so none of those spellings ever reaches a resolver or a socket.
    """
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in text:
        if "%" in text:
            raise UrlRefused("invalid_host", f"{host!r}: IPv6 zone identifiers are not allowed")
        try:
            return ipaddress.IPv6Address(text)
        except ValueError:
            raise UrlRefused("invalid_host", f"{host!r} is not a valid IPv6 address") from None
    try:
        name = text.encode("idna").decode("ascii").lower() if not text.isascii() else text.lower()
    except UnicodeError:
        raise UrlRefused("invalid_host", f"{host!r} is not a valid host name") from None
    if name.endswith("."):
        name = name[:-1]
    labels = name.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        try:
            return ipaddress.IPv4Address(name)
        except ValueError:
            raise UrlRefused("invalid_host", f"{host!r} is not a canonical IPv4 address") from None
    if not name or len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise UrlRefused("invalid_host", f"{host!r} is not a valid host name")
    return name


def _is_localhost(name: str) -> bool:
    return name == "localhost" or name.endswith(".localhost")


def parse_url(url: str, policy: OutboundPolicy) -> ParsedUrl:
    """Check the parts of ``url`` that need no lookup: scheme, userinfo, host spelling, port."""
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused("invalid_url", f"the URL is longer than {MAX_URL_LENGTH} characters")
    # Whitespace, control characters and backslashes are read differently by different URL parsers.
    if any(ord(c) <= 0x20 or ord(c) == 0x7F or c == "\\" for c in url):
        raise UrlRefused("invalid_url", "the URL contains whitespace, control characters or a backslash")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UrlRefused("invalid_url", "the URL cannot be parsed") from None
    scheme = parts.scheme.lower()
    if scheme not in policy.allowed_schemes:
        allowed = ", ".join(sorted(policy.allowed_schemes))
        raise UrlRefused("scheme_not_allowed", f"the scheme {scheme or '(none)'!r} is not allowed (only {allowed})")
    if not parts.netloc:
        raise UrlRefused("invalid_url", "the URL has no host")
    if "@" in parts.netloc:
        raise UrlRefused("userinfo_not_allowed", "URLs with a user name or password are not allowed")
    if port == 0:
        raise UrlRefused("invalid_url", "port 0 is not a valid port")
    host = normalize_host(parts.hostname or "")
    if port is None:
        port = DEFAULT_PORTS.get(scheme)
        if port is None:
            raise UrlRefused("invalid_url", f"a {scheme} URL needs an explicit port")
    return ParsedUrl(scheme=scheme, host=str(host), port=port)


def _connectable(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


async def _lookup(name: str, port: int, resolver: Resolver | None) -> tuple[IPAddress, ...]:
    lookup = resolver or asyncio.get_running_loop().getaddrinfo
    try:
        answers = await lookup(name, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise UrlRefused("unresolvable", f"{name} could not be resolved") from None
    addresses: list[IPAddress] = []
    for family, _type, _proto, _canonname, sockaddr in answers:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        try:
            ip = ipaddress.ip_address(sockaddr[0])
        except ValueError:
            # An answer we cannot classify is not connected to.
            raise UrlRefused("address_not_public", f"{name} resolves to an address that is not public") from None
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise UrlRefused("unresolvable", f"{name} has no address")
    return tuple(addresses)


async def resolve_host(
    host: str, port: int, policy: OutboundPolicy, resolver: Resolver | None = None
) -> tuple[IPAddress, ...]:
    """The addresses to connect to for ``host``, each one checked; raises :class:`UrlRefused`.

    An IP literal is checked as it is, without a lookup. A name is resolved once; one non-public answer refuses the
    whole name (a rebinding name may answer public and loopback together). Allowlisted names skip the address check.
    """
    normalized = normalize_host(host)
    if not isinstance(normalized, str):
        if not policy.permits(normalized):
            raise UrlRefused("address_not_public", f"{normalized} is not a public address")
        return (_connectable(normalized),)
    by_name = policy.allows_host(normalized)
    if _is_localhost(normalized) and not by_name:
        raise UrlRefused("address_not_public", f"{normalized} is not a public host")
    addresses = await _lookup(normalized, port, resolver)
    if not by_name and not all(policy.permits(ip) for ip in addresses):
        raise UrlRefused("address_not_public", f"{normalized} resolves to an address that is not public")
    return tuple(dict.fromkeys(_connectable(ip) for ip in addresses))


async def resolve_checked(url: str, policy: OutboundPolicy, resolver: Resolver | None = None) -> Target:
    """Check ``url`` and resolve its host once; the returned :class:`Target` is where a request may connect."""
    parsed = parse_url(url, policy)
    addresses = await resolve_host(parsed.host, parsed.port, policy, resolver)
    return Target(scheme=parsed.scheme, host=parsed.host, port=parsed.port, addresses=addresses)
