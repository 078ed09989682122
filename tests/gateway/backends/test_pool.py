"""The pool end to end: jobs through the gateway onto emulated GPU servers (real sockets, real protocols).

Placement by model, a backend dying mid-run, cancel reaching the backend, cluster-wide slots with several
workers, captions from a vision backend, health and circuits written for operators.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from gateway.emulators import EmulatorOptions, app_factory
from gateway.resources import Resources
from tests.conftest import Stack, auth, running_worker, start_stack
from tests.live import serve_asgi
from tests.processes import Process, env_for, free_port


@asynccontextmanager
async def emulator(kind: str, **options: Any) -> AsyncIterator[str]:
    async with serve_asgi(app_factory(kind)(EmulatorOptions(**options))) as url:
        yield url


class ConcurrencyProbe:
    """ASGI wrapper that counts generation requests in flight (what the GPU server sees)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.active = 0
        self.peak = 0
        self.total = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        counted = scope["type"] == "http" and scope["path"].endswith("/txt2img")
        if counted:
            self.active += 1
            self.total += 1
            self.peak = max(self.peak, self.active)
        try:
            await self.app(scope, receive, send)
        finally:
            if counted:
                self.active -= 1


async def add_backend(stack: Stack, admin: str, runner: Resources, **body: Any) -> dict[str, Any]:
    response = await stack.client.post("/v1/admin/backends", json=body, headers=auth(admin))
    assert response.status_code == 201, response.text
    await add_backend_seen(runner, body["name"])
    return dict(response.json())


async def add_backend_seen(runner: Resources, name: str) -> None:
    deadline = time.monotonic() + 10
    while name not in runner.pool.entries:  # the runner's pool re-reads the table every 0.2 s
        assert time.monotonic() < deadline, "the pool did not pick the backend up"
        await asyncio.sleep(0.05)


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Stack]:
    async for stack in start_stack("embedded", tmp_path, None, preview_backend=False, backend_probe_seconds=0.3):
        yield stack


async def test_a_job_runs_on_the_backend_that_serves_its_model(gateway: Stack) -> None:
    admin = await gateway.system(scopes="admin,generate")
    async with (
        emulator("a1111", models=["sd15"], step_ms=5) as sd15,
        emulator("a1111", models=["sdxl"], step_ms=5) as sdxl,
    ):
        await add_backend(gateway, admin, gateway.res, name="gpu-sd15", kind="a1111", url=sd15)
        await add_backend(gateway, admin, gateway.res, name="gpu-sdxl", kind="a1111", url=sdxl)
        job = await gateway.submit(admin, model="sdxl", width=320, height=256, n=2, steps=4)
        job = await gateway.wait(admin, job["id"])
        assert job["status"] == "succeeded", job
        assert job["backend"] == "gpu-sdxl"
        assert [a["seed"] for a in job["assets"]] == [job["seed"], job["seed"] + 1]
        image = await gateway.client.get(job["assets"][0]["url"], headers=auth(admin))
        assert png_size(image.content) == (320, 256)


async def test_the_learned_speed_is_stored_and_shown(gateway: Stack) -> None:
    admin = await gateway.system(scopes="admin,generate")
    async with emulator("a1111", models=["sd15"], step_ms=200) as url:
        await add_backend(gateway, admin, gateway.res, name="gpu", kind="a1111", url=url)
        job = await gateway.wait(
            admin, (await gateway.submit(admin, model="sd15", width=512, height=512, steps=8))["id"]
        )
        assert job["status"] == "succeeded"
        shown = (await gateway.client.get("/v1/admin/backends/gpu", headers=auth(admin))).json()
        (speed,) = shown["speeds"]
        assert speed["model"] == "sd15" and speed["samples"] == 1
        assert 0.2 <= speed["seconds_per_unit"] < 0.6  # the emulator spends 0.2 s per megapixel-step


async def test_cancelling_a_running_job_interrupts_it_on_the_backend(gateway: Stack) -> None:
    admin = await gateway.system(scopes="admin,generate")
    async with emulator("a1111", models=["sd15"], step_ms=2000) as url, httpx.AsyncClient(base_url=url) as direct:
        await add_backend(gateway, admin, gateway.res, name="gpu", kind="a1111", url=url)
        job = await gateway.submit(admin, model="sd15", width=1024, height=1024, steps=30)  # 60 s of GPU time
        await gateway.wait(admin, job["id"], until=lambda j: j["backend"] == "gpu" and j["progress"] > 0)
        busy = (await direct.get("/sdapi/v1/progress")).json()
        assert busy["state"]["job_count"] > 0 and busy["progress"] > 0
        response = await gateway.client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(admin))
        assert response.status_code == 200
        deadline = time.monotonic() + 5
        while (await direct.get("/sdapi/v1/progress")).json()["progress"] > 0:  # idle again: interrupted
            assert time.monotonic() < deadline, "the backend kept generating after the cancel"
            await asyncio.sleep(0.1)
        assert (await gateway.wait(admin, job["id"]))["status"] == "cancelled"


