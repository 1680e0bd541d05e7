"""Overload: producers far faster than the disk.

A sink that sleeps in every write stands in for a slow disk. Memory must stay bounded by the
queue (not by the number of records), the event loop must keep running, the default policy
must drop nothing, and the opt-in policies must account for every line they refuse.
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from contexta_async import ClosedScopeError, Contexta, LocalJsonlSink, QueueFullError
from contexta_async.sinks import Chunk

from ._children.verify import read_family
from ._sinks import GateSink, until_parked

WRITE_DELAY = 0.002  # seconds per chunk, on top of the real write and fsync


class SlowSink(LocalJsonlSink):
    """A LocalJsonlSink on a slow disk: every chunk takes WRITE_DELAY longer."""

    def write(self, chunk: Chunk) -> None:
        time.sleep(WRITE_DELAY)
        super().write(chunk)


def _slow(workspace: Path) -> Sequence[SlowSink]:
    return [SlowSink(workspace / "cache" / "capture", name="local-jsonl")]


def _counts(workspace: Path) -> Counter[str]:
    return Counter(
        line["payload"]["envelope"]["run_ref"]
        for line in read_family(workspace, "RECORD")
        if line["payload_type"] == "MetricRecord"
    )


async def _overload(workspace: Path, records: int) -> tuple[int, list[float]]:
    """Capture ``records`` from 4 tasks into a slow sink; return (peak bytes, loop lags)."""
    lags: list[float] = []
    tick = 0.005

    async def ticker(done: anyio.Event) -> None:
        while not done.is_set():
            started = time.perf_counter()
            await anyio.sleep(tick)
            lags.append(time.perf_counter() - started - tick)

    async def producer(run: object, count: int) -> None:
        for i in range(count):
            await run.metric("seq", i)  # type: ignore[attr-defined]

    async with Contexta(
        workspace=workspace,
        config={"project_name": "p"},
        sinks=_slow(workspace),
        queue_size=1_000,
        max_batch_size=100,
    ) as ctx:
        done = anyio.Event()
        tracemalloc.reset_peak()
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker, done)
            async with ctx.run("r") as run, anyio.create_task_group() as producers:
                for _ in range(4):
                    producers.start_soon(producer, run, records // 4)
            await ctx.aflush()
            done.set()
        _, peak = tracemalloc.get_traced_memory()
        stats = ctx.statistics()
    assert stats.dropped == 0 and stats.failed == 0
    assert stats.peak_queued <= 1_000 + 2  # the bound, plus the run's lifecycle lines
    assert stats.waiting_producers == 0
    assert _counts(workspace) == {"run:p.r": records}  # the default policy drops nothing
    return peak, lags


async def test_memory_is_bounded_by_the_queue_and_the_loop_keeps_running(tmp_path: Path) -> None:
    tracemalloc.start()
    try:
        small_peak, _ = await _overload(tmp_path / "small", 4_000)
        large_peak, lags = await _overload(tmp_path / "large", 16_000)
    finally:
        tracemalloc.stop()
    lags.sort()
    p99 = lags[int(len(lags) * 0.99)]
    print(
        f"\noverload: 4,000 records -> peak {small_peak / 2**20:.2f} MiB traced, 16,000 records ->"
        f" peak {large_peak / 2**20:.2f} MiB; loop lag p50 {statistics.median(lags) * 1e3:.2f}"
        f" ms, p99 {p99 * 1e3:.2f} ms, max {lags[-1] * 1e3:.2f} ms over {len(lags)} ticks"
    )
    # Four times the records, about the same memory: the queue bounds it, not the count.
    # (An unbounded queue would hold most of the 16,000 records, ~4x the small run's peak.)
    assert large_peak < small_peak * 1.5
    # The loop was never blocked for long: producers wait by awaiting, not by blocking.
    assert lags[-1] < 1.0


def test_sync_producers_wait_for_room_and_nothing_is_dropped(tmp_path: Path) -> None:
    import threading

    with Contexta(
        workspace=tmp_path,
        config={"project_name": "p"},
        sinks=_slow(tmp_path),
        queue_size=100,
        max_batch_size=50,
    ) as ctx:

        def produce(index: int) -> None:
            with ctx.run(f"t{index}") as run:
                for i in range(2_000):
                    run.metric("seq", i)

        threads = [threading.Thread(target=produce, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        ctx.flush()
        stats = ctx.statistics()
    assert stats.dropped == 0 and stats.peak_queued <= 100 + 8
    assert _counts(tmp_path) == {f"run:p.t{i}": 2_000 for i in range(4)}


def _check_drops(workspace: Path, attempts: int, counted: int) -> None:
    written = _counts(workspace)
    dropped: Counter[str] = Counter()
    for line in read_family(workspace, "DEGRADATION"):
        assert line["payload"]["degradation_kind"] == "dropped"
        assert "drop_newest" in line["payload"]["reason"]
        dropped[line["payload"]["run_ref"]] += line["payload"]["count"]
    # Every attempt is accounted for: written, or dropped and counted, per run.
    for run_ref in ("run:p.a", "run:p.b"):
        assert written[run_ref] + dropped[run_ref] == attempts
        assert dropped[run_ref] > 0
    assert counted == sum(dropped.values())


def _dropping(workspace: Path) -> Contexta:
    return Contexta(
        workspace=workspace,
        config={"project_name": "p"},
        sinks=_slow(workspace),
        queue_size=50,
        max_batch_size=50,
        overflow="drop_newest",
    )


@pytest.mark.parametrize("face", ["await", "nowait"])
async def test_drop_newest_counts_every_drop_in_statistics_and_degradation_lines(
    tmp_path: Path, face: str
) -> None:
    attempts = 3_000
    async with _dropping(tmp_path) as ctx, ctx.run("a") as a, ctx.run("b") as b:
        for i in range(attempts):
            for run in (a, b):
                if face == "await":
                    await run.metric("seq", i)
                else:
                    run.metric_nowait("seq", i)
            if i % 500 == 0:
                await anyio.lowlevel.checkpoint()  # let the writer take a batch now and then
    _check_drops(tmp_path, attempts, ctx.statistics().dropped)


def test_drop_newest_counts_every_drop_from_the_sync_face(tmp_path: Path) -> None:
    attempts = 3_000
    with _dropping(tmp_path) as ctx:
        with ctx.run("a") as a, ctx.run("b") as b:
            for i in range(attempts):
                a.metric("seq", i)
                b.metric("seq", i)
        stats = ctx.statistics()
    _check_drops(tmp_path, attempts, stats.dropped)


async def test_overflow_raise_raises_queue_full_error_and_keeps_what_it_accepted(
    tmp_path: Path,
) -> None:
    accepted = refused = 0
    async with (
        Contexta(
            workspace=tmp_path,
            config={"project_name": "p"},
            sinks=_slow(tmp_path),
            queue_size=20,
            overflow="raise",
        ) as ctx,
        ctx.run("r") as run,
    ):
        for i in range(500):
            try:
                await run.metric("seq", i)
                accepted += 1
            except QueueFullError as exc:
                assert "queue is full" in str(exc)
                refused += 1
            if i % 50 == 0:
                await anyio.lowlevel.checkpoint()
    assert refused > 0 and accepted > 0
    assert ctx.statistics().dropped == 0  # refused, not silently dropped
    assert _counts(tmp_path) == {"run:p.r": accepted}


async def test_the_nowait_face_raises_queue_full_under_the_default_policy(tmp_path: Path) -> None:
    async with (
        Contexta(
            workspace=tmp_path, config={"project_name": "p"}, sinks=_slow(tmp_path), queue_size=5
        ) as ctx,
        ctx.run("r") as run,
    ):
        with pytest.raises(QueueFullError):
            for i in range(100):
                run.metric_nowait("seq", i)
        await run.metric("seq", 1000)  # the awaited face waits for room instead
    assert ctx.statistics().dropped == 0


# ---- lifecycle lines under overload ------------------------------------------------------


def _lifecycles(workspace: Path) -> dict[str, list[str]]:
    """The statuses each scope's CONTEXT lines carry, in file order."""
    found: dict[str, list[str]] = {}
    for line in read_family(workspace, "CONTEXT"):
        found.setdefault(line["payload_ref"], []).append(line["payload"]["status"])
    return found


