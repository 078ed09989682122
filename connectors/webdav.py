"""WebDAV connector: PUTs each image into a WebDAV folder (Nextcloud, SharePoint, Apache mod_dav, ...) and sets
its metadata as dead properties, all through the gateway's guarded HTTP client.

Per image, at ``<base_url>/<folder_template>/[<subfolder>/]<filename>`` (every segment percent-encoded):

1. ``PROPFIND`` (Depth 0) the file: absent (404) -> upload; present with our ``sha256`` property equal (or, when the
   property is missing, with the same size and bytes: an earlier attempt whose PROPPATCH failed) -> no second
   upload; present with other content -> with ``on_conflict="keep_both"`` (default) the image goes to
   ``<stem>~<sha256[:12]>.<ext>`` instead, with ``replace`` it overwrites.
2. ``PUT`` with its ``Content-Type`` (and ``If-None-Match: *`` unless replacing, so two writers cannot overwrite each
   other). A 409/404 (the folder is missing) -> ``MKCOL`` each level from the top (201 created, 405 already
   there), then the PUT once more.
3. ``PROPPATCH`` the properties ``asset-id``, ``sha256``, ``job-id``, ``record-id``, ``role``, ``tags`` and
   ``prompt`` in the namespace ``https://imagegate.dev/ns``; the 207 multistatus must report 200 for each
   (a server applies PROPPATCH all-or-nothing: 424 for the others when one fails).

Answers are read with ``defusedxml`` when installed, else the standard library's parser; a body with a DTD is
refused either way (no entity expansion, no external entities). Failures go through ``error_for_status``; an
unreachable server is retryable, a URL the outbound policy refuses (or a redirect, never followed) is permanent.
Credentials are sent as HTTP Basic on every request: use an https:// base URL outside a trusted network.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import re
import xml.etree.ElementTree as ET
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from connectors.base import (
    DAMConnector,
    Delivered,
    DeliveredAsset,
    Delivery,
    DeliveryError,
    PermanentError,
    RetryableError,
    error_for_status,
    guarded_request,
    read_checked,
    retry_after_seconds,
    split_http_url,
    valid_target,
)
from connectors.paths import (
    TEMPLATE_FIELDS,
    Subfolder,
    alternate_name,
    check_template,
    render_template,
    template_values,
)

NS = "https://imagegate.dev/ns"
DAV = "DAV:"
PROPERTIES = ("asset-id", "sha256", "job-id", "record-id", "role", "tags", "prompt")
MAX_PROMPT = 4000
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_STATUS_LINE = re.compile(r"^\s*HTTP/\d(?:\.\d)?\s+(\d{3})")

ET.register_namespace("D", DAV)
ET.register_namespace("ig", NS)

_defused: Any
try:
    _defused = importlib.import_module("defusedxml.ElementTree")
except ImportError:  # pragma: no cover - defusedxml comes with wsgidav and most installs
    _defused = None


def _parse_xml(body: bytes) -> ET.Element:
    """Parse a server's XML answer without DTDs or entities; raises PermanentError when it is not well-formed."""
    head = body[:4096].lower()
    if b"<!doctype" in head or b"<!entity" in body.lower():
        raise PermanentError("the WebDAV server answered with a DTD, which is not accepted")
    try:
        if _defused is not None:
            element: ET.Element = _defused.fromstring(body, forbid_dtd=True)
            return element
        return ET.fromstring(body)  # noqa: S314 - DTDs refused above: expat then has no entity to expand
    except Exception as exc:  # ParseError, defusedxml's DTDForbidden/EntitiesForbidden
        raise PermanentError(f"the WebDAV server's answer is not well-formed XML ({type(exc).__name__})") from None


def _xml_text(value: Any, limit: int | None = None) -> str:
    text = "" if value is None else str(value)
    text = _XML_INVALID.sub("", text)
    return text[:limit] if limit else text


