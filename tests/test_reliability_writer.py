"""The writer thread itself: nothing the library logs can stop it, a bad backoff is refused at
the call, and a writer that stops anyway (a bug) is raised to every caller, never a hang."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

from contexta_async import ConfigurationError, Contexta, LocalJsonlSink, WriterStoppedError
from contexta_async.sinks import Chunk

from ._children.verify import read_family
from ._sinks import until_parked

CHILDREN = Path(__file__).parent / "_children"
HANG = 60.0  # seconds: only a hang can exceed it


def _values(workspace: Path) -> Counter[int]:
    return Counter(
        line["payload"]["payload"]["value"]
        for line in read_family(workspace, "RECORD")
        if line["payload_type"] == "MetricRecord"
    )


def _run_with_stdout_closed(child_script: str, *args: str) -> tuple[int, bytes]:
    """Run a child that prints "ready", close our end of its stdout (as `head` does once it
    has read enough), let it go on, and return its exit status and stderr."""
    child = subprocess.Popen(
        [sys.executable, str(CHILDREN / child_script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None and child.stdin is not None
    assert child.stdout.readline() == b"ready\n"
    child.stdout.close()
    child.stdin.write(b"go\n")
    child.stdin.flush()
    try:
        _, stderr = child.communicate(timeout=HANG)
    finally:
        child.kill()
    return child.returncode, stderr


def test_a_closed_stdout_cannot_stop_the_writer_while_it_retries_a_failed_write(
    tmp_path: Path,
) -> None:
    # `python eval.py | head`: structlog's default logger prints to stdout, so once the reader
    # has gone every log line raises BrokenPipeError, here inside the retry of a failed write.
    count = 100
    returncode, stderr = _run_with_stdout_closed("closed_stdout.py", str(tmp_path), str(count))
    assert returncode == 0, stderr.decode()[-2000:]
    # The write failed, was retried with the fault cleared, and every record is on disk once.
    assert _values(tmp_path) == Counter(range(count))
    assert b"writer" not in stderr


@pytest.mark.parametrize("backoff", [float("inf"), 3600.5, 10**400], ids=["inf", "3600.5", "1e400"])
def test_a_retry_backoff_the_writer_cannot_sleep_is_refused_at_the_call(
    tmp_path: Path, backoff: Any
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Contexta(workspace=tmp_path, config={"project_name": "p"}, retry_backoff=backoff)
    assert caught.value.field == "retry_backoff"
    assert "from 0 to 3600" in str(caught.value)


def test_the_longest_retry_backoff_is_accepted(tmp_path: Path) -> None:
    with Contexta(workspace=tmp_path, config={"project_name": "p"}, retry_backoff=3600) as ctx:
        assert ctx.statistics().failed == 0


class _Bug(BaseException):
    """Not an Exception: no handler of the writer's catches it, as a bug could escape."""


class _BuggySink(LocalJsonlSink):
    """Writes through, until the test arms it: then its next RECORD write waits for the go and
    raises an error that stops the writer thread."""

    def __init__(self, workspace: Path) -> None:
        super().__init__(workspace / "cache" / "capture")
        self.armed = False
        self.entered = threading.Event()
        self.go = threading.Event()

    def write(self, chunk: Chunk) -> None:
        if self.armed and chunk.family == "RECORD":
            self.entered.set()
            self.go.wait()
            raise _Bug("sink bug")
        super().write(chunk)


