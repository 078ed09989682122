"""The adapter contract every backend protocol implements, and the errors it may raise."""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

ProgressCallback = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class GenerationRequest:
    """What a backend is asked to make. ``seed`` is resolved (never -1); image ``i`` uses ``seed + i``."""

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


@dataclass(frozen=True)
class GeneratedImage:
    data: bytes
    format: str  # png | jpeg | webp: what ``data`` actually is
    width: int
    height: int
    seed: int


class BackendError(Exception):
    """A generation that did not produce images. ``retryable`` errors may succeed on another try or backend."""

    code = "backend_error"
    retryable = False

    def __init__(self, message: str, *, code: str | None = None, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable


class Adapter(abc.ABC):
    """One backend server (or the built-in preview renderer) speaking one protocol.

    Adapters are long-lived resources owned by the application lifespan. ``generate`` must be
    cancellable: cancelling the awaiting task must stop the work on the backend (interrupt).
    """

    kind: str

    def __init__(self, name: str) -> None:
        self.name = name

    @abc.abstractmethod
    def serves(self, model: str | None) -> bool:
        """Whether this backend can run ``model`` (None: the backend's default model)."""

    @abc.abstractmethod
    async def generate(self, request: GenerationRequest, progress: ProgressCallback) -> list[GeneratedImage]:
        """Make ``request.n`` images, calling ``progress(0..1)`` as the work advances."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
