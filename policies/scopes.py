"""Scopes: the permissions a system or token can hold."""

from __future__ import annotations

import enum
from collections.abc import Iterable


class Scope(enum.StrEnum):
    generate = "generate"
    batch = "batch"
    templates_read = "templates:read"
    templates_write = "templates:write"
    connectors_write = "connectors:write"
    admin = "admin"


ALL_SCOPES = frozenset(s.value for s in Scope)

# Seed 002's permission matrix: the scopes of the demo systems.
DEMO_SYSTEMS: dict[str, tuple[str, ...]] = {
    "crm": (Scope.generate, Scope.batch),
    "oa": (Scope.generate,),
    "design": (Scope.generate, Scope.batch, Scope.templates_write),
}


def parse_scopes(raw: str | Iterable[str]) -> list[str]:
    """Parse ``"generate,batch"`` (or a list) into a sorted list of known scopes; unknown names raise ValueError."""
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    scopes = {s.strip() for s in items if s.strip()}
    unknown = scopes - ALL_SCOPES
    if unknown:
        raise ValueError(f"unknown scope(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(ALL_SCOPES))}")
    return sorted(scopes)


def allows(held: Iterable[str], *, any_of: Iterable[str]) -> bool:
    """True when ``held`` contains at least one of ``any_of``; ``admin`` holds every scope."""
    held_set = set(held)
    return Scope.admin in held_set or bool(held_set & set(any_of))
