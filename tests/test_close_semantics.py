"""Closing a context: every close() returns only when the close is over, and says how it went.

A second close (on another thread, from ``async with`` and a ``close()``, or the at-exit hook
after an interrupted close) waits for the close in progress and reports the same outcome; a
close that was interrupted leaves the drain to the next one.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from contexta_async import Contexta, LifecycleError, LocalJsonlSink, ShutdownTimeoutError
from contexta_async.sinks import Chunk

from ._children.verify import read_family
from ._sinks import GateSink

CHILDREN = Path(__file__).parent / "_children"
GUARD = 60.0  # seconds: only a hang reaches it


def _values(workspace: Path, run_ref: str) -> list[int]:
    return [
        line["payload"]["payload"]["value"]
        for line in read_family(workspace, "RECORD")
        if line["payload"]["envelope"]["run_ref"] == run_ref
        and line["payload_type"] == "MetricRecord"
    ]


def _until_closing(ctx: Contexta) -> None:
    """Return once a close has begun (its drain is held by the sink's gate)."""
    give_up = time.monotonic() + GUARD
    while not ctx.closed:
        assert time.monotonic() < give_up, "the first close never began"
        time.sleep(0.001)


class _Closer(threading.Thread):
    """Calls ctx.close() on its own thread and keeps what it raised."""

    def __init__(self, ctx: Contexta) -> None:
        super().__init__(daemon=True)
        self.ctx = ctx
        self.raised: BaseException | None = None
        self.durable_at_return: tuple[int, int] | None = None

    def run(self) -> None:
        try:
            self.ctx.close()
        except BaseException as exc:
            self.raised = exc
        stats = self.ctx.statistics()
        self.durable_at_return = (stats.written, stats.enqueued)


def _held_context(tmp_path: Path, shutdown_timeout: float) -> tuple[Contexta, GateSink]:
    """A context whose writer is held inside its first write, with 100 metrics captured."""
    sink = GateSink(tmp_path)
    ctx = Contexta(
        workspace=tmp_path,
        config={"project_name": "p"},
        sinks=[sink],
        shutdown_timeout=shutdown_timeout,
    )
    with ctx.run("r") as run:
        for i in range(100):
            run.metric("seq", i)
    assert sink.entered.wait(GUARD)
    return ctx, sink


def test_a_second_close_waits_for_the_close_in_progress_and_returns_once_all_is_durable(
    tmp_path: Path,
) -> None:
    ctx, sink = _held_context(tmp_path, shutdown_timeout=GUARD)
    first, second = _Closer(ctx), _Closer(ctx)
    try:
        first.start()
        _until_closing(ctx)
        second.start()
    finally:
        sink.gate.set()  # the drain can finish now; a close that returned before saw none of it
    first.join(GUARD)
    second.join(GUARD)
    assert first.raised is None and second.raised is None
    stats = ctx.statistics()
    assert stats.written == stats.enqueued == 102  # run opening + 100 metrics + run closing
    assert second.durable_at_return == (102, 102)
    assert _values(tmp_path, "run:p.r") == list(range(100))


def test_a_second_close_on_another_thread_raises_the_timeout_of_the_close_in_progress(
    tmp_path: Path,
) -> None:
    # The first close's timeout only has to outlast the few statements until the second starts.
    ctx, sink = _held_context(tmp_path, shutdown_timeout=1.0)
    first = _Closer(ctx)
    try:
        first.start()
        _until_closing(ctx)
        # The writer never leaves its write: no close may return as if the lines were durable.
        with pytest.raises(ShutdownTimeoutError) as second:
            ctx.close()
        first.join(GUARD)
    finally:
        sink.gate.set()
    assert isinstance(first.raised, ShutdownTimeoutError)
    assert first.raised.pending == second.value.pending == 102
    ctx.close()  # the close is over: a later call returns at once


async def test_an_aclose_during_a_close_on_another_thread_raises_its_timeout(
    tmp_path: Path,
) -> None:
    # The first close's timeout only has to outlast the few statements until the second starts.
    ctx, sink = _held_context(tmp_path, shutdown_timeout=1.0)
    first = _Closer(ctx)
    try:
        first.start()
        _until_closing(ctx)
        with pytest.raises(ShutdownTimeoutError) as second:
            await ctx.aclose()
        first.join(GUARD)
    finally:
        sink.gate.set()
    assert isinstance(first.raised, ShutdownTimeoutError)
    assert second.value.pending == 102
    await ctx.aclose()


def test_ctrl_c_during_close_leaves_the_drain_to_the_at_exit_hook(tmp_path: Path) -> None:
    count = 5_000
    proc = subprocess.run(
        [sys.executable, str(CHILDREN / "interrupted_close.py"), str(tmp_path), str(count)],
        capture_output=True,
        timeout=GUARD,
    )
    assert b"KeyboardInterrupt" in proc.stderr, proc.stderr
    assert b"contexta-async:" not in proc.stderr  # nothing was reported lost...
    assert _values(tmp_path, "run:exit.interrupted") == list(range(count))  # ...and nothing was


@pytest.mark.parametrize(
    ("mode", "raised"),
    [
        ("thread", b"worker: ClosedScopeError"),
        ("executor", b"worker: ClosedScopeError"),
        ("flush", b"worker: ShutdownTimeoutError"),
        ("close", b"worker: ClosedScopeError"),
    ],
)
def test_exit_goes_on_when_a_non_daemon_thread_waits_on_a_stuck_sink_and_reports_the_loss(
    mode: str, raised: bytes
) -> None:
    # Python joins non-daemon threads before the at-exit close runs: the thread waiting on the
    # stuck writer is let go with an error once the writer made no progress for the timeout.
    proc = subprocess.run(
        [sys.executable, str(CHILDREN / "stuck_parked.py"), mode, "1"],
        capture_output=True,
        timeout=GUARD,  # a hang fails here
    )
    assert proc.returncode == 0, proc.stderr
    assert raised in proc.stderr, proc.stderr
    # The loss is reported: by the close that timed out, else by the at-exit close.
    reporter = b"close raised" if mode == "close" else b"contexta-async"
    assert reporter + b": shutdown timed out after 1s with " in proc.stderr, proc.stderr


def test_a_non_daemon_thread_still_capturing_after_main_returns_loses_nothing(
    tmp_path: Path,
) -> None:
    count = 20_000
    proc = subprocess.run(
        [sys.executable, str(CHILDREN / "worker_outlives_main.py"), str(tmp_path), str(count)],
        capture_output=True,
        timeout=GUARD,
    )
    assert proc.returncode == 0, proc.stderr
    assert b"contexta-async:" not in proc.stderr
    assert _values(tmp_path, "run:exit.worker") == list(range(count))


class _CallingSink(LocalJsonlSink):
    """Calls ctx.flush() or ctx.close() from its write, on the writer thread, and keeps what
    the call raised."""

    def __init__(self, workspace: Path, call: str) -> None:
        super().__init__(workspace / "cache" / "capture", name="local-jsonl")
        self.call = call
        self.ctx: Contexta | None = None
        self.raised: list[BaseException] = []

    def write(self, chunk: Chunk) -> None:
        super().write(chunk)
        if chunk.family == "RECORD" and self.ctx is not None and not self.raised:
            try:
                getattr(self.ctx, self.call)()
            except BaseException as exc:
                self.raised.append(exc)


@pytest.mark.parametrize("call", ["flush", "close"])
def test_flush_or_close_on_the_writer_thread_raises_lifecycle_error_instead_of_deadlocking(
    tmp_path: Path, call: str
) -> None:
    sink = _CallingSink(tmp_path, call)
    ctx = Contexta(workspace=tmp_path, config={"project_name": "p"}, sinks=[sink])
    sink.ctx = ctx
    with ctx.run("r") as run:
        run.metric("m", 1)
    ctx.flush(timeout=GUARD)  # the writer is not stuck waiting for itself
    ctx.close()
    [raised] = sink.raised
    assert isinstance(raised, LifecycleError)
    assert f"{call}() was called on the writer thread" in str(raised)
    assert _values(tmp_path, "run:p.r") == [1]
    statuses = [line["payload"]["status"] for line in read_family(tmp_path, "CONTEXT")]
    assert statuses == ["open", "completed"]  # the refused close cancelled nothing


class _SlowSink(GateSink):
    """A GateSink that says when it is closed."""

    def __init__(self, workspace: Path) -> None:
        super().__init__(workspace)
        self.closed = threading.Event()

    def close(self) -> None:
        super().close()
        self.closed.set()


def _open_files_under(directory: Path) -> list[str]:
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = Path(fd).readlink()
        except OSError:
            continue
        if target.is_relative_to(directory):
            found.append(target.name)
    return found


def test_a_sink_left_open_by_a_timed_out_close_is_closed_when_the_writer_finishes(
    tmp_path: Path,
) -> None:
    sink = _SlowSink(tmp_path)
    ctx = Contexta(
        workspace=tmp_path, config={"project_name": "p"}, sinks=[sink], shutdown_timeout=0
    )
    with ctx.run("r") as run:
        for i in range(100):
            run.metric("seq", i)
    assert sink.entered.wait(GUARD)
    with pytest.raises(ShutdownTimeoutError):
        ctx.close()  # the sink is slow, not stuck: the writer goes on after close gave up
    assert not sink.closed.is_set()  # never under a writer still in a sink
    sink.gate.set()
    assert sink.closed.wait(GUARD)  # the writer closed it once done
    capture = tmp_path / "cache" / "capture"
    assert _open_files_under(capture) == []
    assert (capture / "record.index").stat().st_size > 0  # the pending frame was written
    assert _values(tmp_path, "run:p.r") == list(range(100))


_LATE_IMPORT = """
import sys, threading

def late():
    threading.main_thread().join()  # main has returned: the interpreter is shutting down
    from contexta_async import Contexta

    with Contexta(workspace=sys.argv[1], config={"project_name": "exit"}) as ctx:
        with ctx.run("late") as run:
            run.metric("seq", 0)

threading.Thread(target=late).start()
"""


def test_contexta_imported_while_the_interpreter_shuts_down_still_captures(
    tmp_path: Path,
) -> None:
    # Registering an exit hook then raises RuntimeError: the import must not.
    proc = subprocess.run(
        [sys.executable, "-c", _LATE_IMPORT, str(tmp_path)], capture_output=True, timeout=GUARD
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    assert _values(tmp_path, "run:exit.late") == [0]