def _assert_complete_lifecycles(workspace: Path, samples: int) -> None:
    lifecycles = _lifecycles(workspace)
    sample_refs = [ref for ref in lifecycles if ref.startswith("sample:")]
    assert len(sample_refs) == samples
    for ref, statuses in lifecycles.items():
        assert statuses == ["open", "completed"], (ref, statuses)


@pytest.mark.parametrize("policy", ["drop_newest", "raise"])
def test_a_full_queue_never_drops_or_refuses_a_scope_opening_line(
    tmp_path: Path, policy: str
) -> None:
    samples = 300
    refused = 0
    with Contexta(
        workspace=tmp_path,
        config={"project_name": "p"},
        sinks=_slow(tmp_path),
        queue_size=20,
        max_batch_size=20,
        overflow=policy,  # type: ignore[arg-type]
    ) as ctx:
        with ctx.run("r") as run, run.stage("s") as stage:
            for i in range(samples):
                with stage.sample(f"case-{i}") as sample:
                    for j in range(5):
                        try:
                            sample.metric("m", j)
                        except QueueFullError:
                            refused += 1
        stats = ctx.statistics()
    # The data lines did meet a full queue: dropped or refused...
    assert stats.dropped + refused > 0
    # ... but every scope that has a closing line has its opening line before it.
    _assert_complete_lifecycles(tmp_path, samples)


