"""Flush has two explicit faces, and capture behaves the same on every anyio backend.

``ctx.flush()`` always blocks the calling thread until the lines are durable (any thread, a
loop's thread included); ``await ctx.aflush()`` waits without blocking the loop. Every async
test here runs on asyncio and on trio (tests/conftest.py).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import anyio
import pytest

from contexta_async import Contexta, LocalJsonlSink, QueueFullError
from contexta_async.sinks import Chunk

from .capture_files import last_status, metrics

HANG_GUARD = 60.0  # seconds; only a hang reaches it, never a slow machine


class GatedSink(LocalJsonlSink):
    """A LocalJsonlSink whose writes wait until the test opens the gate (a disk that stalls)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, name="local-jsonl")
        self.gate = threading.Event()
        self.entered = threading.Event()  # the writer is inside write(), waiting at the gate

    def write(self, chunk: Chunk) -> None:
        self.entered.set()
        if not self.gate.wait(HANG_GUARD):
            raise RuntimeError("the test never opened the gate")
        super().write(chunk)


class SlowSink(LocalJsonlSink):
    """A LocalJsonlSink on a slow disk: a write takes long enough that nobody sees it early."""

    def write(self, chunk: Chunk) -> None:
        time.sleep(0.2)
        super().write(chunk)


# ---- the two faces of flush ----------------------------------------------------------------


def _save_checkpoint(ctx: Contexta) -> None:
    """A sync helper, as a library would write one: it knows nothing about event loops."""
    ctx.flush()


async def test_a_sync_helper_flushing_on_a_loop_thread_writes_and_fsyncs_every_line(
    tmp_path: Path,
) -> None:
    # It used to get back an awaitable it never awaited: nothing was flushed, only a warning.
    sink = SlowSink(tmp_path / "cache" / "capture", name="local-jsonl")
    async with Contexta(workspace=tmp_path, config={"project_name": "p"}, sinks=[sink]) as ctx:
        async with ctx.run("r") as run:
            for i in range(3):
                await run.metric("step", i)
            assert _save_checkpoint(ctx) is None  # type: ignore[func-returns-value]
            # Read straight back, the context still open: the flush was a barrier.
            assert [m["payload"]["payload"]["value"] for m in metrics(tmp_path)] == [0, 1, 2]
            stats = ctx.statistics()
            assert stats.written == stats.enqueued == 4  # the run's open line and 3 metrics
            assert stats.fsyncs >= 1 and stats.failed == 0


async def test_awaiting_the_blocking_flush_fails_loudly(tmp_path: Path) -> None:
    async with Contexta(workspace=tmp_path, config={"project_name": "p"}) as ctx:
        async with ctx.run("r") as run:
            await run.metric("step", 1)
            with pytest.raises(TypeError):
                await ctx.flush()  # type: ignore[func-returns-value]
            # The blocking flush ran before the await failed: the line is durable.
            assert len(metrics(tmp_path)) == 1


async def test_the_event_loop_keeps_running_while_aflush_waits(tmp_path: Path) -> None:
    sink = GatedSink(tmp_path / "cache" / "capture")
    events: list[str] = []
    async with Contexta(workspace=tmp_path, config={"project_name": "p"}, sinks=[sink]) as ctx:
        async with ctx.run("r") as run:
            await run.metric("step", 1)
            flushed = anyio.Event()

            async def flusher() -> None:
                # A timeout only so that a blocked loop fails the test instead of hanging it.
                await ctx.aflush(timeout=HANG_GUARD)
                events.append("flushed")
                flushed.set()

            async def ticker() -> None:
                ticks = 0
                while not flushed.is_set():
                    await anyio.sleep(0.001)
                    ticks += 1
                    if ticks == 20:
                        # 20 ticks ran while the flush waited on a stalled disk: let it finish.
                        events.append("20 ticks, flush pending")
                        sink.gate.set()
                events.append(f"ticker saw the flush return after {ticks} ticks")

            async with anyio.create_task_group() as tg:
                tg.start_soon(flusher)
                tg.start_soon(ticker)
    assert events[:2] == ["20 ticks, flush pending", "flushed"]
    assert last_status(tmp_path) == {"run:p.r": "completed"}
    assert len(metrics(tmp_path)) == 1


