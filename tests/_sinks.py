"""Sinks and waits the tests use to put the pipeline into a known state, without racing time."""

from __future__ import annotations

import threading
from pathlib import Path

import anyio

from contexta_async import Contexta, LocalJsonlSink
from contexta_async.sinks import Chunk


class GateSink(LocalJsonlSink):
    """A LocalJsonlSink whose writes wait until the test opens the gate."""

    def __init__(self, workspace: Path) -> None:
        super().__init__(workspace / "cache" / "capture", name="local-jsonl")
        self.entered = threading.Event()
        self.gate = threading.Event()

    def write(self, chunk: Chunk) -> None:
        self.entered.set()
        self.gate.wait()
        super().write(chunk)


async def until_parked(ctx: Contexta, producers: int) -> None:
    """Return once ``producers`` producers wait for room in the queue."""
    # Polls a condition the test itself brings about; the cap only turns a bug into a failure.
    with anyio.fail_after(30):
        while ctx.statistics().waiting_producers < producers:  # noqa: ASYNC110 - no event to wait on
            await anyio.sleep(0.001)
