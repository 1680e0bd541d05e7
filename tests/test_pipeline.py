"""The pipeline: group commit, flush as a durability barrier, back-pressure, sink failures."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from contexta_async import (
    Contexta,
    DeliveryError,
    LocalJsonlSink,
    MemorySink,
    QueueFullError,
    Sink,
)
from contexta_async._format.lines import Item
from contexta_async.sinks import Chunk

from .capture_files import metrics, read_lines


class _SyscallLog:
    """Records the order of write and fsync calls per file (spying on the real ones)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, int, str]] = []
        self._lock = threading.Lock()
        real_write, real_fsync = os.write, os.fsync

        def write(fd: int, data: bytes) -> int:
            written = real_write(fd, data)
            self._note("write", fd)
            return written

        def fsync(fd: int) -> None:
            real_fsync(fd)
            self._note("fsync", fd)

        import contexta_async.sinks._jsonl as jsonl

        monkeypatch.setattr(jsonl.os, "write", write)
        monkeypatch.setattr(jsonl.os, "fsync", fsync)

    def _note(self, kind: str, fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}")
        with self._lock:
            self.events.append((kind, fd, name))

    def capture_file_events(self) -> list[tuple[str, int]]:
        """Writes and fsyncs of the capture files (``*.jsonl``). ``record.index`` is left
        out: it is derived data, never fsynced by design (readers verify it)."""
        with self._lock:
            return [(kind, fd) for kind, fd, name in self.events if name.endswith(".jsonl")]

    def unsynced_fds(self) -> set[int]:
        """Capture files written since their last fsync."""
        last: dict[int, str] = {}
        for kind, fd in self.capture_file_events():
            last[fd] = kind
        return {fd for fd, kind in last.items() if kind == "write"}


