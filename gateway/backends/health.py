"""Circuit breaker per backend: stop sending jobs to a backend that keeps failing, probe it back in."""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    """closed -> (``threshold`` consecutive failures) -> open -> (``cooldown`` s) -> half-open.

    Jobs go only to closed circuits. A half-open circuit lets the health prober try one probe: success closes
    it, failure opens it for another cooldown. Failures are the backend's fault only (retryable errors and
    failed probes), never a request the backend rightly rejected.
    """

    def __init__(self, threshold: int, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.last_error: str | None = None

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self._clock() - self.opened_at >= self.cooldown else "open"

    def allows_jobs(self) -> bool:
        return self.opened_at is None

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.last_error = None

    def failure(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        if self.opened_at is not None or self.failures >= self.threshold:
            self.opened_at = self._clock()  # (re)open: a failed half-open probe starts a new cooldown
