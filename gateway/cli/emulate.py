"""``imagegate emulate KIND``: run a protocol-faithful emulator of a GPU server (for tests, benchmarks, demos)."""

from __future__ import annotations

from typing import Annotated

import typer

from gateway.emulators import EMULATORS, EmulatorOptions, app_factory

# CRM emulators (connector tests): seeded with --credentials and --products instead of the GPU options.
CRM_EMULATORS = {
    "salesforce": "gateway.emulators.salesforce",
    "hubspot": "gateway.emulators.hubspot",
    "odoo": "gateway.emulators.odoo",
}
# OA robot emulators (connector tests): one robot with --token and --secret (Feishu also --app-id/--app-secret).
OA_EMULATORS = {
    "dingtalk": "gateway.emulators.dingtalk",
    "feishu": "gateway.emulators.feishu",
    "wecom": "gateway.emulators.wecom",
}


def emulate(
    kind: Annotated[
        str, typer.Argument(help=f"What to emulate: {', '.join([*EMULATORS, *CRM_EMULATORS, *OA_EMULATORS])}.")
    ],
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    step_ms: Annotated[float, typer.Option(help="Milliseconds per sampling step of one 1024x1024 image.")] = 20.0,
    fail_rate: Annotated[float, typer.Option(help="Share of generations that fail like the real server.")] = 0.0,
    models: Annotated[str, typer.Option(help="Comma-separated model names the server has.")] = "",
    auth: Annotated[str | None, typer.Option(help="Require credentials, user:pass[,user2:pass2].")] = None,
    load_ms: Annotated[float, typer.Option(help="Milliseconds to switch the loaded checkpoint.")] = 500.0,
    slots: Annotated[int, typer.Option(help="Generations at once (real A1111/ComfyUI: 1).")] = 1,
    credentials: Annotated[
        str | None,
        typer.Option(help="CRM emulators: salesforce CLIENT_ID:SECRET, hubspot TOKEN[,TOKEN], odoo DB:LOGIN:API_KEY."),
    ] = None,
    products: Annotated[str | None, typer.Option(help="CRM emulators: comma-separated product ids to seed.")] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", "--key", help="OA emulators: DingTalk access_token, Feishu hook, WeCom key."),
    ] = None,
    secret: Annotated[
        str | None, typer.Option(help='OA emulators: the DingTalk/Feishu signing secret ("" for none).')
    ] = None,
    app_id: Annotated[str | None, typer.Option(help="Feishu emulator: the app's app_id.")] = None,
    app_secret: Annotated[str | None, typer.Option(help="Feishu emulator: the app's app_secret.")] = None,
) -> None:
    """Run an emulated backend server that answers like the real one."""
    import uvicorn

    if kind in CRM_EMULATORS:
        import importlib

        try:
            crm_app = importlib.import_module(CRM_EMULATORS[kind]).from_cli(credentials, products)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--products") from None
        uvicorn.run(crm_app, host=host, port=port, log_level="warning")
        return
    if kind in OA_EMULATORS:
        import importlib

        oa_app, described = importlib.import_module(OA_EMULATORS[kind]).from_cli(token, secret, app_id, app_secret)
        typer.echo(f"{described} (http://{host}:{port})")
        uvicorn.run(oa_app, host=host, port=port, log_level="warning")
        return
    if kind not in EMULATORS:
        known = ", ".join([*EMULATORS, *CRM_EMULATORS, *OA_EMULATORS])
        raise typer.BadParameter(f"unknown kind {kind!r}; one of {known}", param_hint="KIND")
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