async def test_drop_newest_never_drops_an_awaited_scope_opening_line(tmp_path: Path) -> None:
    samples = 300
    async with _dropping(tmp_path) as ctx, ctx.run("r") as run, run.stage("s") as stage:
        for i in range(samples):
            async with stage.sample(f"case-{i}") as sample:
                for j in range(5):
                    await sample.metric("m", j)
    assert ctx.statistics().dropped > 0
    _assert_complete_lifecycles(tmp_path, samples)


def _gated(
    tmp_path: Path, queue_size: int = 2, overflow: str = "wait"
) -> tuple[GateSink, Contexta]:
    """A context whose writer holds its first line until the test opens the gate; with
    ``max_batch_size=1`` the queue is empty once the writer holds that line."""
    sink = GateSink(tmp_path)
    ctx = Contexta(
        workspace=tmp_path,
        config={"project_name": "p"},
        sinks=[sink],
        queue_size=queue_size,
        max_batch_size=1,
        overflow=overflow,  # type: ignore[arg-type]
    )
    return sink, ctx


# What a full queue means, by line and policy: the table of BoundedBuffer.offer, which
# docs/reliability.md ("When the queue is full") tells in words.
_FULL_QUEUE_TABLE = {
    ("record", "wait"): "waits",
    ("record", "drop_newest"): "dropped",
    ("record", "raise"): "refused",
    ("record_nowait", "wait"): "refused",
    ("record_nowait", "drop_newest"): "dropped",
    ("record_nowait", "raise"): "refused",
    ("opening", "wait"): "waits",
    ("opening", "drop_newest"): "queued past the bound",
    ("opening", "raise"): "queued past the bound",
    ("closing", "wait"): "queued past the bound",
    ("closing", "drop_newest"): "queued past the bound",
    ("closing", "raise"): "queued past the bound",
}


