"""The ``imagegate`` command line."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from gateway.audit import service as audit
from gateway.audit.service import Actor
from gateway.cli.backends import app as backends_app
from gateway.cli.batch import batch
from gateway.cli.connectors import app as connectors_app
from gateway.cli.emulate import emulate
from gateway.config import Settings, get_settings
from gateway.db.engine import create_engine, create_sessionmaker, transaction
from gateway.db.migrate import prepare_embedded, upgrade
from gateway.errors import ImagegateError
from gateway.observability.logging import configure_logging
from gateway.systems import repository as systems_repository
from gateway.systems import service as systems_service

app = typer.Typer(help="Imagegate: an enterprise gateway to GPU image-generation servers.", no_args_is_help=True)
systems_app = typer.Typer(help="Calling systems (crm, oa, design, ...).", no_args_is_help=True)
tokens_app = typer.Typer(help="API keys of systems.", no_args_is_help=True)
app.add_typer(systems_app, name="systems")
app.add_typer(tokens_app, name="tokens")
app.add_typer(backends_app, name="backends")
app.add_typer(connectors_app, name="connectors")

err = Console(stderr=True)
T = TypeVar("T")


@app.callback()
def _main(ctx: typer.Context) -> None:
    """Every command that uses the database first brings an embedded SQLite database up to date."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    if ctx.invoked_subcommand not in _NO_DATABASE:
        asyncio.run(prepare_embedded(settings))


_NO_DATABASE = {"emulate", "batch"}
app.command()(emulate)
app.command()(batch)


