"""Quotas hold across several API processes sharing PostgreSQL and Redis (the scaled deployment)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import Process, add_system, cli, env_for, free_port, start_servers
from tests.services import check_redis, create_pg_database, drop_pg_database


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("replicas")


@pytest.fixture(scope="module")
def replicas(logs: Path) -> Iterator[tuple[dict[str, str], list[str]]]:
    """Three `imagegate serve` processes on one PostgreSQL database and one Redis (no worker: jobs stay queued),
    shared by the tests below (each uses a system of its own)."""
    pg_url = asyncio.run(create_pg_database())
    redis_url = asyncio.run(check_redis())
    env = env_for(logs, database_url=pg_url, redis_url=redis_url, queue_name=f"imagegate:test:{free_port()}")
    servers: list[Process] = []
    try:
        assert cli(env, "migrate").returncode == 0
        ports = [free_port() for _ in range(3)]
        servers = start_servers(env, {port: logs / f"api-{port}.log" for port in ports})
        yield env, [f"http://127.0.0.1:{port}" for port in ports]
    finally:
        for server in servers:
            server.stop()
        asyncio.run(drop_pg_database(pg_url))


async def _fire(urls: list[str], token: str, count: int, method: str, path: str, body: Any = None) -> list[int]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(limits=limits, timeout=60, headers={"Authorization": f"Bearer {token}"}) as client:
        responses = await asyncio.gather(
            *[client.request(method, urls[i % len(urls)] + path, json=body) for i in range(count)]
        )
    return [r.status_code for r in responses]


def test_three_api_processes_admit_exactly_50_of_200_parallel_jobs(replicas: tuple[dict[str, str], list[str]]) -> None:
    env, urls = replicas
    token = add_system(env, "crm")
    assert cli(env, "systems", "set-quota", "crm", "--images-per-day", "50").returncode == 0
    body = {"prompt": "a teapot", "width": 256, "height": 256, "steps": 2}

    statuses = asyncio.run(_fire(urls, token, 200, "POST", "/v1/jobs", body))

    assert statuses.count(202) == 50, statuses
    assert statuses.count(429) == 150
    used = httpx.get(urls[0] + "/v1/usage", headers={"Authorization": f"Bearer {token}"}).json()["used"]
    assert used["images"] == 50
    assert used["concurrent_jobs"] == 50


def _failed_open(logs: Path) -> int:
    """Requests the servers admitted because Redis did not answer within its timeout (logged, by design)."""
    return sum(
        '"ratelimit.unavailable"' in line
        for log in logs.glob("api-*.log")
        for line in log.read_text(errors="replace").splitlines()
    )


def test_three_api_processes_share_one_requests_per_minute_window(
    replicas: tuple[dict[str, str], list[str]], logs: Path
) -> None:
    env, urls = replicas
    token = add_system(env, "oa", scopes="generate")
    assert cli(env, "systems", "set-quota", "oa", "--requests-per-minute", "50").returncode == 0
    before = _failed_open(logs)

    statuses = asyncio.run(_fire(urls, token, 200, "GET", "/v1/usage"))

    # Exactly 50 unless Redis was too slow for some hits: those fail open, each logged (a busy machine).
    failed_open = _failed_open(logs) - before
    assert 50 <= statuses.count(200) <= 50 + failed_open, (statuses, failed_open)
    assert statuses.count(200) + statuses.count(429) == 200
