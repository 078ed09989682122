"""Run ``imagegate`` commands as real processes (for kill -9 tests and the CLI)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

IMAGEGATE = [sys.executable, "-m", "gateway.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def env_for(tmp_path: Path, **overrides: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    env.update(
        {
            "IMAGEGATE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/imagegate.db",
            "IMAGEGATE_ASSET_DIR": str(tmp_path / "assets"),
            "IMAGEGATE_VAR_DIR": str(tmp_path),
            "IMAGEGATE_PREVIEW_STEP_MS": "20",
            "IMAGEGATE_JOB_LEASE_SECONDS": "2",
            "IMAGEGATE_POLL_SECONDS": "0.1",
            "IMAGEGATE_RECONCILE_SECONDS": "0.3",
            "IMAGEGATE_RECONCILE_GRACE_SECONDS": "1",
        }
    )
    env.update({f"IMAGEGATE_{k.upper()}": str(v) for k, v in overrides.items()})
    return env


def cli(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IMAGEGATE, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def cli_here(env: dict[str, str], *args: str) -> Ran:
    """The command run in this process, with the ``IMAGEGATE_*`` variables of ``env`` only: ~0.1 s instead of the
    ~2 s of a new interpreter and its imports. For what a command does; ``cli`` runs the real entry point. Not
    from a running event loop (the commands call ``asyncio.run``)."""
    from typer.testing import CliRunner

    from gateway.cli.main import app
    from gateway.config import get_settings

    variables: dict[str, str | None] = {k: None for k in os.environ if k.startswith("IMAGEGATE_")}
    variables.update({k: v for k, v in env.items() if k.startswith("IMAGEGATE_")})
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # the command points logging at its own, soon closed, stderr
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, list(args), env=variables, catch_exceptions=False)
    finally:
        get_settings.cache_clear()
        root.handlers[:] = handlers
        root.setLevel(level)
    return Ran(result.exit_code, result.stdout, result.stderr)


def add_system(env: dict[str, str], name: str, scopes: str = "generate,batch") -> str:
    result = cli(env, "systems", "add", name, "--scopes", scopes, "--json")
    assert result.returncode == 0, result.stderr
    token: str = json.loads(result.stdout)["token"]
    return token


class Process:
    """A background ``imagegate`` process whose stderr (JSON log lines) goes to a file."""

    def __init__(self, env: dict[str, str], args: list[str], log: Path, cwd: Path | None = None) -> None:
        self.log = log
        self._handle = log.open("ab")
        self.proc = subprocess.Popen([*IMAGEGATE, *args], env=env, cwd=cwd, stdout=self._handle, stderr=self._handle)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._handle.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill9()
                return
        self._handle.close()

    def events(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines


def start_server(env: dict[str, str], port: int, log: Path, *extra: str, cwd: Path | None = None) -> Process:
    return start_servers(env, {port: log}, *extra, cwd=cwd)[0]


def start_servers(env: dict[str, str], logs: dict[int, Path], *extra: str, cwd: Path | None = None) -> list[Process]:
    """``imagegate serve`` on each port (logging to its file), started together; returns once all answer."""
    servers = {port: Process(env, ["serve", "--port", str(port), *extra], log, cwd=cwd) for port, log in logs.items()}
    waiting = set(servers)
    deadline = time.monotonic() + 30
    while waiting and time.monotonic() < deadline:
        for port in sorted(waiting):
            server = servers[port]
            if server.proc.poll() is not None:
                for other in servers.values():
                    other.stop()
                raise AssertionError(f"server exited: {server.log.read_text()}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    waiting.discard(port)
            except httpx.HTTPError:
                pass
        if waiting:
            time.sleep(0.1)
    if waiting:
        for server in servers.values():
            server.stop()
        raise AssertionError(f"servers did not start: {[servers[p].log.read_text() for p in sorted(waiting)]}")
    return list(servers.values())
