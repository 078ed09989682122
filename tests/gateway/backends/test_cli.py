"""``imagegate backends ...`` on a temporary SQLite database (run in this process: see tests.processes.cli_here)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.live import serve_asgi
from tests.processes import cli_here, env_for

MODELS = ["sd15-pruned", "juggernaut-xl"]
PASSWORD = "secretpw-Zu73"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return env_for(tmp_path)


def _json(env: dict[str, str], *args: str) -> Any:
    result = cli_here(env, "backends", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_add_probes_the_server_prints_json_and_never_shows_the_password(env: dict[str, str]) -> None:
    from gateway.emulators.a1111 import create_app
    from gateway.emulators.core import EmulatorOptions

    emulator = create_app(EmulatorOptions(models=list(MODELS), auth=f"gw:{PASSWORD}", step_ms=5, load_ms=10))
    async with serve_asgi(emulator) as url:
        # The emulator runs in this event loop: the CLI must run in a thread to let it answer.
        added = await asyncio.to_thread(
            cli_here,
            env,
            "backends",
            "add",
            "gpu-01",
            "--kind",
            "a1111",
            "--url",
            url,
            "--auth",
            f"gw:{PASSWORD}",
            "--json",
        )
        listed = await asyncio.to_thread(cli_here, env, "backends", "list", "--json")
    assert added.returncode == 0, added.stderr
    backend = json.loads(added.stdout)
    assert (backend["name"], backend["kind"], backend["url"]) == ("gpu-01", "a1111", url)
    assert (backend["auth_type"], backend["username"]) == ("basic", "gw")
    assert (backend["health"], backend["health_error"]) == ("healthy", None)
    assert backend["discovered_models"] == MODELS
    assert listed.returncode == 0, listed.stderr
    assert [(b["name"], b["health"]) for b in json.loads(listed.stdout)] == [("gpu-01", "healthy")]
    for output in (added.stdout, added.stderr, listed.stdout, listed.stderr):
        assert PASSWORD not in output


def test_add_no_probe_then_disable_enable_and_remove(env: dict[str, str]) -> None:
    url = "http://10.255.255.1:7860"  # never contacted
    added = _json(
        env, "add", "gpu-01", "--kind", "comfyui", "--url", url, "--slots", "2", "--models", "sd15, sdxl", "--no-probe"
    )
    assert (added["health"], added["checked_at"], added["enabled"]) == ("unknown", None, True)
    assert (added["slots"], added["models"], added["auth_type"]) == (2, ["sd15", "sdxl"], "none")

    again = cli_here(env, "backends", "add", "gpu-01", "--kind", "a1111", "--url", url, "--no-probe")
    assert again.returncode == 1
    assert "already exists" in again.stderr

    assert _json(env, "disable", "gpu-01")["enabled"] is False
    assert _json(env, "enable", "gpu-01")["enabled"] is True

    removed = cli_here(env, "backends", "remove", "gpu-01")
    assert removed.returncode == 0, removed.stderr
    assert "removed gpu-01" in removed.stdout
    assert _json(env, "list") == []

    missing = cli_here(env, "backends", "disable", "gpu-01")
    assert missing.returncode == 1
    assert "No backend named 'gpu-01'" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_settings_the_adapter_cannot_use_are_refused_with_the_field_and_add_nothing(env: dict[str, str]) -> None:
    base = ["backends", "add", "gpu-01", "--url", "http://10.255.255.1:7860", "--no-probe"]
    cases = [
        (["--kind", "a1111", "--slots", "2"], "slots: a a1111 server runs one generation at a time"),
        (["--kind", "a1111", "--options", '{"poll_seconds": "often"}'], "options: could not convert"),
        (["--kind", "gradio", "--options", '{"protocol": "grpc"}'], "options: Gradio backend gpu-01: protocol"),
        (["--kind", "comfyui", "--options", '{"workflows": {"*": {"nodes": [], "links": []}}}'], "UI format"),
    ]
    for extra, reason in cases:
        result = cli_here(env, *base, *extra)
        assert result.returncode == 1, (extra, result.stdout, result.stderr)
        assert reason in result.stderr, (extra, result.stderr)
        assert "Traceback" not in result.stderr
    assert _json(env, "list") == []


def test_bad_input_exits_2_with_a_one_line_reason_and_adds_nothing(env: dict[str, str]) -> None:
    base = ["backends", "add", "gpu-01", "--url", "http://10.255.255.1:7860", "--no-probe"]
    cases = [
        (["--kind", "nope"], "kind: Input should be 'a1111'"),
        (["--kind", "a1111", "--auth", "nocolon"], "--auth must be user:pass"),
        (["--kind", "a1111", "--options", "notjson"], "--options is not JSON"),
    ]
    for extra, reason in cases:
        result = cli_here(env, *base, *extra)
        assert result.returncode == 2, (extra, result.stdout, result.stderr)
        assert reason in result.stderr, (extra, result.stderr)
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    # A pydantic pattern in the message is printed as is (not eaten as console markup).
    bad_name = cli_here(env, "backends", "add", "GPU 1", "--kind", "a1111", "--url", "http://x.example", "--no-probe")
    assert bad_name.returncode == 2
    assert "name: String should match pattern '^[a-z0-9][a-z0-9_.-]{0,63}$'" in bad_name.stderr
    assert _json(env, "list") == []