@pytest.mark.parametrize(("line", "policy"), list(_FULL_QUEUE_TABLE))
def test_a_full_queue_means_what_the_overflow_table_says(
    tmp_path: Path, line: str, policy: str
) -> None:
    sink, ctx = _gated(tmp_path, queue_size=2, overflow=policy)
    with ctx.run("r") as run:
        assert sink.entered.wait(30)  # the writer holds the run's opening line: queue empty
        stage = run.stage("s").__enter__()  # 1 line queued
        run.metric_nowait("fill", 1)  # 2: the queue is full
        calls = {
            "record": lambda: run.metric("probe", 1),
            "record_nowait": lambda: run.metric_nowait("probe", 1),
            "opening": lambda: run.stage("t").__enter__().close(),
            "closing": stage.close,
        }
        outcome: list[str] = []

        def attempt() -> None:
            try:
                calls[line]()
            except QueueFullError:
                outcome.append("refused")
            else:
                outcome.append("returned")

        producer = threading.Thread(target=attempt)
        producer.start()
        # Polls until the call returned or parked; the cap only turns a bug into a failure.
        deadline = time.monotonic() + 30
        while not outcome and ctx.statistics().waiting_producers == 0:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        stats = ctx.statistics()
        if not outcome:
            found = "waits"
        elif outcome == ["refused"]:
            found = "refused"
        elif stats.dropped == 1:
            found = "dropped"
        else:
            assert stats.queued > 2
            found = "queued past the bound"
        sink.gate.set()
        producer.join(30)
        assert not producer.is_alive()
        stage.close()
    ctx.close()
    assert found == _FULL_QUEUE_TABLE[line, policy]
    probes = [
        record
        for record in read_family(tmp_path, "RECORD")
        if record["payload"]["payload"]["metric_key"] == "probe"
    ]
    assert len(probes) == (1 if line == "record" and found == "waits" else 0)
    for ref, statuses in _lifecycles(tmp_path).items():  # lifecycle lines are never lost
        assert statuses in (["open", "completed"], ["open", "cancelled"]), (ref, statuses)


async def test_an_opening_cancelled_while_it_waits_for_room_leaves_no_lines(
    tmp_path: Path,
) -> None:
    sink, ctx = _gated(tmp_path)
    try:
        async with ctx, ctx.run("r") as run:
            await anyio.to_thread.run_sync(sink.entered.wait)  # the writer holds the run's line
            await run.metric("m", 1)
            await run.metric("m", 2)  # the queue is full now

            async def open_stage() -> None:
                async with run.stage("never"):
                    raise AssertionError("the stage cannot open while the queue is full")

            async with anyio.create_task_group() as tg:
                tg.start_soon(open_stage)
                await until_parked(ctx, 1)
                tg.cancel_scope.cancel()
            sink.gate.set()
            async with run.stage("later"):
                pass
    finally:
        sink.gate.set()
    lifecycles = _lifecycles(tmp_path)
    assert "stage:p.r.never" not in lifecycles
    assert lifecycles["stage:p.r.later"] == ["open", "completed"]
    assert lifecycles["run:p.r"] == ["open", "completed"]
    assert _counts(tmp_path) == {"run:p.r": 2}


async def test_closing_a_scope_whose_opening_waits_for_room_queues_the_opening_first(
    tmp_path: Path,
) -> None:
    sink, ctx = _gated(tmp_path)
    try:
        async with ctx, ctx.run("r") as run:
            await anyio.to_thread.run_sync(sink.entered.wait)
            await run.metric("m", 1)
            await run.metric("m", 2)  # the queue is full

            async def open_stage() -> None:
                async with run.stage("s"):
                    pass

            # Closing queues the waiting opening line at once: the task gets in and out
            # without the writer making room (fail_after turns a hang into a failure).
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(open_stage)
                    await until_parked(ctx, 1)
                    run.close()  # closes the stage too, while its opening line waits
            sink.gate.set()
    finally:
        sink.gate.set()
    lifecycles = _lifecycles(tmp_path)
    assert lifecycles["stage:p.r.s"] == ["open", "completed"]
    assert lifecycles["run:p.r"] == ["open", "completed"]


async def test_closing_the_context_while_a_run_waits_to_open_closes_it_after_its_opening(
    tmp_path: Path,
) -> None:
    sink, ctx = _gated(tmp_path)
    statuses: list[str] = []
    try:
        async with ctx:
            async with ctx.run("r") as run:
                await anyio.to_thread.run_sync(sink.entered.wait)
                await run.metric("m", 1)
                await run.metric("m", 2)

            async def open_run() -> None:
                async with ctx.run("late") as late:
                    statuses.append(late.status)

            async with anyio.create_task_group() as tg:
                tg.start_soon(open_run)
                await until_parked(ctx, 1)
                ctx._close_open_runs()  # what aclose() does first, while "late" waits
                sink.gate.set()
    finally:
        sink.gate.set()
    assert statuses == ["cancelled"]  # entered, already closed by the context
    assert _lifecycles(tmp_path)["run:p.late"] == ["open", "cancelled"]


