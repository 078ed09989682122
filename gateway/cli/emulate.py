"""``imagegate emulate KIND``: run a protocol-faithful emulator of a GPU server (for tests, benchmarks, demos)."""

from __future__ import annotations

from typing import Annotated

import typer

from gateway.emulators import EMULATORS, EmulatorOptions, app_factory


def emulate(
    kind: Annotated[str, typer.Argument(help=f"What to emulate: {', '.join(EMULATORS)}.")],
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    step_ms: Annotated[float, typer.Option(help="Milliseconds per sampling step of one 1024x1024 image.")] = 20.0,
    fail_rate: Annotated[float, typer.Option(help="Share of generations that fail like the real server.")] = 0.0,
    models: Annotated[str, typer.Option(help="Comma-separated model names the server has.")] = "",
    auth: Annotated[str | None, typer.Option(help="Require credentials, user:pass[,user2:pass2].")] = None,
    load_ms: Annotated[float, typer.Option(help="Milliseconds to switch the loaded checkpoint.")] = 500.0,
    slots: Annotated[int, typer.Option(help="Generations at once (real A1111/ComfyUI: 1).")] = 1,
) -> None:
    """Run an emulated backend server that answers like the real one."""
    import uvicorn

    if kind not in EMULATORS:
        raise typer.BadParameter(f"unknown kind {kind!r}; one of {', '.join(EMULATORS)}", param_hint="KIND")
    if not 0 <= fail_rate <= 1:
        raise typer.BadParameter("must be between 0 and 1", param_hint="--fail-rate")
    options = EmulatorOptions(
        host=host,
        port=port,
        step_ms=step_ms,
        fail_rate=fail_rate,
        models=[m.strip() for m in models.split(",") if m.strip()],
        auth=auth,
        load_ms=load_ms,
        slots=max(1, slots),
    )
    uvicorn.run(app_factory(kind)(options), host=host, port=port, log_level="warning")
