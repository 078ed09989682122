"""Email connector: sends the images (attached, or as links when they are large) to people over SMTP.

* One message per delivery, built with :class:`email.message.EmailMessage`: a plain-text and an HTML body listing
  the record, the job and each image (name, size, dimensions, SHA-256, link), and the images as attachments. When
  they add up to more than 10 MB they are not attached: the body says so and gives the links (signed, expiring).
* ``Message-ID: <{sha256(idempotency key)[:32]}@imagegate>``: every attempt of a delivery sends the same id, so mail
  stores and clients that deduplicate on it (and threading) see one message. SMTP itself has no idempotency: if the
  connection drops after the server accepted the message but before its answer arrived, a retry sends it again.
* The connection goes only to addresses the gateway's outbound policy allows (``self.http.policy``): the SMTP host
  is resolved once and checked, and the socket is connected to the validated address (no second lookup), while
  TLS still checks the certificate against the configured host name. An internal relay must be allowlisted.
* ``security``: ``starttls`` (default; STARTTLS is required, a server that does not offer it is refused, no silent
  plain-text fallback), ``tls`` (implicit TLS, port 465) or ``none`` (plain text: only on a trusted network).
* Errors: an SMTP 5xx answer is permanent, a 4xx answer, a timeout or a dropped connection is retryable; a
  certificate that does not verify, a missing STARTTLS/AUTH or a refused address is permanent. Recipients refused
  while others were accepted do not fail the delivery (the message went out); they are listed in ``detail``.
* Who can receive: the configured ``to``, or a per-delivery ``to`` from the calling system. ``allowed_domains``
  (empty = any) restricts both, so a calling system cannot turn the gateway into a mailer to arbitrary addresses.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import re
import socket
import ssl
from email.message import EmailMessage
from email.utils import formataddr, formatdate, parseaddr
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from connectors.base import (
    Delivered,
    DeliveredAsset,
    Delivery,
    DeliveryError,
    OAConnector,
    PermanentError,
    RetryableError,
    parse_template,
    read_checked,
    valid_target,
)

ATTACH_LIMIT = 10 * 1024 * 1024  # total image bytes above which links are sent instead
MAX_RECIPIENTS = 50
SUBJECT_FIELDS = {
    "record_id": "the record id (metadata), or 'none'",
    "system": "the calling system's name",
    "job_id": "the job id, or 'none'",
    "batch_id": "the batch id, or 'none'",
    "count": "how many images",
    "role": "the images' role (metadata), or 'none'",
    "template": "the generation template (metadata), or 'none'",
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DOMAIN_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_LOCAL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}$")


def check_address(value: str, *, display_name: bool = False) -> str:
    """A plain ``local@domain`` address (with ``display_name``, also ``Name <local@domain>``); returns it cleaned.

    A deliberately simple check with :func:`email.utils.parseaddr` plus the dot-atom rule: no quoted local parts,
    no comments, no IP-literal domains; an internationalised domain is returned in its IDNA (xn--) form."""
    value = value.strip()
    if not value or _CONTROL.search(value) or len(value) > 320:
        raise ValueError(f"{value[:80]!r} is not an email address")
    # parseaddr's strict mode (CVE-2023-27043) is missing before Python 3.11.10: the checks below stand in for it
    # (a bare address must come back unchanged, a named one must end with exactly "<address>").
    name, address = parseaddr(value)
    if not address or (name and (not display_name or not value.endswith(f"<{address}>"))):
        raise ValueError(f"{value[:80]!r} is not a plain email address (local@domain)")
    if not name and address != value and value != f"<{address}>":
        raise ValueError(f"{value[:80]!r} is not a plain email address (local@domain)")
    local, at, domain = address.rpartition("@")
    if not at or not _LOCAL.fullmatch(local) or local.startswith(".") or local.endswith(".") or ".." in local:
        raise ValueError(f"{value[:80]!r} is not a valid email address")
    try:
        ascii_domain = domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise ValueError(f"{value[:80]!r} has an invalid domain") from None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or not all(_DOMAIN_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        raise ValueError(f"{value[:80]!r} has an invalid domain")
    address = f"{local}@{ascii_domain}"  # IDNA form: no SMTPUTF8 needed for the domain
    return formataddr((name, address)) if name else address


def address_domain(value: str) -> str:
    return parseaddr(value)[1].rpartition("@")[2].encode("idna").decode("ascii").lower()


def _check_list(values: list[str]) -> list[str]:
    if not values:
        raise ValueError("needs at least one address")
    if len(values) > MAX_RECIPIENTS:
        raise ValueError(f"at most {MAX_RECIPIENTS} addresses")
    cleaned = [check_address(v) for v in values]
    return list(dict.fromkeys(cleaned))


def _check_subject_template(value: str) -> str:
    for _literal, name, spec, conversion in parse_template(value):
        if name is None:
            continue
        if name not in SUBJECT_FIELDS or spec or conversion:
            allowed = ", ".join("{" + n + "}" for n in SUBJECT_FIELDS)
            raise ValueError(f"{{{name}}} is not a placeholder here (plain {allowed} only)")
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters or line breaks")
    return value


class EmailConfig(BaseModel):
    """Settings of an SMTP sender."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(description="SMTP server host name (an internal relay must be on the outbound allowlist).")
    port: int = Field(default=587, ge=1, le=65535, description="SMTP port: 587 submission, 465 implicit TLS, 25.")
    security: Literal["starttls", "tls", "none"] = Field(
        default="starttls",
        description="starttls: upgrade with STARTTLS (required); tls: implicit TLS (port 465); "
        "none: plain text (trusted networks only).",
    )
    username: str | None = Field(default=None, description="SMTP AUTH user name (optional).", max_length=256)
    password: SecretStr | None = Field(default=None, description="SMTP AUTH password.")
    from_address: str = Field(
        description="Sender, 'images@example.com' or 'Imagegate <images@example.com>'.", max_length=320
    )
    to: list[str] = Field(description="Recipients (plain addresses), unless a delivery gives its own.")
    subject_template: str = Field(
        default="Images for {record_id}",
        description="Subject. Placeholders: " + ", ".join("{" + k + "} (" + v + ")" for k, v in SUBJECT_FIELDS.items()),
        max_length=500,
    )
    allowed_domains: list[str] = Field(
        default_factory=list,
        description="If set, every recipient (configured or given per delivery) must be at one of these domains.",
    )
    timeout_seconds: float = Field(default=30.0, gt=0, le=300, description="Timeout of each SMTP step, in seconds.")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        from policies.ssrf import UrlRefused, normalize_host

        try:
            return str(normalize_host(value.strip()))
        except UrlRefused as exc:
            raise ValueError(exc.message) from None

    @field_validator("from_address")
    @classmethod
    def _from(cls, value: str) -> str:
        return check_address(value, display_name=True)

    @field_validator("to")
    @classmethod
    def _to(cls, value: list[str]) -> list[str]:
        return _check_list(value)

    @field_validator("subject_template")
    @classmethod
    def _subject(cls, value: str) -> str:
        return _check_subject_template(value)

    @field_validator("allowed_domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        cleaned = []
        for domain in value:
            address = check_address(f"x@{domain.strip().lstrip('@')}")
            cleaned.append(address_domain(address))
        return cleaned

    @model_validator(mode="after")
    def _consistent(self) -> EmailConfig:
        if self.password is not None and not self.username:
            raise ValueError("a password needs a username")
        refused = [a for a in self.to if not _domain_allowed(a, self.allowed_domains)]
        if refused:
            raise ValueError(f"not in allowed_domains: {', '.join(refused)}")
        return self


class EmailTarget(BaseModel):
    """Per-delivery fields of an email target."""

    model_config = ConfigDict(extra="forbid")

    to: list[str] | None = Field(
        default=None, description="Recipients of this delivery instead of the configured ones (plain addresses)."
    )
    subject: str | None = Field(default=None, description="Subject of this delivery (no line breaks).", max_length=500)

    @field_validator("to")
    @classmethod
    def _to(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _check_list(value)

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str | None) -> str | None:
        if value is not None and _CONTROL.search(value):
            raise ValueError("must not contain control characters or line breaks")
        return value


def _domain_allowed(address: str, domains: list[str]) -> bool:
    return not domains or address_domain(address) in domains


def message_id(idempotency_key: str) -> str:
    """The Message-ID of a delivery: the same on every attempt."""
    return f"<{hashlib.sha256(idempotency_key.encode('utf-8')).hexdigest()[:32]}@imagegate>"


def _size(value: int) -> str:
    if value >= 1024 * 1024:
        return f"{value / (1024 * 1024):.1f} MB"
    if value >= 1024:
        return f"{value / 1024:.1f} KB"
    return f"{value} bytes"


class EmailConnector(OAConnector[EmailConfig]):
    """Emails the images of a delivery over SMTP; see the module docstring."""

    kind: ClassVar[str] = "email"
    title: ClassVar[str] = "Email (SMTP)"
    Config: ClassVar[type[BaseModel]] = EmailConfig
    Target: ClassVar[type[BaseModel]] = EmailTarget

    async def test_connection(self) -> str:
        smtp = await self._connect()
        try:
            mode = {"starttls": "STARTTLS", "tls": "TLS", "none": "plain text"}[self.config.security]
            who = f", logged in as {self.config.username}" if self.config.username else ""
            return f"connected to {self.config.host}:{self.config.port} ({mode}), EHLO accepted{who}"
        finally:
            await _quit(smtp)

    async def deliver(self, delivery: Delivery) -> Delivered:
        target = valid_target(EmailTarget, delivery)
        recipients = target.to or self.config.to
        refused_domain = [a for a in recipients if not _domain_allowed(a, self.config.allowed_domains)]
        if refused_domain:
            raise PermanentError(f"recipients outside the allowed domains: {', '.join(refused_domain)}")
        message, attached = await self.build_message(delivery, recipients, target.subject)
        smtp = await self._connect()
        try:
            try:
                errors, _answer = await smtp.send_message(
                    message, sender=parseaddr(self.config.from_address)[1], recipients=recipients
                )
            except Exception as exc:
                raise _map_error(exc, "sending") from None
        finally:
            await _quit(smtp)
        refused = {address: f"{answer.code} {answer.message}" for address, answer in errors.items()}
        return Delivered(
            external_id=message["Message-ID"],
            detail={
                "recipients": [r for r in recipients if r not in refused],
                "refused": refused,
                "attached": attached,
            },
        )

    async def build_message(
        self, delivery: Delivery, recipients: list[str], subject: str | None = None
    ) -> tuple[EmailMessage, bool]:
        """The message of a delivery, and whether the images are attached (False: only linked)."""
        meta = delivery.metadata
        values = {
            "record_id": str(meta.get("record_id") or "none"),
            "system": delivery.system,
            "job_id": delivery.job_id or "none",
            "batch_id": delivery.batch_id or "none",
            "count": str(len(delivery.assets)),
            "role": str(meta.get("role") or "none"),
            "template": str(meta.get("template") or "none"),
        }
        title = subject if subject is not None else self.config.subject_template.format_map(values)
        title = _CONTROL.sub(" ", title).strip()[:500] or "Images"

        attached = sum(a.size for a in delivery.assets) <= ATTACH_LIMIT
        contents: list[bytes] = []
        if attached:
            for asset in delivery.assets:
                contents.append(await read_checked(asset))
            attached = sum(len(c) for c in contents) <= ATTACH_LIMIT

        message = EmailMessage()
        message["From"] = self.config.from_address
        message["To"] = ", ".join(recipients)
        message["Subject"] = title
        message["Date"] = formatdate(localtime=False, usegmt=True)
        message["Message-ID"] = message_id(delivery.idempotency_key)
        message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
        message["X-Imagegate-Delivery"] = delivery.id
        message.set_content(_text_body(delivery, values, attached))
        message.add_alternative(_html_body(delivery, values, attached), subtype="html")
        if attached:
            for asset, data in zip(delivery.assets, contents, strict=True):
                maintype, _, subtype = asset.content_type.partition("/")
                message.add_attachment(
                    data, maintype=maintype or "application", subtype=subtype or "octet-stream", filename=asset.filename
                )
        return message, attached

    # -- SMTP ---------------------------------------------------------------------------------------------------

    async def _connect(self) -> Any:
        """An SMTP session after EHLO (and STARTTLS, and AUTH when configured), over a socket connected to an
        address the outbound policy validated."""
        import aiosmtplib

        from policies.ssrf import UrlRefused, resolve_host

        config = self.config
        try:
            async with asyncio.timeout(config.timeout_seconds):
                addresses = await resolve_host(config.host, config.port, self.http.policy)
        except UrlRefused as exc:
            raise PermanentError(f"the SMTP host is refused by the outbound policy: {exc.message}") from None
        except TimeoutError:
            raise RetryableError(f"resolving {config.host} took too long") from None
        sock = await _open_socket([str(a) for a in addresses], config.port, config.timeout_seconds, config.host)
        smtp = aiosmtplib.SMTP(
            hostname=config.host,  # TLS server name and certificate check; the socket is already connected
            sock=sock,
            use_tls=config.security == "tls",
            start_tls=config.security == "starttls",
            tls_context=ssl.create_default_context() if config.security != "none" else None,
            username=config.username,
            password=config.password.get_secret_value() if config.password else None,
            timeout=config.timeout_seconds,
        )
        try:
            await smtp.connect()
            await smtp.ehlo()
        except Exception as exc:
            smtp.close()
            sock.close()
            raise _map_error(exc, "connecting") from None
        return smtp


async def _open_socket(addresses: list[str], port: int, seconds: float, host: str) -> socket.socket:
    """A TCP socket connected to the first of ``addresses`` (all validated) that answers."""
    loop = asyncio.get_running_loop()
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(seconds):
                await loop.sock_connect(sock, (address, port))
        except (OSError, TimeoutError):
            sock.close()
            continue
        return sock
    raise RetryableError(f"the SMTP server {host}:{port} could not be reached")


async def _quit(smtp: Any) -> None:
    try:
        await smtp.quit()
    except Exception:
        smtp.close()


def _map_error(exc: Exception, doing: str) -> DeliveryError:
    """An aiosmtplib exception as Retryable/PermanentError: 5xx permanent, 4xx and connection trouble retryable."""
    import aiosmtplib

    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        message = f"SMTP: every recipient was refused ({detail})"
        if codes and all(500 <= c < 600 for c in codes):
            return PermanentError(message, status=codes[0])
        return RetryableError(message, status=codes[0] if codes else None)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        message = f"SMTP {doing}: the server answered {exc.code} {exc.message}"
        if 500 <= exc.code < 600:
            return PermanentError(message, status=exc.code)
        return RetryableError(message, status=exc.code)
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, ssl.SSLCertVerificationError) or isinstance(cause, ssl.SSLCertVerificationError):
        return PermanentError(f"SMTP {doing}: the server's TLS certificate does not verify")
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return PermanentError(f"SMTP {doing}: {exc}")
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected | aiosmtplib.SMTPConnectError | aiosmtplib.SMTPTimeoutError):
        return RetryableError(f"SMTP {doing}: {type(exc).__name__}: {exc}")
    if isinstance(exc, ssl.SSLError):
        return PermanentError(f"SMTP {doing}: TLS failed ({exc.reason or type(exc).__name__})")
    if isinstance(exc, aiosmtplib.SMTPException):
        # e.g. "SMTP STARTTLS extension not supported by server": a configuration mismatch.
        return PermanentError(f"SMTP {doing}: {exc}")
    if isinstance(exc, OSError | TimeoutError):
        return RetryableError(f"SMTP {doing}: {type(exc).__name__}")
    return PermanentError(f"SMTP {doing} failed: {type(exc).__name__}")


