"""Shared fixtures. The API suite runs twice: on the embedded default (SQLite + embedded runner) and on
PostgreSQL + Redis/arq with an arq worker, against real services."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from gateway.config import Settings
from gateway.db.engine import transaction
from gateway.db.migrate import upgrade
from gateway.jobs.worker import build_worker
from gateway.main import create_app
from gateway.resources import Resources
from gateway.systems import service as systems_service
from gateway.templates.service import load_shipped
from tests.services import check_redis, create_pg_database, drop_pg_database

TERMINAL = {"succeeded", "failed", "cancelled"}


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a test: fast polling and leases, and a preview backend that takes 20 ms per step."""
    values: dict[str, Any] = {
        "env": "test",
        "database_url": f"sqlite+aiosqlite:///{tmp_path}/imagegate.db",
        "redis_url": None,
        "asset_dir": tmp_path / "assets",
        "var_dir": tmp_path,
        "queue_name": f"imagegate:test:{secrets.token_hex(4)}",
        "preview_step_ms": 20.0,
        "job_lease_seconds": 2.0,
        "poll_seconds": 0.1,
        "reconcile_seconds": 0.3,
        "reconcile_grace_seconds": 1.0,
        "backend_refresh_seconds": 0.2,
        "log_level": "WARNING",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def pg_database() -> Any:
    """One PostgreSQL database for the session, migrated once; tests empty it before use."""
    url = asyncio.run(create_pg_database())
    asyncio.run(upgrade(url))
    yield url
    asyncio.run(drop_pg_database(url))


async def _truncate(res: Resources) -> None:
    # A relay or worker of the test before may still be reading (it stops within a second): TRUNCATE can then
    # lose a deadlock against it; trying again is what an operator would do.
    for attempt in range(10):
        try:
            async with transaction(res.sessionmaker) as session:
                await session.execute(
                    text("TRUNCATE assets, jobs, tokens, systems, backends, backend_speeds, audit_events CASCADE")
                )
            return
        except DBAPIError as exc:
            if "deadlock" not in str(exc) or attempt == 9:
                raise
            await asyncio.sleep(0.2)


@dataclass
class Stack:
    """A running gateway under test: its app, resources and a client that talks to it in-process."""

    mode: str
    app: Any
    res: Resources
    client: httpx.AsyncClient
    worker: Any = None  # the in-process arq worker of a distributed stack

    def running_tasks(self) -> int:
        """Job runs in progress in this process (embedded runner or arq worker)."""
        if self.res.runner is not None:
            return len(self.res.runner._active)
        return sum(not task.done() for task in self.worker.tasks.values()) if self.worker else 0

    async def system(self, name: str | None = None, scopes: str = "generate,batch") -> str:
        """Create a system and return a bearer token for it."""
        async with transaction(self.res.sessionmaker) as session:
            issued = await systems_service.create_system(
                session, name=name or f"sys-{secrets.token_hex(3)}", scopes=scopes
            )
        return issued.secret

    async def admin(self) -> str:
        """A token of an operator's system holding the admin scope."""
        return await self.system(f"ops-{secrets.token_hex(3)}", scopes="admin")

    async def submit(self, token: str, **body: Any) -> dict[str, Any]:
        body.setdefault("prompt", "a lighthouse on a cliff at dawn")
        body.setdefault("width", 256)
        body.setdefault("height", 256)
        body.setdefault("steps", 2)
        response = await self.client.post("/v1/jobs", json=body, headers=auth(token))
        assert response.status_code == 202, response.text
        return response.json()

    async def wait(
        self, token: str, job_id: str, until: Callable[[dict[str, Any]], bool] | None = None, timeout: float = 30
    ) -> dict[str, Any]:
        until = until or (lambda job: job["status"] in TERMINAL)
        deadline = time.monotonic() + timeout
        while True:
            response = await self.client.get(f"/v1/jobs/{job_id}", headers=auth(token))
            assert response.status_code == 200, response.text
            job = response.json()
            if until(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job did not reach the expected state in {timeout}s: {job}")
            await asyncio.sleep(0.05)


@asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[Any]:
    """An arq worker running in this event loop, stopped as a SIGTERM would stop it."""
    worker = build_worker(settings, handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    try:
        deadline = time.monotonic() + 10
        while "res" not in worker.ctx and not task.done():  # started: its resources are open
            assert time.monotonic() < deadline, "the worker did not start"
            await asyncio.sleep(0.01)
        yield worker
    finally:
        worker.handle_sig(signal.SIGTERM)  # marks the shutdown and cancels running jobs
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        worker.tasks.clear()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await worker.close()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wrong(secret: str) -> str:
    """The secret with its last character changed, so it is certainly a different secret."""
    return secret[:-1] + ("y" if secret.endswith("x") else "x")


# Building an app costs about 0.2 s (FastAPI analyses every route) and migrating a new SQLite file about as much;
# the suite makes a thousand stacks. Apps are reused between tests (never by two stacks at once): the lifespan
# opens everything from `app.state.settings`, only the middleware keep the values they were built with, and
# those are the key. A test's SQLite file starts as a copy of one migrated once.
_IDLE_APPS: dict[tuple[str, int], list[Any]] = {}
_MIGRATED: list[Path] = []  # the migrated template, once made


def _app_for(settings: Settings) -> Any:
    idle = _IDLE_APPS.setdefault((settings.cors_origins, settings.max_body_bytes), [])
    app = idle.pop() if idle else create_app(settings)
    app.state.settings = settings
    return app


def _release_app(app: Any, settings: Settings) -> None:
    app.dependency_overrides.clear()
    app.state.resources = None
    _IDLE_APPS[(settings.cors_origins, settings.max_body_bytes)].append(app)


async def _seed_sqlite(settings: Settings) -> None:
    """Copy the migrated template into a test's new SQLite file (the lifespan then finds it at head)."""
    target = settings.sqlite_path
    if target is None or target.exists():
        return
    if not _MIGRATED:
        folder = Path(tempfile.mkdtemp(prefix="imagegate-template-db-"))
        await upgrade(f"sqlite+aiosqlite:///{folder}/imagegate.db")
        assert not (folder / "imagegate.db-wal").exists()  # all of it is in the one file
        _MIGRATED.append(folder / "imagegate.db")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_MIGRATED[0], target)


async def start_stack(
    mode: str, tmp_path: Path, pg_url: str | None, *, with_worker: bool = True, **overrides: Any
) -> AsyncIterator[Stack]:
    if mode == "embedded":
        settings = make_settings(tmp_path, **overrides)
        await _seed_sqlite(settings)
    else:
        assert pg_url is not None
        settings = make_settings(tmp_path, database_url=pg_url, redis_url=await check_redis(), **overrides)
    app = _app_for(settings)
    try:
        async for stack in _run_stack(app, mode, settings, with_worker):
            yield stack
    finally:
        _release_app(app, settings)


async def _run_stack(app: Any, mode: str, settings: Settings, with_worker: bool) -> AsyncIterator[Stack]:
    async with app.router.lifespan_context(app):
        res: Resources = app.state.resources
        if mode == "distributed":
            await _truncate(res)  # the shared test database: empty it, then put the shipped library back
            await load_shipped(res.sessionmaker, res.read_sessionmaker)
        transport = httpx.ASGITransport(app=app)
        async with (
            AsyncExitStack() as stack,
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
        ):
            worker = None
            if mode == "distributed" and with_worker:
                worker = await stack.enter_async_context(running_worker(settings))
            yield Stack(mode=mode, app=app, res=res, client=client, worker=worker)


@pytest.fixture(params=["embedded", "distributed"])
def stack_mode(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    if request.param == "distributed":
        return "distributed", request.getfixturevalue("pg_database")
    return "embedded", None


@pytest.fixture
async def stack(stack_mode: tuple[str, str | None], tmp_path: Path) -> AsyncIterator[Stack]:
    async for value in start_stack(stack_mode[0], tmp_path, stack_mode[1]):
        yield value


@pytest.fixture
async def embedded(tmp_path: Path) -> AsyncIterator[Stack]:
    async for value in start_stack("embedded", tmp_path, None):
        yield value