# ---- back-pressure on every backend --------------------------------------------------------


async def _until_waiting(ctx: Contexta, producers: int) -> None:
    """Return once ``producers`` producers are parked (polled: no event says so)."""
    while ctx.statistics().waiting_producers < producers:  # noqa: ASYNC110
        await anyio.sleep(0.001)


async def test_a_full_queue_makes_producers_wait_and_loses_nothing(tmp_path: Path) -> None:
    # On trio this raised "no running event loop" (the waiter was asyncio-only) and the run
    # ended failed.
    sink = GatedSink(tmp_path / "cache" / "capture")
    producers, per_producer, queue_size = 4, 50, 8
    async with Contexta(
        workspace=tmp_path,
        config={"project_name": "p"},
        sinks=[sink],
        queue_size=queue_size,
        max_batch_size=queue_size,
    ) as ctx:
        async with ctx.run("r") as run:

            async def producer(n: int) -> None:
                async with run.stage(f"s{n}") as stage:
                    for i in range(per_producer):
                        await stage.metric("seq", i)

            async with anyio.create_task_group() as tg:
                for n in range(producers):
                    tg.start_soon(producer, n)
                # The disk is stalled: the queue fills and every producer parks in turn.
                await _until_waiting(ctx, producers)
                stats = ctx.statistics()
                assert stats.queued <= queue_size + 2 * producers  # the bound, + lifecycle lines
                assert stats.failed == stats.dropped == 0
                sink.gate.set()
            await ctx.aflush()
    values: dict[str, list[int]] = {}
    for m in metrics(tmp_path):
        values.setdefault(m["payload"]["envelope"]["stage_execution_ref"], []).append(
            m["payload"]["payload"]["value"]
        )
    assert values == {f"stage:p.r.s{n}": list(range(per_producer)) for n in range(producers)}
    assert set(last_status(tmp_path).values()) == {"completed"}


async def test_a_producer_cancelled_while_waiting_for_room_captures_nothing(
    tmp_path: Path,
) -> None:
    sink = GatedSink(tmp_path / "cache" / "capture")
    async with Contexta(
        workspace=tmp_path, config={"project_name": "p"}, sinks=[sink], queue_size=2
    ) as ctx:
        async with ctx.run("r") as run:
            await run.metric("seq", 0)  # the writer takes it and stalls at the gate
            await anyio.to_thread.run_sync(sink.entered.wait, HANG_GUARD)
            captured = 1
            while True:  # fill the queue without waiting: *_nowait raises once it is full
                try:
                    run.metric_nowait("seq", captured)
                except QueueFullError:
                    break
                captured += 1
            with anyio.CancelScope() as scope:

                async def cancel_once_parked() -> None:
                    await _until_waiting(ctx, 1)
                    scope.cancel()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(cancel_once_parked)
                    await run.metric("seq", captured)  # parks, then is cancelled
            assert scope.cancelled_caught
            assert ctx.statistics().waiting_producers == 0
            sink.gate.set()
            await run.metric("seq", captured + 1)
    values = [m["payload"]["payload"]["value"] for m in metrics(tmp_path)]
    assert values == [*range(captured), captured + 1]


def test_sync_flush_works_on_a_plain_thread_and_aflush_on_each_backend(tmp_path: Path) -> None:
    ctx = Contexta(workspace=tmp_path, config={"project_name": "p"})
    with ctx.run("r") as run:
        run.metric("step", 0)
        ctx.flush()
        assert len(metrics(tmp_path)) == 1

        async def capture_and_aflush(value: int) -> None:
            await ctx.aflush()  # nothing new: returns at once, on either loop
            run.metric("step", value)
            await ctx.aflush()
            assert len(metrics(tmp_path)) == value + 1

        anyio.run(capture_and_aflush, 1, backend="asyncio")
        anyio.run(capture_and_aflush, 2, backend="trio")
    ctx.close()
    assert last_status(tmp_path) == {"run:p.r": "completed"}
