"""Multi-process child: capture COUNT metrics into a shared workspace as fast as possible.

Usage: mp_writer.py WORKSPACE INDEX COUNT

Waits for a line on stdin so that every process starts capturing at the same moment.
"""

from __future__ import annotations

import sys

from contexta_async import Contexta


def main() -> None:
    workspace, index, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    # Small batches: many more writes, so the processes contend for each file's lock.
    ctx = Contexta(workspace=workspace, config={"project_name": "mp"}, max_batch_size=512)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()
    with ctx.run(f"proc-{index}") as run, run.stage("capture") as stage:
        for i in range(count):
            stage.metric("seq", i, tags={"proc": str(index)})
            if i % 5_000 == 0:
                stage.event("progress", message=f"proc {index} at {i}")
    ctx.close()


if __name__ == "__main__":
    main()
