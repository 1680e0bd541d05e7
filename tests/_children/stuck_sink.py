"""Exit-test child: a sink whose write never returns; the process must still exit.

Usage: stuck_sink.py MODE SHUTDOWN_TIMEOUT
MODE: "atexit" (sync, never closes: the interpreter's exit closes it), "atexit_many" (the same
with 4 contexts, each with its own stuck sink), "close" (sync, calls ctx.close()), "async"
(``async with Contexta`` in ``asyncio.run``).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Sequence

from contexta_async import Contexta, ShutdownTimeoutError, Sink
from contexta_async.sinks import Chunk


class StuckSink(Sink):
    """Accepts a batch, then blocks forever in write (a hung NFS mount, a dead disk)."""

    name = "stuck"

    def __init__(self) -> None:
        self._never = threading.Event()

    def prepare(self, items: Sequence[object], captured_at: str) -> list[Chunk]:
        return [Chunk("*", "stuck", b"", items)]  # type: ignore[arg-type]

    def write(self, chunk: Chunk) -> None:
        self._never.wait()


def main() -> None:
    mode, timeout = sys.argv[1], float(sys.argv[2])
    options = {"sinks": [StuckSink()], "shutdown_timeout": timeout}
    if mode == "async":

        async def capture() -> None:
            async with Contexta(**options) as ctx, ctx.run("stuck") as run:  # type: ignore[arg-type]
                for i in range(100):
                    await run.metric("m", i)

        asyncio.run(capture())
        return
    if mode == "atexit_many":
        for n in range(4):
            other = Contexta(sinks=[StuckSink()], shutdown_timeout=timeout)
            with other.run(f"stuck-{n}") as run:
                for i in range(100):
                    run.metric("m", i)
        return
    ctx = Contexta(**options)  # type: ignore[arg-type]
    with ctx.run("stuck") as run:
        for i in range(100):
            run.metric("m", i)
    if mode == "close":
        try:
            ctx.close()
        except ShutdownTimeoutError as exc:
            print(f"close raised: {exc}", file=sys.stderr)
            sys.exit(3)


if __name__ == "__main__":
    main()
