"""The email connector against a real SMTP server: aiosmtpd's Controller on a free loopback port."""

from __future__ import annotations

import dataclasses
import datetime
import email
import email.policy
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from pydantic import ValidationError

from connectors.base import PermanentError, RetryableError
from connectors.mail import ATTACH_LIMIT, EmailConfig, EmailConnector, message_id
from gateway.common.outbound import OutboundClient
from policies.ssrf import OutboundPolicy
from tests.connectors.support import asset, delivery, outbound, png
from tests.processes import free_port


class Recorder:
    """An aiosmtpd handler that keeps what it accepts and answers as told."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], EmailMessage]] = []
        self.data_answer: str | None = None  # e.g. "550 5.7.1 ..." instead of accepting
        self.refuse_rcpt: dict[str, str] = {}  # address -> answer

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.refuse_rcpt:
            return self.refuse_rcpt[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_answer:
            return self.data_answer
        parsed = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), parsed))
        return "250 Message accepted for delivery"


def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"mailer", b"right-password")
    return AuthResult(success=ok, handled=False)


@dataclasses.dataclass
class Smtp:
    recorder: Recorder
    port: int


@contextmanager
def smtp_server(**kwargs: Any) -> Iterator[Smtp]:
    recorder = Recorder()
    port = free_port()
    controller = Controller(recorder, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield Smtp(recorder, port)
    finally:
        controller.stop()


@pytest.fixture
def smtp() -> Iterator[Smtp]:
    with smtp_server() as server:
        yield server


def connector(port: int, http: OutboundClient | None = None, **config: Any) -> EmailConnector:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "from_address": "Imagegate <images@example.com>",
        "to": ["pm@example.com", "design@example.com"],
        "timeout_seconds": 5,
    }
    values.update(config)
    return EmailConnector(EmailConfig.model_validate(values), http=http or outbound())


async def test_message_with_attachments(smtp: Smtp) -> None:
    first, second = asset(), asset(png(32, 32, (0, 90, 0)), index=1, name="P-1_main_2")
    item = delivery(first, second)
    result = await connector(smtp.port).deliver(item)

    assert len(smtp.recorder.messages) == 1
    sender, recipients, message = smtp.recorder.messages[0]
    assert sender == "images@example.com"
    assert recipients == ["pm@example.com", "design@example.com"]
    assert message["Subject"] == "Images for P-1"
    assert message["From"] == "Imagegate <images@example.com>"
    assert message["Message-ID"] == message_id(item.idempotency_key) == result.external_id
    assert message["Auto-Submitted"] == "auto-generated"
    attachments = list(message.iter_attachments())
    assert [a.get_filename() for a in attachments] == ["P-1_main.png", "P-1_main_2.png"]
    assert [a.get_content_type() for a in attachments] == ["image/png", "image/png"]
    assert attachments[0].get_content() == png()  # decoded from base64: byte-identical
    assert attachments[1].get_content() == png(32, 32, (0, 90, 0))
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    assert "record P-1" in text.get_content() and "attached" in text.get_content()
    assert first.url in text.get_content()
    assert "a lamp" in html.get_content() and "<b>P-1</b>" in html.get_content()
    assert result.detail == {"recipients": recipients, "refused": {}, "attached": True}


async def test_message_id_is_the_same_on_every_attempt(smtp: Smtp) -> None:
    item = delivery(asset())
    await connector(smtp.port).deliver(item)
    await connector(smtp.port).deliver(dataclasses.replace(item, attempt=2))
    ids = [m["Message-ID"] for _, _, m in smtp.recorder.messages]
    assert len(ids) == 2 and ids[0] == ids[1] == message_id(item.idempotency_key)
    assert ids[0].startswith("<") and ids[0].endswith("@imagegate>") and len(ids[0]) == len("<@imagegate>") + 32
    other = await connector(smtp.port).deliver(dataclasses.replace(item, idempotency_key="job_x:other"))
    assert other.external_id != ids[0]


async def test_large_images_are_linked_not_attached(smtp: Smtp) -> None:
    async def unreadable() -> bytes:
        raise AssertionError("the bytes must not be read when they are not attached")

    big = dataclasses.replace(asset(), size=ATTACH_LIMIT + 1, read=unreadable)
    result = await connector(smtp.port).deliver(delivery(big))
    message = smtp.recorder.messages[0][2]
    assert list(message.iter_attachments()) == []
    body = message.get_body(("plain",))
    assert body is not None
    assert "not attached" in body.get_content() and big.url in body.get_content()
    assert result.detail["attached"] is False


async def test_target_overrides_recipients_and_subject(smtp: Smtp) -> None:
    item = delivery(asset(), target={"to": ["boss@example.com"], "subject": "Review: lamp"})
    await connector(smtp.port).deliver(item)
    _, recipients, message = smtp.recorder.messages[0]
    assert recipients == ["boss@example.com"]
    assert message["To"] == "boss@example.com"
    assert message["Subject"] == "Review: lamp"


async def test_recipients_outside_the_allowed_domains_are_refused(smtp: Smtp) -> None:
    mailer = connector(smtp.port, allowed_domains=["example.com"])
    with pytest.raises(PermanentError, match="allowed domains"):
        await mailer.deliver(delivery(asset(), target={"to": ["someone@elsewhere.org"]}))
    assert smtp.recorder.messages == []


@pytest.mark.parametrize(
    "target",
    [
        {"to": ["not-an-address"]},
        {"to": ["a@b.com\r\nBcc: victim@example.org"]},
        {"to": ["Name <a@example.com>"]},
        {"subject": "hi\r\nBcc: victim@example.org"},
        {"cc": ["x@example.com"]},
    ],
)
async def test_bad_targets_are_permanent(smtp: Smtp, target: dict[str, Any]) -> None:
    with pytest.raises(PermanentError, match="invalid target"):
        await connector(smtp.port).deliver(delivery(asset(), target=target))
    assert smtp.recorder.messages == []


async def test_550_is_permanent(smtp: Smtp) -> None:
    smtp.recorder.data_answer = "550 5.7.1 Message rejected as spam"
    with pytest.raises(PermanentError, match="550") as caught:
        await connector(smtp.port).deliver(delivery(asset()))
    assert caught.value.status == 550


async def test_451_is_retryable(smtp: Smtp) -> None:
    smtp.recorder.data_answer = "451 4.3.0 Try again later"
    with pytest.raises(RetryableError, match="451") as caught:
        await connector(smtp.port).deliver(delivery(asset()))
    assert caught.value.status == 451


async def test_all_recipients_refused(smtp: Smtp) -> None:
    smtp.recorder.refuse_rcpt = {"pm@example.com": "550 5.1.1 No such user", "design@example.com": "550 5.1.1 Nope"}
    with pytest.raises(PermanentError, match="every recipient was refused"):
        await connector(smtp.port).deliver(delivery(asset()))
    smtp.recorder.refuse_rcpt = {"pm@example.com": "450 4.2.1 Mailbox busy", "design@example.com": "550 5.1.1 Nope"}
    with pytest.raises(RetryableError, match="every recipient was refused"):
        await connector(smtp.port).deliver(delivery(asset()))


async def test_some_recipients_refused_is_still_delivered(smtp: Smtp) -> None:
    smtp.recorder.refuse_rcpt = {"design@example.com": "550 5.1.1 No such user"}
    result = await connector(smtp.port).deliver(delivery(asset()))
    assert smtp.recorder.messages[0][1] == ["pm@example.com"]
    assert result.detail["recipients"] == ["pm@example.com"]
    assert result.detail["refused"]["design@example.com"].startswith("550")


async def test_server_down_is_retryable() -> None:
    with pytest.raises(RetryableError, match="could not be reached"):
        await connector(free_port()).deliver(delivery(asset()))
    with pytest.raises(RetryableError):
        await connector(free_port()).test_connection()


async def test_connection_ok(smtp: Smtp) -> None:
    answer = await connector(smtp.port).test_connection()
    assert "EHLO accepted" in answer and "plain text" in answer


async def test_login() -> None:
    with smtp_server(auth_require_tls=False, authenticator=authenticate) as server:
        ok = connector(server.port, username="mailer", password="right-password")
        assert "logged in as mailer" in await ok.test_connection()
        await ok.deliver(delivery(asset()))
        assert len(server.recorder.messages) == 1
        with pytest.raises(PermanentError, match="535"):
            await connector(server.port, username="mailer", password="wrong").test_connection()
        with pytest.raises(PermanentError, match="535"):
            await connector(server.port, username="mailer", password="wrong").deliver(delivery(asset()))
        assert len(server.recorder.messages) == 1


async def test_starttls_required_but_not_offered_is_permanent(smtp: Smtp) -> None:
    with pytest.raises(PermanentError, match="STARTTLS"):
        await connector(smtp.port, security="starttls").deliver(delivery(asset()))
    assert smtp.recorder.messages == []


def _self_signed(directory: Path) -> ssl.SSLContext:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return context


async def test_untrusted_certificate_is_permanent(tmp_path: Path) -> None:
    # STARTTLS offered with a self-signed certificate: the connector verifies it and refuses; nothing is sent.
    with smtp_server(tls_context=_self_signed(tmp_path), require_starttls=True) as server:
        with pytest.raises(PermanentError, match="certificate"):
            await connector(server.port, security="starttls").deliver(delivery(asset()))
        assert server.recorder.messages == []


async def test_refused_hosts_are_not_connected_to() -> None:
    with pytest.raises(PermanentError, match="outbound policy"):
        await connector(25, host="169.254.169.254").deliver(delivery(asset()))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    strict = OutboundClient(OutboundPolicy(), timeout=2, max_bytes=1024)
    try:
        for host in ("127.0.0.1", "localhost", "::ffff:127.0.0.1"):
            with pytest.raises(PermanentError, match="outbound policy"):
                await connector(listener.getsockname()[1], http=strict, host=host).test_connection()
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()
        await strict.aclose()


@pytest.mark.parametrize(
    "config",
    [
        {"to": []},
        {"to": ["a@example.com", "not an address"]},
        {"from_address": "x"},
        {"to": ["a@localhost"]},
        {"to": ["a@[127.0.0.1]"]},
        {"subject_template": "{record_id.__class__}"},
        {"subject_template": "{secret}"},
        {"password": "x"},
        {"allowed_domains": ["corp.example"]},  # the configured "to" is outside
        {"host": "127.1"},
        {"security": "ssl"},
    ],
)
def test_bad_configs_are_refused(config: dict[str, Any]) -> None:
    values = {"host": "smtp.example.com", "from_address": "images@example.com", "to": ["a@example.com"], **config}
    with pytest.raises(ValidationError):
        EmailConfig.model_validate(values)


def test_password_is_secret() -> None:
    config = EmailConfig(
        host="smtp.example.com", from_address="a@example.com", to=["b@example.com"], username="u", password="pw-123"
    )
    assert "pw-123" not in repr(config) and "pw-123" not in config.model_dump_json()
