"""Every long-lived resource of a process (engine, queue, backends, store), opened and closed in one place."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from arq import ArqRedis
from arq.connections import RedisSettings
from redis.asyncio import ConnectionPool
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.assets.storage import LocalAssetStore
from gateway.audit.service import AuditTrail
from gateway.auth.access_tokens import AccessTokens
from gateway.backends.base import BackendSpec
from gateway.backends.ledger import Ledger, MemoryLedger, RedisLedger
from gateway.backends.pool import BackendPool
from gateway.backends.preview import preview_spec
from gateway.backends.scheduler import Scheduler
from gateway.common.crypto import SecretBox
from gateway.common.outbound import OutboundClient
from gateway.config import Settings
from gateway.db.engine import create_engine, create_sessionmaker
from gateway.jobs.embedded import EmbeddedRunner
from gateway.jobs.queue import ArqQueue, EmbeddedQueue, JobQueue
from gateway.quotas.ratelimit import RateLimiter
from policies.semantic import SemanticCheck

if TYPE_CHECKING:
    from gateway.delivery.relay import Relay


@dataclass
class Resources:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    read_sessionmaker: async_sessionmaker[AsyncSession]
    store: LocalAssetStore
    pool: BackendPool
    worker_id: str
    audit: AuditTrail
    access_tokens: AccessTokens
    rate_limiter: RateLimiter
    outbound: OutboundClient  # the one way to fetch a URL a caller gave (SSRF guard)
    secret_box: SecretBox  # secrets at rest (connector settings, callback secrets)
    semantic: SemanticCheck | None = None  # the content filter's second stage, when enabled
    queue: JobQueue = field(init=False)
    ledger: Ledger = field(init=False)
    scheduler: Scheduler = field(init=False)
    runner: EmbeddedRunner | None = None
    relay: Relay | None = None  # delivers the outbox (every API and worker process runs one)
    redis: ArqRedis | None = None
    stopping: bool = False  # set on a graceful shutdown: interrupted runs go back to the queue uncounted


def redis_settings(settings: Settings) -> RedisSettings:
    assert settings.redis_url is not None
    return RedisSettings.from_dsn(settings.redis_url)


async def open_resources(settings: Settings, *, role: Literal["api", "worker"]) -> Resources:
    """Open what this process needs. In embedded mode the API process also runs jobs (the runner is started
    by the caller once the app is ready)."""
    engine = create_engine(settings.database_url)
    sessionmaker = create_sessionmaker(engine)
    res = Resources(
        settings=settings,
        engine=engine,
        sessionmaker=sessionmaker,
        read_sessionmaker=create_sessionmaker(engine, readonly=True),
        store=LocalAssetStore(settings.asset_dir),
        pool=BackendPool(settings, sessionmaker, builtin=_builtin_backends(settings)),
        worker_id=f"{role}:{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(3)}",
        audit=AuditTrail(sessionmaker),
        access_tokens=AccessTokens(
            settings.secret_key,
            issuer=settings.oauth_issuer,
            audience=settings.oauth_audience,
            ttl_seconds=settings.oauth_token_ttl_seconds,
        ),
        rate_limiter=RateLimiter.for_settings(settings),
        outbound=OutboundClient.from_settings(settings),
        secret_box=SecretBox(settings.secret_key),
    )
    res.audit.start()
    if settings.content_semantic and role == "api":
        res.semantic = await _semantic_check(settings)
    settings.asset_dir.mkdir(parents=True, exist_ok=True)
    if settings.redis_url is not None:
        # Lazy connections: the API starts (and accepts jobs into the database) while Redis is down;
        # /readyz reports it and the reconciler enqueues what was accepted meanwhile.
        res.redis = ArqRedis(
            connection_pool=ConnectionPool.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=10),
            default_queue_name=settings.queue_name,
        )
        res.queue = ArqQueue(res.redis, settings.queue_name)
        res.ledger = RedisLedger(res.redis, settings.queue_name, poll=settings.scheduler_poll_seconds)
    else:
        res.runner = EmbeddedRunner(res)
        res.queue = EmbeddedQueue(res.runner)
        res.ledger = MemoryLedger()
    res.scheduler = Scheduler(res.pool, res.ledger, settings)
    if role == "worker" or not settings.distributed:  # processes that run jobs keep the pool fresh and probed
        await res.pool.start()
    return res


async def _semantic_check(settings: Settings) -> SemanticCheck:
    """Load the embedding model once, at start (seconds), so that no request waits for it."""
    from policies.semantic import SemanticCheck, load_default_embedder

    embedder = await asyncio.to_thread(load_default_embedder)
    return SemanticCheck(embedder, threshold=settings.content_semantic_threshold)


def _builtin_backends(settings: Settings) -> list[BackendSpec]:
    if not settings.preview_backend:
        return []
    spec = preview_spec(step_ms=settings.preview_step_ms, models=settings.preview_models, slots=settings.preview_slots)
    return [spec]


def start_relay(res: Resources) -> None:
    from gateway.delivery.relay import Relay

    if res.settings.delivery_relay and res.relay is None:
        res.relay = Relay(res)
        res.relay.start()


async def close_resources(res: Resources) -> None:
    if res.relay is not None:
        await res.relay.stop()
    if res.runner is not None:
        await res.runner.stop()
    await res.audit.aclose()
    await res.outbound.aclose()
    await res.pool.aclose()
    if res.redis is not None:
        await res.redis.aclose()
    await res.engine.dispose()
