"""Emulator of the Salesforce REST API a Files connector uses: OAuth client credentials, ContentVersion, SOQL.

Written from ``../shared/reference/connectors.md`` ("CRM / Salesforce") and Salesforce's documented answers, not
from the connector, so that the two check each other. ``imagegate emulate salesforce --credentials ID:SECRET
--products 01t000000000001,...`` runs one org.

The API as emulated:

* ``POST /services/oauth2/token`` (form): ``grant_type=client_credentials&client_id=..&client_secret=..`` ->
  ``{"access_token", "signature", "scope", "instance_url", "id", "token_type": "Bearer", "issued_at"}``; there is
  no refresh token in this flow. ``instance_url`` is this server. Errors are 400 OAuth bodies: an unknown client
  ``{"error": "invalid_client_id", "error_description": "client identifier invalid"}``, a wrong secret
  ``{"error": "invalid_client", "error_description": "invalid client credentials"}``, another or no grant type
  ``{"error": "unsupported_grant_type", "error_description": "grant type not supported"}``.
* Tokens last ``session_seconds`` (Salesforce's default session timeout, 2 hours); a missing, unknown or expired
  token is 401 ``[{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]``.
* ``POST /services/data/vNN.0/sobjects/ContentVersion``: a JSON body (``VersionData`` in base64) or a multipart
  body (parts ``entity_content``, JSON, and ``VersionData``, the bytes). Answers 201
  ``{"id": "068...", "success": true, "errors": []}``. Every insert makes a new ContentVersion (and a new
  ContentDocument): the API has no idempotency key, so a repeated insert is a duplicate (listed by
  ``/_emulator/state``). ``FirstPublishLocationId`` must be a record of the org (the seeded Product2 ids; 15- or
  18-character forms): otherwise 400 ``FIELD_INTEGRITY_EXCEPTION``, or ``MALFORMED_ID`` for a value that is not
  an id at all. Unknown fields are ``INVALID_FIELD``, read-only ones ``INVALID_FIELD_FOR_INSERT_UPDATE``, missing
  ``PathOnClient``/``VersionData`` ``REQUIRED_FIELD_MISSING``, a Description over 1000 characters
  ``STRING_TOO_LONG``.
* A non-multipart request body is limited to 52,428,800 bytes (50 MB of text, 37.5 MB of file before base64):
  beyond it 400 ``[{"message": "Maximum size of request reached. Maximum size of request is 52428800 bytes.",
  "errorCode": "JSON_PARSER_ERROR"}]`` (verified: the answer quoted in simple-salesforce#195 and
  SFDX-Data-Move-Utility#321/#569). Multipart inserts take files up to 2 GB.
* ``GET /services/data/vNN.0/sobjects/ContentVersion/{id}`` (the record) and ``.../{id}/VersionData`` (the
  bytes).
* ``GET /services/data/vNN.0/query?q=...``: SOQL, for exactly the shape a connector needs:
  ``SELECT f1, f2 FROM ContentVersion [WHERE f = 'v' | f IN ('a', 'b') [AND ...]] [LIMIT n]``. Anything else is
  400 ``MALFORMED_QUERY`` (an unknown field ``INVALID_FIELD``, another object ``INVALID_TYPE``), with Salesforce's
  caret-and-position message. Answers ``{"totalSize", "done": true, "records": [{"attributes": {...}, ...}]}``.
* An API version outside v20.0..v66.0 is 404 ``[{"errorCode": "NOT_FOUND", "message": "The requested resource
  does not exist"}]``.

How sure we are: the token, insert, query and INVALID_SESSION_ID shapes and the request size error are
documented or quoted from real answers (verified). The exact messages of FIELD_INTEGRITY_EXCEPTION, MALFORMED_ID,
INVALID_FIELD and the OAuth ``invalid_client_id`` case are our best reading of answers seen in public threads
(assumed). Salesforce makes ContentVersions visible to SOQL as soon as the insert commits (no search index lag),
and the integration user sees the files it owns, which is what a connector queries.

Inspection (not part of Salesforce): ``GET /_emulator/received`` lists the API requests (VersionData replaced by
its size), ``GET /_emulator/state`` the ContentVersions per record and the duplicates (the same bytes published to
the same record more than once), ``POST /_emulator/expire-tokens`` ends every session, ``POST /_emulator/faults``
``{"status", "body", "headers", "times", "path", "method", "lose", "after"}`` makes the next matching requests (after
``after`` of them) answer ``status``
(or, with ``lose``, be processed and then lose their answer: the connection drops before the body, like a
response lost on the way back).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from gateway.emulators.vendor import add_faults, log_requests

DEFAULT_CLIENT_ID = "3MVG9imagegate.emulator"
DEFAULT_CLIENT_SECRET = "imagegate-emulator-secret"  # noqa: S105 - the emulator's well-known test secret
DEFAULT_PRODUCTS = ("01t000000000001", "01t000000000002", "01t000000000003")
ORG_ID = "00D000000000001AAA"
USER_ID = "005000000000001AAA"
MAX_REQUEST_BYTES = 52_428_800  # non-multipart requests (50 MB of text, 37.5 MB of file before base64)
API_VERSIONS = (20, 66)
DESCRIPTION_MAX = 1000
TITLE_MAX = 255

ID_RE = re.compile(r"^[a-zA-Z0-9]{15}(?:[a-zA-Z0-9]{3})?$")
VERSION_RE = re.compile(r"^v(\d{2,3})\.0$")
_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"

# ContentVersion fields: what an insert may set, and what SOQL may select or filter (canonical spelling).
INSERTABLE = {
    "Title",
    "PathOnClient",
    "VersionData",
    "FirstPublishLocationId",
    "Description",
    "ReasonForChange",
    "ContentLocation",
    "Origin",
    "ContentDocumentId",
    "SharingOption",
    "SharingPrivacy",
    "TagCsv",
    "OwnerId",
}
READ_ONLY = {
    "Id",
    "ContentSize",
    "Checksum",
    "FileExtension",
    "FileType",
    "IsLatest",
    "VersionNumber",
    "CreatedDate",
    "CreatedById",
    "LastModifiedDate",
}
QUERYABLE = {f.lower(): f for f in (INSERTABLE | READ_ONLY) - {"VersionData"}}


def to18(id15: str) -> str:
    """The case-insensitive 18-character form of a 15-character Salesforce id."""
    suffix = ""
    for chunk in range(3):
        bits = sum(1 << i for i, c in enumerate(id15[chunk * 5 : chunk * 5 + 5]) if "A" <= c <= "Z")
        suffix += _SUFFIX[bits]
    return id15 + suffix


def canonical_id(value: str) -> str:
    return to18(value) if len(value) == 15 else value


def sf_error(status: int, code: str, message: str, fields: list[str] | None = None) -> JSONResponse:
    """Salesforce's REST error body: a list of ``{"message", "errorCode"[, "fields"]}``."""
    error: dict[str, Any] = {"message": message, "errorCode": code}
    if fields is not None:
        error["fields"] = fields
    return JSONResponse([error], status_code=status)


