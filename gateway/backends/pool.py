"""The set of backends a worker can place jobs on."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.backends.base import Adapter


class BackendPool:
    """Chooses an adapter for a job. The foundation pool takes the first backend that serves the model."""

    def __init__(self, adapters: Sequence[Adapter]) -> None:
        self.adapters = list(adapters)

    def select(self, model: str | None) -> Adapter | None:
        return next((a for a in self.adapters if a.serves(model)), None)

    async def aclose(self) -> None:
        for adapter in self.adapters:
            await adapter.aclose()
