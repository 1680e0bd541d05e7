"""Exit-test child: main returns while a non-daemon thread still captures (a working sink).

Usage: worker_outlives_main.py WORKSPACE COUNT

Python waits for the thread; its captures, parked on the small queue now and then, must all be
written: the exit watch gives up only on a writer that makes no progress.
"""

from __future__ import annotations

import sys
import threading

from contexta_async import Contexta


def main() -> None:
    workspace, count = sys.argv[1], int(sys.argv[2])
    ctx = Contexta(workspace=workspace, config={"project_name": "exit"}, queue_size=16)

    def work() -> None:
        with ctx.run("worker") as run:
            for i in range(count):
                run.metric("seq", i)

    threading.Thread(target=work).start()


if __name__ == "__main__":
    main()