def oauth_error(error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=400)


# -- SOQL: the small, strict subset a connector needs ----------------------------------------------------------


class SoqlError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_TOKEN = re.compile(r"\s*(?:('(?:[^'\\]|\\.)*')|([A-Za-z_][A-Za-z0-9_.]*)|(\d+)|(,|\(|\)|=))")
_ESCAPES = {"'": "'", '"': '"', "\\": "\\", "n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}


@dataclass
class Query:
    fields: list[str]
    where: list[tuple[str, list[Any]]]  # (field, allowed values): = is a one-value IN
    limit: int | None


def _unquote(literal: str) -> str:
    out, i, body = [], 0, literal[1:-1]
    while i < len(body):
        if body[i] == "\\":
            nxt = body[i + 1]
            if nxt not in _ESCAPES:
                raise SoqlError("MALFORMED_QUERY", f"Invalid string literal '{literal}'. Illegal character sequence")
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


def parse_soql(text: str) -> Query:
    """Parse ``text`` or raise :class:`SoqlError` the way Salesforce words it."""
    tokens: list[tuple[str, str, int]] = []  # (kind, value, column)
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if not match:
            column = len(text) - len(text[position:].lstrip())
            raise _unexpected(text, column, text[column])
        kind = "str" if match.group(1) else "word" if match.group(2) else "num" if match.group(3) else "punct"
        value = match.group(match.lastindex or 0)
        tokens.append((kind, value, match.start(match.lastindex or 0)))
        position = match.end()
    stream = _Tokens(text, tokens)
    stream.keyword("SELECT")
    fields = [stream.field()]
    while stream.peek(","):
        stream.next()
        fields.append(stream.field())
    stream.keyword("FROM")
    kind, sobject, column = stream.next()
    if kind != "word":
        raise _unexpected(text, column, sobject)
    if sobject.lower() != "contentversion":
        raise SoqlError(
            "INVALID_TYPE",
            f"\n{text}\n{' ' * column}^\nERROR at Row:1:Column:{column + 1}\n"
            f"sObject type '{sobject}' is not supported. If you are attempting to use a custom object, be sure to "
            "append the '__c' after the entity name. Please reference your WSDL or the describe call for the "
            "appropriate names.",
        )
    where: list[tuple[str, list[Any]]] = []
    limit: int | None = None
    if stream.peek_keyword("WHERE"):
        stream.next()
        where.append(stream.condition())
        while stream.peek_keyword("AND"):
            stream.next()
            where.append(stream.condition())
    if stream.peek_keyword("LIMIT"):
        stream.next()
        kind, value, column = stream.next()
        if kind != "num":
            raise _unexpected(text, column, value)
        limit = int(value)
    stream.end()
    return Query(fields=fields, where=where, limit=limit)


def soql_matches(name: str, value: Any, allowed: list[Any]) -> bool:
    """SOQL's ``=``/``IN``: ids compare in their 15-character form, other text case-insensitively."""
    for candidate in allowed:
        if isinstance(value, str) and isinstance(candidate, str):
            if name.endswith("Id") and ID_RE.match(value) and ID_RE.match(candidate):
                if canonical_id(value)[:15] == canonical_id(candidate)[:15]:
                    return True
            elif value.lower() == candidate.lower():
                return True
        elif value == candidate:
            return True
    return False


def _unexpected(text: str, column: int, token: str) -> SoqlError:
    return SoqlError(
        "MALFORMED_QUERY",
        f"\n{text}\n{' ' * column}^\nERROR at Row:1:Column:{column + 1}\nunexpected token: {token}",
    )


class _Tokens:
    def __init__(self, text: str, tokens: list[tuple[str, str, int]]) -> None:
        self.text = text
        self.tokens = tokens
        self.i = 0

    def next(self) -> tuple[str, str, int]:
        if self.i >= len(self.tokens):
            raise _unexpected(self.text, len(self.text), "<EOF>")
        token = self.tokens[self.i]
        self.i += 1
        return token

    def peek(self, punct: str) -> bool:
        return self.i < len(self.tokens) and self.tokens[self.i][:2] == ("punct", punct)

    def peek_keyword(self, word: str) -> bool:
        return self.i < len(self.tokens) and self.tokens[self.i][0] == "word" and self.tokens[self.i][1].upper() == word

    def keyword(self, word: str) -> None:
        kind, value, column = self.next()
        if kind != "word" or value.upper() != word:
            raise _unexpected(self.text, column, value)

    def field(self) -> str:
        kind, value, column = self.next()
        if kind != "word" or value.upper() in ("FROM", "WHERE", "AND", "LIMIT", "SELECT"):
            raise _unexpected(self.text, column, value)
        canonical = QUERYABLE.get(value.lower())
        if canonical is None:
            raise SoqlError(
                "INVALID_FIELD",
                f"\n{self.text}\n{' ' * column}^\nERROR at Row:1:Column:{column + 1}\nNo such column '{value}' on "
                "entity 'ContentVersion'. If you are attempting to use a custom field, be sure to append the '__c' "
                "after the custom field name. Please reference your WSDL or the describe call for the appropriate "
                "names.",
            )
        return canonical

    def value(self) -> Any:
        kind, value, column = self.next()
        if kind == "str":
            return _unquote(value)
        if kind == "word" and value.lower() in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[value.lower()]
        raise _unexpected(self.text, column, value)

    def condition(self) -> tuple[str, list[Any]]:
        name = self.field()
        kind, value, column = self.next()
        if (kind, value) == ("punct", "="):
            return name, [self.value()]
        if kind == "word" and value.upper() == "IN":
            kind, value, column = self.next()
            if (kind, value) != ("punct", "("):
                raise _unexpected(self.text, column, value)
            values = [self.value()]
            while self.peek(","):
                self.next()
                values.append(self.value())
            kind, value, column = self.next()
            if (kind, value) != ("punct", ")"):
                raise _unexpected(self.text, column, value)
            return name, values
        raise _unexpected(self.text, column, value)

    def end(self) -> None:
        if self.i < len(self.tokens):
            _, value, column = self.tokens[self.i]
            raise _unexpected(self.text, column, value)


# -- the org ---------------------------------------------------------------------------------------------------


@dataclass
class ContentVersion:
    id: str
    content_document_id: str
    title: str
    path_on_client: str
    data: bytes
    first_publish_location_id: str
    description: str | None
    reason_for_change: str | None
    version_number: int
    created: str
    latest: bool = True

    def fields(self) -> dict[str, Any]:
        extension = self.path_on_client.rsplit(".", 1)[-1].lower() if "." in self.path_on_client else ""
        return {
            "Id": self.id,
            "ContentDocumentId": self.content_document_id,
            "Title": self.title,
            "PathOnClient": self.path_on_client,
            "Description": self.description,
            "ReasonForChange": self.reason_for_change,
            "FirstPublishLocationId": self.first_publish_location_id,
            "ContentSize": len(self.data),
            "Checksum": hashlib.md5(self.data).hexdigest(),  # noqa: S324 - Salesforce's checksum is MD5
            "FileExtension": extension,
            "FileType": {"jpeg": "JPG", "jpg": "JPG"}.get(extension, extension.upper() or "UNKNOWN"),
            "IsLatest": self.latest,
            "VersionNumber": str(self.version_number),
            "CreatedDate": self.created,
            "CreatedById": USER_ID,
            "LastModifiedDate": self.created,
            "ContentLocation": "S",
            "Origin": "C",
            "SharingOption": "A",
            "SharingPrivacy": "N",
            "TagCsv": None,
            "OwnerId": USER_ID,
        }


class Org:
    def __init__(self, products: Iterable[str]) -> None:
        self.products = {canonical_id(p) for p in products}
        self.versions: dict[str, ContentVersion] = {}
        self._counter = 0

    def new_id(self, prefix: str) -> str:
        self._counter += 1
        return to18(f"{prefix}5g{self._counter:010d}")

    def record_exists(self, record_id: str) -> bool:
        return any(canonical_id(record_id)[:15] == p[:15] for p in self.products)

    def duplicates(self) -> list[dict[str, Any]]:
        groups: dict[tuple[str, str], list[str]] = {}
        for v in self.versions.values():
            groups.setdefault((v.first_publish_location_id, hashlib.sha256(v.data).hexdigest()), []).append(v.id)
        return [
            {"record_id": record, "sha256": sha, "content_version_ids": ids}
            for (record, sha), ids in groups.items()
            if len(ids) > 1
        ]


def create_app(
    client_id: str = DEFAULT_CLIENT_ID,
    client_secret: str = DEFAULT_CLIENT_SECRET,
    products: Iterable[str] = DEFAULT_PRODUCTS,
    *,
    session_seconds: float = 7200.0,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """One Salesforce org with one connected app (``client_id``/``client_secret``) and the Product2 ``products``."""
    app = FastAPI(title="Salesforce REST API (emulator)", docs_url=None, redoc_url=None, openapi_url=None)
    org = Org(products)
    tokens: dict[str, float] = {}  # access token -> issued at
    app.state.org = org
    app.state.tokens = tokens
    add_faults(app)
    record = log_requests(app, clock)

    def authorized(request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        issued = tokens.get(token.strip()) if scheme.lower() in ("bearer", "oauth") else None
        return issued is not None and clock() - issued < session_seconds

    def invalid_session() -> JSONResponse:
        response = sf_error(401, "INVALID_SESSION_ID", "Session expired or invalid")
        response.headers["WWW-Authenticate"] = "Token"
        return response

    def version_ok(version: str) -> bool:
        match = VERSION_RE.match(version)
        return bool(match) and API_VERSIONS[0] <= int(match.group(1)) <= API_VERSIONS[1]  # type: ignore[union-attr]

    def not_found() -> JSONResponse:
        return sf_error(404, "NOT_FOUND", "The requested resource does not exist")

    def refusal(version: str, request: Request) -> JSONResponse | None:
        """The answer refusing a call to an unknown API version, or without a valid session (logged), if any."""
        if not version_ok(version):
            return not_found()
        if not authorized(request):
            record(request, outcome="INVALID_SESSION_ID")
            return invalid_session()
        return None

    @app.post("/services/oauth2/token")
    async def token(request: Request) -> Response:
        form = await request.form()
        record(request, grant_type=form.get("grant_type"), client_id=form.get("client_id"))
        if form.get("grant_type") != "client_credentials":
            return oauth_error("unsupported_grant_type", "grant type not supported")
        if not secrets.compare_digest(str(form.get("client_id", "")), client_id):
            return oauth_error("invalid_client_id", "client identifier invalid")
        if not secrets.compare_digest(str(form.get("client_secret", "")), client_secret):
            return oauth_error("invalid_client", "invalid client credentials")
        access_token = f"{ORG_ID[:15]}!AQ{secrets.token_urlsafe(72)}"
        issued = clock()
        tokens[access_token] = issued
        base = str(request.base_url).rstrip("/")
        return JSONResponse(
            {
                "access_token": access_token,
                "signature": base64.b64encode(hashlib.sha256(access_token.encode()).digest()).decode(),
                "scope": "api",
                "instance_url": base,
                "id": f"{base}/id/{ORG_ID}/{USER_ID}",
                "token_type": "Bearer",
                "issued_at": str(int(issued * 1000)),
            }
        )

    @app.post("/services/data/{version}/sobjects/ContentVersion")
    @app.post("/services/data/{version}/sobjects/ContentVersion/")
    async def insert(version: str, request: Request) -> Response:
        refused = refusal(version, request)
        if refused is not None:
            return refused
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/"):
            form = await request.form()
            entity = form.get("entity_content")
            blob = form.get("VersionData")
            try:
                raw = entity if isinstance(entity, str) else (await entity.read()).decode() if entity else ""
                fields = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                return sf_error(400, "JSON_PARSER_ERROR", "The entity_content part is not valid JSON")
            if not isinstance(fields, dict):
                return sf_error(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of ContentVersion from array")
            if "VersionData" in fields:
                return sf_error(400, "INVALID_FIELD", "VersionData must be sent as its own binary part")
            if blob is not None and not isinstance(blob, str):
                fields["VersionData"] = await blob.read()
            multipart = True
        else:
            body = await request.body()
            if len(body) > max_request_bytes:
                record(request, bytes=len(body), outcome="JSON_PARSER_ERROR")
                return sf_error(
                    400,
                    "JSON_PARSER_ERROR",
                    f"Maximum size of request reached. Maximum size of request is {max_request_bytes} bytes.",
                )
            try:
                fields = json.loads(body)
            except ValueError as exc:
                return sf_error(400, "JSON_PARSER_ERROR", f"Unexpected character: {exc}")
            if not isinstance(fields, dict):
                return sf_error(
                    400, "JSON_PARSER_ERROR", "Cannot deserialize instance of ContentVersion from START_ARRAY value"
                )
            if isinstance(fields.get("VersionData"), str):
                try:
                    fields["VersionData"] = base64.b64decode(fields["VersionData"], validate=True)
                except (binascii.Error, ValueError):
                    return sf_error(
                        400,
                        "JSON_PARSER_ERROR",
                        "Cannot deserialize instance of base64 from VALUE_STRING value: illegal base64 data",
                    )
            multipart = False
        summary = {k: v for k, v in fields.items() if k != "VersionData"}
        data = fields.get("VersionData")
        record(request, multipart=multipart, fields=summary, bytes=len(data) if isinstance(data, bytes) else None)
        return create_version(fields)

    def create_version(fields: dict[str, Any]) -> JSONResponse:
        unknown = [k for k in fields if k not in INSERTABLE and k not in READ_ONLY]
        if unknown:
            return sf_error(400, "INVALID_FIELD", f"No such column '{unknown[0]}' on sobject of type ContentVersion")
        read_only = [k for k in fields if k in READ_ONLY]
        if read_only:
            return sf_error(
                400,
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                f"Unable to create/update fields: {', '.join(read_only)}. Please check the security settings of this "
                "field and verify that it is read/write for your profile or permission set.",
                read_only,
            )
        missing = [k for k in ("PathOnClient", "VersionData") if not fields.get(k)]
        if missing:
            return sf_error(
                400, "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]", missing
            )
        data = fields["VersionData"]
        if not isinstance(data, bytes):
            return sf_error(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of base64 from a non-string value")
        path = str(fields["PathOnClient"])
        title = str(fields.get("Title") or path.rsplit(".", 1)[0])
        description = fields.get("Description")
        for name, value, limit in (("Description", description, DESCRIPTION_MAX), ("Title", title, TITLE_MAX)):
            if value is not None and len(str(value)) > limit:
                return sf_error(
                    400,
                    "STRING_TOO_LONG",
                    f"{name}: data value too large: {str(value)[:40]}... (max length={limit})",
                    [name],
                )
        location = fields.get("FirstPublishLocationId")
        document_id = fields.get("ContentDocumentId")
        version_number = 1
        if document_id:
            previous = [v for v in org.versions.values() if v.content_document_id == canonical_id(str(document_id))]
            if not previous:
                return sf_error(
                    400,
                    "FIELD_INTEGRITY_EXCEPTION",
                    f"Content Document ID: id value of incorrect type: {document_id}",
                    ["ContentDocumentId"],
                )
            if location:
                return sf_error(
                    400,
                    "FIELD_INTEGRITY_EXCEPTION",
                    "First Publish Location ID: cannot be set on a new version of an existing document",
                    ["FirstPublishLocationId"],
                )
            for v in previous:
                v.latest = False
            version_number = max(v.version_number for v in previous) + 1
            location = previous[0].first_publish_location_id
            document_id = previous[0].content_document_id
        elif location:
            location = str(location)
            if not ID_RE.match(location):
                return sf_error(
                    400,
                    "MALFORMED_ID",
                    f"First Publish Location ID: id value of incorrect type: {location}",
                    ["FirstPublishLocationId"],
                )
            if not org.record_exists(location):
                return sf_error(
                    400,
                    "FIELD_INTEGRITY_EXCEPTION",
                    f"First Publish Location ID: id value of incorrect type: {location}",
                    ["FirstPublishLocationId"],
                )
            location = canonical_id(location)
        else:
            location = USER_ID  # the file goes to the user's private library
        version = ContentVersion(
            id=org.new_id("068"),
            content_document_id=str(document_id or org.new_id("069")),
            title=title,
            path_on_client=path,
            data=data,
            first_publish_location_id=str(location),
            description=None if description is None else str(description),
            reason_for_change=fields.get("ReasonForChange"),
            version_number=version_number,
            created=time.strftime("%Y-%m-%dT%H:%M:%S.000+0000", time.gmtime(clock())),
        )
        org.versions[version.id] = version
        return JSONResponse({"id": version.id, "success": True, "errors": []}, status_code=201)

    def find(version_id: str) -> ContentVersion | None:
        if not ID_RE.match(version_id):
            return None
        wanted = canonical_id(version_id)[:15]
        return next((v for v in org.versions.values() if v.id[:15] == wanted), None)

    def stored(version: str, version_id: str, request: Request) -> ContentVersion | JSONResponse:
        """The ContentVersion a read asks for, or the answer refusing it (unknown API version or id, no session)."""
        if not version_ok(version):
            return not_found()
        if not authorized(request):
            return invalid_session()
        record(request)
        found = find(version_id)
        return not_found() if found is None else found

    @app.get("/services/data/{version}/sobjects/ContentVersion/{version_id}")
    async def read(version: str, version_id: str, request: Request) -> Response:
        found = stored(version, version_id, request)
        if isinstance(found, Response):
            return found
        url = f"/services/data/{version}/sobjects/ContentVersion/{found.id}"
        return JSONResponse(
            {
                "attributes": {"type": "ContentVersion", "url": url},
                **found.fields(),
                "VersionData": f"{url}/VersionData",
            }
        )

    @app.get("/services/data/{version}/sobjects/ContentVersion/{version_id}/VersionData")
    async def blob(version: str, version_id: str, request: Request) -> Response:
        found = stored(version, version_id, request)
        if isinstance(found, Response):
            return found
        return Response(found.data, media_type="application/octetstream")

    @app.get("/services/data/{version}/query")
    @app.get("/services/data/{version}/query/")
    async def query(version: str, request: Request) -> Response:
        refused = refusal(version, request)
        if refused is not None:
            return refused
        text = request.query_params.get("q")
        record(request)
        if not text:
            return sf_error(400, "MALFORMED_QUERY", "A query string has to be specified")
        try:
            parsed = parse_soql(text)
        except SoqlError as exc:
            return sf_error(400, exc.code, exc.message)
        rows = []
        for v in org.versions.values():
            values = v.fields()
            if all(soql_matches(name, values.get(name), allowed) for name, allowed in parsed.where):
                url = f"/services/data/{version}/sobjects/ContentVersion/{v.id}"
                rows.append(
                    {"attributes": {"type": "ContentVersion", "url": url}, **{f: values[f] for f in parsed.fields}}
                )
        if parsed.limit is not None:
            rows = rows[: parsed.limit]
        return JSONResponse({"totalSize": len(rows), "done": True, "records": rows})

    # -- inspection (not part of Salesforce; /_emulator/received and /_emulator/faults: gateway.emulators.vendor) ---

    @app.get("/_emulator/state")
    async def state() -> dict[str, Any]:
        records: dict[str, list[dict[str, Any]]] = {p: [] for p in sorted(org.products)}
        for v in org.versions.values():
            row = {
                k: val
                for k, val in v.fields().items()
                if k in ("Id", "ContentDocumentId", "Title", "PathOnClient", "Description", "ContentSize", "Checksum")
            }
            records.setdefault(v.first_publish_location_id, []).append(
                {**row, "sha256": hashlib.sha256(v.data).hexdigest()}
            )
        return {"records": records, "duplicates": org.duplicates()}

    @app.post("/_emulator/expire-tokens")
    async def expire_tokens() -> dict[str, int]:
        count = len(tokens)
        tokens.clear()
        return {"expired": count}

    return app


def from_cli(credentials: str | None, products: str | None) -> FastAPI:
    """``imagegate emulate salesforce``: ``--credentials CLIENT_ID:CLIENT_SECRET``, ``--products ID,ID``."""
    client_id, _, client_secret = (credentials or "").partition(":")
    seeded = [p.strip() for p in (products or "").split(",") if p.strip()]
    bad = [p for p in seeded if not ID_RE.match(p)]
    if bad:
        raise ValueError(f"not Salesforce ids: {', '.join(bad)}")
    return create_app(
        client_id or DEFAULT_CLIENT_ID, client_secret or DEFAULT_CLIENT_SECRET, seeded or DEFAULT_PRODUCTS
    )
