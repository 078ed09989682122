"""Emulator of Odoo's external API for product images: JSON-RPC (``/jsonrpc``) and Odoo 19's JSON-2 (``/json/2``).

Written from ``../shared/reference/connectors.md`` ("CRM / Odoo"), Odoo's source (``odoo/service/common.py``,
``odoo/service/model.py``, ``odoo/exceptions.py``, the JSON-RPC and JSON-2 dispatchers of ``odoo/http.py``) and
its external API documentation, not from the connector, so that the two check each other.
``imagegate emulate odoo --credentials DB:LOGIN:API_KEY --products 1,2,3`` runs one database.

JSON-RPC, ``POST /jsonrpc`` ``{"jsonrpc": "2.0", "method": "call", "id": N, "params": {"service", "method",
"args"}}``. Every answer is HTTP 200, ``{"jsonrpc": "2.0", "id": N, "result": ...}`` or ``..., "error": {"code":
200, "message": "Odoo Server Error", "data": {"name", "message", "arguments", "context", "debug"}}}``:

* ``common.version``; ``common.authenticate [db, login, password_or_api_key, {}]`` answers the uid, or ``false``
  for wrong credentials (Odoo catches its AccessDenied there); ``common.login [db, login, password]`` the same.
* ``object.execute_kw [db, uid, key, model, method, args, kwargs]`` (and ``object.execute``): a wrong uid/key is
  ``odoo.exceptions.AccessDenied`` "Access Denied"; an unknown database ``psycopg2.OperationalError``; a model
  other than ``product.template`` ``odoo.exceptions.UserError`` "Object X doesn't exist"; an unknown method
  ``builtins.AttributeError``, a private one ``odoo.exceptions.AccessError``.
* ``product.template``: ``write [[ids], {"image_1920": "<base64>"}]`` -> ``true`` (a missing id is
  ``odoo.exceptions.MissingError``, an unknown field ``builtins.ValueError`` "Invalid field 'x' on model
  'product.template'"), ``read [[ids], [fields]]``, ``search_count [domain]`` (the empty domain only).
  ``image_1920`` behaves like Odoo's Image field: bytes that are not an image are ``odoo.exceptions.UserError``
  "This file could not be decoded as an image file.", more than 50 million pixels is refused, an image larger than
  1920x1920 is scaled down to fit, a smaller one is stored as sent. Writing the same image again changes nothing:
  the write is idempotent.

JSON-2 (Odoo 19), ``POST /json/2/<model>/<method>`` with ``Authorization: bearer <API key>``, optional
``X-Odoo-Database``, a JSON object body (``ids``, ``context`` and the method's parameters: ``vals`` for write).
Success is 200 with the JSON result (``true``); errors are 4xx/5xx with ``{"name", "message", "arguments",
"context", "debug"}``: 401 ``werkzeug.exceptions.Unauthorized`` "Invalid apikey", 404 MissingError, 403
AccessError, 422 UserError/ValidationError, 500 anything else.

How sure we are: the envelopes, authenticate's ``false``, AccessDenied from execute_kw, the exception names, the
JSON-2 401 body and the http statuses of Odoo's exceptions are from Odoo's source and docs (verified). The
MissingError message (Odoo words it by version), the unknown-database error text and the status of non-Odoo
exceptions in JSON-2 are assumed.

Inspection (not part of Odoo): ``GET /_emulator/received``, ``GET /_emulator/state`` (products, their image's
sha256 and size, writes), ``POST /_emulator/faults`` (see :mod:`gateway.emulators.vendor`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image, UnidentifiedImageError

from gateway.emulators.vendor import add_faults, log_requests

DEFAULT_DATABASE = "imagegate"
DEFAULT_LOGIN = "admin"
DEFAULT_API_KEY = "odoo-emulator-api-key-0123456789abcdef"  # the emulator's well-known test key
DEFAULT_PRODUCTS = (1, 2, 3)
UID = 2
VERSION_INFO = [19, 0, 0, "final", 0, ""]
IMAGE_MAX = 1920
MAX_PIXELS = 50e6
FIELDS = {"id", "name", "image_1920", "default_code", "list_price", "write_date", "display_name"}


class OdooError(Exception):
    """An exception as Odoo serialises it: ``name`` is the fully qualified class, ``status`` its JSON-2 status."""

    def __init__(self, name: str, message: str, status: int) -> None:
        super().__init__(message)
        self.name = name
        self.message = message
        self.status = status

    def data(self) -> dict[str, Any]:
        traceback = "" if self.name.endswith("AccessDenied") else "Traceback (most recent call last):\n  ...\n"
        return {
            "name": self.name,
            "message": self.message,
            "arguments": [self.message],
            "context": {},
            "debug": f"{traceback}{self.name}: {self.message}\n",
        }


def access_denied() -> OdooError:
    return OdooError("odoo.exceptions.AccessDenied", "Access Denied", 403)


def user_error(message: str) -> OdooError:
    return OdooError("odoo.exceptions.UserError", message, 422)


def store_image(value: Any) -> bytes | None:
    """What Odoo's Image field (max 1920x1920) keeps of a written value."""
    if value in (False, None, ""):
        return None
    if not isinstance(value, str):
        raise user_error("This file could not be decoded as an image file.")
    try:
        data = base64.b64decode(value, validate=True)
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise user_error(
                    f"Image size excessive, uploaded images must be smaller than {MAX_PIXELS / 1e6:.1f} million pixels."
                )
            if width <= IMAGE_MAX and height <= IMAGE_MAX:
                return data
            fmt = image.format or "PNG"
            image.thumbnail((IMAGE_MAX, IMAGE_MAX))
            out = io.BytesIO()
            image.save(out, format=fmt)
            return out.getvalue()
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
        raise user_error("This file could not be decoded as an image file.") from None


