"""The adapter contract every backend protocol implements, and the errors it may raise.

An adapter speaks one protocol (``../shared/reference/backends.md``) to one server. It knows nothing of jobs,
queues or slots: the scheduler decides *where* a generation runs and holds the backend's slot while the
adapter's ``generate`` runs; the adapter only turns a ``GenerationRequest`` into the protocol's calls.

Error rule: a ``BackendError`` is ``retryable`` when the *backend* is at fault (unreachable, 5xx, refused our
credentials, interrupted by someone else, timed out): another backend may well succeed, and the failure counts
against the backend's circuit breaker. It is not retryable when the *request* is at fault (the server rejected
the parameters): every backend would refuse it, and the backend is healthy.
"""

from __future__ import annotations

import abc
import base64
import binascii
import io
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import httpx
from PIL import Image, UnidentifiedImageError

ProgressCallback = Callable[[float], Awaitable[None]]

# Job error codes an adapter may use (``BackendError.code``).
BACKEND_UNAVAILABLE = "backend_unavailable"  # connection refused/reset, 502/503/504: retryable
BACKEND_ERROR = "backend_error"  # the server failed (other 5xx, malformed answer): retryable
BACKEND_AUTH = "backend_auth_failed"  # the server refused the configured credentials: retryable elsewhere
BACKEND_REJECTED = "backend_rejected"  # the server refused the request's parameters (4xx): not retryable
OUT_OF_MEMORY = "out_of_memory"  # CUDA OOM: not retryable as is (the job may opt into a smaller retry)
TIMEOUT = "timeout"  # no answer in time: retryable
INTERRUPTED = "interrupted"  # stopped on the server by someone else: retryable
NO_BACKEND = "no_backend"  # no enabled backend serves the model (the scheduler, not an adapter)


@dataclass(frozen=True)
class GenerationRequest:
    """What a backend is asked to make. ``seed`` is resolved (never -1); image ``i`` uses ``seed + i``.

    ``init_image`` (and optionally ``mask``, white = repaint) makes it an image-to-image request.
    ``model`` is the gateway's model name (a checkpoint's ``model_name``), None for the backend's default.
    """

    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    n: int
    model: str | None
    output_format: str
    sampler: str | None = None
    scheduler: str | None = None
    init_image: bytes | None = None
    mask: bytes | None = None
    denoising_strength: float | None = None


@dataclass(frozen=True)
class GeneratedImage:
    data: bytes
    format: str  # png | jpeg | webp: what ``data`` actually is
    width: int
    height: int
    seed: int


@dataclass(frozen=True)
class BackendAuth:
    """How the gateway authenticates to a backend."""

    kind: Literal["none", "basic", "bearer"] = "none"
    username: str | None = None
    password: str | None = None
    token: str | None = None

    def httpx_auth(self) -> httpx.Auth | None:
        if self.kind == "basic":
            return httpx.BasicAuth(self.username or "", self.password or "")
        return None

    def headers(self) -> dict[str, str]:
        if self.kind == "bearer":
            return {"Authorization": f"Bearer {self.token}"}
        return {}


@dataclass(frozen=True)
class BackendSpec:
    """One configured backend (a row of the ``backends`` table, or the built-in preview)."""

    name: str
    kind: str
    url: str
    auth: BackendAuth = field(default_factory=BackendAuth)
    slots: int = 1
    models: tuple[str, ...] = ()  # configured; empty: whatever the server reports (or any, if it cannot tell)
    options: Mapping[str, Any] = field(default_factory=dict)  # kind-specific (ComfyUI workflows, Gradio api_name, ...)
    timeout_seconds: float = 600.0  # longest single generation call


@dataclass(frozen=True)
class ProbeResult:
    """What a health probe learned. ``models`` is None when the protocol cannot list models."""

    models: list[str] | None = None
    loaded_model: str | None = None


