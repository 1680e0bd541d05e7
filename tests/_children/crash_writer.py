"""Crash-test child: capture at full speed, flush now and then, report each acknowledged flush.

Usage: crash_writer.py WORKSPACE RUN_NAME SEED

Record ``i`` of the run carries the metric value ``i``. After ``ctx.flush()`` returns, the child
prints ``i`` (the last record captured before the flush) on stdout: records 0..i of this run are
then acknowledged as durable. The parent kills this process with SIGKILL at a random moment.
"""

from __future__ import annotations

import random
import sys

from contexta_async import Contexta


def main() -> None:
    workspace, run_name, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    ctx = Contexta(workspace=workspace, config={"project_name": "crash"})
    with ctx.run(run_name) as run, run.stage("capture") as stage:
        i = 0
        while True:
            # Flush points vary from every record to thousands of records apart, so the kill
            # lands in small and large batches, in writes and in fsyncs.
            for _ in range(rng.choice((1, 10, 200, 3000))):
                stage.metric("seq", i)
                i += 1
            ctx.flush()
            sys.stdout.write(f"{i - 1}\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
