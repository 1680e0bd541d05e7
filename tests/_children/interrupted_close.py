"""Exit-test child: Ctrl-C lands while ``with Contexta(...)`` drains in close().

Usage: interrupted_close.py WORKSPACE COUNT

The sink's writes wait on a gate, so the drain is still going on when a helper thread sends
SIGINT to the main thread (once the close has begun). The gate opens only at exit, from an
atexit hook registered after contexta_async's (atexit runs hooks last-in first-out): the at-exit
hook must then drain every line itself, or report what it could not make durable.
"""

from __future__ import annotations

import atexit
import signal
import sys
import threading
import time
from pathlib import Path

from contexta_async import Contexta, LocalJsonlSink
from contexta_async.sinks import Chunk


class GateSink(LocalJsonlSink):
    def __init__(self, directory: Path) -> None:
        super().__init__(directory, name="local-jsonl")
        self.entered = threading.Event()
        self.gate = threading.Event()

    def write(self, chunk: Chunk) -> None:
        self.entered.set()
        self.gate.wait()
        super().write(chunk)


def main() -> None:
    workspace, count = Path(sys.argv[1]), int(sys.argv[2])
    sink = GateSink(workspace / "cache" / "capture")
    atexit.register(sink.gate.set)
    ctx = Contexta(workspace=workspace, config={"project_name": "exit"}, sinks=[sink])

    interrupted = threading.Event()

    def ctrl_c(signum: int, frame: object) -> None:
        if not interrupted.is_set():  # one KeyboardInterrupt, however many signals arrive
            interrupted.set()
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, ctrl_c)

    def interrupt_the_close() -> None:
        sink.entered.wait()
        while not ctx.closed:  # the close has begun: its drain waits on the gate
            time.sleep(0.001)
        # A signal that lands just before the main thread blocks in its wait is only handled
        # when the wait ends (CPython checks for signals between bytecodes): send it again.
        main = threading.main_thread().ident or 0
        while not interrupted.is_set():
            signal.pthread_kill(main, signal.SIGINT)
            interrupted.wait(0.05)

    threading.Thread(target=interrupt_the_close, daemon=True).start()
    with ctx, ctx.run("interrupted") as run:
        for i in range(count):
            run.metric("seq", i)


if __name__ == "__main__":
    main()
