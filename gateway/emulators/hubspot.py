"""Emulator of the HubSpot APIs an image connector uses: Files v3 and the products object of CRM v3.

Written from ``../shared/reference/connectors.md`` ("CRM / HubSpot") and HubSpot's API reference, not from the
connector, so that the two check each other. ``imagegate emulate hubspot --credentials TOKEN[,TOKEN]
--products 1001,1002`` runs one portal.

The API as emulated (every call takes ``Authorization: Bearer <private app or OAuth token>``):

* ``POST /files/v3/files`` (multipart): ``file``, ``fileName``, ``folderPath`` or ``folderId`` (one of them, not
  both; a missing folder path is created), ``options`` (a JSON string with ``access`` required:
  ``PUBLIC_INDEXABLE`` | ``PUBLIC_NOT_INDEXABLE`` | ``PRIVATE``, and ``overwrite``, ``ttl``,
  ``duplicateValidationStrategy``, ``duplicateValidationScope``). Answers 201 with the File:
  ``{id, name, extension, path, parentFolderId, access, url, defaultHostingUrl, size, width, height, type,
  fileMd5, createdAt, updatedAt, archived, isUsableInContent, sourceGroup}``. ``name`` is the file name without
  its extension. Uploads are not idempotent: a second upload of the same file is a second file. With
  ``overwrite: true`` a live file of the same name and extension in the folder is deleted and the upload takes its
  place with a new id (same path, so the same URL); without it, the new file is renamed (``name-1``, ``name-2``)
  so the two do not collide. ``GET /_emulator/state`` lists the resulting duplicates (live files with the same
  bytes in one folder).
* ``GET /files/v3/files/search``: ``name`` (files whose name contains it), ``path``, ``parentFolderIds``,
  ``extension``, ``limit`` (10, at most 100), ``after``; archived files are not returned. ``{"results": [...],
  "paging": {"next": {"after", "link"}}}``. HubSpot's search is an index: ``search_lag_seconds`` models files not
  found for a while after their upload.
* ``GET /files/v3/files/{id}``; ``GET /hubfs/{portal}/{path}`` serves a file's bytes (with ``X-Robots-Tag: noindex``
  for ``PUBLIC_NOT_INDEXABLE``; 403 for ``PRIVATE``, which needs a signed URL).
* ``PATCH /crm/v3/objects/products/{id}`` ``{"properties": {"hs_images": "<url>"}}`` -> 200 the product
  (``{id, properties, createdAt, updatedAt, archived}``); ``GET`` the same path reads it (``?properties=a,b``).
* ``GET /crm/v3/properties/products``: ``{"results": [{name, label, type, fieldType, groupName, ...}]}``.

Errors are HubSpot's ``{"status": "error", "message", "correlationId", "category"}``: a missing or unknown token
401 ``INVALID_AUTHENTICATION`` ("Authentication credentials not found. ..."), a token without the scope 403
``MISSING_SCOPES``, an unknown product 404 ``OBJECT_NOT_FOUND``, an unknown property 400 ``VALIDATION_ERROR``
(``PROPERTY_DOESNT_EXIST``). More than ``rate_limit`` calls of one token in a rolling 10 s window are 429
``{"status": "error", "message": "You have reached your ten_secondly_rolling limit.", "errorType": "RATE_LIMIT",
"correlationId", "policyName": "TEN_SECONDLY_ROLLING"}``; every authenticated answer carries
``X-HubSpot-RateLimit-Interval-Milliseconds``, ``-Max``, ``-Remaining``, ``-Daily``, ``-Daily-Remaining``. HubSpot
documents no ``Retry-After`` on these 429s; the interval header says how long the window is.

How sure we are: the endpoints, fields, access levels, upload options (overwrite/rename, duplicate validation
values), the 429 body shape and the rate-limit headers are HubSpot's documentation or its SDKs' generated models
(verified). The 401/403/404 messages, ``TEN_SECONDLY_ROLLING``, the ``-1`` rename and the validation messages of
uploads are our reading of answers quoted in public threads (assumed). Duplicate validation
(``REJECT``/``RETURN_EXISTING``) compares the bytes' MD5 in the scope (assumed: HubSpot does not document what
makes a duplicate).

Inspection (not part of HubSpot): ``GET /_emulator/received``, ``GET /_emulator/state`` (files, products,
duplicates), ``POST /_emulator/faults`` (see :mod:`gateway.emulators.vendor`).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile

from gateway.emulators.vendor import add_faults, log_requests

DEFAULT_TOKEN = "pat-na1-imagegate-emulator"  # noqa: S105 - the emulator's well-known test token
DEFAULT_PRODUCTS = ("1001", "1002", "1003")
PORTAL_ID = 20000001
ALL_SCOPES = frozenset({"files", "e-commerce"})
ACCESS = ("PUBLIC_INDEXABLE", "PUBLIC_NOT_INDEXABLE", "PRIVATE")
WINDOW_MS = 10_000
DAILY_LIMIT = 250_000
AUTH_MESSAGE = (
    "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more "
    "details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
)
# The product properties of a portal (name, label, type, fieldType).
PRODUCT_PROPERTIES: tuple[tuple[str, str, str, str], ...] = (
    ("name", "Name", "string", "text"),
    ("description", "Description", "string", "textarea"),
    ("price", "Unit price", "number", "number"),
    ("hs_sku", "SKU", "string", "text"),
    ("hs_url", "URL", "string", "text"),
    ("hs_images", "Image URL", "string", "text"),
    ("hs_product_type", "Product type", "enumeration", "select"),
    ("createdate", "Create Date", "datetime", "date"),
    ("hs_lastmodifieddate", "Last Modified Date", "datetime", "date"),
    ("hs_object_id", "Record ID", "number", "number"),
)
READ_ONLY_PROPERTIES = {"createdate", "hs_lastmodifieddate", "hs_object_id"}


def iso(ms: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{int(ms % 1000):03d}Z"


def hs_error(status: int, category: str, message: str, **extra: Any) -> JSONResponse:
    body = {"status": "error", "message": message, "correlationId": str(uuid.uuid4()), **extra, "category": category}
    return JSONResponse(body, status_code=status)


@dataclass
class HubFile:
    id: str
    name: str
    extension: str
    folder_id: str
    folder_path: str
    access: str
    data: bytes
    content_type: str
    created_ms: float
    updated_ms: float
    archived: bool = False
    width: int | None = None
    height: int | None = None

    @property
    def path(self) -> str:
        return f"{self.folder_path.rstrip('/')}/{self.name}" + (f".{self.extension}" if self.extension else "")

    @property
    def md5(self) -> str:
        return hashlib.md5(self.data).hexdigest()  # noqa: S324 - HubSpot's fileMd5

    def json(self, base: str) -> dict[str, Any]:
        url = f"{base}/hubfs/{PORTAL_ID}{self.path}"
        body: dict[str, Any] = {
            "id": self.id,
            "createdAt": iso(self.created_ms),
            "updatedAt": iso(self.updated_ms),
            "archived": self.archived,
            "parentFolderId": self.folder_id,
            "name": self.name,
            "path": self.path,
            "size": len(self.data),
            "type": "IMG" if self.content_type.startswith("image/") else "OTHER",
            "extension": self.extension,
            "defaultHostingUrl": url,
            "url": url,
            "isUsableInContent": True,
            "access": self.access,
            "fileMd5": self.md5,
            "sourceGroup": "CONTENT",
        }
        if self.width is not None:
            body["width"], body["height"] = self.width, self.height
        if self.archived:
            body["archivedAt"] = iso(self.updated_ms)
        return body


@dataclass
class Portal:
    products: dict[str, dict[str, Any]]
    properties: list[str]
    files: dict[str, HubFile] = field(default_factory=dict)
    folders: dict[str, str] = field(default_factory=lambda: {"/": "0"})
    uploads: int = 0
    _next_id: int = 180_000_000_000

    def new_id(self) -> str:
        self._next_id += 1
        return str(self._next_id)

    def folder(self, path: str) -> str:
        """The id of folder ``path``, created (with its parents) if it does not exist."""
        path = "/" + path.strip("/")
        parts = [p for p in path.split("/") if p]
        current = ""
        for part in parts:
            current += "/" + part
            if current not in self.folders:
                self.folders[current] = self.new_id()
        return self.folders[path] if parts else "0"

    def live(self) -> list[HubFile]:
        return [f for f in self.files.values() if not f.archived]

    def duplicates(self) -> list[dict[str, Any]]:
        groups: dict[tuple[str, str], list[str]] = {}
        for f in self.live():
            groups.setdefault((f.folder_path, f.md5), []).append(f.id)
        return [{"folder": d, "fileMd5": m, "file_ids": ids} for (d, m), ids in groups.items() if len(ids) > 1]


class RateWindow:
    """HubSpot's rolling ten-second limit, per token."""

    def __init__(self, limit: int, clock: Callable[[], float]) -> None:
        self.limit = limit
        self.clock = clock
        self.calls: dict[str, deque[float]] = {}
        self.daily: dict[str, int] = {}

    def remaining(self, token: str) -> int:
        now = self.clock()
        calls = self.calls.setdefault(token, deque())
        while calls and now - calls[0] >= WINDOW_MS / 1000:
            calls.popleft()
        return self.limit - len(calls)

    def take(self, token: str) -> bool:
        if self.remaining(token) <= 0:
            return False
        self.calls[token].append(self.clock())
        self.daily[token] = self.daily.get(token, 0) + 1
        return True

    def headers(self, token: str) -> dict[str, str]:
        return {
            "X-HubSpot-RateLimit-Interval-Milliseconds": str(WINDOW_MS),
            "X-HubSpot-RateLimit-Max": str(self.limit),
            "X-HubSpot-RateLimit-Remaining": str(max(0, self.remaining(token))),
            "X-HubSpot-RateLimit-Daily": str(DAILY_LIMIT),
            "X-HubSpot-RateLimit-Daily-Remaining": str(DAILY_LIMIT - self.daily.get(token, 0)),
        }


