"""A sharded evaluation: four worker processes, one PostgreSQL store, one comparison.

Each worker evaluates its shard (every fourth case) of two prompt strategies, capturing into
its own local workspace with ``Contexta(..., ship_to=URL)``: a background thread ships the
workspace to the store as it is captured, and closing the context waits (up to
``shutdown_timeout``) until the store has every line. In the store the four shards of each run
are one run: its samples are the union of the shards', and it is ``completed`` only when every
shard completed. The comparison is then read from the store with ``Workspace(URL)``, exactly
as from a workspace folder (``contexta-async --workspace URL compare plain step-by-step`` does
the same on the command line).

Needs ``pip install -e sinks/postgres`` and a PostgreSQL server you may create tables in:

    python examples/sharded_eval.py --store postgresql://evals@localhost/evals

(libpq's password file and ``PG*`` variables work; so does ``CONTEXTA_STORE_URL``.)
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from pathlib import Path

import anyio

from contexta_async import Contexta
from contexta_async.readers import Workspace

WORKERS = 4
CASES = 40
STRATEGIES = ("plain", "step-by-step")


def answer(strategy: str, case: int) -> bool:
    """A stand-in for the model: step-by-step gets the multi-step cases (every third) right."""
    return case % 5 != 0 and (case % 3 != 0 or strategy == "step-by-step")


def worker(shard: int, base: Path, url: str) -> None:
    """Evaluate shard ``shard`` of both strategies into ``base/worker-<shard>``; ship it."""
    ctx = Contexta(
        workspace=base / f"worker-{shard}",
        config={"project_name": "sharded-eval"},
        ship_to=url,
    )
    try:
        for strategy in STRATEGIES:
            # The same run name in every worker: the store merges the shards into one run.
            with (
                ctx.run(strategy, dataset_ref="dataset:demo.cases") as run,
                run.stage("evaluate") as stage,
            ):
                for case in range(shard, CASES, WORKERS):
                    with stage.sample(f"case-{case:03d}") as sample:
                        sample.metric("correct", 1.0 if answer(strategy, case) else 0.0)
    finally:
        ctx.close()  # drains the shipper: what it could not ship stays in the workspace
    assert ctx.shipper is not None
    if ctx.shipper.lines_waiting:
        sys.exit(f"worker {shard}: {ctx.shipper.lines_waiting} line(s) not shipped")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=os.environ.get("CONTEXTA_STORE_URL"))
    parser.add_argument("--workdir", default="sharded-ws", help="the workers' workspaces")
    args = parser.parse_args()
    if not args.store:
        parser.error("--store postgresql://... (or CONTEXTA_STORE_URL) is required")

    # Separate processes, as on separate machines (spawned: nothing inherited).
    spawn = multiprocessing.get_context("spawn")
    workers = [
        spawn.Process(target=worker, args=(shard, Path(args.workdir), args.store))
        for shard in range(WORKERS)
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join()
    if any(process.exitcode != 0 for process in workers):
        print("a worker failed", file=sys.stderr)
        return 1

    # The comparison, read from the store as from a workspace folder: Workspace(URL) finds
    # the store's reader through contexta-async-postgres. The per-sample latest values are
    # chosen in SQL over the four shards of each run; the statistics are the readers' own.
    result = anyio.run(Workspace(args.store).compare, *STRATEGIES)
    correct = next(p for p in result.paired if p.key == "correct")
    for run, mean in ((result.left, correct.mean_left), (result.right, correct.mean_right)):
        print(
            f"{run.ref}: {run.status}, {round((mean or 0) * correct.n_matched)} of "
            f"{correct.n_matched} correct"
        )
    print(
        f"correct: {correct.mean_diff:+.3f} ({result.right.name} - {result.left.name}), "
        f"{len(correct.fixed)} fixed, {len(correct.regressed)} regressed, "
        f"McNemar p = {correct.mcnemar_p:.2g}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