class WebDAVConfig(BaseModel):
    """Settings of a WebDAV folder."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(
        description="URL of the WebDAV folder the images go under, e.g. "
        "https://cloud.example.com/remote.php/dav/files/imagegate/Images/ (it must exist). An internal host must "
        "be on the gateway's outbound allowlist.",
        max_length=2048,
    )
    username: str | None = Field(default=None, description="User name (HTTP Basic).", max_length=256)
    password: SecretStr | None = Field(default=None, description="Password or app password (HTTP Basic).")
    folder_template: str = Field(
        default="{system}/{yyyy}/{mm}",
        description="Folders under the base URL, created as needed (empty: the base folder itself). Placeholders: "
        + ", ".join("{" + k + "}" for k in TEMPLATE_FIELDS)
        + ". The file name is the image's readable file name.",
        max_length=512,
    )
    on_conflict: Literal["keep_both", "replace"] = Field(
        default="keep_both",
        description="When a different file already has the name: keep_both uploads the new one as "
        "<stem>~<sha256 prefix>.<ext>; replace overwrites it.",
    )

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        value = value.strip()
        parts = split_http_url(value)
        if "@" in parts.netloc:
            raise ValueError("must not contain a user name or password: use the username and password fields")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment")
        return value if value.endswith("/") else value + "/"

    @field_validator("username")
    @classmethod
    def _username(cls, value: str | None) -> str | None:
        if value is not None and (":" in value or any(ord(c) < 0x20 for c in value)):
            raise ValueError("must not contain ':' or control characters (HTTP Basic)")
        return value or None

    @field_validator("folder_template")
    @classmethod
    def _folder_template(cls, value: str) -> str:
        return check_template(value.strip("/"), file_name=False)

    @model_validator(mode="after")
    def _password_needs_user(self) -> WebDAVConfig:
        if self.password is not None and not self.username:
            raise ValueError("a password needs a username")
        return self


class WebDAVTarget(BaseModel):
    """Per-delivery fields of a WebDAV target."""

    model_config = ConfigDict(extra="forbid")

    subfolder: Subfolder = Field(
        default=None,
        description="Optional folder under the folder template (e.g. 'campaigns/summer'); plain names only.",
        max_length=200,
    )


def _propfind_body(*props: tuple[str, str]) -> bytes:
    root = ET.Element(f"{{{DAV}}}propfind")
    prop = ET.SubElement(root, f"{{{DAV}}}prop")
    for namespace, name in props:
        ET.SubElement(prop, f"{{{namespace}}}{name}")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _proppatch_body(values: dict[str, str]) -> bytes:
    root = ET.Element(f"{{{DAV}}}propertyupdate")
    prop = ET.SubElement(ET.SubElement(root, f"{{{DAV}}}set"), f"{{{DAV}}}prop")
    for name, value in values.items():
        ET.SubElement(prop, f"{{{NS}}}{name}").text = value
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _propstats(body: bytes) -> list[tuple[int, list[ET.Element]]]:
    """``(status, props)`` of every propstat of a multistatus answer."""
    root = _parse_xml(body)
    if root.tag != f"{{{DAV}}}multistatus":
        raise PermanentError("the WebDAV server's 207 answer is not a multistatus")
    result: list[tuple[int, list[ET.Element]]] = []
    for response in root.iter(f"{{{DAV}}}response"):
        for propstat in response.iter(f"{{{DAV}}}propstat"):
            status_text = propstat.findtext(f"{{{DAV}}}status") or ""
            match = _STATUS_LINE.match(status_text)
            status = int(match.group(1)) if match else 0
            prop = propstat.find(f"{{{DAV}}}prop")
            result.append((status, list(prop) if prop is not None else []))
    return result


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


class WebDAVConnector(DAMConnector[WebDAVConfig]):
    """Uploads each image to a WebDAV folder and sets its metadata properties; see the module docstring."""

    kind: ClassVar[str] = "webdav"
    title: ClassVar[str] = "WebDAV folder"
    Config: ClassVar[type[BaseModel]] = WebDAVConfig
    Target: ClassVar[type[BaseModel]] = WebDAVTarget

    # -- HTTP through the guarded client ------------------------------------------------------------------------

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        headers: dict[str, str] = dict(kwargs.pop("headers", {}))
        if self.config.username:
            secret = self.config.password.get_secret_value() if self.config.password else ""
            token = base64.b64encode(f"{self.config.username}:{secret}".encode()).decode("ascii")
            headers["Authorization"] = f"Basic {token}"
        return await guarded_request(
            self.http,
            method,
            url,
            refused=f"WebDAV {method} refused",
            unreachable=f"WebDAV {method}",
            headers=headers,
            **kwargs,
        )

    def _fail(self, method: str, response: httpx.Response, what: str) -> DeliveryError:
        status = response.status_code
        hint = {401: " (wrong username or password)", 403: " (no permission)", 507: " (the server is full)"}
        message = f"WebDAV {method} {what} answered HTTP {status}{hint.get(status, '')}"
        return error_for_status(status, message, retry_after_seconds(response.headers.get("retry-after")))

    def _url(self, segments: list[str], *, collection: bool = False) -> str:
        path = "/".join(quote(segment, safe="") for segment in segments)
        return self.config.base_url + path + ("/" if collection and segments else "")

    # -- the contract -----------------------------------------------------------------------------------------------

    async def test_connection(self) -> str:
        response = await self._request(
            "PROPFIND",
            self.config.base_url,
            headers={"Depth": "0", "Content-Type": "application/xml; charset=utf-8"},
            content=_propfind_body((DAV, "resourcetype")),
        )
        if response.status_code != 207:
            raise self._fail("PROPFIND", response, "on the base URL")
        collection = any(
            status == 200 and prop.find(f"{{{DAV}}}collection") is not None
            for status, props in _propstats(response.content)
            for prop in props
            if _local(prop.tag) == "resourcetype"
        )
        if not collection:
            raise PermanentError(f"{self.config.base_url} is not a WebDAV folder (collection)")
        who = f" as {self.config.username}" if self.config.username else ""
        return f"PROPFIND on {self.config.base_url}{who}: a WebDAV folder"

    async def deliver(self, delivery: Delivery) -> Delivered:
        target = valid_target(WebDAVTarget, delivery)
        created: set[str] = set()
        files: list[dict[str, Any]] = []
        for asset in delivery.assets:
            folder = render_template(self.config.folder_template.strip("/"), delivery, asset)
            if target.subfolder:
                folder += target.subfolder.split("/")
            name = template_values(delivery, asset)["filename"]
            data = await read_checked(asset)
            name, uploaded = await self._upload(folder, name, asset, data, created)
            url = self._url([*folder, name])
            await self._set_properties(url, delivery, asset)
            files.append({"asset_id": asset.id, "url": url, "uploaded": uploaded})
        return Delivered(
            external_id="\n".join(f["url"] for f in files),
            url=files[0]["url"] if files else None,
            detail={"files": files},
        )

    async def _upload(
        self, folder: list[str], name: str, asset: DeliveredAsset, data: bytes, created: set[str]
    ) -> tuple[str, bool]:
        """Store ``data`` in ``folder`` as ``name`` (or its alternate name); returns the name used and whether it
        was uploaded now (False: the same bytes were already there)."""
        replace = self.config.on_conflict == "replace"
        candidates = [name] if replace else [name, alternate_name(name, asset.sha256)]
        for candidate in candidates:
            url = self._url([*folder, candidate])
            state = await self._existing(url, asset, len(data))
            if state == "same":
                return candidate, False
            if state == "other" and not replace:
                continue
            headers = {"Content-Type": asset.content_type}
            if not replace:
                headers["If-None-Match"] = "*"
            response = await self._request("PUT", url, headers=headers, content=data)
            if response.status_code in (404, 409) and folder:
                # The folder is missing: make each level, then try once more.
                await self._make_folders(folder, created)
                response = await self._request("PUT", url, headers=headers, content=data)
            if response.status_code == 412:
                raise RetryableError(f"{candidate} was created by someone else during this upload; will look again")
            if not 200 <= response.status_code < 300:
                raise self._fail("PUT", response, f"of {candidate}")
            return candidate, True
        raise PermanentError(f"{name} and {candidates[-1]} already exist with other content")

    async def _existing(self, url: str, asset: DeliveredAsset, size: int) -> Literal["absent", "same", "other"]:
        response = await self._request(
            "PROPFIND",
            url,
            headers={"Depth": "0", "Content-Type": "application/xml; charset=utf-8"},
            content=_propfind_body((NS, "sha256"), (DAV, "getcontentlength"), (DAV, "resourcetype")),
        )
        if response.status_code in (404, 409):  # 409: a missing parent, on some servers
            return "absent"
        if response.status_code != 207:
            raise self._fail("PROPFIND", response, "of an existing file")
        found: dict[str, ET.Element] = {}
        for status, props in _propstats(response.content):
            if status == 200:
                found.update((_local(p.tag), p) for p in props)
        resourcetype = found.get("resourcetype")
        if resourcetype is not None and resourcetype.find(f"{{{DAV}}}collection") is not None:
            return "other"
        sha = found.get("sha256")
        if sha is not None and (sha.text or "").strip():
            return "same" if (sha.text or "").strip() == asset.sha256 else "other"
        length = found.get("getcontentlength")
        if length is None or (length.text or "").strip() != str(size):
            return "other"
        # No property (an earlier attempt stored the file, then failed to set them): compare the bytes.
        try:
            got = await self._request("GET", url)
        except PermanentError:  # e.g. larger than the client's size cap: then it is not ours
            return "other"
        if got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == asset.sha256:
            return "same"
        return "other"

    async def _make_folders(self, folder: list[str], created: set[str]) -> None:
        for depth in range(1, len(folder) + 1):
            url = self._url(folder[:depth], collection=True)
            if url in created:
                continue
            response = await self._request("MKCOL", url)
            # 201 created; 405 it exists already (MKCOL is only allowed on an unmapped URL).
            if response.status_code not in (200, 201, 204, 405):
                raise self._fail("MKCOL", response, f"of {'/'.join(folder[:depth])}")
            created.add(url)

    async def _set_properties(self, url: str, delivery: Delivery, asset: DeliveredAsset) -> None:
        meta = delivery.metadata
        values = {
            "asset-id": asset.id,
            "sha256": asset.sha256,
            "job-id": asset.job_id,
            "record-id": _xml_text(meta.get("record_id"), 512),
            "role": _xml_text(meta.get("role"), 256),
            "tags": _xml_text(", ".join(asset.tags), 2000),
            "prompt": _xml_text(meta.get("prompt"), MAX_PROMPT),
        }
        response = await self._request(
            "PROPPATCH",
            url,
            headers={"Content-Type": "application/xml; charset=utf-8"},
            content=_proppatch_body(values),
        )
        if response.status_code != 207:
            if 200 <= response.status_code < 300:
                return  # not per RFC 4918, but a success
            raise self._fail("PROPPATCH", response, "of the properties")
        failed: dict[str, int] = {}
        for status, props in _propstats(response.content):
            if status != 200:
                failed.update((_local(p.tag), status) for p in props)
        if failed:
            causes = [s for s in failed.values() if s != 424] or list(failed.values())
            listed = ", ".join(f"{name}: {status}" for name, status in sorted(failed.items()))
            raise error_for_status(causes[0] or 500, f"WebDAV PROPPATCH refused properties ({listed})")
