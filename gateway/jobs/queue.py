"""Transport of job ids to workers. The database holds job state; a queue only says "look at job X".

Two implementations of one small interface: the embedded runner (no Redis) and arq on Redis.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

from arq import ArqRedis
from arq.jobs import Job as ArqJob
from arq.jobs import JobStatus as ArqJobStatus

if TYPE_CHECKING:
    from gateway.jobs.embedded import EmbeddedRunner

RUN_JOB = "run_job"
# Only an entry still waiting to be picked up counts: one "in progress" for a job that no run holds in the database
# belongs to a worker that died (arq keeps it in progress until its own timeout, about an hour).
_WAITING = {ArqJobStatus.queued, ArqJobStatus.deferred}


def queue_ref(job_id: str, generation: int) -> str:
    """The queue entry id of a job's ``generation``-th enqueue (a lost entry is replaced by the next one)."""
    return f"{job_id}:{generation}"


class JobQueue(abc.ABC):
    """Sends job ids to whoever runs them. Called only after the job's transaction has committed."""

    @abc.abstractmethod
    async def enqueue(self, job_id: str, ref: str) -> None: ...

    @abc.abstractmethod
    async def is_waiting(self, ref: str) -> bool:
        """Whether the entry ``ref`` is still waiting in the queue for a worker (queued or deferred)."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise if the queue cannot take work."""


class EmbeddedQueue(JobQueue):
    """No transport: the in-process runner claims queued jobs from the database; enqueue only wakes it."""

    def __init__(self, runner: EmbeddedRunner) -> None:
        self.runner = runner

    async def enqueue(self, job_id: str, ref: str) -> None:
        self.runner.wake()

    async def is_waiting(self, ref: str) -> bool:
        return True  # the runner polls the database itself

    async def ping(self) -> None:
        if not self.runner.alive:
            raise RuntimeError("the embedded job runner is not running")


class ArqQueue(JobQueue):
    def __init__(self, redis: ArqRedis, queue_name: str) -> None:
        self.redis = redis
        self.queue_name = queue_name

    async def enqueue(self, job_id: str, ref: str) -> None:
        await self.redis.enqueue_job(RUN_JOB, job_id, _job_id=ref, _queue_name=self.queue_name)

    async def is_waiting(self, ref: str) -> bool:
        status = await ArqJob(ref, self.redis, _queue_name=self.queue_name).status()
        return status in _WAITING

    async def ping(self) -> None:
        await self.redis.ping()