def test_a_writer_stopped_by_a_bug_is_raised_to_producers_and_flush_never_a_hang(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    sink = _BuggySink(tmp_path)
    ctx = Contexta(workspace=tmp_path, config={"project_name": "p"}, sinks=[sink], queue_size=4)
    with pytest.raises(WriterStoppedError) as closed:
        with ctx:
            with ctx.run("a") as run:
                run.metric("m", 0)
                ctx.flush()
                sink.armed = True
                run.metric("m", 1)
                assert sink.entered.wait(HANG)  # the writer holds that line
                for i in range(2, 6):
                    run.metric("m", i)  # the queue is full now
                outcome: list[BaseException | None] = []

                def parked_producer() -> None:
                    try:
                        run.metric("m", 6)  # waits for room that never comes
                    except BaseException as exc:
                        outcome.append(exc)
                    else:
                        outcome.append(None)

                producer = threading.Thread(target=parked_producer, daemon=True)
                producer.start()
                deadline = HANG
                while ctx.statistics().waiting_producers == 0 and producer.is_alive():
                    producer.join(0.001)
                    deadline -= 0.001
                    assert deadline > 0, "the producer never parked"
                sink.go.set()  # the writer thread dies of the bug
                producer.join(HANG)
                assert not producer.is_alive(), "a parked producer hangs on a dead writer"
                assert len(outcome) == 1 and isinstance(outcome[0], WriterStoppedError)
                with pytest.raises(WriterStoppedError) as flushed:
                    ctx.flush(timeout=HANG)
                with pytest.raises(WriterStoppedError):
                    run.metric("m", 7)  # refused at the call: nothing would write it
                with pytest.raises(WriterStoppedError):
                    run.metric_nowait("m", 8)
    assert "_Bug('sink bug')" in str(flushed.value) and flushed.value.pending == 5
    assert closed.value.error == "_Bug('sink bug')"
    stderr = capfd.readouterr().err
    assert "the writer thread stopped" in stderr and "sink bug" in stderr  # and its traceback
    assert "Traceback" in stderr
    assert _values(tmp_path) == Counter([0])


async def test_an_async_producer_waiting_for_room_gets_writer_stopped_error_not_a_hang(
    tmp_path: Path,
) -> None:
    sink = _BuggySink(tmp_path)
    ctx = Contexta(workspace=tmp_path, config={"project_name": "p"}, sinks=[sink], queue_size=4)
    outcome: list[BaseException] = []
    with pytest.raises(WriterStoppedError):
        async with ctx, ctx.run("a") as run:
            await run.metric("m", 0)
            await ctx.aflush()
            sink.armed = True
            await run.metric("m", 1)
            assert await anyio.to_thread.run_sync(sink.entered.wait, HANG)
            for i in range(2, 6):
                await run.metric("m", i)  # the queue is full now

            async def parked_producer() -> None:
                try:
                    await run.metric("m", 6)  # waits for room that never comes
                except WriterStoppedError as exc:
                    outcome.append(exc)

            with anyio.fail_after(HANG):  # only a hang reaches it
                async with anyio.create_task_group() as group:
                    group.start_soon(parked_producer)
                    await until_parked(ctx, 1)
                    sink.go.set()  # the writer thread dies of the bug
            with pytest.raises(WriterStoppedError):
                await ctx.aflush()
    assert len(outcome) == 1 and outcome[0].pending == 5
    assert _values(tmp_path) == Counter([0])


def test_a_closed_stdout_cannot_make_close_raise_while_it_reports_a_sink_that_failed_to_close(
    tmp_path: Path,
) -> None:
    returncode, stderr = _run_with_stdout_closed("closed_stdout_close.py", str(tmp_path))
    assert returncode == 0, stderr.decode()[-2000:]
    assert [line["payload"]["payload"]["value"] for line in read_family(tmp_path, "RECORD")] == [
        1.0
    ]


class _ClosesCounted(_BuggySink):
    def __init__(self, workspace: Path) -> None:
        super().__init__(workspace)
        self.closes = 0

    def close(self) -> None:
        self.closes += 1
        super().close()


def test_one_close_after_a_writer_crash_closes_the_context_its_runs_and_its_sinks(
    tmp_path: Path,
) -> None:
    # The open runs' closing lines cannot be queued once the writer has stopped: the first
    # of them raised out of close() before the pipeline was closed, and it took three calls.
    sink = _ClosesCounted(tmp_path)
    ctx = Contexta(workspace=tmp_path, config={"project_name": "p"}, sinks=[sink])
    run = ctx.run("a").__enter__()
    stage = run.stage("s").__enter__()
    stage.metric("m", 0)
    ctx.flush()
    sink.armed = True
    sink.go.set()
    stage.metric("m", 1)
    assert sink.entered.wait(HANG)
    with pytest.raises(WriterStoppedError):
        ctx.flush(HANG)  # the writer has stopped on that line
    with pytest.raises(WriterStoppedError):
        ctx.close()
    assert ctx.closed
    assert sink.closes == 1
    assert (run.status, stage.status) == ("cancelled", "cancelled")
    ctx.close()  # closed: returns at once
    assert sink.closes == 1


def test_a_scope_opening_while_the_writer_stops_is_not_entered(tmp_path: Path) -> None:
    # Its opening line waits for room when the writer stops: the line is dropped, so the
    # scope never opened; `with ctx.run(...)` used to enter it all the same.
    sink = _BuggySink(tmp_path)
    ctx = Contexta(workspace=tmp_path, config={"project_name": "p"}, sinks=[sink], queue_size=1)
    run = ctx.run("a").__enter__()
    run.metric("m", 0)
    ctx.flush()
    sink.armed = True
    run.metric("m", 1)
    assert sink.entered.wait(HANG)  # the writer holds that line
    run.metric("m", 2)  # the queue is full now
    outcome: list[BaseException | str] = []

    def opener() -> None:
        try:
            with ctx.run("b") as opened:
                outcome.append(f"entered, {opened.status}")
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=opener, daemon=True)
    thread.start()
    while ctx.statistics().waiting_producers == 0 and thread.is_alive():
        thread.join(0.001)
    sink.go.set()  # the writer stops on the line it holds
    thread.join(HANG)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], WriterStoppedError), outcome
    with pytest.raises(WriterStoppedError):
        ctx.close()
