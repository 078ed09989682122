"""The arq worker (distributed mode): runs ``run_job`` for ids taken from Redis, and the reconciler."""

from __future__ import annotations

import asyncio
from contextlib import suppress
from signal import Signals
from typing import Any

import structlog
from arq import Worker, func

from gateway.config import Settings
from gateway.jobs.queue import RUN_JOB
from gateway.jobs.reconcile import reconcile
from gateway.jobs.runner import run_job
from gateway.resources import close_resources, open_resources, redis_settings, start_relay

log = structlog.get_logger("gateway.worker")


async def _reconcile_forever(ctx: dict[str, Any]) -> None:
    res = ctx["res"]
    while True:
        try:
            await reconcile(res)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reconcile.failed")
        await asyncio.sleep(res.settings.reconcile_seconds)


async def run_job_task(ctx: dict[str, Any], job_id: str) -> str:
    return await run_job(ctx["res"], job_id)


class _Worker(Worker):
    """arq's worker, telling run_job that a signal means a shutdown (hand jobs back, uncounted)."""

    def handle_sig(self, signum: Signals) -> None:
        res = self.ctx.get("res")
        if res is not None:
            res.stopping = True
        super().handle_sig(signum)


def build_worker(settings: Settings, *, burst: bool = False, handle_signals: bool = True) -> Worker:
    async def on_startup(ctx: dict[str, Any]) -> None:
        ctx["res"] = await open_resources(settings, role="worker")
        start_relay(ctx["res"])
        ctx["reconciler"] = asyncio.create_task(_reconcile_forever(ctx))
        log.info("worker.started", worker_id=ctx["res"].worker_id, queue=settings.queue_name)

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        task = ctx.get("reconciler")
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        if "res" in ctx:
            await close_resources(ctx["res"])

    return _Worker(
        functions=[func(run_job_task, name=RUN_JOB, max_tries=settings.job_max_attempts + 2)],
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        redis_settings=redis_settings(settings),
        queue_name=settings.queue_name,
        max_jobs=settings.worker_concurrency,
        # run_job bounds a generation itself and records a timeout on the job; arq's limit is only a backstop.
        job_timeout=settings.job_timeout_seconds + 60,
        keep_result=60,
        burst=burst,
        handle_signals=handle_signals,
        poll_delay=settings.poll_seconds,
    )
