"""``imagegate backends ...``: manage the GPU servers of the pool from the command line."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gateway.backends import repository, service
from gateway.backends.schemas import BackendCreate, BackendRead, BackendUpdate
from gateway.common.crypto import SecretBox
from gateway.config import get_settings

app = typer.Typer(
    help="GPU backends of the pool (a1111, comfyui, zimage, openai, gradio, vision).", no_args_is_help=True
)
err = Console(stderr=True, soft_wrap=True)  # one line per error, never wrapped at the terminal's width


def _with_session(work: Any) -> Any:
    from gateway.cli.main import _with_session as run

    return run(work)


def _box() -> SecretBox:
    return SecretBox(get_settings().secret_key)


def _invalid(exc: ValidationError) -> typer.Exit:
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "input"
        err.print(f"[red]error:[/red] {escape(where)}: {escape(error['msg'])}")  # e.g. a pattern's [a-z]
    return typer.Exit(2)


def _auth(auth: str | None, bearer: str | None) -> dict[str, str] | None:
    if auth is not None and bearer is not None:
        err.print("[red]error:[/red] give --auth or --bearer, not both")
        raise typer.Exit(2)
    if auth is not None:
        username, sep, password = auth.partition(":")
        if not sep:
            err.print("[red]error:[/red] --auth must be user:pass")
            raise typer.Exit(2)
        return {"type": "basic", "username": username, "password": password}
    if bearer is not None:
        return {"type": "bearer", "token": bearer}
    return None


def _models(models: str | None) -> list[str] | None:
    return None if models is None else [m.strip() for m in models.split(",") if m.strip()]


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Backend name, e.g. gpu-01.")],
    kind: Annotated[str, typer.Option(help="a1111, comfyui, zimage, openai, gradio or vision.")],
    url: Annotated[str, typer.Option(help="Base URL, e.g. http://10.0.0.5:7860.")],
    slots: Annotated[int | None, typer.Option(help="Generations at once (default 1; openai 4).")] = None,
    models: Annotated[str | None, typer.Option(help="Comma-separated models (default: discovered).")] = None,
    auth: Annotated[str | None, typer.Option(help="HTTP Basic credentials user:pass (A1111 --api-auth).")] = None,
    bearer: Annotated[str | None, typer.Option(help="Bearer token.")] = None,
    options: Annotated[str | None, typer.Option(help="Kind-specific options as a JSON object.")] = None,
    timeout: Annotated[float, typer.Option(help="Longest single generation call, seconds.")] = 600.0,
    probe: Annotated[bool, typer.Option(help="Ask the server for its models and health now.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the backend as JSON.")] = False,
) -> None:
    """Add a backend to the pool; its models are discovered unless --models is given."""
    try:
        body = BackendCreate.model_validate(
            {
                "name": name,
                "kind": kind,
                "url": url,
                "slots": slots,
                "models": _models(models) or [],
                "auth": _auth(auth, bearer),
                "options": json.loads(options) if options else {},
                "timeout_seconds": timeout,
            }
        )
    except ValidationError as exc:
        raise _invalid(exc) from None
    except json.JSONDecodeError as exc:
        err.print(f"[red]error:[/red] --options is not JSON: {escape(str(exc))}")
        raise typer.Exit(2) from None

    row = _with_session(lambda s: service.create_backend(s, body=body, box=_box()))
    if probe:  # outside the transaction: the server may take seconds to answer
        outcome = asyncio.run(service.probe_server(repository.spec_of(row, _box())))
        row = _with_session(lambda s: service.record_probe(s, name=name, outcome=outcome))
    _print([BackendRead.of(row, [])], as_json, single=True)


@app.command("list")
def list_(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List backends with health, models and learned speeds."""

    async def work(session: Any) -> list[BackendRead]:
        rows = await repository.list_backends(session)
        speeds = await service.speeds_of(session, [r.name for r in rows])
        return [BackendRead.of(r, speeds[r.name]) for r in rows]

    _print(_with_session(work), as_json)


def _update(name: str, changes: dict[str, Any], as_json: bool) -> None:
    try:
        body = BackendUpdate.model_validate(changes)
    except ValidationError as exc:
        raise _invalid(exc) from None

    async def work(session: Any) -> BackendRead:
        return BackendRead.of(await service.update_backend(session, name=name, body=body, box=_box()), [])

    _print([_with_session(work)], as_json, single=True)


@app.command("disable")
def disable(name: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Stop placing new jobs on a backend (running ones finish)."""
    _update(name, {"enabled": False}, as_json)


@app.command("enable")
def enable(name: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Place jobs on a backend again."""
    _update(name, {"enabled": True}, as_json)


@app.command("set")
def set_(
    name: str,
    url: Annotated[str | None, typer.Option()] = None,
    slots: Annotated[int | None, typer.Option()] = None,
    models: Annotated[str | None, typer.Option(help="Comma-separated; empty string: discovered.")] = None,
    auth: Annotated[str | None, typer.Option(help="user:pass")] = None,
    bearer: Annotated[str | None, typer.Option()] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Remove credentials.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Change a backend's URL, slots, models or credentials."""
    changes: dict[str, Any] = {
        k: v for k, v in {"url": url, "slots": slots, "models": _models(models)}.items() if v is not None
    }
    credentials = _auth(auth, bearer)
    if credentials is not None:
        changes["auth"] = credentials
    elif no_auth:
        changes["auth"] = {"type": "none"}
    _update(name, changes, as_json)


@app.command("remove")
def remove(name: str) -> None:
    """Remove a backend from the pool (running jobs on it finish)."""
    _with_session(lambda s: service.delete_backend(s, name=name))
    Console().print(f"removed {name}")


def _print(items: list[BackendRead], as_json: bool, *, single: bool = False) -> None:
    if as_json:
        payload: Any = [i.model_dump(mode="json") for i in items]
        sys.stdout.write(json.dumps(payload[0] if single else payload) + "\n")
        return
    table = Table("backend", "kind", "url", "slots", "models", "enabled", "health", "loaded")
    for item in items:
        models = item.models or item.discovered_models
        table.add_row(
            item.name,
            item.kind,
            item.url,
            str(item.slots),
            ",".join(models) if models else "(any)",
            "yes" if item.enabled else "no",
            item.health + (f": {item.health_error}" if item.health_error else ""),
            item.loaded_model or "",
        )
    Console().print(table)
