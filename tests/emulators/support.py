"""What the emulator tests share: a clock they move by hand, and an emulator run as a real process."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator

import httpx

from tests.processes import IMAGEGATE, free_port


class Clock:
    """``time.time()`` when made, then only what a test sets ``now`` to."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@contextlib.contextmanager
def emulator_process(kind: str, *options: str) -> Iterator[str]:
    """``imagegate emulate KIND --port P OPTIONS`` on a free port; yields its base URL once it answers HTTP (any
    status), and stops it when the block ends."""
    port = free_port()
    process = subprocess.Popen(
        [*IMAGEGATE, "emulate", kind, "--port", str(port), *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/", timeout=1)
                break
            except httpx.HTTPError:
                assert process.poll() is None and time.monotonic() < deadline, "emulator did not start"
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)
