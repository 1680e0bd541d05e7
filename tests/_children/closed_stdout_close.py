"""Child whose stdout is a pipe the parent has closed (``python eval.py | head``) and whose
sink fails to close: the library logs that failure, and its log line raises BrokenPipeError.

Usage: closed_stdout_close.py WORKSPACE

Prints "ready", waits for a line on stdin (sent once the parent has closed its end of stdout),
captures, flushes and closes. Exit status 0 means close() returned without raising; a close
that raised exits 1 with the error on stderr.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from contexta_async import Contexta, LocalJsonlSink


class CloseFails(LocalJsonlSink):
    def close(self) -> None:
        super().close()
        raise OSError("the sink could not close")


def main() -> None:
    workspace = Path(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()  # the parent has closed the read end of our stdout
    sink = CloseFails(workspace / "cache" / "capture")
    ctx = Contexta(workspace=workspace, config={"project_name": "p"}, sinks=[sink])
    with ctx.run("a") as run:
        run.metric("m", 1.0)
    ctx.flush()
    try:
        ctx.close()
    except BaseException as exc:
        sys.stderr.write(f"close raised {exc!r}\n")
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)  # the interpreter's own flush of the closed stdout must not decide the status


if __name__ == "__main__":
    main()
