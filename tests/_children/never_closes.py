"""Exit-test child: a sync program that never closes (or flushes) its Contexta.

Usage: never_closes.py WORKSPACE COUNT HOW
HOW: "return" (main returns), "exception" (an uncaught exception ends the program) or
"sys_exit" (sys.exit(2)). Run "closed" captures COUNT metrics and is closed; run "left-open"
captures 100 metrics and is never closed.
"""

from __future__ import annotations

import sys

from contexta_async import Contexta


def main() -> None:
    workspace, count, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    ctx = Contexta(workspace=workspace, config={"project_name": "exit"})
    with ctx.run("closed") as run, run.stage("work") as stage:
        for i in range(count):
            stage.metric("seq", i)
    left_open = ctx.run("left-open").__enter__()
    for i in range(100):
        left_open.metric("seq", i)
    if how == "exception":
        raise RuntimeError("the program fails after capturing")
    if how == "sys_exit":
        sys.exit(2)


if __name__ == "__main__":
    main()