async def test_flush_returns_after_records_are_fsynced(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _SyscallLog(monkeypatch)
    async with Contexta(workspace=workspace) as ctx, ctx.run("r") as run:
        for round_ in range(5):
            for i in range(200):
                await run.metric("x", round_ * 1000 + i)
            await ctx.aflush()
            # everything captured before flush() is in the file and was fsynced after writing
            assert log.unsynced_fds() == set()
            assert len(metrics(workspace)) == (round_ + 1) * 200
    events = log.capture_file_events()
    assert ("fsync", events[-1][1]) == events[-1]


def test_sync_flush_is_a_barrier_too(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = _SyscallLog(monkeypatch)
    ctx = Contexta(workspace=workspace)
    with ctx.run("r") as run:
        for i in range(1000):
            run.metric("x", i)
        ctx.flush()
        assert log.unsynced_fds() == set()
        assert len(metrics(workspace)) == 1000
    ctx.close()


async def test_writer_groups_records_into_few_fsyncs(workspace: Path) -> None:
    async with Contexta(workspace=workspace, max_batch_size=4096) as ctx, ctx.run("r") as run:
        for i in range(20_000):
            await run.metric("x", i)
        await ctx.aflush()
        stats = ctx.statistics()
    assert stats.enqueued == 20_001  # 20k metrics + the run's open line
    assert stats.written == 20_001
    assert stats.batches < 100  # group commit: thousands of lines per write+fsync
    assert stats.fsyncs < 200
    assert 1 < stats.largest_batch <= 4096
    assert stats.failed == stats.dropped == 0
    assert len(metrics(workspace)) == 20_000


async def test_light_load_writes_without_waiting_for_a_timer(workspace: Path) -> None:
    # One record, then flush: durable after about one fsync, not after a fixed interval.
    async with Contexta(workspace=workspace) as ctx, ctx.run("r") as run:
        for _ in range(20):
            await run.metric("x", 1)
            await ctx.aflush()
        stats = ctx.statistics()
    assert stats.batches >= 20  # each lone record formed its own batch right away


class _SlowSink(Sink):
    """A real sink that is slow: lets producers outrun it."""

    def __init__(self, inner: Sink, delay: float) -> None:
        self.inner, self.delay, self.name = inner, delay, inner.name

    def prepare(self, items: Sequence[Item], captured_at: str) -> list[Chunk]:
        return self.inner.prepare(items, captured_at)

    def write(self, chunk: Chunk) -> None:
        time.sleep(self.delay)
        self.inner.write(chunk)

    def close(self) -> None:
        self.inner.close()


async def test_a_full_queue_means_back_pressure_not_loss(workspace: Path) -> None:
    sink = _SlowSink(LocalJsonlSink(workspace / "cache" / "capture"), 0.01)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.001)
            ticks += 1

    async with Contexta(workspace=workspace, sinks=[sink], queue_size=50, max_batch_size=50) as ctx:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            async with ctx.run("r") as run:

                async def produce(n: int) -> None:
                    for i in range(100):
                        await run.metric("x", n * 1000 + i)

                async with anyio.create_task_group() as producers:
                    for n in range(10):
                        producers.start_soon(produce, n)
            tg.cancel_scope.cancel()
        stats = ctx.statistics()
    assert stats.peak_queued <= 50 + 10  # bound + lifecycle lines that never wait
    assert stats.dropped == 0
    assert ticks > 10  # the event loop kept running while producers waited
    values = sorted(line["payload"]["payload"]["value"] for line in metrics(workspace))
    assert values == sorted(n * 1000 + i for n in range(10) for i in range(100))


def test_sync_producer_blocks_only_while_the_queue_is_full(workspace: Path) -> None:
    sink = _SlowSink(LocalJsonlSink(workspace / "cache" / "capture"), 0.005)
    ctx = Contexta(workspace=workspace, sinks=[sink], queue_size=10, max_batch_size=10)
    with ctx.run("r") as run:
        for i in range(300):
            run.metric("x", i)
    ctx.close()
    assert [m["payload"]["payload"]["value"] for m in metrics(workspace)] == list(range(300))
    assert ctx.statistics().peak_queued <= 12


async def test_nowait_capture_on_a_full_queue_raises_queue_full(workspace: Path) -> None:
    sink = _SlowSink(LocalJsonlSink(workspace / "cache" / "capture"), 0.2)
    async with Contexta(workspace=workspace, sinks=[sink], queue_size=5) as ctx:
        async with ctx.run("r") as run:
            with pytest.raises(QueueFullError, match="queue is full"):
                for i in range(100):
                    run.metric_nowait("x", i)
            accepted = ctx.statistics().enqueued - 1
    assert len(metrics(workspace)) == accepted


async def test_drop_newest_counts_every_drop_and_writes_a_degradation_line(
    workspace: Path,
) -> None:
    sink = _SlowSink(LocalJsonlSink(workspace / "cache" / "capture"), 0.2)
    async with Contexta(
        workspace=workspace, sinks=[sink], queue_size=5, overflow="drop_newest"
    ) as ctx:
        async with ctx.run("r") as run:
            for i in range(100):
                await run.metric("x", i)
        stats = ctx.statistics()
    kept = len(metrics(workspace))
    assert stats.dropped == 100 - kept > 0
    [degradation] = read_lines(workspace, "DEGRADATION")
    assert degradation["payload"]["degradation_kind"] == "dropped"
    assert degradation["payload"]["count"] == stats.dropped
    assert degradation["payload"]["run_ref"] == "run:default.r"


def test_a_sink_write_failure_is_reported_by_flush_and_never_crashes_producers(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the capture folder should be")
    sink = LocalJsonlSink(blocker / "capture")  # every open fails: NotADirectoryError
    ctx = Contexta(workspace=tmp_path / "ws", sinks=[sink], max_retries=2, retry_backoff=0.001)
    with ctx.run("doomed") as run:
        for i in range(50):
            run.metric("x", i)  # never raises: the failure is the writer's to report
    with pytest.raises(DeliveryError) as info:
        ctx.flush()
    error = info.value
    assert error.failed >= 50
    assert error.runs["run:default.doomed"] >= 50
    assert "Not a directory" in str(error)
    stats = ctx.statistics()
    assert stats.retries >= 2 and stats.failed >= 50 and stats.written == 0
    # reported once: a second flush with nothing new to report succeeds
    ctx.flush()
    ctx.close()


def test_a_failing_sink_does_not_stop_the_other_sinks(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    good = MemorySink(name="memory")
    bad = LocalJsonlSink(blocker / "capture", name="broken")
    ctx = Contexta(workspace=tmp_path, sinks=[good, bad], max_retries=0)
    with ctx.run("r") as run:
        run.metric("x", 1)
    with pytest.raises(DeliveryError, match="broken"):
        ctx.close()
    assert [line["payload"]["payload"]["value"] for line in good.lines("RECORD")] == [1]


async def test_statistics_report_the_pipeline_counters(workspace: Path) -> None:
    async with Contexta(workspace=workspace) as ctx:
        before = ctx.statistics()
        async with ctx.run("r") as run:
            await run.metric("x", 1)
        await ctx.aflush()
        after = ctx.statistics()
    assert before.enqueued == before.written == 0
    assert after.enqueued == 3 and after.written == 3
    assert after.queued == 0 and after.fsyncs >= 2 and after.batches >= 1


def test_fsync_can_be_turned_off(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = _SyscallLog(monkeypatch)
    with Contexta(workspace=workspace, fsync=False) as ctx, ctx.run("r") as run:
        run.metric("x", 1)
    assert ("fsync" not in {kind for kind, _, _ in log.events}) and log.events
    assert ctx.statistics().fsyncs == 0
    assert len(metrics(workspace)) == 1


async def test_async_flush_timeout_raises_and_keeps_the_lines_queued(workspace: Path) -> None:
    from contexta_async import FlushTimeoutError

    sink = _SlowSink(LocalJsonlSink(workspace / "cache" / "capture"), 0.3)
    async with Contexta(workspace=workspace, sinks=[sink]) as ctx, ctx.run("r") as run:
        await run.metric("x", 1)
        with pytest.raises(FlushTimeoutError) as info:
            await ctx.aflush(timeout=0.01)
        assert info.value.pending >= 1
        await ctx.aflush()  # nothing was lost by the timeout
    assert len(metrics(workspace)) == 1


def test_sync_flush_timeout_raises_flush_timeout_error(workspace: Path) -> None:
    from contexta_async import FlushTimeoutError

    sink = _SlowSink(LocalJsonlSink(workspace / "cache" / "capture"), 0.3)
    ctx = Contexta(workspace=workspace, sinks=[sink])
    with ctx.run("r") as run:
        run.metric("x", 1)
        with pytest.raises(FlushTimeoutError, match="flush timed out"):
            ctx.flush(timeout=0.01)
    ctx.close()
    assert len(metrics(workspace)) == 1


async def test_a_tight_capture_loop_still_lets_other_tasks_run(workspace: Path) -> None:
    # Awaited captures with room return at once, but not forever: the loop gets a turn now and
    # then, so a bulk capture cannot starve the other tasks of its event loop.
    turns = 0

    async def other_task() -> None:
        nonlocal turns
        while True:
            await anyio.lowlevel.checkpoint()
            turns += 1

    async with Contexta(workspace=workspace, queue_size=100_000) as ctx, ctx.run("r") as run:
        async with anyio.create_task_group() as tg:
            tg.start_soon(other_task)
            await anyio.lowlevel.checkpoint()
            turns_before = turns
            for i in range(20_000):
                await run.metric("x", i)
            turns_during = turns - turns_before
            tg.cancel_scope.cancel()
        stats = ctx.statistics()
    assert turns_during >= 20_000 // 256 - 1
    assert stats.enqueued == 20_001
    assert len(metrics(workspace)) == 20_000


def test_the_writer_takes_what_was_queued_between_its_last_look_and_the_close(
    tmp_path: Path,
) -> None:
    # The interleaving a stress test hit about once in 200 closes, made certain: the writer
    # looks at an empty queue, then a closing line is queued and the queue closed (by a
    # close() on another thread), then the writer sees "closed". It stopped there, and the
    # close lost the line and raised ShutdownTimeoutError.
    ctx = Contexta(workspace=tmp_path / "ws", config={"project_name": "p"})
    run = ctx.run("r").__enter__()
    ctx.flush()
    buffer = ctx._pipeline._buffer
    take = buffer.take
    closer_failed: list[BaseException] = []

    def close_elsewhere() -> None:
        try:
            ctx.close()  # queues the run's closing line, closes the queue, waits for the writer
        except BaseException as exc:
            closer_failed.append(exc)

    closer = threading.Thread(target=close_elsewhere)
    started = threading.Event()

    def take_then_close(max_items: int, reader: object) -> tuple[list[Item], int]:
        found = take(max_items, reader)  # type: ignore[arg-type]
        if reader is not None and not found[0] and not started.is_set():
            closer.start()
            started.set()
            deadline = time.monotonic() + 30
            while not buffer.closed and time.monotonic() < deadline:
                time.sleep(0.001)
        return found

    buffer.take = take_then_close  # type: ignore[method-assign]
    run.metric_nowait("late", 1.0)  # wakes the writer: it writes this, then looks again
    assert started.wait(60)
    closer.join(60)
    assert not closer.is_alive()
    assert closer_failed == []
    lines = read_lines(tmp_path / "ws", "context")
    assert [line["payload"]["status"] for line in lines] == ["open", "cancelled"]
