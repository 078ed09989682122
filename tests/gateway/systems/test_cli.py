"""The imagegate CLI: systems and tokens management, migrations, and the demo's keys."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.processes import cli, cli_here, env_for, free_port, start_server


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return env_for(tmp_path)


def test_systems_add_prints_the_key_as_the_last_line(env: dict[str, str]) -> None:
    # The real `python -m gateway.cli` process; the other tests run the commands in this process.
    result = cli(env, "systems", "add", "crm", "--scopes", "generate,batch")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[-1]
    assert token.startswith("igw_") and len(token) == 53
    assert token not in result.stderr


def test_systems_add_json_has_system_and_token(env: dict[str, str]) -> None:
    result = cli_here(env, "systems", "add", "design", "--scopes", "generate,batch,templates:write", "--json")
    payload = json.loads(result.stdout)
    assert payload["system"] == "design"
    assert payload["token"].startswith("igw_")
    assert payload["scopes"] == ["batch", "generate", "templates:write"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["systems", "add", "crm", "--scopes", "generate,fly"], "unknown scope"),
        (["systems", "add", "Bad Name!"], "System names"),
        (["tokens", "issue", "nobody"], "No system named"),
        (["tokens", "revoke", "igw_zzzzzzzz"], "No token starts with"),
        (["tokens", "revoke", "igw"], "at least the first 6"),
    ],
)
def test_bad_cli_input_is_a_one_line_error_and_exit_1(env: dict[str, str], args: list[str], message: str) -> None:
    result = cli_here(env, *args)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_duplicate_system_is_refused(env: dict[str, str]) -> None:
    assert cli_here(env, "systems", "add", "crm").returncode == 0
    again = cli_here(env, "systems", "add", "crm")
    assert again.returncode == 1
    assert "already exists" in again.stderr


def test_tokens_issue_and_revoke_by_prefix_and_systems_list(env: dict[str, str], tmp_path: Path) -> None:
    first = cli_here(env, "systems", "add", "oa", "--scopes", "generate").stdout.strip().splitlines()[-1]
    second = cli_here(env, "tokens", "issue", "oa").stdout.strip().splitlines()[-1]
    assert first != second
    revoked = cli_here(env, "tokens", "revoke", first[:12])
    assert revoked.returncode == 0, revoked.stderr
    listed = json.loads(cli_here(env, "systems", "list", "--json").stdout)
    assert listed == [
        {
            "name": "oa",
            "scopes": ["generate"],
            "tokens": [{"prefix": first[:12], "revoked": True}, {"prefix": second[:12], "revoked": False}],
        }
    ]
    port = free_port()
    server = start_server(env, port, tmp_path / "server.log")
    try:
        url = f"http://127.0.0.1:{port}/v1/jobs"
        assert httpx.get(url, headers={"Authorization": f"Bearer {first}"}).status_code == 401
        assert httpx.get(url, headers={"Authorization": f"Bearer {second}"}).status_code == 200
    finally:
        server.stop()


def test_the_database_stores_only_hashes_of_keys(env: dict[str, str], tmp_path: Path) -> None:
    token = cli_here(env, "systems", "add", "crm").stdout.strip().splitlines()[-1]
    raw = (tmp_path / "imagegate.db").read_bytes()
    wal = tmp_path / "imagegate.db-wal"
    raw += wal.read_bytes() if wal.exists() else b""
    assert token.encode() not in raw
    assert token[12:].encode() not in raw


def test_migrate_is_idempotent(env: dict[str, str]) -> None:
    assert cli_here(env, "migrate").returncode == 0
    again = cli_here(env, "migrate")
    assert again.returncode == 0
    assert "up to date" in again.stdout


def test_worker_without_redis_explains_what_to_do(env: dict[str, str]) -> None:
    result = cli_here(env, "worker")
    assert result.returncode == 2
    assert "IMAGEGATE_REDIS_URL" in result.stderr


def test_serve_demo_prints_three_keys_that_work_and_survive_a_restart(env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()

    def run_once(log: str) -> dict[str, str]:
        server = start_server(env, port, tmp_path / log, "--demo")
        try:
            text = (tmp_path / log).read_text()
            keys = {}
            for line in text.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] in ("crm", "oa", "design") and parts[1].startswith("igw_"):
                    keys[parts[0]] = parts[1]
            assert set(keys) == {"crm", "oa", "design"}, text
            for name, key in keys.items():
                response = httpx.get(f"http://127.0.0.1:{port}/v1/jobs", headers={"Authorization": f"Bearer {key}"})
                assert response.status_code == 200, name
            crm = httpx.post(
                f"http://127.0.0.1:{port}/v1/jobs",
                json={"prompt": "x", "width": 64, "height": 64, "steps": 1},
                headers={"Authorization": f"Bearer {keys['crm']}"},
            )
            assert crm.status_code == 202
            return keys
        finally:
            server.stop()

    assert run_once("first.log") == run_once("second.log")


def test_revoke_matches_the_prefix_case_sensitively(env: dict[str, str]) -> None:
    token = cli_here(env, "systems", "add", "crm").stdout.strip().splitlines()[-1]
    swapped = token[:12].swapcase().replace("IGW_", "igw_")
    if swapped == token[:12]:
        pytest.skip("the random prefix has no letters to swap")
    result = cli_here(env, "tokens", "revoke", swapped)
    assert result.returncode == 1
    listed = json.loads(cli_here(env, "systems", "list", "--json").stdout)
    assert listed[0]["tokens"] == [{"prefix": token[:12], "revoked": False}]


def test_var_dir_alone_places_the_database_and_assets_under_it(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    for key in ("IMAGEGATE_DATABASE_URL", "IMAGEGATE_ASSET_DIR"):
        env.pop(key)
    env["IMAGEGATE_VAR_DIR"] = str(tmp_path / "deep" / "state")
    result = cli_here(env, "systems", "add", "crm")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "deep" / "state" / "imagegate.db").is_file()


def test_systems_add_oauth_prints_the_client_credentials_on_stdout_only(env: dict[str, str]) -> None:
    result = cli_here(env, "systems", "add", "erp", "--oauth")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    client_id = lines[0].removeprefix("client_id=")
    secret = lines[1].removeprefix("client_secret=")
    assert client_id.startswith("cli_") and secret.startswith("igs_")
    assert lines[-1].startswith("igw_")
    assert secret not in result.stderr

    as_json = json.loads(cli_here(env, "systems", "add", "erp2", "--oauth", "--json").stdout)
    assert as_json["client_id"].startswith("cli_") and as_json["client_secret"].startswith("igs_")


def test_set_quota_sets_and_clears_limits(env: dict[str, str]) -> None:
    cli_here(env, "systems", "add", "crm")

    first = cli_here(env, "systems", "set-quota", "crm", "--images-per-day", "50", "--concurrent-jobs", "4", "--json")
    cleared = cli_here(env, "systems", "set-quota", "crm", "--clear", "images-per-day", "--json")
    unknown = cli_here(env, "systems", "set-quota", "crm", "--clear", "bananas")
    nothing = cli_here(env, "systems", "set-quota", "crm")
    missing = cli_here(env, "systems", "set-quota", "nope", "--images-per-day", "1")

    assert json.loads(first.stdout)["limits"]["images_per_day"] == 50
    limits = json.loads(cleared.stdout)["limits"]
    assert limits["images_per_day"] is None and limits["concurrent_jobs"] == 4
    assert unknown.returncode == 2 and "unknown limit" in unknown.stderr
    assert nothing.returncode == 2
    assert missing.returncode == 1 and "No system named" in missing.stderr
