"""The /sdapi/v1 routes of AUTOMATIC1111 v1.10 (``modules/api/api.py``), answering like the real ones.

* ``api_middleware``: every response passed through ``log_and_time`` carries ``X-Process-Time``. Exceptions
  become ``{"error": <class name>, "detail": ..., "body": "", "errors": ...}`` with the exception's status
  (500 by default); for an ``HTTPException`` ``errors`` is ``""`` (Starlette 0.26 had no ``__str__``), for
  other exceptions it is ``str(e)``. Non-HTTP exceptions escape ``log_and_time``, so those 500s carry no
  ``X-Process-Time``, as upstream.
* ``--api-auth`` (``options.auth``, "u1:p1,u2:p2"): HTTP Basic on every /sdapi route, FastAPI 0.94 ``HTTPBasic``
  semantics: no or non-Basic header -> 401 "Not authenticated", undecodable -> 401 "Invalid authentication
  credentials", wrong pair -> 401 "Incorrect username or password" (no WWW-Authenticate: the envelope drops it).
* Request bodies are validated as pydantic v1 did (unknown fields ignored, 422 ``{"detail": [{loc, msg,
  type}]}``).
* Responses over 1000 bytes are gzip-compressed for clients that accept it (webui.py adds ``GZipMiddleware``).
* A generation keeps running when its client goes away (upstream runs it in a worker thread).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.emulators.a1111 import catalog, images
from gateway.emulators.a1111.engine import Webui
from gateway.emulators.a1111.jobs import img2img_job, txt2img_job
from gateway.emulators.a1111.models import (
    Img2ImgRequest,
    ProgressQuery,
    RequestInvalid,
    Txt2ImgRequest,
    parse_body,
    parse_dict,
    validate,
)
from gateway.emulators.core import EmulatorOptions, basic_auth_ok


def _envelope(exc: Exception) -> JSONResponse:
    """``handle_exception`` of api_middleware."""
    is_http = isinstance(exc, StarletteHTTPException)
    content = {
        "error": type(exc).__name__,
        "detail": exc.detail if is_http else "",  # type: ignore[attr-defined]
        "body": "",
        "errors": "" if is_http else str(exc),
    }
    return JSONResponse(status_code=exc.status_code if is_http else 500, content=content)  # type: ignore[attr-defined]


def _auth_dependency(options: EmulatorOptions) -> Callable[[Request], None]:
    def auth(request: Request) -> None:
        if not options.credentials():
            return
        header = request.headers.get("authorization") or ""
        scheme, _, param = header.partition(" ")
        if not header or scheme.lower() != "basic":
            raise HTTPException(status_code=401, detail="Not authenticated", headers={"WWW-Authenticate": "Basic"})
        try:
            _, separator, _ = base64.b64decode(param).decode("ascii").partition(":")
        except (ValueError, UnicodeDecodeError, binascii.Error):
            separator = ""
        if not separator:
            raise HTTPException(status_code=401, detail="Invalid authentication credentials")
        if not basic_auth_ok(header, options):
            raise HTTPException(status_code=401, detail="Incorrect username or password")

    return auth


async def _shielded(coro: Awaitable[Any]) -> Any:
    """Run ``coro`` to its end even if the caller is cancelled (a client that hangs up does not stop the GPU)."""
    task = asyncio.ensure_future(coro)
    task.add_done_callback(lambda done: done.cancelled() or done.exception())  # nobody may be left to read it
    return await asyncio.shield(task)


def create_app(options: EmulatorOptions) -> FastAPI:
    """An ASGI app that answers like ``webui.py --api`` (optionally with ``--api-auth``)."""
    webui = Webui(options)
    app = FastAPI(title="Stable Diffusion API (Imagegate emulator)", version=catalog.VERSION)
    app.state.webui = webui
    app.add_middleware(GZipMiddleware, minimum_size=1000)  # webui.py's setup_middleware, inside api_middleware

    @app.middleware("http")
    async def log_and_time(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.time()
        response = await call_next(request)
        response.headers["X-Process-Time"] = str(round(time.time() - started, 4))
        return response

    @app.middleware("http")
    async def exception_handling(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        try:
            return await call_next(request)
        except Exception as exc:  # api_middleware turns every exception into the envelope
            return _envelope(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_exception_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _envelope(exc)

    @app.exception_handler(RequestInvalid)
    async def validation_handler(request: Request, exc: RequestInvalid) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": exc.errors})

    router = APIRouter(prefix="/sdapi/v1", dependencies=[Depends(_auth_dependency(options))])

    @router.post("/txt2img")
    async def text2imgapi(request: Request) -> dict[str, Any]:
        req = parse_body(await request.body(), Txt2ImgRequest)
        job = txt2img_job(req)
        encoded, info = await _shielded(webui.generate(job, req))
        return {"images": encoded if req.send_images else [], "parameters": dict(vars(req)), "info": info}

    @router.post("/img2img")
    async def img2imgapi(request: Request) -> dict[str, Any]:
        req = parse_body(await request.body(), Img2ImgRequest)
        if req.init_images is None:
            raise HTTPException(status_code=404, detail="Init image not found")
        if req.mask:
            images.decode_image(req.mask)
        init = [await asyncio.to_thread(images.decode_image, str(x)) for x in req.init_images]
        job = img2img_job(req, init)
        encoded, info = await _shielded(webui.generate(job, req))
        parameters = dict(vars(req))
        if not req.include_init_images:
            parameters["init_images"] = None
            parameters["mask"] = None
        return {"images": encoded if req.send_images else [], "parameters": parameters, "info": info}

    @router.get("/progress")
    async def progressapi(request: Request) -> dict[str, Any]:
        query = validate(dict(request.query_params), ProgressQuery, prefix="query")
        return await webui.progress(query.skip_current_image)

    @router.post("/interrupt")
    async def interruptapi() -> dict[str, Any]:
        webui.interrupt()
        return {}

    @router.post("/skip")
    async def skip() -> None:
        webui.skip()

    @router.get("/options")
    async def get_config() -> dict[str, Any]:
        return dict(webui.opts)

    @router.post("/options")
    async def set_config(request: Request) -> None:
        await webui.set_config(parse_dict(await request.body()))

    @router.get("/sd-models")
    async def get_sd_models() -> list[dict[str, Any]]:
        return [c.item() for c in webui.checkpoints]

    @router.post("/refresh-checkpoints")
    async def refresh_checkpoints() -> None:
        async with webui.queue_lock:
            return None

    @router.get("/samplers")
    async def get_samplers() -> list[dict[str, Any]]:
        # SamplerItem.options is dict[str, str]: pydantic v1 turns True into "True".
        return [
            {"name": s.name, "aliases": list(s.aliases), "options": {k: str(v) for k, v in s.options.items()}}
            for s in catalog.SAMPLERS
        ]

    @router.get("/schedulers")
    async def get_schedulers() -> list[dict[str, Any]]:
        return [
            {
                "name": s.name,
                "label": s.label,
                "aliases": list(s.aliases) if s.aliases is not None else None,
                "default_rho": s.default_rho,
                "need_inner_model": s.need_inner_model,
            }
            for s in catalog.SCHEDULERS
        ]

    @router.get("/upscalers")
    async def get_upscalers() -> list[dict[str, Any]]:
        names = [
            ("None", None, None),
            ("Lanczos", None, 4),
            ("Nearest", None, 4),
            ("ESRGAN_4x", "ESRGAN_4x", 4),
            ("R-ESRGAN 4x+", None, 4),
        ]
        return [{"name": n, "model_name": m, "model_path": None, "model_url": None, "scale": s} for n, m, s in names]

    @router.get("/latent-upscale-modes")
    async def get_latent_upscale_modes() -> list[dict[str, str]]:
        modes = [
            "Latent",
            "Latent (antialiased)",
            "Latent (bicubic)",
            "Latent (bicubic antialiased)",
            "Latent (nearest)",
            "Latent (nearest-exact)",
        ]
        return [{"name": m} for m in modes]

    @router.get("/sd-vae")
    async def get_sd_vaes() -> list[dict[str, str]]:
        return []

    @router.get("/scripts")
    async def get_scripts_list() -> dict[str, list[str]]:
        return {
            "txt2img": sorted(catalog.SELECTABLE_SCRIPTS | catalog.ALWAYSON_SCRIPTS),
            "img2img": sorted(catalog.SELECTABLE_IMG2IMG_SCRIPTS | catalog.ALWAYSON_IMG2IMG_SCRIPTS),
        }

    app.include_router(router)
    return app
