"""A scripted resolver for the SSRF guard: answers like ``loop.getaddrinfo`` without touching real DNS."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any


def gai(*addresses: str) -> list[tuple[Any, ...]]:
    """``getaddrinfo``-shaped answers for ``addresses``."""
    return [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, 0, 0, 0))
        if ":" in a
        else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0))
        for a in addresses
    ]


class FakeDNS:
    """Answers each name from a script: the n-th lookup of a name gets its n-th answer (the last one repeats).

    An answer is a list of addresses or an exception to raise. Unknown names fail like NXDOMAIN. ``calls`` records
    every lookup.
    """

    def __init__(self, script: dict[str, Sequence[Sequence[str] | BaseException]]) -> None:
        self.script = {name: list(answers) for name, answers in script.items()}
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        self.calls.append(host)
        answers = self.script.get(host)
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        answer = answers[min(self.calls.count(host), len(answers)) - 1]
        if isinstance(answer, BaseException):
            raise answer
        return gai(*answer)


async def no_dns(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
    """A resolver for cases that must be refused before any lookup."""
    raise AssertionError(f"{host!r} should have been refused without a DNS lookup")
