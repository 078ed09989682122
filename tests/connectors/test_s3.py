"""The S3 connector against moto in server mode on loopback, with moto's IAM authentication switched on (so wrong
credentials are refused for real), plus a small HTTP server that answers like a throttling S3."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import boto3
import httpx
import pytest
from botocore.config import Config as BotoConfig
from moto.server import ThreadedMotoServer
from pydantic import ValidationError

from connectors.base import PermanentError, RetryableError
from connectors.s3 import METADATA_BUDGET, S3Config, S3Connector, object_metadata
from gateway.common.outbound import OutboundClient
from policies.ssrf import OutboundPolicy
from tests.connectors.support import asset, delivery, outbound, png
from tests.processes import free_port

BUCKET = "imagegate-assets"


@dataclasses.dataclass
class Moto:
    endpoint: str
    key_id: str
    secret: str

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.key_id,
            aws_secret_access_key=self.secret,
            config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        # An IAM user allowed s3:*, made while moto still accepts anything; then authentication is switched on.
        iam = boto3.client(
            "iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
        )
        iam.create_user(UserName="imagegate")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="imagegate", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="imagegate")["AccessKey"]
        httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"0").raise_for_status()
        found = Moto(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
        found.client().create_bucket(Bucket=BUCKET)
        yield found
    finally:
        httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"inf")
        httpx.post(f"{endpoint}/moto-api/reset")
        server.stop()


def connector(moto: Moto, http: OutboundClient | None = None, **config: Any) -> S3Connector:
    values: dict[str, Any] = {
        "endpoint_url": moto.endpoint,
        "bucket": BUCKET,
        "access_key_id": moto.key_id,
        "secret_access_key": moto.secret,
    }
    values.update(config)
    return S3Connector(S3Config.model_validate(values), http=http or outbound())


def decoded(metadata: dict[str, str]) -> dict[str, str]:
    return {k: unquote(v) for k, v in metadata.items()}


async def test_object_stored_under_the_deterministic_key(moto: Moto) -> None:
    image = asset()
    item = delivery(image)
    s3 = connector(moto, prefix="imagegate")
    sent: list[dict[str, str]] = []
    s3._client().meta.events.register("before-send.s3.PutObject", lambda request, **_: sent.append(request.headers))

    result = await s3.deliver(item)

    key = s3.key_for(item, image)
    assert key.startswith("imagegate/assets/crm/") and key.endswith(f"/{image.id}.png")
    assert result.external_id == key
    assert result.url == f"s3://{BUCKET}/{key}"
    client = moto.client()
    stored = client.get_object(Bucket=BUCKET, Key=key)
    assert stored["Body"].read() == png()
    assert stored["ContentType"] == "image/png"
    assert stored["ETag"].strip('"') == hashlib.md5(png()).hexdigest()
    meta = decoded(stored["Metadata"])
    assert meta["asset-id"] == image.id
    assert meta["sha256"] == image.sha256
    assert meta["job-id"] == image.job_id
    assert meta["record-id"] == "P-1"
    assert meta["role"] == "main"
    assert meta["tags"] == "product,main"
    assert meta["prompt"] == "a lamp"
    assert "truncated" not in meta
    tags = {t["Key"]: t["Value"] for t in client.get_object_tagging(Bucket=BUCKET, Key=key)["TagSet"]}
    assert tags == {
        "imagegate:system": "crm",
        "imagegate:record-id": "P-1",
        "imagegate:role": "main",
        "product": "",
        "main": "",
    }
    # moto does not check Content-MD5 (it stores a body whose MD5 differs), so check that it was sent, and right.
    assert len(sent) == 1 and sent[0]["Content-MD5"] == base64.b64encode(hashlib.md5(png()).digest())


async def test_delivering_twice_leaves_one_object(moto: Moto) -> None:
    image = asset(png(colour=(1, 2, 3)))
    first = await connector(moto).deliver(delivery(image))
    client = moto.client()
    etag = client.head_object(Bucket=BUCKET, Key=first.external_id)["ETag"]
    second = await connector(moto).deliver(delivery(image, attempt=2))
    assert second.external_id == first.external_id
    prefix = first.external_id.rsplit("/", 1)[0] + "/"  # type: ignore[union-attr]
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]
    assert [o["Key"] for o in listed if image.id in o["Key"]] == [first.external_id]
    assert client.head_object(Bucket=BUCKET, Key=first.external_id)["ETag"] == etag


async def test_non_ascii_and_oversized_metadata_stay_within_2_kb(moto: Moto) -> None:
    tags = [f"标签-{n}" for n in range(30)]
    image = dataclasses.replace(asset(png(colour=(9, 9, 9))), tags=tags)
    prompt = "一盏台灯, 白色背景 " * 200
    item = delivery(image, metadata={"prompt": prompt, "record_id": "P-1", "role": "main"})
    result = await connector(moto).deliver(item)
    stored = moto.client().head_object(Bucket=BUCKET, Key=result.external_id)["Metadata"]
    assert all(v.isascii() for v in stored.values())
    size = sum(len("x-amz-meta-") + len(k) + len(v) for k, v in stored.items())
    assert size <= METADATA_BUDGET
    meta = decoded(stored)
    assert meta["truncated"] == "prompt"
    assert prompt.startswith(meta["prompt"]) and len(meta["prompt"]) > 10
    assert meta["tags"] == ",".join(tags)  # the tags fit, whole
    stored_tags = moto.client().get_object_tagging(Bucket=BUCKET, Key=result.external_id)["TagSet"]
    assert len(stored_tags) == 10  # S3's limit
    assert {"Key": "标签-0", "Value": ""} in stored_tags


def test_metadata_truncates_tags_whole() -> None:
    image = dataclasses.replace(asset(), tags=[f"tag-{n:03d}-" + "x" * 40 for n in range(100)])
    meta = object_metadata(delivery(image), image)
    assert sum(len("x-amz-meta-") + len(k) + len(v) for k, v in meta.items()) <= METADATA_BUDGET
    kept = unquote(meta["tags"]).split(",")
    assert 10 < len(kept) < 100 and kept == image.tags[: len(kept)]
    # The tags come before the prompt: they took the room, so the prompt is left out, and that is said.
    assert unquote(meta["truncated"]) == "tags,prompt"
    assert "prompt" not in meta
    assert unquote(meta["asset-id"]) == image.id


async def test_missing_bucket_is_permanent(moto: Moto) -> None:
    with pytest.raises(PermanentError, match="NoSuchBucket"):
        await connector(moto, bucket="no-such-bucket").deliver(delivery(asset()))
    with pytest.raises(PermanentError, match="bucket does not exist"):
        await connector(moto, bucket="no-such-bucket").test_connection()


async def test_wrong_secret_is_permanent(moto: Moto) -> None:
    with pytest.raises(PermanentError, match="SignatureDoesNotMatch") as caught:
        await connector(moto, secret_access_key="not-the-secret").deliver(delivery(asset()))
    assert caught.value.status == 403
    with pytest.raises(PermanentError, match="403"):
        await connector(moto, secret_access_key="not-the-secret").test_connection()


async def test_unknown_access_key_is_permanent(moto: Moto) -> None:
    with pytest.raises(PermanentError, match="InvalidAccessKeyId"):
        await connector(moto, access_key_id="AKIAUNKNOWNKEY000000").deliver(delivery(asset()))


async def test_connection_ok(moto: Moto) -> None:
    assert BUCKET in await connector(moto).test_connection()


async def test_metadata_endpoint_is_refused_before_any_request() -> None:
    s3 = S3Connector(
        S3Config(endpoint_url="http://169.254.169.254", bucket=BUCKET, access_key_id="a", secret_access_key="b"),
        http=outbound(),
    )
    with pytest.raises(PermanentError, match="outbound policy"):
        await s3.deliver(delivery(asset()))
    with pytest.raises(PermanentError, match="outbound policy"):
        await s3.test_connection()
    assert s3._boto is None  # boto3 was never even set up


async def test_loopback_endpoint_is_refused_without_an_allowlist() -> None:
    # A real listener on loopback: with the default policy (nothing allowlisted) it must see no connection at all.
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    strict = OutboundClient(OutboundPolicy(), timeout=2, max_bytes=1024)
    try:
        for endpoint in (f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://[::ffff:127.0.0.1]:{port}"):
            s3 = S3Connector(
                S3Config(endpoint_url=endpoint, bucket=BUCKET, access_key_id="a", secret_access_key="b"), http=strict
            )
            with pytest.raises(PermanentError, match="outbound policy"):
                await s3.deliver(delivery(asset()))
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()
        await strict.aclose()


async def test_server_down_is_retryable() -> None:
    s3 = S3Connector(
        S3Config(
            endpoint_url=f"http://127.0.0.1:{free_port()}", bucket=BUCKET, access_key_id="a", secret_access_key="b"
        ),
        http=outbound(timeout=2),
    )
    with pytest.raises(RetryableError, match="could not be reached"):
        await s3.deliver(delivery(asset()))


class _SlowDown(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # answers boto's "Expect: 100-continue" at once instead of letting it wait 1 s
    requests: list[str] = []

    def _answer(self) -> None:
        type(self).requests.append(f"{self.command} {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
        self.send_response(503)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_PUT = do_HEAD = do_GET = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


async def test_throttling_is_retryable_and_boto_does_not_retry_by_itself() -> None:
    _SlowDown.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowDown)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        s3 = S3Connector(
            S3Config(
                endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
                bucket=BUCKET,
                access_key_id="a",
                secret_access_key="b",
            ),
            http=outbound(),
        )
        with pytest.raises(RetryableError, match="SlowDown") as caught:
            await s3.deliver(delivery(asset()))
        assert caught.value.status == 503
        assert len(_SlowDown.requests) == 1  # one attempt: the relay owns retries
        assert _SlowDown.requests[0].startswith(f"PUT /{BUCKET}/assets/crm/")
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "config",
    [
        {"key_template": "assets/{system}/{filename}"},  # not unique per image
        {"key_template": "../{asset_id}"},
        {"key_template": "{asset_id.__class__}"},
        {"endpoint_url": "http://user:pw@minio:9000"},
        {"endpoint_url": "ftp://minio"},
        {"endpoint_url": "http://minio:9000/path"},
        {"bucket": "Not_A_Bucket"},
        {"prefix": "a/../b"},
        {"addressing_style": "virtual", "endpoint_url": "http://10.0.0.1:9000"},
        {"unknown": 1},
    ],
)
def test_bad_configs_are_refused(config: dict[str, Any]) -> None:
    values = {"bucket": BUCKET, "access_key_id": "a", "secret_access_key": "b", **config}
    with pytest.raises(ValidationError):
        S3Config.model_validate(values)


def test_secret_is_not_shown() -> None:
    config = S3Config(bucket=BUCKET, access_key_id="a", secret_access_key="very-secret")
    assert "very-secret" not in repr(config) and "very-secret" not in config.model_dump_json()
    assert "secret_access_key" in S3Config.model_json_schema()["properties"]
