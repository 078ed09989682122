"""What every GPU emulator shares: options, a simulated GPU, images, HTTP Basic checks, failure injection.

The simulated GPU takes time proportional to steps x pixels x images: ``step_ms`` milliseconds per sampling
step of one 1024x1024 image (one megapixel = 2**20 pixels). Switching the loaded checkpoint costs ``load_ms``.
With ``slots=1`` it runs one generation at a time, like A1111's global lock and ComfyUI's sequential executor:
further callers wait. Progress is global (what the one running generation has done), as in A1111.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import random
import secrets
import time
from dataclasses import dataclass, field

from gateway.backends.base import GenerationRequest
from gateway.backends.preview import render

MEGAPIXEL = 1024 * 1024


@dataclass
class EmulatorOptions:
    host: str = "127.0.0.1"
    port: int = 7860
    step_ms: float = 20.0  # per sampling step of one megapixel image
    fail_rate: float = 0.0  # probability that a generation fails the way the real server fails (e.g. CUDA OOM)
    models: list[str] = field(default_factory=list)  # empty: the emulator's own default list
    auth: str | None = None  # "user:pass[,user2:pass2]" (A1111's --api-auth format); None: no auth
    load_ms: float = 500.0  # cost of switching the loaded checkpoint
    slots: int = 1  # generations at once (1 for A1111 and ComfyUI)
    random_seed: int | None = None  # makes failure injection reproducible

    def credentials(self) -> dict[str, str]:
        pairs = [p.split(":", 1) for p in (self.auth or "").split(",") if ":" in p]
        return {user: password for user, password in pairs}


class Interrupted(Exception):
    """The running generation was interrupted (by an interrupt call)."""


@dataclass
class RunState:
    """The generation the GPU is working on (A1111's ``state``)."""

    job: str
    job_timestamp: str
    steps: int
    job_count: int
    started: float
    duration: float
    job_no: int = 0
    sampling_step: int = 0
    interrupted: bool = False

    @property
    def progress(self) -> float:
        if self.duration <= 0:
            return 1.0
        return min(1.0, (time.monotonic() - self.started) / self.duration)

    @property
    def eta_relative(self) -> float:
        return max(0.0, self.duration - (time.monotonic() - self.started))


class SimulatedGPU:
    """A GPU with ``slots`` generation units; callers beyond them wait (no 429, no order guarantee)."""

    def __init__(self, options: EmulatorOptions, default_model: str | None = None) -> None:
        self.options = options
        self.loaded_model = default_model
        self.running: list[RunState] = []
        self.completed = 0
        self._slots = asyncio.Semaphore(max(1, options.slots))
        self._rng = random.Random(options.random_seed)  # noqa: S311 - failure injection, not crypto

    @property
    def current(self) -> RunState | None:
        return self.running[0] if self.running else None

    def duration(self, *, steps: int, width: int, height: int, n: int = 1) -> float:
        """Seconds a generation of ``n`` images takes once it has the GPU (without a checkpoint switch)."""
        return self.options.step_ms / 1000 * steps * (width * height / MEGAPIXEL) * n

    def should_fail(self) -> bool:
        return self.options.fail_rate > 0 and self._rng.random() < self.options.fail_rate

    async def run(self, *, steps: int, width: int, height: int, n: int = 1, model: str | None = None) -> RunState:
        """Wait for a slot, switch checkpoint if needed, then spend the generation's time.

        Returns the finished state; raises ``Interrupted`` when ``interrupt()`` stopped it (the caller decides
        what its protocol answers then).
        """
        async with self._slots:
            if model is not None and model != self.loaded_model:
                await asyncio.sleep(self.options.load_ms / 1000)
                self.loaded_model = model
            state = RunState(
                job=f"task({secrets.token_hex(8)})",
                job_timestamp=time.strftime("%Y%m%d%H%M%S"),
                steps=steps,
                job_count=n,
                started=time.monotonic(),
                duration=self.duration(steps=steps, width=width, height=height, n=n),
            )
            self.running.append(state)
            try:
                while True:
                    elapsed = time.monotonic() - state.started
                    done_steps = min(steps * n, int(state.progress * steps * n))
                    state.job_no = min(n - 1, done_steps // max(1, steps))
                    state.sampling_step = done_steps - state.job_no * steps
                    if state.interrupted:
                        raise Interrupted
                    if elapsed >= state.duration:
                        break
                    await asyncio.sleep(min(0.05, state.duration - elapsed))
            finally:
                self.running.remove(state)
            self.completed += 1
            return state

    def interrupt(self) -> bool:
        """Stop every running generation; False when the GPU was idle."""
        for state in self.running:
            state.interrupted = True
        return bool(self.running)


def render_image(
    *, prompt: str, negative_prompt: str = "", width: int, height: int, seed: int, output_format: str = "png"
) -> bytes:
    """A real image of the requested size (drawn by the preview renderer), deterministic in its inputs."""
    request = GenerationRequest(
        prompt=prompt or "(empty prompt)",
        negative_prompt=negative_prompt,
        width=width,
        height=height,
        steps=1,
        guidance_scale=0.0,
        seed=seed,
        n=1,
        model=None,
        output_format=output_format,
    )
    return render(request, 0).data


async def render_image_async(**kwargs: object) -> bytes:
    """``render_image`` off the event loop (Pillow releases the GIL while drawing and encoding)."""
    return await asyncio.to_thread(lambda: render_image(**kwargs))  # type: ignore[arg-type]


def resolve_seed(seed: int) -> int:
    """-1 (or any negative seed) means random, as on every diffusion server."""
    return seed if seed >= 0 else random.randrange(0, 2**32 - 1)  # noqa: S311


def basic_auth_ok(authorization: str | None, options: EmulatorOptions) -> bool:
    """Whether an ``Authorization: Basic ...`` header matches one of ``options.auth``'s pairs (or auth is off)."""
    credentials = options.credentials()
    if not credentials:
        return True
    if not authorization or not authorization.lower().startswith("basic "):
        return False
    try:
        user, _, password = base64.b64decode(authorization[6:].strip()).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return False
    expected = credentials.get(user)
    return expected is not None and secrets.compare_digest(expected, password)


def bearer_ok(authorization: str | None, options: EmulatorOptions) -> bool:
    """For bearer-token servers (OpenAI-compatible): ``options.auth`` ``user:token`` pairs, the token is the key."""
    credentials = options.credentials()
    if not credentials:
        return True
    if not authorization or not authorization.lower().startswith("bearer "):
        return False
    token = authorization[7:].strip()
    return any(secrets.compare_digest(token, value) for value in credentials.values())
