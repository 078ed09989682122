"""What the scheduler knows of each backend's speed: seconds per unit of work, learned from finished jobs.

A unit is one megapixel (2**20 pixels) x one sampling step x one image, so a 1024x1024, 30-step, 2-image
job is 60 units. Speeds are learned per backend and model (an SDXL checkpoint is slower than SD 1.5 on the
same GPU) as an exponential moving average, and persisted so that every worker and restart shares them.
"""

from __future__ import annotations

import statistics

DEFAULT_SECONDS_PER_UNIT = 0.1  # a mid-range GPU on SDXL: ~10 steps/s at one megapixel
_ALPHA = 0.3  # weight of the newest sample


def work_units(width: int, height: int, steps: int, n: int) -> float:
    return width * height / 2**20 * max(1, steps) * max(1, n)


class SpeedBook:
    """Learned seconds per unit, by (backend, model); model "" is the backend's default model."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, str], tuple[float, int]] = {}

    def load(self, rows: list[tuple[str, str, float, int]]) -> None:
        """Take values learned elsewhere (other workers), keeping local ones with more samples."""
        for backend, model, seconds, samples in rows:
            current = self._values.get((backend, model))
            if current is None or samples >= current[1]:
                self._values[(backend, model)] = (seconds, samples)

    def get(self, backend: str, model: str | None) -> tuple[float, int] | None:
        return self._values.get((backend, model or ""))

    def seconds_per_unit(self, backend: str, model: str | None) -> float:
        """The learned speed; before the first sample, a prior from what is known (same backend on other
        models, then other backends on this model, then a default) so that a new backend gets work."""
        known = self.get(backend, model)
        if known is not None:
            return known[0]
        same_backend = [v for (b, _), (v, _) in self._values.items() if b == backend]
        if same_backend:
            return statistics.median(same_backend)
        same_model = [v for (_, m), (v, _) in self._values.items() if m == (model or "")]
        if same_model:
            return statistics.median(same_model)
        if self._values:
            return statistics.median(v for v, _ in self._values.values())
        return DEFAULT_SECONDS_PER_UNIT

    def record(self, backend: str, model: str | None, seconds: float, units: float) -> tuple[float, int]:
        """Fold in one finished generation; returns the new (seconds per unit, samples)."""
        sample = seconds / max(units, 1e-6)
        known = self.get(backend, model)
        value = (sample, 1) if known is None else (known[0] + _ALPHA * (sample - known[0]), known[1] + 1)
        self._values[(backend, model or "")] = value
        return value
