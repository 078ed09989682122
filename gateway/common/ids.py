"""Identifiers: a readable prefix plus a time-ordered body, so that ids sort newest-last and name their kind."""

from __future__ import annotations

import secrets
import time


def new_id(prefix: str) -> str:
    """``<prefix>_<12 hex ms timestamp><16 hex random>``: sortable by creation time, unguessable."""
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(8)}"
