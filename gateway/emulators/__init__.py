"""Protocol-faithful emulators of the GPU servers (and, later, vendor APIs) Imagegate talks to.

Each module exposes ``create_app(options: EmulatorOptions) -> ASGI app``. They are written from
``../shared/reference/backends.md``, not from the adapters, so that adapters and emulators check each other;
``imagegate emulate KIND`` runs one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from gateway.emulators.core import EmulatorOptions

EMULATORS: dict[str, str] = {
    "a1111": "gateway.emulators.a1111",
    "comfyui": "gateway.emulators.comfyui",
    "zimage": "gateway.emulators.zimage",
    "openai": "gateway.emulators.openai",
    "gradio": "gateway.emulators.gradio",
    "vision": "gateway.emulators.vision",
}


def app_factory(kind: str) -> Callable[[EmulatorOptions], Any]:
    """The ``create_app`` of emulator ``kind`` (KeyError if there is none)."""
    module = importlib.import_module(EMULATORS[kind])
    factory: Callable[[EmulatorOptions], Any] = module.create_app
    return factory


__all__ = ["EMULATORS", "EmulatorOptions", "app_factory"]
