"""Identifiers: a readable prefix plus a time-ordered body, so that ids sort newest-last and name their kind."""

from __future__ import annotations

import re
import secrets
import time

_ID = re.compile(r"^[a-z]{3}_[0-9a-f]{28}$")


def is_id(value: str, prefix: str) -> bool:
    """Whether ``value`` has the shape of an id of this kind (anything else cannot exist: answer 404 early)."""
    return value.startswith(prefix + "_") and _ID.fullmatch(value) is not None


def new_id(prefix: str) -> str:
    """``<prefix>_<12 hex ms timestamp><16 hex random>``: sortable by creation time, unguessable."""
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(8)}"
