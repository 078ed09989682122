"""The SSRF guard's decisions (policies.ssrf): the refusal matrix, rebinding, the allowlist. No connection is made."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from policies.ssrf import (
    REASONS,
    OutboundPolicy,
    UrlRefused,
    is_public,
    normalize_host,
    resolve_checked,
    resolve_host,
)
from tests.policies.fake_dns import FakeDNS, no_dns

PUBLIC = "93.184.215.14"


def teredo(server: str, client: str) -> str:
    """A Teredo address (2001::/32) carrying ``server`` and the obfuscated ``client``."""
    s, c = int(ipaddress.IPv4Address(server)), int(ipaddress.IPv4Address(client))
    return str(ipaddress.IPv6Address((0x20010000 << 96) | (s << 64) | (~c & 0xFFFFFFFF)))


def url_for(ip: str) -> str:
    return f"http://[{ip}]/" if ":" in ip else f"http://{ip}/"


# Refused from the URL alone: no resolver is consulted (no_dns fails the test if it is).
REFUSED_WITHOUT_LOOKUP = [
    # Non-canonical IPv4 spellings that inet_aton and URL parsers read as 127.0.0.1.
    ("http://127.1/", "invalid_host"),
    ("http://2130706433/", "invalid_host"),
    ("http://0x7f000001/", "invalid_host"),
    ("http://0177.0.0.1/", "invalid_host"),
    ("http://0x7f.0.0.1/", "invalid_host"),
    ("http://127.0.1/", "invalid_host"),
    ("http://127.0.0.1.1/", "invalid_host"),
    # Loopback, in every form.
    ("http://127.0.0.1/", "address_not_public"),
    ("http://127.255.255.254:8080/", "address_not_public"),
    ("http://[::1]/", "address_not_public"),
    ("http://[::ffff:7f00:1]/", "address_not_public"),
    ("http://[::ffff:127.0.0.1]/", "address_not_public"),
    ("http://[::7f00:1]/", "address_not_public"),  # IPv4-compatible (deprecated) form
    ("http://localhost/", "address_not_public"),
    ("http://LOCALHOST./", "address_not_public"),
    ("http://api.localhost:9000/", "address_not_public"),
    # Unicode spellings that IDNA maps onto the ASCII ones.
    ("http://127\u30020\u30020\u30021/", "address_not_public"),
    ("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/", "address_not_public"),
    ("http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/", "address_not_public"),
    ("http://0/", "invalid_host"),
    # Cloud metadata, directly and through IPv6 transition forms that Python calls global.
    ("http://169.254.169.254/latest/meta-data/", "address_not_public"),
    ("http://[64:ff9b::a9fe:a9fe]/", "address_not_public"),  # NAT64
    ("http://[64:ff9b::169.254.169.254]/", "address_not_public"),
    ("http://[2002:a9fe:a9fe::]/", "address_not_public"),  # 6to4
    ("http://[::ffff:169.254.169.254]/", "address_not_public"),
    (url_for(teredo("65.54.227.120", "127.0.0.1")), "address_not_public"),  # Teredo, loopback client
    (url_for(teredo("10.0.0.1", PUBLIC)), "address_not_public"),  # Teredo, private server
    ("http://[64:ff9b:1::a00:1]/", "address_not_public"),  # NAT64 local-use prefix
    # Private, shared and special IPv4 ranges.
    ("http://10.0.0.1/", "address_not_public"),
    ("http://10.255.255.254/", "address_not_public"),
    ("http://172.16.0.1/", "address_not_public"),
    ("http://172.31.255.254/", "address_not_public"),
    ("http://192.168.0.1/", "address_not_public"),
    ("http://192.168.255.254/", "address_not_public"),
    ("http://100.64.0.1/", "address_not_public"),  # carrier-grade NAT: not is_private, not global
    ("http://100.127.255.254/", "address_not_public"),
    ("http://0.0.0.0/", "address_not_public"),
    ("http://0.1.2.3/", "address_not_public"),
    ("http://169.254.0.1/", "address_not_public"),
    ("http://192.0.0.8/", "address_not_public"),
    ("http://192.0.2.1/", "address_not_public"),
    ("http://198.18.0.1/", "address_not_public"),
    ("http://198.51.100.1/", "address_not_public"),
    ("http://203.0.113.1/", "address_not_public"),
    ("http://192.88.99.1/", "address_not_public"),
    ("http://224.0.0.1/", "address_not_public"),  # multicast reports is_global
    ("http://240.0.0.1/", "address_not_public"),
    ("http://255.255.255.255/", "address_not_public"),
    # Special IPv6 ranges.
    ("http://[::]/", "address_not_public"),
    ("http://[fe80::1]/", "address_not_public"),
    ("http://[fc00::1]/", "address_not_public"),
    ("http://[fd12:3456:789a::1]/", "address_not_public"),
    ("http://[fec0::1]/", "address_not_public"),
    ("http://[ff02::1]/", "address_not_public"),
    ("http://[2001:db8::1]/", "address_not_public"),
    ("http://[3fff::1]/", "address_not_public"),
    ("http://[100::1]/", "address_not_public"),
    # Schemes.
    ("file:///etc/passwd", "scheme_not_allowed"),
    ("gopher://127.0.0.1:6379/_INFO", "scheme_not_allowed"),
    ("ftp://example.com/a.png", "scheme_not_allowed"),
    ("dict://example.com:11211/stat", "scheme_not_allowed"),
    ("data:image/png;base64,AAAA", "scheme_not_allowed"),
    ("//example.com/a.png", "scheme_not_allowed"),
    # Userinfo tricks.
    ("http://good.com@127.0.0.1/", "userinfo_not_allowed"),
    ("http://127.0.0.1@good.com/", "userinfo_not_allowed"),
    ("http://user:secret@example.com/", "userinfo_not_allowed"),
    ("http://@example.com/", "userinfo_not_allowed"),
    ("http://good.com\\@127.0.0.1/", "invalid_url"),
    ("http://good.com%40127.0.0.1/", "invalid_host"),
    # Malformed.
    ("http:///a.png", "invalid_url"),
    ("http://exa mple.com/", "invalid_url"),
    ("http://example.com\t/", "invalid_url"),
    ("http://example.com:0/", "invalid_url"),
    ("http://example.com:99999/", "invalid_url"),
    ("http://example.com:port/", "invalid_url"),
    ("http://ex%61mple.com/", "invalid_host"),
    ("http://[fe80::1%25eth0]/", "invalid_host"),
    ("http://under_score-.example/", "invalid_host"),
    ("http://" + "a" * 64 + ".example/", "invalid_host"),
    ("http://example.com/" + "a" * 9000, "invalid_url"),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED_WITHOUT_LOOKUP)
async def test_refused_before_any_lookup(url: str, reason: str) -> None:
    with pytest.raises(UrlRefused) as refused:
        await resolve_checked(url, OutboundPolicy(), resolver=no_dns)
    assert refused.value.reason == reason, refused.value.message
    assert refused.value.reason in REASONS


@pytest.mark.parametrize(
    ("answer", "internal"),
    [
        (["10.0.0.5"], "10.0.0.5"),
        (["172.20.1.1"], "172.20.1.1"),
        (["192.168.1.10"], "192.168.1.10"),
        (["100.64.12.1"], "100.64.12.1"),
        (["127.0.0.1"], "127.0.0.1"),
        (["169.254.169.254"], "169.254.169.254"),
        (["::1"], "::1"),
        (["::ffff:127.0.0.1"], "::ffff:127.0.0.1"),
        (["64:ff9b::a9fe:a9fe"], "64:ff9b::a9fe:a9fe"),
        (["fd00::1"], "fd00::1"),
        # Every answer must pass, not just the first.
        ([PUBLIC, "127.0.0.1"], "127.0.0.1"),
        (["2606:4700::1111", "10.1.2.3"], "10.1.2.3"),
    ],
)
async def test_a_name_resolving_to_a_non_public_address_is_refused_without_naming_it(
    answer: list[str], internal: str
) -> None:
    dns = FakeDNS({"images.example.com": [answer]})
    with pytest.raises(UrlRefused) as refused:
        await resolve_checked("https://images.example.com/cat.png", OutboundPolicy(), resolver=dns)
    assert refused.value.reason == "address_not_public"
    assert "images.example.com" in refused.value.message
    assert internal not in str(refused.value)
    assert dns.calls == ["images.example.com"]


async def test_dns_rebinding_the_target_holds_the_first_answer_and_a_later_lookup_is_checked_again() -> None:
    # First answer public, second loopback: the validated Target carries the public address, which is what the
    # outbound client connects to (it never resolves again); any later lookup (a new connection) is checked anew.
    dns = FakeDNS({"rebind.example.com": [[PUBLIC], ["127.0.0.1"]]})
    target = await resolve_checked("http://rebind.example.com/a.png", OutboundPolicy(), resolver=dns)
    assert target.addresses == (ipaddress.ip_address(PUBLIC),)
    assert dns.calls == ["rebind.example.com"]
    with pytest.raises(UrlRefused) as refused:
        await resolve_checked("http://rebind.example.com/a.png", OutboundPolicy(), resolver=dns)
    assert refused.value.reason == "address_not_public"
    assert dns.calls == ["rebind.example.com", "rebind.example.com"]


@pytest.mark.parametrize("failure", [socket.gaierror(socket.EAI_NONAME, "nope"), OSError("no network")])
async def test_a_name_that_does_not_resolve_is_unresolvable(failure: BaseException) -> None:
    dns = FakeDNS({"gone.example.com": [failure]})
    with pytest.raises(UrlRefused) as refused:
        await resolve_checked("http://gone.example.com/", OutboundPolicy(), resolver=dns)
    assert refused.value.reason == "unresolvable"


async def test_an_empty_answer_is_unresolvable() -> None:
    dns = FakeDNS({"empty.example.com": [[]]})
    with pytest.raises(UrlRefused) as refused:
        await resolve_checked("http://empty.example.com/", OutboundPolicy(), resolver=dns)
    assert refused.value.reason == "unresolvable"


async def test_a_public_address_passes_validation() -> None:
    dns = FakeDNS({"example.com": [[PUBLIC, "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]]})
    target = await resolve_checked("https://Example.COM/images/cat.png?x=1", OutboundPolicy(), resolver=dns)
    assert (target.scheme, target.host, target.port) == ("https", "example.com", 443)
    assert target.addresses == (
        ipaddress.ip_address(PUBLIC),
        ipaddress.ip_address("2606:2800:21f:cb07:6820:80da:af6b:8b2c"),
    )
    plain = await resolve_checked("http://example.com:8080/", OutboundPolicy(), resolver=dns)
    assert (plain.scheme, plain.port) == ("http", 8080)


@pytest.mark.parametrize(
    ("url", "connect_to"),
    [
        (f"http://{PUBLIC}/", PUBLIC),
        ("http://[2606:4700:4700::1111]/", "2606:4700:4700::1111"),
        (f"http://[::ffff:{PUBLIC}]/", PUBLIC),  # connected to as the IPv4 address it is
        ("http://[64:ff9b::5db8:d70e]/", "64:ff9b::5db8:d70e"),  # NAT64 of a public address
        ("http://[2002:5db8:d70e::1]/", "2002:5db8:d70e::1"),  # 6to4 of a public address
    ],
)
async def test_public_literals_pass_without_a_lookup(url: str, connect_to: str) -> None:
    target = await resolve_checked(url, OutboundPolicy(), resolver=no_dns)
    assert target.addresses == (ipaddress.ip_address(connect_to),)


ALLOWLIST = "CRM.internal, 10.1.0.0/16, 127.0.0.1/32, fd00:1::/64"


@pytest.mark.parametrize(
    ("url", "answers"),
    [
        ("http://crm.internal/api", ["10.9.9.9"]),  # by name, whatever it resolves to
        ("http://CRM.Internal./api", ["192.168.3.4"]),
        ("http://10.1.2.3/", None),
        ("http://backend.example.com/", ["10.1.200.1"]),  # by network, whatever the name
        ("http://127.0.0.1:8188/", None),
        ("http://[::ffff:127.0.0.1]:8188/", None),
        ("http://[fd00:1::5]/", None),
    ],
)
async def test_allowlisted_hosts_and_networks_pass(url: str, answers: list[str] | None) -> None:
    policy = OutboundPolicy.from_setting(ALLOWLIST)
    dns = FakeDNS({"crm.internal": [answers or []], "backend.example.com": [answers or []]})
    target = await resolve_checked(url, policy, resolver=dns if answers else no_dns)
    assert target.addresses


@pytest.mark.parametrize(
    "url",
    [
        "http://10.2.0.1/",
        "http://127.0.0.2/",
        "http://[::1]/",
        "http://[fd00:2::1]/",
        "http://crm.internal.attacker.example/",  # exact match only
        "http://x.crm.internal/",
    ],
)
async def test_outside_the_allowlist_is_still_refused(url: str) -> None:
    policy = OutboundPolicy.from_setting(ALLOWLIST)
    dns = FakeDNS({"crm.internal.attacker.example": [["10.0.0.1"]], "x.crm.internal": [["10.0.0.1"]]})
    with pytest.raises(UrlRefused) as refused:
        await resolve_checked(url, policy, resolver=dns)
    assert refused.value.reason == "address_not_public"


async def test_an_allowlisted_network_does_not_cover_its_nat64_or_6to4_forms() -> None:
    policy = OutboundPolicy.from_setting("127.0.0.1/32")
    for ip in ("64:ff9b::7f00:1", "2002:7f00:1::"):
        with pytest.raises(UrlRefused):
            await resolve_host(ip, 80, policy, resolver=no_dns)


async def test_localhost_passes_only_when_allowlisted_by_name() -> None:
    dns = FakeDNS({"localhost": [["127.0.0.1"]]})
    target = await resolve_checked("http://localhost:8188/", OutboundPolicy.from_setting("localhost"), resolver=dns)
    assert target.addresses == (ipaddress.ip_address("127.0.0.1"),)


def test_the_allowlist_setting_is_parsed() -> None:
    policy = OutboundPolicy.from_setting(" crm.internal ,, 10.1.0.0/16,127.0.0.1, [::1] ")
    assert policy.allowed_hosts == frozenset({"crm.internal"})
    assert policy.allowed_networks == (
        ipaddress.ip_network("10.1.0.0/16"),
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    assert OutboundPolicy.from_setting("") == OutboundPolicy()
    assert OutboundPolicy().allowed_schemes == frozenset({"http", "https"})


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "*.corp.example", "127.1", "exa mple.com", "fd00::/129", "1.2.3"])
def test_an_invalid_allowlist_entry_raises_naming_it(entry: str) -> None:
    with pytest.raises(ValueError, match=entry.replace("*", r"\*").replace(".", r"\.")):
        OutboundPolicy.from_setting(f"crm.internal, {entry}")


async def test_only_the_policys_schemes_are_allowed() -> None:
    https_only = OutboundPolicy(allowed_schemes=frozenset({"HTTPS"}))
    with pytest.raises(UrlRefused) as refused:
        await resolve_checked(f"http://{PUBLIC}/", https_only, resolver=no_dns)
    assert refused.value.reason == "scheme_not_allowed"
    assert (await resolve_checked(f"HTTPS://{PUBLIC}/", https_only, resolver=no_dns)).scheme == "https"


@pytest.mark.parametrize(
    ("ip", "public"),
    [
        (PUBLIC, True),
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        (f"::ffff:{PUBLIC}", True),
        ("64:ff9b::808:808", True),
        ("2002:808:808::", True),
        (teredo("65.54.227.120", PUBLIC), True),
        ("100.64.0.1", False),
        ("::ffff:127.0.0.1", False),
        ("64:ff9b::a9fe:a9fe", False),
        ("2002:a9fe:a9fe::", False),
        (teredo("65.54.227.120", "192.168.0.1"), False),
        (teredo("127.0.0.1", PUBLIC), False),
        ("224.0.0.251", False),
        ("ff0e::1", False),
        ("0.0.0.0", False),
        ("::", False),
        ("fe80::1%2", False),
    ],
)
def test_is_public(ip: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(ip)) is public


def test_normalize_host() -> None:
    assert normalize_host("Example.COM.") == "example.com"
    assert normalize_host("bücher.example") == "xn--bcher-kva.example"
    assert normalize_host("[::1]") == ipaddress.ip_address("::1")
    assert normalize_host("93.184.215.14") == ipaddress.ip_address(PUBLIC)
    assert normalize_host("1password.example") == "1password.example"
    with pytest.raises(UrlRefused):
        normalize_host("0x")
