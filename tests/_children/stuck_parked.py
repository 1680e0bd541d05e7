"""Exit-test child: a sink stuck in write, and a non-daemon thread waiting on it when main returns.

Usage: stuck_parked.py MODE SHUTDOWN_TIMEOUT
MODE: "thread" (a threading.Thread capturing, parked on the full queue), "executor" (the same
in a ThreadPoolExecutor's worker), "flush" (a thread waiting in ctx.flush()) or "close" (as
"thread", and main calls ctx.close(), which times out, before it returns).

Python joins non-daemon threads before it runs atexit hooks: the process must still exit, and
report what it could not make durable. The waiting thread prints what its call raised.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from contexta_async import Contexta, ContextaError, ShutdownTimeoutError, Sink
from contexta_async.sinks import Chunk


class StuckSink(Sink):
    """Accepts a batch, then blocks forever in write (a hung NFS mount, a dead disk)."""

    name = "stuck"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self._never = threading.Event()

    def prepare(self, items: Sequence[object], captured_at: str) -> list[Chunk]:
        return [Chunk("*", "stuck", b"", items)]  # type: ignore[arg-type]

    def write(self, chunk: Chunk) -> None:
        self.entered.set()
        self._never.wait()


def main() -> None:
    mode, timeout = sys.argv[1], float(sys.argv[2])
    sink = StuckSink()
    ctx = Contexta(sinks=[sink], shutdown_timeout=timeout, queue_size=8)
    run = ctx.run("stuck").__enter__()

    def work() -> None:
        try:
            if mode == "flush":
                run.metric("m", 0)
                ctx.flush()
            for i in range(100):
                run.metric("m", i)
        except ContextaError as exc:
            print(f"worker: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)

    if mode == "executor":
        ThreadPoolExecutor(1).submit(work)
    else:
        threading.Thread(target=work).start()
    # main returns once the worker waits on the stuck writer
    sink.entered.wait()
    stats = ctx.statistics
    while not (stats().waiting_producers if mode != "flush" else stats().enqueued >= 2):
        time.sleep(0.001)
    if mode == "close":
        try:
            ctx.close()
        except ShutdownTimeoutError as exc:
            print(f"close raised: {exc}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
