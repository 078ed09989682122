"""``create_app()``: the FastAPI application; its lifespan owns every resource."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import APIRouter, Depends, FastAPI
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.cors import CORSMiddleware

from gateway import handlers
from gateway.assets.endpoints import router as assets_router
from gateway.assets.fonts import cjk_font_path
from gateway.assets.logo import router as logo_router
from gateway.audit.endpoints import router as audit_router
from gateway.auth.backend import ApiKeyBackend, unauthorized
from gateway.auth.dependencies import authenticated
from gateway.auth.endpoints import router as oauth_router
from gateway.backends.endpoints import router as backends_router
from gateway.config import PLACEHOLDER_SECRET, Settings, get_settings
from gateway.db.migrate import is_current, prepare_embedded
from gateway.delivery.endpoints import files_router
from gateway.delivery.endpoints import router as delivery_router
from gateway.deps import strict_query
from gateway.errors import error_responses
from gateway.health.endpoints import router as health_router
from gateway.jobs.endpoints import router as jobs_router
from gateway.observability.logging import configure_logging
from gateway.observability.middleware import BodyLimitMiddleware, RequestContextMiddleware
from gateway.quotas.endpoints import router as usage_router
from gateway.recipes.endpoints import router as recipes_router
from gateway.resources import close_resources, open_resources, start_relay
from gateway.systems.endpoints import router as systems_router
from gateway.templates.endpoints import router as templates_router
from gateway.templates.service import load_shipped

log = structlog.get_logger("gateway")


async def prepare_database(settings: Settings) -> None:
    """SQLite (embedded) migrates itself; a shared PostgreSQL is migrated explicitly with ``imagegate migrate``."""
    if settings.is_sqlite:
        await prepare_embedded(settings)
    elif not await is_current(settings.database_url):
        raise RuntimeError("The database schema is not up to date: run `imagegate migrate` first.")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    await prepare_database(settings)
    res = await open_resources(settings, role="api")
    app.state.resources = res
    await load_shipped(res.sessionmaker, res.read_sessionmaker)
    if res.runner is not None:
        res.runner.start()
    start_relay(res)
    log.info("gateway.started", queue="distributed" if settings.distributed else "embedded")
    if settings.secret_key == PLACEHOLDER_SECRET and settings.env != "test":
        log.warning(
            "gateway.placeholder_secret",
            message="IMAGEGATE_SECRET_KEY is the development placeholder: OAuth2 access tokens can be forged "
            "and stored backend passwords are readable by anyone with the source. Set a real secret.",
        )
    if cjk_font_path() is None and settings.env != "test":
        log.warning(
            "gateway.no_cjk_font",
            message="No CJK font is installed: Chinese text on preview images and watermarks is drawn as boxes. "
            "Install one (Debian: fonts-wqy-zenhei or fonts-noto-cjk).",
        )
    try:
        yield
    finally:
        await close_resources(res)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)

    app = FastAPI(
        title="Imagegate",
        version="0.1.0",
        summary="One authenticated API from business systems to a pool of GPU image servers.",
        lifespan=lifespan,
    )
    # What the lifespan opens its resources with. The middleware below keep the values they were built with.
    app.state.settings = settings
    handlers.install(app)
    # Added last = runs first: request id, then authentication of /v1 before any body is read.
    app.add_middleware(AuthenticationMiddleware, backend=ApiKeyBackend(), on_error=unauthorized)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:  # off unless configured: browsers then refuse cross-origin calls
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            max_age=600,
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware)

    # Public routes live on their own router; everything under /v1 requires a valid token (fail closed).
    app.include_router(health_router)
    app.include_router(oauth_router)
    app.include_router(files_router)
    v1 = APIRouter(
        prefix="/v1",
        dependencies=[Depends(authenticated), Depends(strict_query)],
        responses=error_responses(400, 401, 403, 413, 422, 429),
    )
    v1.include_router(jobs_router)
    v1.include_router(assets_router)
    v1.include_router(usage_router)
    v1.include_router(templates_router)
    v1.include_router(recipes_router)
    v1.include_router(logo_router)
    v1.include_router(delivery_router)
    v1.include_router(systems_router)
    v1.include_router(backends_router)
    v1.include_router(audit_router)
    app.include_router(v1)
    return app