def _link_note(attached: bool) -> str:
    if attached:
        return "The images are attached."
    return (
        f"The images add up to more than {ATTACH_LIMIT // (1024 * 1024)} MB, so they are not attached: "
        "download them from the links below (the links expire)."
    )


def _text_body(delivery: Delivery, values: dict[str, str], attached: bool) -> str:
    meta = delivery.metadata
    lines = [
        f"{values['count']} image(s) for record {values['record_id']} from {delivery.system}.",
        f"Job: {values['job_id']}" + (f", batch {delivery.batch_id}" if delivery.batch_id else ""),
    ]
    if meta.get("template"):
        lines.append(f"Template: {meta['template']}")
    if meta.get("prompt"):
        lines.append(f"Prompt: {_CONTROL.sub(' ', str(meta['prompt']))[:2000]}")
    lines += ["", _link_note(attached), ""]
    for number, asset in enumerate(delivery.assets, 1):
        lines.append(f"{number}. {asset.filename}: {_describe(asset)}")
        if asset.caption:
            lines.append(f"   {_CONTROL.sub(' ', asset.caption)}")
        lines.append(f"   {asset.url}")
    lines += ["", f"Delivery {delivery.id} by Imagegate."]
    return "\n".join(lines) + "\n"


def _describe(asset: DeliveredAsset) -> str:
    tags = f", tags: {', '.join(asset.tags)}" if asset.tags else ""
    size = _size(asset.size)
    return f"{asset.width}x{asset.height} {asset.format.upper()}, {size}, sha256 {asset.sha256[:16]}...{tags}"


