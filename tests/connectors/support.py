"""Deliveries, outbound clients and served emulators for connector tests (targets on loopback only)."""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from PIL import Image

from connectors.base import DeliveredAsset, Delivery
from gateway.common.outbound import OutboundClient
from policies.ssrf import OutboundPolicy
from tests.live import serve_asgi


def outbound(timeout: float = 5.0) -> OutboundClient:
    """The gateway's guarded client, allowed to reach loopback (where the emulators and test servers run)."""
    return OutboundClient(
        OutboundPolicy.from_setting("127.0.0.1/32,::1/128,localhost"), timeout=timeout, max_bytes=16 * 1024 * 1024
    )


@contextlib.asynccontextmanager
async def emulated(create_app: Callable[..., Any], **options: Any) -> AsyncIterator[tuple[str, Any]]:
    """A vendor emulator, ``create_app(**options)``, served on a loopback port: its base URL and the app."""
    app = create_app(**options)
    async with serve_asgi(app) as base:
        yield base, app


async def fault(base: str, **spec: Any) -> None:
    """Make the vendor emulator at ``base`` answer its next requests with a fault (gateway.emulators.vendor.Fault)."""
    async with httpx.AsyncClient() as client:
        (await client.post(f"{base}/_emulator/faults", json=spec)).raise_for_status()


def png(width: int = 64, height: int = 48, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def asset(data: bytes | None = None, *, index: int = 0, name: str = "P-1_main", fmt: str = "png") -> DeliveredAsset:
    data = data if data is not None else png()
    sha = hashlib.sha256(data).hexdigest()

    async def read() -> bytes:
        return data

    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
    return DeliveredAsset(
        id=f"ast_{sha[:28]}",
        job_id="job_" + "1" * 28,
        index=index,
        format=fmt,
        content_type={"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}[fmt],
        width=width,
        height=height,
        sha256=sha,
        size=len(data),
        seed=42,
        url=f"http://127.0.0.1:8000/v1/files/ast_{sha[:28]}?expires=9999999999&signature=test",
        filename=f"{name}.{fmt}",
        tags=["product", "main"],
        caption=None,
        read=read,
    )


def delivery(
    *assets: DeliveredAsset, target: dict[str, Any] | None = None, attempt: int = 1, **fields: Any
) -> Delivery:
    values: dict[str, Any] = {
        "id": "dlv_" + "2" * 28,
        "idempotency_key": "job_" + "1" * 28 + ":crm-files",
        "event": "job.succeeded",
        "system": "crm",
        "assets": list(assets) or [asset()],
        "target": target or {},
        "attempt": attempt,
        "job_id": "job_" + "1" * 28,
        "metadata": {"prompt": "a lamp", "record_id": "P-1", "role": "main", "template": "crm.product_main"},
    }
    values.update(fields)
    return Delivery(**values)
