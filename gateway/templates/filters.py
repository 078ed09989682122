"""Filters for prompt templates: small, pure, bounded. Each takes plain data and returns plain data."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.templates.keywords import keywords

_SPACE = re.compile(r"\s+")


def take(items: Sequence[Any], count: int) -> list[Any]:
    """The first ``count`` items: ``{{ product.features | take(3) | join(', ') }}``."""
    if not isinstance(count, int) or count < 0:
        raise ValueError("take() needs a count of 0 or more")
    return list(items)[:count]


def lookup(key: Any, mapping: Mapping[str, Any], default: Any = "") -> Any:
    """Map a value through a table, ignoring case and surrounding spaces:
    ``{{ product.category | lookup(scenes, 'studio') }}``."""
    if not isinstance(mapping, Mapping):
        raise ValueError("lookup() needs a mapping")
    if key in mapping:
        return mapping[key]
    folded = {str(k).strip().casefold(): v for k, v in mapping.items()}
    return folded.get(str(key).strip().casefold(), default)


def join_natural(items: Sequence[Any], sep: str = ", ", last: str = " and ") -> str:
    """``a, b and c``; pass ``last='和'`` (or ``'、'``) for Chinese lists."""
    words = [str(item) for item in items if str(item).strip()]
    if len(words) <= 1:
        return "".join(words)
    return sep.join(words[:-1]) + last + words[-1]


def clean(text: Any) -> str:
    """Whitespace collapsed to single spaces, ends trimmed (records often carry line breaks)."""
    return _SPACE.sub(" ", str(text)).strip()


FILTERS = {"take": take, "lookup": lookup, "join_natural": join_natural, "clean": clean, "keywords": keywords}