def test_no_run_opens_once_the_context_has_begun_closing(tmp_path: Path) -> None:
    ctx = Contexta(workspace=tmp_path, config={"project_name": "p"})
    with ctx.run("warm") as run:
        run.metric("m", 0)
    ctx._close_open_runs()  # the first half of close(), as another thread runs it
    with pytest.raises(ClosedScopeError):
        ctx.run("late").__enter__()
    ctx.close()
    assert "run:p.late" not in _lifecycles(tmp_path)


@pytest.mark.parametrize("policy", ["drop_newest", "raise"])
def test_opening_lines_past_the_bound_stay_within_twice_the_queue_size(
    tmp_path: Path, policy: str
) -> None:
    sink = GateSink(tmp_path)
    ctx = Contexta(
        workspace=tmp_path,
        config={"project_name": "p"},
        sinks=[sink],
        queue_size=10,
        max_batch_size=10,
        overflow=policy,  # type: ignore[arg-type]
    )
    opened = threading.Event()

    def capture() -> None:
        with ctx.run("r") as run, run.stage("s") as stage:
            for i in range(200):
                with stage.sample(f"c{i}"):
                    pass
        opened.set()

    worker = threading.Thread(target=capture)
    worker.start()
    try:
        # The disk stalls: the openings fill the queue to twice its size, then wait.
        with anyio.from_thread.start_blocking_portal() as portal:
            portal.call(until_parked, ctx, 1)
        assert ctx.statistics().queued <= 2 * 10
        assert not opened.is_set()
    finally:
        sink.gate.set()
        worker.join(30)
    ctx.close()
    # + the closing lines of the scopes open at the cap (a sample, the stage, the run)
    assert ctx.statistics().peak_queued <= 2 * 10 + 3
    _assert_complete_lifecycles(tmp_path, 200)


async def test_producers_woken_together_resume_one_loop_turn_at_a_time(tmp_path: Path) -> None:
    # 80 producers wait for room; one writer batch lets all their lines in. They resume a group
    # of 4 per turn of the loop, the last of each group waking the next, so the loop's other
    # tasks (here a task that only yields) run between the groups, not after the whole herd.
    # (trio runs the tasks of one turn in random order: two groups may pass between two turns
    # of the other task.)
    sink = GateSink(tmp_path)
    producers = 80
    ctx = Contexta(
        workspace=tmp_path,
        config={"project_name": "p"},
        sinks=[sink],
        queue_size=producers,
        max_batch_size=producers,
    )
    resumed = 0
    seen: list[int] = []
    done = anyio.Event()
    try:
        async with ctx, ctx.run("r") as run:
            await anyio.to_thread.run_sync(sink.entered.wait)  # the writer holds the run's line
            for i in range(producers):
                await run.metric("fill", i)  # the queue is full

            async def producer(i: int) -> None:
                nonlocal resumed
                await run.metric("m", i)  # waits for room
                resumed += 1
                if resumed == producers:
                    done.set()

            async def other_task() -> None:
                while not done.is_set():
                    seen.append(resumed)
                    await anyio.lowlevel.checkpoint()

            async with anyio.create_task_group() as tg:
                for i in range(producers):
                    tg.start_soon(producer, i)
                await until_parked(ctx, producers)
                tg.start_soon(other_task)
                sink.gate.set()
            seen.append(resumed)
    finally:
        sink.gate.set()
    steps = [b - a for a, b in itertools.pairwise(seen)]
    assert seen[-1] == producers and len(steps) >= producers // 8
    assert max(steps) <= 8, f"up to {max(steps)} producers resumed in one turn of the loop"
    assert _counts(tmp_path) == {"run:p.r": 2 * producers}