async def _wait_until_answering(url: str) -> None:
    deadline = time.monotonic() + 20
    async with httpx.AsyncClient(base_url=url) as client:
        while True:
            try:
                await client.get("/sdapi/v1/sd-models")
                return
            except httpx.HTTPError:
                assert time.monotonic() < deadline, f"{url} did not start"
                await asyncio.sleep(0.1)


async def test_a_backend_that_dies_mid_run_loses_no_job(gateway: Stack, tmp_path: Path) -> None:
    admin = await gateway.system(scopes="admin,generate")
    port = free_port()
    args = ["emulate", "a1111", "--port", str(port), "--models", "sd15", "--step-ms", "400"]
    doomed = Process(env_for(tmp_path), args, tmp_path / "doomed.log")
    try:
        await _wait_until_answering(f"http://127.0.0.1:{port}")
        async with emulator("a1111", models=["sd15"], step_ms=400) as healthy:
            await add_backend(gateway, admin, gateway.res, name="doomed", kind="a1111", url=f"http://127.0.0.1:{port}")
            await add_backend(gateway, admin, gateway.res, name="healthy", kind="a1111", url=healthy)
            ids = [(await gateway.submit(admin, model="sd15", width=512, height=512, steps=20))["id"] for _ in range(4)]
            deadline = time.monotonic() + 20
            victim = None
            while victim is None:  # a job generating on the backend that is about to die
                assert time.monotonic() < deadline, "no job ran on the doomed backend"
                for job_id in ids:
                    job = (await gateway.client.get(f"/v1/jobs/{job_id}", headers=auth(admin))).json()
                    if job["backend"] == "doomed" and job["progress"] > 0:
                        victim = job_id
                await asyncio.sleep(0.05)
            doomed.kill9()
            finished = {job_id: await gateway.wait(admin, job_id, timeout=60) for job_id in ids}
        assert [j["status"] for j in finished.values()] == ["succeeded"] * 4
        assert finished[victim]["backend"] == "healthy"
        assert any("doomed failed (backend_unavailable" in note for note in finished[victim]["notes"])
    finally:
        doomed.stop()


async def test_backend_health_is_recorded_for_operators(gateway: Stack) -> None:
    admin = await gateway.system(scopes="admin")
    closed = free_port()
    await add_backend(gateway, admin, gateway.res, name="gone", kind="a1111", url=f"http://127.0.0.1:{closed}")
    deadline = time.monotonic() + 10
    while True:
        shown = (await gateway.client.get("/v1/admin/backends/gone", headers=auth(admin))).json()
        if shown["health"] == "unhealthy" and gateway.res.pool.entries["gone"].breaker.state != "closed":
            break
        assert time.monotonic() < deadline, shown
        await asyncio.sleep(0.1)
    assert "unreachable" in shown["health_error"]


async def test_captions_and_tags_from_a_vision_backend(gateway: Stack) -> None:
    admin = await gateway.system(scopes="admin,generate")
    async with emulator("a1111", models=["sd15"], step_ms=5) as gpu, emulator("vision", step_ms=5) as vision:
        await add_backend(gateway, admin, gateway.res, name="gpu", kind="a1111", url=gpu)
        await add_backend(gateway, admin, gateway.res, name="glm-vision", kind="vision", url=vision)
        job = await gateway.submit(admin, model="sd15", describe=True, n=2)
        job = await gateway.wait(admin, job["id"])
        assert job["status"] == "succeeded", job
        for asset in job["assets"]:
            assert asset["caption"] and len(asset["tags"]) >= 3


async def test_workers_never_exceed_a_backends_slots_together(tmp_path: Path, pg_database: str) -> None:
    """Two arq workers (each taking 16 jobs at once) share one single-slot A1111: it never sees two at once."""
    probe = ConcurrencyProbe(app_factory("a1111")(EmulatorOptions(models=["sd15"], step_ms=40)))
    async for stack in start_stack("distributed", tmp_path, pg_database, with_worker=False, preview_backend=False):
        admin = await stack.system(scopes="admin,generate")
        async with serve_asgi(probe) as url, AsyncExitStack() as workers:
            first = await workers.enter_async_context(running_worker(stack.res.settings))
            second = await workers.enter_async_context(running_worker(stack.res.settings))
            await add_backend(stack, admin, first.ctx["res"], name="gpu", kind="a1111", url=url)
            await add_backend_seen(second.ctx["res"], "gpu")
            ids = [(await stack.submit(admin, model="sd15", width=256, height=256, steps=10))["id"] for _ in range(12)]
            jobs = [await stack.wait(admin, job_id, timeout=60) for job_id in ids]
        assert {j["status"] for j in jobs} == {"succeeded"}
        assert probe.total == 12 and probe.peak == 1
