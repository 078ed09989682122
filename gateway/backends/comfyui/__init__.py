"""The ComfyUI backend: workflows patched with the request, queued over HTTP, followed over the websocket."""

from __future__ import annotations

from gateway.backends.comfyui.adapter import ComfyUIAdapter

__all__ = ["ComfyUIAdapter"]
