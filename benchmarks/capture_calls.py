#!/usr/bin/env python3
"""CPU cost of the capture path, per call and per record (a benchmark, not a test).

Thread CPU time (``time.thread_time_ns``), not wall time, and the minimum over many blocks:
on a shared machine this moves far less with the neighbours' load than records/s does, so it
is the figure to compare two copies of the package by (run each copy in turn, several times).

  awaited   ``await sample.metric(...)`` with room in the queue (the async face's fast path)
  nowait    ``sample.metric_nowait(...)``, the same calls from the async face
  sync      ``stage.metric(...)`` on a plain thread (the sync face)
  encode    the writer's ``LocalJsonlSink.prepare`` of a batch: stamping + JSON, per record
  write     ``LocalJsonlSink.write`` of that batch (fsync off), per record, with the record
            index (the default) and without it (``index=False``): the difference is the
            index's cost on the writer thread

Usage:
  .venv/bin/python benchmarks/capture_calls.py                # ~20 s
  PYTHONPATH=/tmp/copy .venv/bin/python -P benchmarks/capture_calls.py   # another copy
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import contexta_async
from contexta_async import Contexta, LocalJsonlSink, MemorySink
from contexta_async.sinks import Chunk


class _Keeper(MemorySink):
    """Keeps every item the writer hands it (to time other sinks on the same items)."""

    def __init__(self) -> None:
        super().__init__(name="keeper")
        self.items: list[Any] = []

    def prepare(self, items: Sequence[Any], captured_at: str) -> list[Chunk]:
        self.items.extend(items)
        return super().prepare(items, captured_at)


def _min_us(block: Callable[[], object], per: int, blocks: int) -> float:
    """The least thread CPU time of ``block`` over ``blocks`` runs, in µs per ``per``."""
    best = None
    for _ in range(blocks):
        t0 = time.thread_time_ns()
        block()
        spent = time.thread_time_ns() - t0
        best = spent if best is None else min(best, spent)
    assert best is not None
    return best / per / 1000


async def _async_calls(workspace: Path, calls: int, blocks: int) -> dict[str, float]:
    awaited: list[int] = []
    nowait: list[int] = []
    async with (
        Contexta(workspace=workspace, config={"project_name": "b"}) as ctx,
        ctx.run("r") as run,
        run.stage("s") as stage,
        stage.sample("c") as s,
    ):
        for _ in range(blocks):
            t0 = time.thread_time_ns()
            for j in range(calls):
                await s.metric("correct", (j % 100) / 100, unit="ratio")
            awaited.append(time.thread_time_ns() - t0)
            await ctx.aflush()  # the next block finds the queue empty again
            t0 = time.thread_time_ns()
            for j in range(calls):
                s.metric_nowait("correct", (j % 100) / 100, unit="ratio")
            nowait.append(time.thread_time_ns() - t0)
            await ctx.aflush()
    return {
        "awaited_us": min(awaited) / calls / 1000,
        "nowait_us": min(nowait) / calls / 1000,
    }


def _sync_calls(workspace: Path, calls: int, blocks: int) -> float:
    spent: list[int] = []
    with (
        Contexta(workspace=workspace, config={"project_name": "b"}) as ctx,
        ctx.run("r") as run,
        run.stage("s") as stage,
    ):
        for _ in range(blocks):
            t0 = time.thread_time_ns()
            for j in range(calls):
                stage.metric("correct", (j % 100) / 100, unit="ratio")
            spent.append(time.thread_time_ns() - t0)
            ctx.flush()
    return min(spent) / calls / 1000


def _writer_costs(workspace: Path, records: int, blocks: int) -> dict[str, float]:
    keeper = _Keeper()
    ctx = Contexta(workspace=workspace / "capture", config={"project_name": "b"}, sinks=[keeper])
    with ctx.run("r") as run, run.stage("s") as stage:
        for j in range(records):
            stage.metric("correct", (j % 100) / 100, unit="ratio")
    ctx.close()
    items = [item for item in keeper.items if item.family == "RECORD"]
    found: dict[str, float] = {"batch": len(items)}
    for index in (True, False):
        sink = LocalJsonlSink(workspace / f"index-{index}", fsync=False, index=index)
        chunks = sink.prepare(items, "2026-01-01T00:00:00.000000Z")
        if index:
            found["encode_us"] = _min_us(
                lambda s=sink: s.prepare(items, "2026-01-01T00:00:00.000000Z"), len(items), blocks
            )
        found[f"write_{'index' if index else 'no_index'}_us"] = _min_us(
            lambda s=sink, c=chunks: [s.write(chunk) for chunk in c], len(items), blocks
        )
        sink.close()
    found["index_us"] = found["write_index_us"] - found["write_no_index_us"]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=4000, help="calls per timed block")
    parser.add_argument("--blocks", type=int, default=25, help="timed blocks (the least counts)")
    parser.add_argument("--batch", type=int, default=4096, help="records per writer batch")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        result: dict[str, Any] = {"package": contexta_async.__file__}
        result.update(asyncio.run(_async_calls(root / "a", args.calls, args.blocks)))
        result["sync_us"] = _sync_calls(root / "s", args.calls, args.blocks)
        result.update(_writer_costs(root / "w", args.batch, args.blocks))
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
