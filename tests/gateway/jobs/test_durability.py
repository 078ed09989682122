"""Nothing accepted is lost, nothing runs twice to completion: killed processes, lost queue entries."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from sqlalchemy import text, update
from sqlmodel import col

from gateway.common.time import utcnow
from gateway.db.engine import transaction
from gateway.jobs.models import Job, JobStatus
from gateway.jobs.reconcile import reconcile
from tests.conftest import auth, running_worker, start_stack
from tests.processes import Process, add_system, env_for, free_port, start_server
from tests.services import REDIS_URL


def _poll(url: str, token: str, until: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = httpx.get(url, headers=auth(token), timeout=5).json()
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting; last: {value}")
        time.sleep(0.1)


def _completions(*processes: Process) -> Counter[str]:
    return Counter(
        e["job_id"]
        for p in processes
        for e in p.events()
        if e.get("event") == "job.finished" and e.get("outcome") == JobStatus.succeeded
    )


def _embedded_server(tmp_path: Path, concurrency: int) -> tuple[dict[str, str], str, int, str, Process]:
    """Env, a crm key, port, base URL and a started embedded server."""
    env = env_for(tmp_path, embedded_concurrency=concurrency)
    token = add_system(env, "crm")
    port = free_port()
    return env, token, port, f"http://127.0.0.1:{port}", start_server(env, port, tmp_path / "first.log")


def test_jobs_accepted_before_kill_9_of_the_embedded_server_run_once_after_restart(tmp_path: Path) -> None:
    env, token, port, base, first = _embedded_server(tmp_path, concurrency=2)
    try:
        ids = []
        for i in range(4):
            response = httpx.post(
                f"{base}/v1/jobs",
                json={"prompt": f"poster {i}", "width": 128, "height": 128, "steps": 100, "n": 2},
                headers=auth(token),
            )
            assert response.status_code == 202
            ids.append(response.json()["id"])
        _poll(f"{base}/v1/jobs?status=running", token, lambda page: len(page["items"]) == 2)
    finally:
        first.kill9()

    second = start_server(env, port, tmp_path / "second.log")
    try:
        for job_id in ids:
            job = _poll(f"{base}/v1/jobs/{job_id}", token, lambda j: j["status"] in ("succeeded", "failed"))
            assert job["status"] == "succeeded", job
            assert len(job["assets"]) == 2
        attempts = sorted(httpx.get(f"{base}/v1/jobs/{i}", headers=auth(token)).json()["attempts"] for i in ids)
        assert attempts == [1, 1, 2, 2]  # the two that were running when killed ran again, once
    finally:
        second.stop()
    completions = _completions(first, second)
    assert completions == Counter(dict.fromkeys(ids, 1))
    # The logs are JSON lines with the request id and the system bound to requests, the job id to jobs.
    posts = [e for e in first.events() if e.get("event") == "request" and e.get("method") == "POST"]
    assert len(posts) == 4 and all(e["system"] == "crm" and len(e["request_id"]) == 32 for e in posts)
    started = [e for e in second.events() if e.get("event") == "job.started"]
    assert {e["job_id"] for e in started} <= set(ids) and all(e["system"] == "crm" for e in started)


async def test_killed_arq_worker_mid_job_its_job_completes_once_on_another_worker(
    tmp_path: Path, pg_database: str
) -> None:
    async for stack in start_stack("distributed", tmp_path, pg_database, with_worker=False):
        settings = stack.res.settings
        env = env_for(
            tmp_path,
            database_url=pg_database,
            redis_url=settings.redis_url,
            queue_name=settings.queue_name,
        )
        token = await stack.system()
        worker1 = Process(env, ["worker"], tmp_path / "worker1.log")
        worker2 = None
        try:
            job = await stack.submit(token, steps=150, n=2)
            await stack.wait(
                token, job["id"], until=lambda j: j["status"] == "running" and j["progress"] > 0, timeout=30
            )
            worker1.kill9()
            worker2 = Process(env, ["worker"], tmp_path / "worker2.log")
            done = await stack.wait(token, job["id"], timeout=60)
        finally:
            if worker1.proc.poll() is None:
                worker1.kill9()
            if worker2 is not None:
                worker2.stop()
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 2
        assert len(done["assets"]) == 2
        assert _completions(worker1, worker2) == Counter({job["id"]: 1})


async def test_job_whose_queue_entry_was_lost_is_requeued_by_the_reconciler(tmp_path: Path, pg_database: str) -> None:
    async for stack in start_stack("distributed", tmp_path, pg_database, with_worker=False):
        token = await stack.system()
        job = await stack.submit(token)
        client = aioredis.from_url(REDIS_URL)
        try:
            assert await client.zcard(stack.res.settings.queue_name) == 1
            await client.flushdb()  # what a Redis restart without persistence does
        finally:
            await client.aclose()

        async with running_worker(stack.res.settings):
            done = await stack.wait(token, job["id"], timeout=30)
        assert done["status"] == "succeeded"
        assert done["attempts"] == 1
        async with stack.res.sessionmaker() as session:
            row = await session.get(Job, job["id"])
        assert row is not None and row.queue_ref == f"{job['id']}:1"  # a new entry replaced the lost one


async def test_two_workers_sharing_a_queue_complete_every_job_exactly_once(tmp_path: Path, pg_database: str) -> None:
    async for stack in start_stack("distributed", tmp_path, pg_database, with_worker=False):
        token = await stack.system()
        # 0.5 s each: one worker (4 at a time) cannot take them all before the other starts polling.
        ids = [(await stack.submit(token, prompt=f"tile {i}", steps=25, n=2))["id"] for i in range(16)]
        settings = stack.res.settings.model_copy(update={"worker_concurrency": 4})
        async with running_worker(settings), running_worker(settings):
            jobs = [await stack.wait(token, job_id, timeout=60) for job_id in ids]
        assert {j["status"] for j in jobs} == {"succeeded"}
        assert {j["attempts"] for j in jobs} == {1}
        assert all(len(j["assets"]) == 2 for j in jobs)
        async with stack.res.sessionmaker() as session:
            owners = (await session.execute(text("SELECT DISTINCT lease_owner FROM jobs"))).scalars().all()
        assert len(owners) == 2  # both workers ran jobs


@pytest.mark.parametrize("state", ["died_while_running", "died_before_claiming"])
async def test_job_of_a_worker_that_died_is_enqueued_again_once(tmp_path: Path, pg_database: str, state: str) -> None:
    """The dead worker's queue entry stays "in progress" in arq for about an hour: the reconciler must not take
    that for a live entry, and must not pile up new entries on every pass either."""
    async for stack in start_stack("distributed", tmp_path, pg_database, with_worker=False):
        token = await stack.system()
        job = await stack.submit(token)
        queue, entry = stack.res.settings.queue_name, f"{job['id']}:0"
        client = aioredis.from_url(REDIS_URL)
        try:  # what arq does when a worker takes the entry: off the queue, marked in progress
            assert await client.zrem(queue, entry) == 1
            await client.set(f"arq:in-progress:{entry}", b"1", px=3_600_000)
        finally:
            await client.aclose()
        async with transaction(stack.res.sessionmaker) as session:
            values: dict[str, Any] = {"enqueued_at": utcnow() - timedelta(seconds=60)}
            if state == "died_while_running":
                values |= {
                    "status": "running",
                    "attempts": 1,
                    "lease_token": "dead",
                    "lease_expires_at": utcnow() - timedelta(seconds=5),
                }
            await session.execute(update(Job).where(col(Job.id) == job["id"]).values(**values))

        assert await reconcile(stack.res) == [job["id"]]
        assert await reconcile(stack.res) == []  # just enqueued
        await asyncio.sleep(stack.res.settings.reconcile_grace_seconds + 0.2)
        assert await reconcile(stack.res) == []  # its new entry is waiting in the queue: nothing to repair
        async with running_worker(stack.res.settings):
            done = await stack.wait(token, job["id"], timeout=30)
        assert done["status"] == "succeeded"


async def test_sigterm_to_a_worker_hands_its_running_job_back_uncounted(tmp_path: Path, pg_database: str) -> None:
    async for stack in start_stack("distributed", tmp_path, pg_database, with_worker=False):
        settings = stack.res.settings
        env = env_for(tmp_path, database_url=pg_database, redis_url=settings.redis_url, queue_name=settings.queue_name)
        token = await stack.system()
        worker = Process(env, ["worker"], tmp_path / "worker.log")
        try:
            job = await stack.submit(token, steps=150)
            await stack.wait(token, job["id"], until=lambda j: j["status"] == "running" and j["progress"] > 0)
        finally:
            worker.stop()  # SIGTERM
        assert worker.proc.returncode == 0
        handed_back = (await stack.client.get(f"/v1/jobs/{job['id']}", headers=auth(token))).json()
        assert (handed_back["status"], handed_back["attempts"]) == ("queued", 0)
        async with running_worker(settings):
            done = await stack.wait(token, job["id"], timeout=30)
        assert (done["status"], done["attempts"]) == ("succeeded", 1)


def test_stopping_the_embedded_server_hands_its_running_jobs_back_uncounted(tmp_path: Path) -> None:
    env, token, port, base, server = _embedded_server(tmp_path, concurrency=1)
    try:
        job = httpx.post(
            f"{base}/v1/jobs", json={"prompt": "p", "width": 64, "height": 64, "steps": 150}, headers=auth(token)
        ).json()
        _poll(f"{base}/v1/jobs/{job['id']}", token, lambda j: j["status"] == "running")
    finally:
        server.stop()  # SIGTERM
    server = start_server(env, port, tmp_path / "second.log")
    try:
        done = _poll(f"{base}/v1/jobs/{job['id']}", token, lambda j: j["status"] == "succeeded")
    finally:
        server.stop()
    assert done["attempts"] == 1
