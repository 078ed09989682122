"""Connector kinds, discovered through the entry-point group ``imagegate.connectors``.

The built-in connectors are declared there too (pyproject.toml), so a third-party package adds a kind exactly
as Imagegate does. A plugin that fails to load (import error, not a Connector) is logged and skipped.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from importlib.metadata import entry_points

import structlog

from connectors.base import Connector

GROUP = "imagegate.connectors"
log = structlog.get_logger("gateway.delivery")


@lru_cache(maxsize=1)
def kinds() -> dict[str, type[Connector]]:
    found: dict[str, type[Connector]] = {}
    for entry in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            loaded = entry.load()
        except Exception as exc:  # a broken plugin must not stop the gateway
            log.warning("connector.load_failed", kind=entry.name, target=entry.value, error=repr(exc)[:300])
            continue
        is_connector = isinstance(loaded, type) and issubclass(loaded, Connector)
        if not is_connector or getattr(loaded, "kind", None) != entry.name or inspect.isabstract(loaded):
            log.warning("connector.not_a_connector", kind=entry.name, target=entry.value)
            continue
        try:  # the kinds route renders these: a plugin whose models cannot be described is not offered
            loaded.Config.model_json_schema()
            loaded.Target.model_json_schema()
        except Exception as exc:
            log.warning("connector.bad_schema", kind=entry.name, error=repr(exc)[:300])
            continue
        found[entry.name] = loaded
    return found


def kind(name: str) -> type[Connector] | None:
    return kinds().get(name)
