"""`imagegate connectors add/list/remove/kinds` against the embedded database."""

from __future__ import annotations

from pathlib import Path

from tests.gateway.delivery.receiver import SECRET
from tests.processes import cli_here, env_for


def test_connectors_are_added_listed_without_secrets_and_removed(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    assert cli_here(env, "systems", "add", "crm", "--scopes", "generate,connectors:write").returncode == 0
    config = f'{{"url": "https://crm.example.com/hooks", "secret": "{SECRET}"}}'

    added = cli_here(env, "connectors", "add", "crm", "crm-hooks", "--kind", "webhook", "--config", config)
    again = cli_here(env, "connectors", "add", "crm", "crm-hooks", "--kind", "webhook", "--config", config)
    bad = cli_here(env, "connectors", "add", "crm", "x", "--kind", "webhook", "--config", '{"url": "ftp://nowhere"}')
    unknown = cli_here(env, "connectors", "add", "crm", "y", "--kind", "pigeon")
    listed = cli_here(env, "connectors", "list", "crm")
    kinds = cli_here(env, "connectors", "kinds")
    removed = cli_here(env, "connectors", "remove", "crm", "crm-hooks")
    after = cli_here(env, "connectors", "list", "crm")

    assert added.returncode == 0, added.stderr
    assert again.returncode == 1 and "exists" in again.stderr
    assert bad.returncode == 1 and "config.url" in bad.stderr
    assert unknown.returncode == 1 and "no connector kind 'pigeon'" in unknown.stderr
    assert "crm-hooks" in listed.stdout and SECRET not in listed.stdout + listed.stderr
    assert "webhook" in kinds.stdout
    assert removed.returncode == 0 and "crm-hooks" not in after.stdout