def _with_session(work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(session)`` in one committed transaction; typed errors become a one-line message and exit 1."""

    async def runner() -> T:
        engine = create_engine(get_settings().database_url)
        try:
            async with transaction(create_sessionmaker(engine)) as session:
                return await work(session)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(runner())
    except ImagegateError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from None


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    demo: Annotated[bool, typer.Option(help="Create the demo systems crm, oa, design and print their keys.")] = False,
) -> None:
    """Run the gateway (API and, without Redis, the embedded job runner)."""
    import uvicorn

    from gateway.main import create_app

    settings = get_settings()
    if demo:
        _print_demo(settings, host, port)
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_config=None,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )


def _print_demo(settings: Settings, host: str, port: int) -> None:
    from gateway.systems.demo import ensure_demo_systems

    async def run() -> dict[str, str]:
        engine = create_engine(settings.database_url)
        try:
            return await ensure_demo_systems(create_sessionmaker(engine), settings.var_dir)
        finally:
            await engine.dispose()

    tokens = asyncio.run(run())
    base = f"http://{host}:{port}"
    out = Console()
    out.print(f"\n[bold]Imagegate demo[/bold] on {base}  (API docs: {base}/docs)\n")
    for name, token in tokens.items():
        out.print(f"  {name:<7} {token}", soft_wrap=True, highlight=False)
    example = tokens.get("crm", "")
    out.print(
        "\nTry it:\n"
        f"  curl -s -H 'Authorization: Bearer {example}' -H 'Content-Type: application/json' \\\n"
        f'       -d \'{{"prompt": "a red bicycle, product photo", "width": 512, "height": 512}}\' '
        f"{base}/v1/jobs\n",
        soft_wrap=True,
        highlight=False,
    )


@app.command()
def worker(
    burst: Annotated[bool, typer.Option(help="Exit when the queue is empty.")] = False,
) -> None:
    """Run an arq worker (distributed mode: needs IMAGEGATE_REDIS_URL)."""
    from gateway.jobs.worker import build_worker

    settings = get_settings()
    if not settings.distributed:
        err.print(
            "[red]error:[/red] `imagegate worker` needs IMAGEGATE_REDIS_URL; "
            "without Redis, `imagegate serve` runs jobs itself."
        )
        raise typer.Exit(2)
    build_worker(settings, burst=burst).run()


@app.command()
def migrate() -> None:
    """Bring the database schema up to date (run once per release against PostgreSQL)."""
    asyncio.run(upgrade(get_settings().database_url))
    Console().print("database is up to date")


@systems_app.command("add")
def systems_add(
    name: Annotated[str, typer.Argument(help="System name, e.g. crm.")],
    scopes: Annotated[str, typer.Option(help="Comma-separated scopes, e.g. generate,batch.")] = "generate",
    oauth: Annotated[bool, typer.Option("--oauth", help="Also create an OAuth2 client-credentials client.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Create a system and its first API key (printed once, as the last line)."""

    async def work(session: Any) -> tuple[systems_service.IssuedToken, systems_service.IssuedClient | None]:
        issued = await systems_service.create_system(session, name=name, scopes=scopes)
        client = await systems_service.create_oauth_client(session, system_name=name) if oauth else None
        audit.record(
            session,
            Actor.cli(),
            "system.create",
            target=f"system:{name}",
            details={"scopes": issued.system.scopes, "oauth": oauth},
        )
        return issued, client

    issued, client = _with_session(work)
    _print_issued(issued, as_json, client)


def _print_issued(
    issued: systems_service.IssuedToken, as_json: bool, client: systems_service.IssuedClient | None = None
) -> None:
    if as_json:
        payload = {
            "system": issued.system.name,
            "system_id": issued.system.id,
            "scopes": issued.system.scopes,
            "token": issued.secret,
            "token_prefix": issued.token.prefix,
        }
        if client is not None:
            payload |= {"client_id": client.client.id, "client_secret": client.secret}
        sys.stdout.write(json.dumps(payload) + "\n")
        return
    err.print(f"system {issued.system.name} ({', '.join(issued.system.scopes)}): key {issued.token.prefix}…")
    err.print("Store these secrets now; they are not shown again.")
    if client is not None:  # secrets go to stdout only (stderr ends up in logs)
        sys.stdout.write(f"client_id={client.client.id}\nclient_secret={client.secret}\n")
    sys.stdout.write(issued.secret + "\n")


@systems_app.command("set-quota")
def systems_set_quota(
    name: Annotated[str, typer.Argument(help="System name.")],
    images_per_day: Annotated[int | None, typer.Option(min=0, help="Images per UTC day.")] = None,
    gpu_seconds_per_day: Annotated[float | None, typer.Option(min=0, help="GPU-seconds per UTC day.")] = None,
    concurrent_jobs: Annotated[int | None, typer.Option(min=0, help="Unfinished jobs at once.")] = None,
    requests_per_minute: Annotated[int | None, typer.Option(min=1, help="API requests per minute.")] = None,
    clear: Annotated[
        list[str] | None,
        typer.Option(help="Remove a limit (repeatable): images-per-day, gpu-seconds-per-day, ..."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Set a system's limits (only the options given change)."""
    from gateway.quotas import service as quotas
    from gateway.quotas.schemas import QuotaUpdate

    given: dict[str, Any] = {
        key: value
        for key, value in {
            "images_per_day": images_per_day,
            "gpu_seconds_per_day": gpu_seconds_per_day,
            "concurrent_jobs": concurrent_jobs,
            "requests_per_minute": requests_per_minute,
        }.items()
        if value is not None
    }
    for item in clear or []:
        key = item.replace("-", "_")
        if key not in quotas.LIMITS:
            err.print(f"[red]error:[/red] unknown limit {item!r}; known: {', '.join(quotas.LIMITS)}")
            raise typer.Exit(2)
        given[key] = None
    if not given:
        err.print("[red]error:[/red] give at least one limit (or --clear LIMIT)")
        raise typer.Exit(2)
    body = QuotaUpdate.model_validate(given, strict=False)

    async def work(session: Any) -> dict[str, Any]:
        system = await systems_service.get_system(session, name)
        await quotas.set_limits(session, system_id=system.id, body=body)
        audit.record(session, Actor.cli(), "quota.set", target=f"system:{name}", details=given)
        usage = await quotas.usage_of(session, system_id=system.id, system_name=system.name)
        return usage.model_dump(mode="json")

    usage = _with_session(work)
    if as_json:
        sys.stdout.write(json.dumps(usage) + "\n")
        return
    limits = ", ".join(f"{k}={'unlimited' if v is None else v}" for k, v in usage["limits"].items())
    Console().print(f"{name}: {limits}")


@systems_app.command("list")
def systems_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List systems with their scopes and keys."""

    async def work(session: Any) -> list[dict[str, Any]]:
        rows = []
        for system in await systems_repository.list_systems(session):
            tokens = await systems_repository.tokens_of(session, system.id)
            rows.append(
                {
                    "name": system.name,
                    "scopes": system.scopes,
                    "tokens": [{"prefix": t.prefix, "revoked": t.revoked_at is not None} for t in tokens],
                }
            )
        return rows

    rows = _with_session(work)
    if as_json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    table = Table("system", "scopes", "active keys", "revoked")
    for row in rows:
        active = [t["prefix"] for t in row["tokens"] if not t["revoked"]]
        table.add_row(row["name"], ",".join(row["scopes"]), " ".join(active), str(len(row["tokens"]) - len(active)))
    Console().print(table)


@tokens_app.command("issue")
def tokens_issue(
    name: Annotated[str, typer.Argument(help="System name.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Issue another API key for a system (e.g. to rotate: issue, deploy, then revoke the old one)."""

    async def work(session: Any) -> systems_service.IssuedToken:
        issued = await systems_service.issue_token(session, system_name=name)
        audit.record(
            session,
            Actor.cli(),
            "token.issue",
            target=f"system:{name}",
            details={"token_id": issued.token.id, "prefix": issued.token.prefix},
        )
        return issued

    _print_issued(_with_session(work), as_json)


@tokens_app.command("revoke")
def tokens_revoke(
    prefix: Annotated[str, typer.Argument(help="The key's prefix (igw_ + 8 characters) or the key.")],
) -> None:
    """Revoke an API key; it is refused from the next request on."""

    async def work(session: Any) -> Any:
        token = await systems_service.revoke_token(session, prefix=prefix)
        audit.record(session, Actor.cli(), "token.revoke", target=f"token:{token.id}", details={"token_id": token.id})
        return token

    token = _with_session(work)
    Console().print(f"revoked {token.prefix}…")
