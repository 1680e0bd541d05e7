"""Quickstart: evaluate two prompt strategies concurrently, capture every case, pick the better.

Every case runs as its own task with its own sample; the records land, fsynced, in
.contexta/cache/capture/. The choice is then made by reading that workspace back: the pass
rate of each run and, on the very same cases, the paired difference in ``correct`` with its
95% bootstrap interval and the exact McNemar p-value.

    python examples/quickstart.py [--workspace .contexta] [--cases 100]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import anyio

from contexta_async import Contexta
from contexta_async.readers import Workspace

STRATEGIES = {
    "helpful-only": "Answer the user's question.",
    "grounded": "Answer from the given context; refuse what the context does not support.",
}


async def mock_model(instruction: str, case: int) -> tuple[bool, int]:
    """A stand-in for an LLM call: seeded latency, a seeded chance of a right answer."""
    rng = random.Random(f"{instruction}/{case}")
    await anyio.sleep(rng.uniform(0.005, 0.05))
    skill = 0.82 if "refuse" in instruction else 0.70
    return rng.random() < skill, rng.randint(8, 60)


async def evaluate(ctx: Contexta, name: str, instruction: str, cases: int) -> None:
    async with (
        ctx.run(name, dataset_ref="dataset:local.quickstart-cases") as run,
        run.stage("evaluate") as stage,
    ):
        passed = 0

        async def one_case(case: int) -> None:
            nonlocal passed
            async with stage.sample(f"case-{case:03d}") as sample:
                correct, tokens = await mock_model(instruction, case)
                passed += correct
                await sample.metric("correct", float(correct), unit="ratio")
                await sample.metric("completion.tokens", tokens)

        async with anyio.create_task_group() as tg:
            for case in range(cases):
                tg.start_soon(one_case, case)
        await stage.metric("pass.rate", passed / cases, unit="ratio")


async def main(workspace: Path, cases: int) -> None:
    async with Contexta(workspace=workspace, config={"project_name": "quickstart"}) as ctx:
        async with anyio.create_task_group() as tg:
            for name, instruction in STRATEGIES.items():
                tg.start_soon(evaluate, ctx, name, instruction, cases)
        stats = ctx.statistics()
    print(f"Captured {stats.enqueued} lines in {stats.batches} fsynced batches into {workspace}/")

    reader = Workspace(workspace)
    comparison = await reader.compare("helpful-only", "grounded")
    left, right = comparison.left.ref, comparison.right.ref
    for delta in comparison.metrics:
        if delta.key == "pass.rate":
            print(f"Pass rate: {delta.left:.3f} ({left}) -> {delta.right:.3f} ({right})")
    for paired in comparison.paired:
        if paired.key == "correct" and paired.mean_diff is not None:
            print(
                f"Paired on {paired.n_matched} cases: correct {paired.mean_diff:+.3f} "
                f"[95% CI {paired.ci_low:+.3f}, {paired.ci_high:+.3f}], "
                f"fixed {len(paired.fixed)}, regressed {len(paired.regressed)}, "
                f"McNemar p = {paired.mcnemar_p:.4f}"
            )
    best = await reader.best_run([left, right], "pass.rate", direction="maximize")
    print(f"Selected run: {', '.join(best.winners)}{' (tie)' if best.tie else ''}")
    print(f"Records: {workspace / 'cache' / 'capture' / 'record.jsonl'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path(".contexta"))
    parser.add_argument("--cases", type=int, default=100)
    args = parser.parse_args()
    if args.cases < 1:
        parser.error("--cases must be at least 1")
    anyio.run(main, args.workspace, args.cases)
