"""``imagegate connectors ...``: a system's delivery connectors from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gateway.common.crypto import SecretBox
from gateway.config import get_settings
from gateway.delivery import registry, service
from gateway.errors import NotFound
from gateway.systems import repository as systems_repository
from gateway.systems.service import Principal

app = typer.Typer(
    help="Delivery connectors of a system (webhook, s3, salesforce, dingtalk, ...).", no_args_is_help=True
)
err = Console(stderr=True, soft_wrap=True)


def _with_session(work: Any) -> Any:
    from gateway.cli.main import _with_session as run

    return run(work)


def _config(value: str) -> dict[str, Any]:
    text = Path(value[1:]).read_text(encoding="utf-8") if value.startswith("@") else value
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        err.print(f"[red]error:[/red] --config is not JSON: {escape(str(exc))}")
        raise typer.Exit(2) from None
    if not isinstance(parsed, dict):
        err.print("[red]error:[/red] --config must be a JSON object")
        raise typer.Exit(2)
    return parsed


async def _principal(session: Any, system: str) -> Principal:
    row = await systems_repository.get_system_by_name(session, system)
    if row is None:
        raise NotFound(f"No system named {system!r}.")
    return Principal(system_id=row.id, system_name=row.name, scopes=frozenset(row.scopes))


@app.command("add")
def add(
    system: Annotated[str, typer.Argument(help="The system that owns it (crm, oa, design, ...).")],
    name: Annotated[str, typer.Argument(help="Its name, used in `deliver` targets.")],
    kind: Annotated[str, typer.Option("--kind", help="Connector kind (`imagegate connectors kinds`).")],
    config: Annotated[str, typer.Option("--config", help="JSON object, or @file.json.")] = "{}",
    replace: Annotated[bool, typer.Option(help="Change an existing connector (secrets left out are kept).")] = False,
) -> None:
    """Add a connector to a system (its secrets are stored encrypted)."""
    values = _config(config)
    box = SecretBox(get_settings().secret_key)

    async def work(session: Any) -> None:
        principal = await _principal(session, system)
        await service.create_instance(
            session, principal=principal, name=name, kind_name=kind, config=values, box=box, replace=replace
        )

    _with_session(work)
    typer.echo(f"connector {name} ({kind}) {'changed' if replace else 'added'} for {system}")


@app.command("list")
def list_(system: Annotated[str, typer.Argument(help="The system.")]) -> None:
    """A system's connectors (without their secrets)."""

    async def work(session: Any) -> list[Any]:
        return list(await service.list_instances(session, await _principal(session, system)))

    table = Table("name", "kind", "config", "circuit")
    for row in _with_session(work):
        circuit = f"open until {row.circuit_open_until:%H:%M:%S}" if row.circuit_open_until else "closed"
        table.add_row(row.name, row.kind, escape(json.dumps(row.config, ensure_ascii=False)), circuit)
    Console().print(table)


@app.command("remove")
def remove(system: Annotated[str, typer.Argument()], name: Annotated[str, typer.Argument()]) -> None:
    """Remove a connector."""

    async def work(session: Any) -> None:
        row = await service.instance_named(session, await _principal(session, system), name)
        await session.delete(row)

    _with_session(work)
    typer.echo(f"connector {name} removed from {system}")


@app.command("kinds")
def kinds() -> None:
    """The installed connector kinds."""
    table = Table("kind", "capability", "title", "secrets")
    for name, kind in sorted(registry.kinds().items()):
        table.add_row(name, kind.capability, kind.title, ", ".join(sorted(service._secret_fields(kind.Config))))
    Console().print(table)
