"""Emulator of the AUTOMATIC1111 stable-diffusion-webui API (v1.10; SD.Next keeps the same /sdapi/v1 routes).

``create_app(options)`` is the ASGI app ``imagegate emulate a1111`` serves. The package mirrors the upstream
split: ``models`` (request models), ``catalog`` (samplers, schedulers, checkpoints, settings), ``jobs``
(request -> processing parameters, infotext and info), ``engine`` (queue lock, ``shared.state``,
``process_images``), ``images`` (pictures), ``app`` (routes and ``api_middleware``).
"""

from __future__ import annotations

from gateway.emulators.a1111.app import create_app

__all__ = ["create_app"]
