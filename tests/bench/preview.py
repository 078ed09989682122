"""Benchmark of the preview renderer: ``python -m tests.bench.preview``.

Prints the time to render and encode one image per size and format, and the ratio against a baseline
measured in the same run (a plain Pillow RGB image of the same size, encoded the same way).
Target: well under one second for 1024x1024.
"""

from __future__ import annotations

import io
import statistics
import time
from dataclasses import replace

from PIL import Image

from gateway.backends.base import GenerationRequest
from gateway.backends.preview import _SAVE_OPTIONS, render

REQUEST = GenerationRequest(
    "a red bicycle leaning on a brick wall at sunset", "", 1024, 1024, 30, 7.0, 1, 1, None, "png"
)


def _timed(fn, repeat: int = 5) -> float:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    print(f"{'size':>10} {'format':>6} {'preview ms':>11} {'baseline ms':>12} {'ratio':>6}")
    for width, height in [(512, 512), (1024, 1024), (1600, 904), (2048, 2048)]:
        for fmt in ("png", "jpeg", "webp"):
            request = replace(REQUEST, width=width, height=height, output_format=fmt)
            preview = _timed(lambda r=request: render(r, 0))

            def baseline(w: int = width, h: int = height, f: str = fmt) -> None:
                Image.new("RGB", (w, h), (90, 120, 200)).save(io.BytesIO(), **_SAVE_OPTIONS[f])

            base = _timed(baseline)
            print(f"{width}x{height:<5} {fmt:>6} {preview * 1000:11.1f} {base * 1000:12.1f} {preview / base:6.1f}")


if __name__ == "__main__":
    main()