class BackendError(Exception):
    """A generation that did not produce images. ``retryable`` errors may succeed on another try or backend."""

    code = BACKEND_ERROR
    retryable = False

    def __init__(self, message: str, *, code: str | None = None, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable
        self.notes: list[str] = []  # what the scheduler tried before giving up (recorded on the job)


def transport_error(name: str, exc: httpx.HTTPError) -> BackendError:
    """The ``BackendError`` for a failure below HTTP (refused, reset, timed out)."""
    if isinstance(exc, httpx.TimeoutException):
        return BackendError(f"Backend {name} did not answer in time.", code=TIMEOUT, retryable=True)
    return BackendError(
        f"Backend {name} is unreachable ({type(exc).__name__}).", code=BACKEND_UNAVAILABLE, retryable=True
    )


def status_error(name: str, status: int, detail: str) -> BackendError:
    """The ``BackendError`` for an HTTP error status, following the rule in this module's docstring."""
    detail = detail.strip()[:500]
    if "out of memory" in detail.lower():
        return BackendError(f"Backend {name} ran out of GPU memory: {detail}", code=OUT_OF_MEMORY, retryable=False)
    if status in (401, 403):
        return BackendError(f"Backend {name} refused the credentials ({status}).", code=BACKEND_AUTH, retryable=True)
    if status in (502, 503, 504):
        return BackendError(f"Backend {name} is unavailable ({status}).", code=BACKEND_UNAVAILABLE, retryable=True)
    if 400 <= status < 500 and status != 429:
        return BackendError(f"Backend {name} rejected the request ({status}): {detail}", code=BACKEND_REJECTED)
    return BackendError(f"Backend {name} failed ({status}): {detail}", code=BACKEND_ERROR, retryable=True)


def decode_base64_image(value: str) -> bytes:
    """Bytes of a base64 image, with or without a ``data:image/...;base64,`` prefix."""
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BackendError("The backend returned an image that is not valid base64.", retryable=True) from exc


def image_of(data: bytes, seed: int) -> GeneratedImage:
    """Describe image bytes a backend returned (format and size read from the bytes, never trusted)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = (image.format or "").lower()
            width, height = image.size
    except (UnidentifiedImageError, OSError) as exc:
        raise BackendError("The backend returned data that is not an image.", retryable=True) from exc
    fmt = {"jpg": "jpeg"}.get(fmt, fmt)
    if fmt not in ("png", "jpeg", "webp"):
        # Other formats (bmp, gif, ...) are converted by the store; record them as what Pillow can re-encode.
        fmt = "png" if fmt == "" else fmt
    return GeneratedImage(data=data, format=fmt, width=width, height=height, seed=seed)


def number_option(options: Mapping[str, Any], key: str, default: float, *, minimum: float = 0.0) -> float:
    """A numeric option, checked when the adapter is built (so that a bad value is refused when the backend
    is added, not found by a job): ValueError/TypeError name the option."""
    value = float(options.get(key, default))
    if not value > minimum or value == float("inf"):  # also refuses NaN
        raise ValueError(f"{key} must be a number above {minimum:g}")
    return value


def make_client(spec: BackendSpec) -> httpx.AsyncClient:
    """One client per backend: base URL, auth, explicit timeouts (a slow GPU call is normal, a slow connect not)."""
    return httpx.AsyncClient(
        base_url=spec.url.rstrip("/"),
        auth=spec.auth.httpx_auth(),
        headers=spec.auth.headers(),
        timeout=httpx.Timeout(spec.timeout_seconds, connect=10.0),
        follow_redirects=False,
        trust_env=False,
    )


class Adapter(abc.ABC):
    """One backend server (or the built-in preview renderer) speaking one protocol.

    Adapters are long-lived resources owned by the process's backend pool, one per configured backend, each
    with its own ``httpx.AsyncClient`` (``self.client``: base URL, auth and timeouts already set).

    ``generate`` must be cancellable: cancelling the awaiting task must stop the work on the backend (the
    protocol's interrupt) before the cancellation propagates. Errors are ``BackendError`` (see module doc).
    """

    kind: ClassVar[str]
    capability: ClassVar[Literal["generate", "describe"]] = "generate"
    default_slots: ClassVar[int] = 1
    # The most slots that make sense: None for no limit. A1111's interrupt is server-wide and its queue
    # cannot be told apart, so two of our generations there could not be cancelled one by one.
    max_slots: ClassVar[int | None] = None
    # Whether ``probe`` can list models; when False and no models are configured the backend serves any model.
    lists_models: ClassVar[bool] = False
    # What a server that cannot list its models serves when none are configured (empty: any model).
    default_models: ClassVar[tuple[str, ...]] = ()
    # In-process work (the preview renderer): its slots are this process's, not shared across the cluster.
    local: ClassVar[bool] = False

    def __init__(self, spec: BackendSpec, client: httpx.AsyncClient | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self._client = client

    @property
    def client(self) -> httpx.AsyncClient:
        """The backend's HTTP client, made on first use (an adapter refused for its options never opens one)."""
        if self._client is None:
            self._client = make_client(self.spec)
        return self._client

    def adjust(self, request: GenerationRequest) -> tuple[GenerationRequest, list[str]]:
        """Bring a request within what this backend accepts (e.g. Z-Image-Turbo: 8 steps, guidance 0, sizes in
        multiples of 64). Returns the request to send and one human-readable note per change (recorded on the
        job); raise ``BackendError(code=BACKEND_REJECTED)`` for a request it cannot run at all."""
        return request, []

    @abc.abstractmethod
    async def probe(self) -> ProbeResult:
        """Check the server answers (raise ``BackendError`` if not) and report its models and loaded model."""

    async def generate(self, request: GenerationRequest, progress: ProgressCallback) -> list[GeneratedImage]:
        """Make ``request.n`` images, calling ``progress(0..1)`` as the work advances."""
        raise BackendError(f"Backend {self.name} ({self.kind}) does not generate images.", code=BACKEND_REJECTED)

    async def describe(self, image: bytes, content_type: str, prompt: str) -> str:
        """Answer ``prompt`` about ``image`` (vision backends)."""
        raise BackendError(f"Backend {self.name} ({self.kind}) does not describe images.", code=BACKEND_REJECTED)

    async def aclose(self) -> None:
        """Release connections."""
        if self._client is not None:
            await self._client.aclose()