def create_app(
    database: str = DEFAULT_DATABASE,
    login: str = DEFAULT_LOGIN,
    api_key: str = DEFAULT_API_KEY,
    products: Iterable[int] = DEFAULT_PRODUCTS,
    *,
    json2: bool = True,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """One Odoo database with one API user (``login``, uid 2, ``api_key``) and the product templates ``products``.
    ``json2=False`` is an Odoo before 19 (no ``/json/2``)."""
    app = FastAPI(title="Odoo external API (emulator)", docs_url=None, redoc_url=None, openapi_url=None)
    templates: dict[int, dict[str, Any]] = {int(p): {"name": f"Product {p}", "image_1920": None} for p in products}
    app.state.products = templates
    app.state.writes = []
    add_faults(app)
    record = log_requests(app, clock, ("method", "path"))

    def check_db(db: Any) -> None:
        if db != database:
            raise OdooError(
                "psycopg2.OperationalError",
                f'connection to server on socket "/var/run/postgresql/.s.PGSQL.5432" failed: FATAL:  database '
                f'"{db}" does not exist\n',
                500,
            )

    def key_ok(value: Any) -> bool:
        return isinstance(value, str) and secrets.compare_digest(value, api_key)

    def ids_of(value: Any) -> list[int]:
        ids = [value] if isinstance(value, int) else value
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise OdooError("builtins.TypeError", f"ids must be a list of integers, not {value!r}", 500)
        return ids

    def missing(ids: list[int], operation: str) -> OdooError:
        return OdooError(
            "odoo.exceptions.MissingError",
            "Record does not exist or has been deleted.\n"
            f"(Record: product.template({', '.join(map(str, ids))},), User: {UID})"
            if operation == "read"
            else "One of the documents you are trying to access has been deleted, please try again after refreshing."
            f"\n\n(Document type: product.template, Operation: {operation}, Records: {ids}, User: {UID})",
            404,
        )

    def call(model: str, method: str, ids: Any, params: dict[str, Any]) -> Any:
        """``model.method`` on ``ids`` with keyword ``params``, as the API user."""
        if model != "product.template":
            raise user_error(f"Object {model} doesn't exist")
        if method.startswith("_"):
            raise OdooError(
                "odoo.exceptions.AccessError", f"Private methods (such as '{method}') cannot be called remotely.", 403
            )
        if method == "write":
            records, vals = ids_of(ids), params.get("vals")
            if not isinstance(vals, dict):
                raise OdooError("builtins.TypeError", "write() missing 1 required positional argument: 'vals'", 500)
            unknown = [k for k in vals if k not in FIELDS or k in ("id", "write_date", "display_name")]
            if unknown:
                raise OdooError("builtins.ValueError", f"Invalid field {unknown[0]!r} on model 'product.template'", 500)
            absent = [i for i in records if i not in templates]
            if absent:
                raise missing(absent, "write")
            image = store_image(vals["image_1920"]) if "image_1920" in vals else None
            for i in records:
                for name, value in vals.items():
                    templates[i][name] = image if name == "image_1920" else value
                templates[i]["write_date"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(clock()))
            app.state.writes.append({"ids": records, "fields": sorted(vals)})
            return True
        if method == "read":
            records = ids_of(ids)
            fields = params.get("fields") or sorted(FIELDS)
            absent = [i for i in records if i not in templates]
            if absent:
                raise missing(absent, "read")
            rows = []
            for i in records:
                row: dict[str, Any] = {"id": i}
                for name in fields:
                    if name not in FIELDS:
                        raise OdooError(
                            "builtins.ValueError", f"Invalid field {name!r} on model 'product.template'", 500
                        )
                    value = templates[i].get(name, False)
                    if name == "image_1920":
                        value = base64.b64encode(value).decode() if value else False
                    row[name] = value if value is not None else False
                rows.append(row)
            return rows
        if method == "search_count":
            if params.get("domain", []) not in ([], None):
                raise OdooError("builtins.ValueError", "the emulator supports the empty domain only", 500)
            return len(templates)
        raise OdooError("builtins.AttributeError", f"The method 'product.template.{method}' does not exist", 500)

    positional = {"write": ("vals",), "read": ("fields",), "search_count": ("domain",)}

    def execute_kw(args: list[Any]) -> Any:
        if len(args) < 5:
            raise OdooError("builtins.TypeError", "execute_kw() missing required positional arguments", 500)
        db, uid, key, model, method = args[:5]
        method_args = args[5] if len(args) > 5 else []
        kwargs = args[6] if len(args) > 6 and isinstance(args[6], dict) else {}
        check_db(db)
        if uid != UID or not key_ok(key):
            raise access_denied()
        if not isinstance(method_args, list):
            raise OdooError("builtins.TypeError", "args must be a list", 500)
        ids = method_args[0] if method_args and method not in ("search_count",) else None
        rest = method_args[1:] if method not in ("search_count",) else method_args
        params = dict(zip(positional.get(method, ()), rest, strict=False))
        params.update({k: v for k, v in kwargs.items() if k != "context"})
        return call(str(model), str(method), ids, params)

    def dispatch(service: Any, method: Any, args: list[Any]) -> Any:
        if service == "common":
            if method == "version":
                return {
                    "server_version": "19.0",
                    "server_version_info": VERSION_INFO,
                    "server_serie": "19.0",
                    "protocol_version": 1,
                }
            if method in ("authenticate", "login"):
                db, user, password = [*args, None, None, None][:3]
                check_db(db)
                return UID if user == login and key_ok(password) else False
        elif service == "object":
            if method == "execute_kw":
                return execute_kw(args)
            if method == "execute":
                return execute_kw([*args[:5], list(args[5:])])
        elif service == "db" and method == "list":
            return [database]
        raise OdooError("builtins.Exception", f"Method not found: {method}", 500)

    @app.post("/jsonrpc")
    async def jsonrpc(request: Request) -> Response:
        raw = await request.body()
        try:
            payload = json.loads(raw)
        except ValueError:
            record(request, outcome="invalid json")
            return JSONResponse(
                {"jsonrpc": "2.0", "id": None, "error": {"code": 400, "message": "Invalid JSON data", "data": {}}},
                status_code=400,
            )
        request_id = payload.get("id") if isinstance(payload, dict) else None
        params = payload.get("params") if isinstance(payload, dict) else None
        if not isinstance(params, dict) or not isinstance(params.get("args", []), list):
            record(request, outcome="invalid request")
            return JSONResponse(
                {"jsonrpc": "2.0", "id": request_id, "error": {"code": 400, "message": "Invalid request", "data": {}}},
                status_code=400,
            )
        args = params.get("args", [])
        summary = [a if not isinstance(a, str) or len(a) < 200 else f"<{len(a)} chars>" for a in args[:5]]
        if len(summary) > 2:
            summary[2] = "<key>"  # the password or API key, in both common and object calls
        record(request, service=params.get("service"), rpc_method=params.get("method"), args=summary)
        try:
            result = dispatch(params.get("service"), params.get("method"), args)
        except OdooError as exc:
            error = {"code": 200, "message": "Odoo Server Error", "data": exc.data()}
            return JSONResponse({"jsonrpc": "2.0", "id": request_id, "error": error})
        return JSONResponse({"jsonrpc": "2.0", "id": request_id, "result": result})

    if json2:

        @app.post("/json/2/{model}/{method}")
        async def json_2(model: str, method: str, request: Request) -> Response:
            record(request, model=model, rpc_method=method, database=request.headers.get("x-odoo-database"))
            scheme, _, key = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not key_ok(key.strip()):
                error = {
                    "name": "werkzeug.exceptions.Unauthorized",
                    "message": "Invalid apikey",
                    "arguments": ["Invalid apikey", 401],
                    "context": {},
                    "debug": "Traceback (most recent call last):\n  ...\n"
                    "werkzeug.exceptions.Unauthorized: 401 Unauthorized: Invalid apikey\n",
                }
                return JSONResponse(error, status_code=401)
            try:
                db = request.headers.get("x-odoo-database")
                if db is not None:
                    check_db(db)
                if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
                    raise OdooError(
                        "werkzeug.exceptions.BadRequest",
                        "State-changing json2 requests must use the 'application/json' Content-Type (CSRF protection).",
                        400,
                    )
                raw = await request.body()
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError as exc:
                    raise OdooError(
                        "werkzeug.exceptions.BadRequest", f"could not parse the body as json: {exc}", 400
                    ) from None
                if not isinstance(body, dict):
                    raise OdooError("werkzeug.exceptions.BadRequest", "the body must be a JSON object", 400)
                params = {k: v for k, v in body.items() if k not in ("ids", "context")}
                result = call(model, method, body.get("ids"), params)
            except OdooError as exc:
                return JSONResponse(exc.data(), status_code=exc.status)
            return JSONResponse(result)

    # -- inspection (not part of Odoo; /_emulator/received and /_emulator/faults: gateway.emulators.vendor) --------

    @app.get("/_emulator/state")
    async def state() -> dict[str, Any]:
        return {
            "products": {
                str(i): {
                    "name": t["name"],
                    "image_sha256": hashlib.sha256(t["image_1920"]).hexdigest() if t["image_1920"] else None,
                    "image_bytes": len(t["image_1920"]) if t["image_1920"] else 0,
                }
                for i, t in templates.items()
            },
            "writes": app.state.writes,
        }

    return app


def from_cli(credentials: str | None, products: str | None) -> FastAPI:
    """``imagegate emulate odoo``: ``--credentials DATABASE:LOGIN:API_KEY``, ``--products 1,2,3``."""
    parts = (credentials or "").split(":", 2)
    database, login, api_key = [*parts, "", "", ""][:3]
    seeded = [p.strip() for p in (products or "").split(",") if p.strip()]
    bad = [p for p in seeded if not p.isdigit()]
    if bad:
        raise ValueError(f"product.template ids are integers: {', '.join(bad)}")
    return create_app(
        database or DEFAULT_DATABASE,
        login or DEFAULT_LOGIN,
        api_key or DEFAULT_API_KEY,
        [int(p) for p in seeded] or DEFAULT_PRODUCTS,
    )
