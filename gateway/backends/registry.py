"""Backend kinds and their adapter classes (imported lazily: a kind's module loads only when used)."""

from __future__ import annotations

import importlib

import httpx

from gateway.backends.base import Adapter, BackendSpec

ADAPTERS: dict[str, str] = {
    "preview": "gateway.backends.preview:PreviewAdapter",
    "a1111": "gateway.backends.a1111:A1111Adapter",
    "comfyui": "gateway.backends.comfyui:ComfyUIAdapter",
    "zimage": "gateway.backends.zimage:ZImageAdapter",
    "openai": "gateway.backends.openai:OpenAIAdapter",
    "gradio": "gateway.backends.gradio:GradioAdapter",
    "vision": "gateway.backends.vision:VisionAdapter",
}
KINDS = tuple(ADAPTERS)


def adapter_class(kind: str) -> type[Adapter]:
    """The adapter class of ``kind`` (KeyError for an unknown kind)."""
    module_name, _, class_name = ADAPTERS[kind].partition(":")
    cls: type[Adapter] = getattr(importlib.import_module(module_name), class_name)
    return cls


def build_adapter(spec: BackendSpec, client: httpx.AsyncClient | None = None) -> Adapter:
    return adapter_class(spec.kind)(spec, client)
