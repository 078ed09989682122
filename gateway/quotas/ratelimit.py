"""Requests per minute per system: an exact moving window (the ``limits`` library).

In memory for the embedded default (one process); in Redis when the gateway runs distributed, so that every API
replica counts against one window (the library's Lua script makes check-and-add atomic).
"""

from __future__ import annotations

import asyncio
import math
import time

import structlog
from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from gateway.config import Settings

log = structlog.get_logger("gateway.ratelimit")


class RateLimiter:
    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._limiter = MovingWindowRateLimiter(storage)
        self._items: dict[int, RateLimitItemPerMinute] = {}

    @classmethod
    def for_settings(cls, settings: Settings) -> RateLimiter:
        if settings.redis_url is None:
            return cls(MemoryStorage())
        return cls(
            RedisStorage(
                f"async+{settings.redis_url}",
                implementation="redispy",
                key_prefix=f"{settings.queue_name}:rpm",
                # A paused or unreachable Redis must not hold every request up: give up fast and admit.
                socket_timeout=0.5,
                socket_connect_timeout=0.5,
            )
        )

    async def hit(self, system_id: str, per_minute: int) -> int | None:
        """Count one request; None when admitted, else the seconds until one more would be."""
        item = self._items.setdefault(per_minute, RateLimitItemPerMinute(per_minute))
        try:
            async with asyncio.timeout(1.0):
                if await self._limiter.hit(item, system_id):
                    return None
                stats = await self._limiter.get_window_stats(item, system_id)
        except Exception:
            # Redis down: admit (quotas in the database still bound the spending) rather than refuse all traffic.
            log.warning("ratelimit.unavailable", exc_info=True)
            return None
        return max(1, math.ceil(stats.reset_time - time.time()))
