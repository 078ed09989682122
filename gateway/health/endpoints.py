"""Liveness and readiness probes: public, no token."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from gateway.deps import ResourcesDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "A dependency is unreachable"}})
async def readyz(res: ResourcesDep) -> JSONResponse:
    """The database and the job queue are reachable."""
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(3):
            async with res.read_sessionmaker() as session:  # never waits for SQLite's write lock
                await session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        async with asyncio.timeout(3):
            await res.queue.ping()
        checks["queue"] = "ok"
    except Exception as exc:
        checks["queue"] = f"error: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    mode = "distributed" if res.settings.distributed else "embedded"
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "queue_mode": mode, "checks": checks},
        status_code=200 if ready else 503,
    )