def _html_body(delivery: Delivery, values: dict[str, str], attached: bool) -> str:
    e = html.escape
    meta = delivery.metadata
    rows = []
    for asset in delivery.assets:
        caption = f"<br><small>{e(asset.caption)}</small>" if asset.caption else ""
        rows.append(
            f'<tr><td><a href="{e(asset.url, quote=True)}">{e(asset.filename)}</a>{caption}</td>'
            f"<td>{asset.width}&times;{asset.height} {e(asset.format.upper())}</td><td>{e(_size(asset.size))}</td>"
            f"<td>{e(', '.join(asset.tags))}</td><td><code>{e(asset.sha256[:16])}&hellip;</code></td></tr>"
        )
    prompt = f"<p>Prompt: {e(str(meta['prompt'])[:2000])}</p>" if meta.get("prompt") else ""
    template = f"<p>Template: {e(str(meta['template']))}</p>" if meta.get("template") else ""
    return (
        '<!DOCTYPE html><html><body style="font-family: sans-serif">'
        f"<p>{e(values['count'])} image(s) for record <b>{e(values['record_id'])}</b> from {e(delivery.system)}.</p>"
        f"<p>Job: <code>{e(values['job_id'])}</code></p>{template}{prompt}"
        f"<p>{e(_link_note(attached))}</p>"
        "<table border=1 cellpadding=4 cellspacing=0><tr><th>Image</th><th>Size</th><th>Bytes</th><th>Tags</th>"
        f"<th>SHA-256</th></tr>{''.join(rows)}</table>"
        f"<p><small>Delivery {e(delivery.id)} by Imagegate.</small></p></body></html>"
    )