def _image_size(data: bytes) -> tuple[int | None, int | None]:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError):
        return None, None


def create_app(
    tokens: Iterable[str] | dict[str, Iterable[str]] = (DEFAULT_TOKEN,),
    products: Iterable[str] = DEFAULT_PRODUCTS,
    *,
    properties: Iterable[str] | None = None,
    rate_limit: int = 100,
    search_lag_seconds: float = 0.0,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """One HubSpot portal. ``tokens``: tokens with every scope, or ``{token: scopes}``; ``products``: product ids;
    ``properties``: the product property names (default: the standard ones, ``hs_images`` included)."""
    app = FastAPI(title="HubSpot API (emulator)", docs_url=None, redoc_url=None, openapi_url=None)
    scopes = (
        {t: frozenset(s) for t, s in tokens.items()} if isinstance(tokens, dict) else dict.fromkeys(tokens, ALL_SCOPES)
    )
    now_ms = clock() * 1000
    portal = Portal(
        products={
            str(p): {"name": f"Product {p}", "createdate": iso(now_ms), "hs_lastmodifieddate": iso(now_ms)}
            for p in products
        },
        properties=list(properties) if properties is not None else [p[0] for p in PRODUCT_PROPERTIES],
    )
    window = RateWindow(rate_limit, clock)
    app.state.portal = portal
    add_faults(app)
    record = log_requests(app, clock)

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def gate(request: Request, scope: str) -> str | JSONResponse:
        """The caller's token, or the answer that refuses it (401, 403, 429)."""
        kind, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if kind.lower() != "bearer" or token not in scopes:
            return hs_error(401, "INVALID_AUTHENTICATION", AUTH_MESSAGE)
        if scope not in scopes[token]:
            return hs_error(
                403,
                "MISSING_SCOPES",
                "This app hasn't been granted all required scopes to make this call. Read more about required "
                "scopes here: https://developers.hubspot.com/scopes.",
                errors=[
                    {
                        "message": "One or more of the following scopes are required.",
                        "context": {"requiredGranularScopes": [scope]},
                    }
                ],
                links={"scopes": "https://developers.hubspot.com/scopes"},
            )
        if not window.take(token):
            response = JSONResponse(
                {
                    "status": "error",
                    "message": "You have reached your ten_secondly_rolling limit.",
                    "errorType": "RATE_LIMIT",
                    "correlationId": str(uuid.uuid4()),
                    "policyName": "TEN_SECONDLY_ROLLING",
                },
                status_code=429,
            )
            response.headers.update(window.headers(token))
            return response
        return token

    def answer(token: str, body: Any, status: int = 200) -> JSONResponse:
        response = JSONResponse(body, status_code=status)
        response.headers.update(window.headers(token))
        return response

    def product(product_id: str, wanted: list[str] | None = None) -> dict[str, Any]:
        properties = portal.products[product_id]
        shown = wanted if wanted is not None else ["name", "price", "hs_images", "createdate", "hs_lastmodifieddate"]
        values = {name: properties.get(name) for name in shown if name in portal.properties}
        values["hs_object_id"] = product_id
        return {
            "id": product_id,
            "properties": values,
            "createdAt": properties["createdate"],
            "updatedAt": properties["hs_lastmodifieddate"],
            "archived": False,
        }

    @app.post("/files/v3/files")
    async def upload(request: Request) -> Response:
        token = gate(request, "files")
        if isinstance(token, JSONResponse):
            record(request, outcome=token.status_code)
            return token
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            record(request, outcome=415)
            return hs_error(415, "VALIDATION_ERROR", "Content-Type must be multipart/form-data")
        form = await request.form()
        upload_file = form.get("file")
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        record(request, fields=fields, bytes=upload_file.size if isinstance(upload_file, UploadFile) else None)
        if not isinstance(upload_file, UploadFile):
            return hs_error(400, "VALIDATION_ERROR", "file is required")
        try:
            options = json.loads(fields.get("options") or "null")
        except ValueError:
            return hs_error(400, "VALIDATION_ERROR", "options is not valid JSON")
        if not isinstance(options, dict) or "access" not in options:
            return hs_error(400, "VALIDATION_ERROR", "options.access is required")
        if options["access"] not in ACCESS:
            return hs_error(400, "VALIDATION_ERROR", f"options.access must be one of {', '.join(ACCESS)}")
        folder_id, folder_path = fields.get("folderId"), fields.get("folderPath")
        if bool(folder_id) == bool(folder_path):
            return hs_error(400, "VALIDATION_ERROR", "Exactly one of folderId or folderPath is required")
        if folder_id:
            by_id = {v: k for k, v in portal.folders.items()}
            if folder_id not in by_id:
                return hs_error(404, "OBJECT_NOT_FOUND", f"Folder {folder_id} does not exist")
            folder_path = by_id[folder_id]
        else:
            folder_id = portal.folder(str(folder_path))
            folder_path = "/" + str(folder_path).strip("/")
        data = await upload_file.read()
        given = fields.get("fileName") or upload_file.filename or f"file-{hashlib.md5(data).hexdigest()[:8]}"  # noqa: S324
        name, dot, extension = given.rpartition(".")
        if not dot:
            name, extension = given, (upload_file.filename or "").rpartition(".")[2].lower()
        extension = extension.lower()
        md5 = hashlib.md5(data).hexdigest()  # noqa: S324
        strategy = options.get("duplicateValidationStrategy", "NONE")
        if strategy in ("REJECT", "RETURN_EXISTING"):
            in_scope = [
                f
                for f in portal.live()
                if f.md5 == md5
                and (options.get("duplicateValidationScope") != "EXACT_FOLDER" or f.folder_id == folder_id)
            ]
            if in_scope and strategy == "REJECT":
                return hs_error(409, "CONFLICT", f"Duplicate file found: {in_scope[0].id}")
            if in_scope:
                return answer(token, in_scope[0].json(base(request)))
        siblings = [f for f in portal.live() if f.folder_id == folder_id and f.extension == extension]
        if options.get("overwrite") is True:
            for f in siblings:
                if f.name == name:
                    f.archived, f.updated_ms = True, clock() * 1000
        else:
            taken, stem, n = {f.name for f in siblings}, name, 0
            while name in taken:
                n += 1
                name = f"{stem}-{n}"
        width, height = _image_size(data)
        now = clock() * 1000
        created = HubFile(
            id=portal.new_id(),
            name=name,
            extension=extension,
            folder_id=folder_id,
            folder_path=folder_path,
            access=options["access"],
            data=data,
            content_type=upload_file.content_type or "application/octet-stream",
            created_ms=now,
            updated_ms=now,
            width=width,
            height=height,
        )
        portal.files[created.id] = created
        portal.uploads += 1
        return answer(token, created.json(base(request)), 201)

    @app.get("/files/v3/files/search")
    async def search(request: Request) -> Response:
        token = gate(request, "files")
        record(request)
        if isinstance(token, JSONResponse):
            return token
        q = request.query_params
        try:
            limit = min(100, max(1, int(q.get("limit", "10"))))
            after = int(q.get("after", "0"))
        except ValueError:
            return hs_error(400, "VALIDATION_ERROR", "limit and after must be integers")
        parents = {p for value in q.getlist("parentFolderIds") for p in value.split(",") if p}
        visible_before = (clock() - search_lag_seconds) * 1000
        found = [
            f
            for f in portal.live()
            if f.created_ms <= visible_before
            and (not q.get("name") or q["name"].lower() in f.name.lower())
            and (not q.get("path") or q["path"] == f.path)
            and (not q.get("extension") or q["extension"].lower() == f.extension)
            and (not parents or f.folder_id in parents)
        ]
        found.sort(key=lambda f: int(f.id))
        page = found[after : after + limit]
        body: dict[str, Any] = {"results": [f.json(base(request)) for f in page]}
        if after + limit < len(found):
            link = f"{base(request)}/files/v3/files/search?after={after + limit}&limit={limit}"
            body["paging"] = {"next": {"after": str(after + limit), "link": link}}
        return answer(token, body)

    @app.get("/files/v3/files/{file_id}")
    async def get_file(file_id: str, request: Request) -> Response:
        token = gate(request, "files")
        record(request)
        if isinstance(token, JSONResponse):
            return token
        found = portal.files.get(file_id)
        if found is None:
            return hs_error(404, "OBJECT_NOT_FOUND", f"File {file_id} does not exist")
        return answer(token, found.json(base(request)))

    @app.get("/hubfs/{portal_id}/{path:path}")
    async def hosted(portal_id: int, path: str) -> Response:
        found = next((f for f in portal.live() if f.path == "/" + path), None) if portal_id == PORTAL_ID else None
        if found is None:
            return Response(b"Not Found", status_code=404, media_type="text/plain")
        if found.access == "PRIVATE":
            return Response(b"Forbidden", status_code=403, media_type="text/plain")
        headers = {"X-Robots-Tag": "noindex"} if found.access == "PUBLIC_NOT_INDEXABLE" else {}
        return Response(found.data, media_type=found.content_type, headers=headers)

    @app.patch("/crm/v3/objects/products/{product_id}")
    async def update_product(product_id: str, request: Request) -> Response:
        token = gate(request, "e-commerce")
        raw = await request.body()
        record(request, body=raw.decode("utf-8", "replace")[:2000])
        if isinstance(token, JSONResponse):
            return token
        try:
            body = json.loads(raw)
        except ValueError as exc:
            return hs_error(400, "VALIDATION_ERROR", f"Invalid input JSON on line 1, column 1: {exc}")
        if not isinstance(body, dict) or not isinstance(body.get("properties"), dict):
            return hs_error(400, "VALIDATION_ERROR", "Invalid input JSON: properties is required")
        if product_id not in portal.products:
            return hs_error(404, "OBJECT_NOT_FOUND", "resource not found")
        invalid = [
            {
                "isValid": False,
                "message": f'Property "{name}" does not exist',
                "error": "PROPERTY_DOESNT_EXIST",
                "name": name,
                "localizedErrorMessage": f'Property "{name}" does not exist',
            }
            for name in body["properties"]
            if name not in portal.properties or name in READ_ONLY_PROPERTIES
        ]
        if invalid:
            return hs_error(
                400,
                "VALIDATION_ERROR",
                f"Property values were not valid: {json.dumps(invalid, separators=(',', ':'))}",
            )
        stored = portal.products[product_id]
        for name, value in body["properties"].items():
            stored[name] = None if value is None else str(value)
        stored["hs_lastmodifieddate"] = iso(clock() * 1000)
        return answer(token, product(product_id, [*body["properties"], "hs_lastmodifieddate"]))

    @app.get("/crm/v3/objects/products/{product_id}")
    async def read_product(product_id: str, request: Request) -> Response:
        token = gate(request, "e-commerce")
        record(request)
        if isinstance(token, JSONResponse):
            return token
        if product_id not in portal.products:
            return hs_error(404, "OBJECT_NOT_FOUND", "resource not found")
        wanted = [p for v in request.query_params.getlist("properties") for p in v.split(",") if p] or None
        return answer(token, product(product_id, wanted))

    @app.get("/crm/v3/properties/products")
    async def list_properties(request: Request) -> Response:
        token = gate(request, "e-commerce")
        record(request)
        if isinstance(token, JSONResponse):
            return token
        known = {p[0]: p for p in PRODUCT_PROPERTIES}
        results = []
        for order, name in enumerate(portal.properties):
            _, label, kind, field_type = known.get(name, (name, name, "string", "text"))
            results.append(
                {
                    "name": name,
                    "label": label,
                    "type": kind,
                    "fieldType": field_type,
                    "description": "",
                    "groupName": "productinformation",
                    "options": [],
                    "displayOrder": order,
                    "calculated": False,
                    "externalOptions": False,
                    "hasUniqueValue": False,
                    "hidden": False,
                    "hubspotDefined": name in known,
                    "modificationMetadata": {
                        "archivable": True,
                        "readOnlyDefinition": name in known,
                        "readOnlyValue": name in READ_ONLY_PROPERTIES,
                    },
                    "formField": False,
                }
            )
        return answer(token, {"results": results})

    # -- inspection (not part of HubSpot; /_emulator/received and /_emulator/faults: gateway.emulators.vendor) -----

    @app.get("/_emulator/state")
    async def state(request: Request) -> dict[str, Any]:
        return {
            "files": [f.json(base(request)) for f in portal.files.values()],
            "products": portal.products,
            "uploads": portal.uploads,
            "duplicates": portal.duplicates(),
        }

    return app


def from_cli(credentials: str | None, products: str | None) -> FastAPI:
    """``imagegate emulate hubspot``: ``--credentials TOKEN[,TOKEN]``, ``--products ID,ID``."""
    tokens = [t.strip() for t in (credentials or "").split(",") if t.strip()]
    seeded = [p.strip() for p in (products or "").split(",") if p.strip()]
    bad = [p for p in seeded if not p.isdigit()]
    if bad:
        raise ValueError(f"HubSpot object ids are numbers: {', '.join(bad)}")
    return create_app(tokens or (DEFAULT_TOKEN,), seeded or DEFAULT_PRODUCTS)
