"""Child whose stdout is a pipe the parent has closed (``python eval.py | head``), while a
write fails for a while: the library's own log lines then raise BrokenPipeError.

Usage: closed_stdout.py WORKSPACE COUNT

Prints "ready", waits for a line on stdin (sent once the parent has closed its end of stdout),
then captures COUNT metrics while ``record.jsonl`` is a directory (every open of it fails),
clears the fault once the writer has retried, and flushes and closes. Exit status 0 means flush
and close returned; the parent reads the files. Nothing goes to stdout after "ready" but the
library's own logging.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from contexta_async import Contexta


def main() -> None:
    workspace, count = Path(sys.argv[1]), int(sys.argv[2])
    record_file = workspace / "cache" / "capture" / "record.jsonl"
    record_file.mkdir(parents=True)  # a directory where the file should be: EISDIR
    print("ready", flush=True)
    sys.stdin.readline()  # the parent has closed the read end of our stdout
    ctx = Contexta(workspace=workspace, config={"project_name": "p"}, max_retries=40)
    with ctx.run("a") as run:
        run.metric("m", 0)
        deadline = time.monotonic() + 60  # only a writer that never retries can reach it
        while ctx.statistics().retries == 0 and time.monotonic() < deadline:
            time.sleep(0.001)  # until the write has failed and is being retried
        record_file.rmdir()  # the fault clears: the next retry can create the file
        for i in range(1, count):
            run.metric("m", i)
        ctx.flush()
    ctx.close()
    sys.stderr.write(f"retries={ctx.statistics().retries}\n")
    sys.stderr.flush()
    os._exit(0)  # the interpreter's own flush of the closed stdout must not decide the status


if __name__ == "__main__":
    main()
