"""The embedded runner: with no Redis, the server process runs queued jobs itself, with bounded concurrency.

It claims work from the database (so a job accepted before a crash runs after the next start) and is woken
at once by new jobs; it also polls, to pick up jobs whose lease expired.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING

import structlog

from gateway.jobs import repository
from gateway.jobs.reconcile import fail_exhausted
from gateway.jobs.runner import run_job

if TYPE_CHECKING:
    from gateway.resources import Resources

log = structlog.get_logger("gateway.runner")


class EmbeddedRunner:
    def __init__(self, res: Resources) -> None:
        self.res = res
        self._wake = asyncio.Event()
        self._active: dict[str, asyncio.Task[str]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def alive(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name="imagegate-embedded-runner")

    async def stop(self) -> None:
        """Stop claiming; cancel running jobs, which hand themselves back to the queue."""
        self._stopping = True
        self.res.stopping = True
        self.wake()
        if self._loop_task is not None:
            # Let the loop finish its current database call (cancelling an aiosqlite call mid-flight leaves
            # its thread answering a closed loop); cancel only if it does not stop in time.
            done, _ = await asyncio.wait({self._loop_task}, timeout=5)
            if not done:
                self._loop_task.cancel()
                with suppress(asyncio.CancelledError):
                    await self._loop_task
        tasks = list(self._active.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self) -> None:
        settings = self.res.settings
        while not self._stopping:
            try:
                await fail_exhausted(self.res)
                await self._fill(settings.embedded_concurrency - len(self._active))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("runner.poll_failed")
            if self._stopping:
                break
            self._wake.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=settings.poll_seconds)

    async def _fill(self, free: int) -> None:
        if free <= 0:
            return
        async with self.res.read_sessionmaker() as session:
            ids = await repository.claimable_ids(
                session,
                max_attempts=self.res.settings.job_max_attempts,
                limit=free,
                exclude=list(self._active),
            )
        for job_id in ids:
            task = asyncio.create_task(run_job(self.res, job_id), name=f"job-{job_id}")
            self._active[job_id] = task
            task.add_done_callback(self._finished(job_id))

    def _finished(self, job_id: str) -> Callable[[asyncio.Task[str]], None]:
        def callback(task: asyncio.Task[str]) -> None:
            self._active.pop(job_id, None)
            if not task.cancelled() and task.exception() is not None:
                log.error("runner.job_crashed", job_id=job_id, error=repr(task.exception()))
            self.wake()  # a slot is free

        return callback
