"""List-runs benchmark: ``Workspace.list_runs()`` over a workspace of many small runs.

A benchmark, not a test: it asserts nothing. It captures N runs (one stage, one metric each)
through the library, then times ``list_runs()`` while a task ticking every 10 ms measures the
longest stall of the event loop. Each count runs three times; the medians are printed.

    python benchmarks/list_runs.py            # 1000, 2000 and 4000 runs
    python benchmarks/list_runs.py 500 8000
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

from contexta_async import Contexta
from contexta_async.readers import Workspace


def capture(root: Path, runs: int) -> None:
    ctx = Contexta(workspace=root, config={"project_name": "sweep"})
    for r in range(runs):
        with ctx.run(f"r{r}") as run, run.stage("train") as stage:
            stage.metric("loss", r / runs)
    ctx.close()


async def time_list_runs(root: Path) -> tuple[int, float, float]:
    """(runs listed, seconds, the event loop's longest stall in seconds)."""
    longest = 0.0

    async def heartbeat() -> None:
        nonlocal longest
        while True:
            start = time.perf_counter()
            await anyio.sleep(0.01)
            longest = max(longest, time.perf_counter() - start - 0.01)

    async with anyio.create_task_group() as group:
        group.start_soon(heartbeat)
        await anyio.sleep(0.05)
        start = time.perf_counter()
        runs = await Workspace(root).list_runs()
        took = time.perf_counter() - start
        await anyio.sleep(0.05)  # the heartbeat sees a stall only once the loop is free
        group.cancel_scope.cancel()
    return len(runs), took, longest


def main() -> None:
    counts = [int(arg) for arg in sys.argv[1:]] or [1000, 2000, 4000]
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            root = Path(tmp) / f"ws-{n}"
            capture(root, n)
            found = [anyio.run(time_list_runs, root) for _ in range(3)]
            listed = found[0][0]
            took = statistics.median(t for _, t, _ in found)
            stall = statistics.median(s for _, _, s in found)
            print(f"{listed:6d} runs: list_runs {took:.3f} s, longest loop stall {stall:.3f} s")


if __name__ == "__main__":
    main()
