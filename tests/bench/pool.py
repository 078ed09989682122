"""Benchmark of the scheduler on a pool of emulated GPUs: ``python -m tests.bench.pool``.

Starts four A1111 emulators as real processes, of different speeds (1x, 1x, 2x and 4x slower) and with
different models, and a gateway (embedded mode) in front of them. Pushes the same 200 mixed jobs through
the gateway three times and prints, per run: makespan, the ideal makespan (total work / total capacity),
utilisation = ideal / actual, and what ended how. With a backend killed, the ideal is full capacity until the
kill and the remaining capacity after it.

1. ``eft``: the scheduler (earliest expected finish, learned speeds, loaded-model preference).
2. ``round_robin``: the naive baseline, in the same run.
3. ``eft`` again, killing one backend (SIGKILL) halfway: every job must still succeed (0 lost).

Work is what the emulators spend: ``step_ms`` x steps x megapixels on a 1x backend. Targets: utilisation
>= 0.95 for eft, round robin far below, 0 jobs lost.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.processes import Process, add_system, env_for, free_port, start_server

MEGAPIXEL = 2**20
SIZES = [(512, 512), (640, 640), (768, 512), (512, 768)]


@dataclass(frozen=True)
class Emulated:
    name: str
    slowdown: int
    models: tuple[str, ...]


POOL = (
    Emulated("gpu-a", 1, ("sdxl", "sd15")),
    Emulated("gpu-b", 1, ("sdxl",)),
    Emulated("gpu-c", 2, ("sdxl", "sd15")),
    Emulated("gpu-d", 4, ("sd15",)),
)


def make_jobs(count: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    jobs = []
    for i in range(count):
        width, height = rng.choice(SIZES)
        jobs.append(
            {
                "prompt": f"benchmark product shot {i}",
                "width": width,
                "height": height,
                "steps": rng.randint(20, 30),
                "model": "sdxl" if rng.random() < 0.7 else "sd15",
                "seed": i,
            }
        )
    return jobs


def work_seconds(job: dict[str, Any], step_ms: float) -> float:
    return step_ms / 1000 * job["steps"] * job["width"] * job["height"] / MEGAPIXEL


def start_emulators(folder: Path, step_ms: float, load_ms: float) -> dict[str, tuple[Process, int]]:
    env = env_for(folder)
    running = {}
    for backend in POOL:
        port = free_port()
        args = [
            "emulate", "a1111", "--port", str(port), "--step-ms", str(step_ms * backend.slowdown),
            "--load-ms", str(load_ms), "--models", ",".join(backend.models),
        ]  # fmt: skip
        running[backend.name] = (Process(env, args, folder / f"{backend.name}.log"), port)
    for name, (process, port) in running.items():
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/sdapi/v1/sd-models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or process.proc.poll() is not None:
                raise SystemExit(f"emulator {name} did not start: {(folder / f'{name}.log').read_text()}")
            time.sleep(0.1)
    return running


async def run_once(
    folder: Path, scheduler: str, jobs: list[dict[str, Any]], step_ms: float, load_ms: float, kill: bool
) -> dict[str, Any]:
    folder.mkdir(parents=True)
    emulators = start_emulators(folder, step_ms, load_ms)
    env = env_for(
        folder,
        preview_backend="false",
        scheduler=scheduler,
        embedded_concurrency="48",
        backend_switch_seconds=str(load_ms / 1000),
        backend_refresh_seconds="0.5",
        backend_probe_seconds="1",
        backend_cooldown_seconds="5",
        log_level="WARNING",
        job_lease_seconds="30",  # production's lease (the test default of 2 s renews 30x as often)
    )
    token = add_system(env, "bench", scopes="admin,generate")
    port = free_port()
    server = start_server(env, port, folder / "gateway.log")
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as client:
            for backend in POOL:
                body = {"name": backend.name, "kind": "a1111", "url": f"http://127.0.0.1:{emulators[backend.name][1]}"}
                response = await client.post("/v1/admin/backends", json=body)
                assert response.status_code == 201, response.text
            await asyncio.sleep(1.5)  # the runner's pool re-reads the table every 0.5 s
            limit = asyncio.Semaphore(16)

            async def submit(job: dict[str, Any]) -> str:
                async with limit:
                    response = await client.post("/v1/jobs", json=job)
                    assert response.status_code == 202, response.text
                    return str(response.json()["id"])

            started = time.monotonic()
            ids = await asyncio.gather(*(submit(job) for job in jobs))
            killed = False
            killed_at: float | None = None
            done: dict[str, dict[str, Any]] = {}
            wanted = set(ids)
            while len(done) < len(ids):
                await asyncio.sleep(0.5)
                # A few list pages, not one request per job: watching must not load the gateway it measures.
                for job in await _all_jobs(client):
                    if job["id"] in wanted and job["status"] in ("succeeded", "failed", "cancelled"):
                        done[job["id"]] = job
                if kill and not killed and len(done) >= len(ids) // 2:
                    emulators["gpu-b"][0].kill9()
                    killed = True
                    killed_at = time.monotonic() - started
                if time.monotonic() - started > 3600:
                    break
            finished = [j for j in done.values()]
            makespan = max(_ts(j["finished_at"]) for j in finished) - min(_ts(j["created_at"]) for j in finished)
            by_backend: dict[str, int] = {}
            busy: dict[str, float] = {}
            slowdown = {b.name: b.slowdown for b in POOL}
            for job in finished:
                name = job["backend"] or "-"
                by_backend[name] = by_backend.get(name, 0) + 1
                if name in slowdown and job["status"] == "succeeded":
                    busy[name] = busy.get(name, 0.0) + work_seconds(job, step_ms) * slowdown[name]
            return {
                "makespan": makespan,
                "succeeded": sum(j["status"] == "succeeded" for j in finished),
                "failed": sum(j["status"] == "failed" for j in finished),
                "unfinished": len(ids) - len(done),
                "by_backend": by_backend,
                "busy": {name: seconds / makespan for name, seconds in sorted(busy.items())},
                "switches": _switches(finished),
                "idle_at_end": _idle_at_end(finished),
                "killed_at": killed_at,
                "retried": sum(1 for j in finished if any("tried another backend" in n for n in j["notes"])),
            }
    finally:
        server.stop()
        for process, _ in emulators.values():
            process.stop()


async def _all_jobs(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/jobs", params=params)).json()
        jobs += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return jobs


def _idle_at_end(jobs: list[dict[str, Any]]) -> dict[str, float]:
    """Per backend: seconds between its last finished job and the last job of the run (the tail)."""
    end = max(_ts(j["finished_at"]) for j in jobs)
    last: dict[str, float] = {}
    for job in jobs:
        if job["backend"] and job["status"] == "succeeded":
            last[job["backend"]] = max(last.get(job["backend"], 0.0), _ts(job["finished_at"]))
    return {name: end - value for name, value in sorted(last.items())}


def _switches(jobs: list[dict[str, Any]]) -> dict[str, int]:
    """Checkpoint switches per backend: model changes between its consecutive jobs."""
    counts: dict[str, int] = {}
    for name in {j["backend"] for j in jobs if j["backend"]}:
        ran = sorted((j for j in jobs if j["backend"] == name), key=lambda j: _ts(j["finished_at"]))
        counts[name] = sum(a["model"] != b["model"] for a, b in itertools.pairwise(ran))
    return counts


def _ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--step-ms", type=float, default=160.0, help="1x backend: ms per step of one megapixel")
    parser.add_argument("--load-ms", type=float, default=300.0, help="checkpoint switch time")
    parser.add_argument(
        "--runs", default="eft,round_robin,kill", help="Which runs, comma-separated: eft, round_robin, kill"
    )
    args = parser.parse_args()
    jobs = make_jobs(args.jobs)
    work = sum(work_seconds(j, args.step_ms) for j in jobs)
    capacity = sum(1 / b.slowdown for b in POOL)
    ideal = work / capacity
    described = ", ".join(f"{b.name} {b.slowdown}x {'+'.join(b.models)}" for b in POOL)
    print(f"pool: {described}")
    print(f"{len(jobs)} jobs, total work {work:.1f} s on a 1x GPU, capacity {capacity:.2f} GPUs, ideal {ideal:.1f} s")
    known = {"eft": ("eft", False), "round_robin": ("round_robin", False), "kill": ("eft", True)}
    runs = [known[name.strip()] for name in args.runs.split(",") if name.strip()]
    with tempfile.TemporaryDirectory(prefix="imagegate-bench-") as tmp:
        for index, (scheduler, kill) in enumerate(runs):
            result = asyncio.run(run_once(Path(tmp) / f"run{index}", scheduler, jobs, args.step_ms, args.load_ms, kill))
            label = f"{scheduler}{' + kill gpu-b halfway' if kill else ''}"
            lost = result["failed"] + result["unfinished"]
            best = ideal
            if result["killed_at"] is not None:  # full capacity until the kill, the rest without gpu-b after it
                t_kill = result["killed_at"]
                after = capacity - 1 / next(b.slowdown for b in POOL if b.name == "gpu-b")
                best = t_kill + max(0.0, work - capacity * t_kill) / after
            print(
                f"{label:<28} makespan {result['makespan']:6.1f} s  ideal {best:6.1f} s  "
                f"utilisation {best / result['makespan']:.3f}  succeeded {result['succeeded']}  lost {lost}  "
                f"retried {result['retried']}",
                flush=True,
            )
            shares = ", ".join(
                f"{name} {result['by_backend'].get(name, 0)} jobs, {share:.0%} busy"
                for name, share in result["busy"].items()
            )
            print(f"{'':<28} {shares}", flush=True)
            switches = ", ".join(f"{name} {count}" for name, count in sorted(result["switches"].items()))
            idle = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in result["idle_at_end"].items())
            print(f"{'':<28} checkpoint switches: {switches}; idle before the end: {idle}", flush=True)


if __name__ == "__main__":
    main()
