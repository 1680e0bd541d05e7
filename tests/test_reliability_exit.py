"""Cancellation and exit: cancelled scopes say so, closing drains, exit neither loses nor hangs."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from contexta_async import Contexta

from ._children.verify import read_family
from ._sinks import GateSink, until_parked

CHILDREN = Path(__file__).parent / "_children"
EXIT_MARGIN = 10.0  # seconds on top of shutdown_timeout: only a hang can exceed it


def _statuses(workspace: Path) -> dict[str, str]:
    """The newest CONTEXT status per ref."""
    return {
        line["payload_ref"]: line["payload"]["status"] for line in read_family(workspace, "CONTEXT")
    }


def _values(workspace: Path, run_ref: str) -> list[int]:
    return [
        line["payload"]["payload"]["value"]
        for line in read_family(workspace, "RECORD")
        if line["payload"]["envelope"]["run_ref"] == run_ref
        and line["payload_type"] == "MetricRecord"
    ]


# ---- cancellation --------------------------------------------------------------------------


async def test_a_task_cancelled_by_its_task_group_closes_its_sample_and_stage_as_cancelled(
    tmp_path: Path,
) -> None:
    async with (
        Contexta(workspace=tmp_path, config={"project_name": "p"}) as ctx,
        ctx.run("r") as run,
    ):
        inside = anyio.Event()

        async def work() -> None:
            async with run.stage("s") as stage, stage.sample("case") as sample:
                await sample.metric("m", 1)
                inside.set()
                await anyio.sleep_forever()

        async with anyio.create_task_group() as tg:
            tg.start_soon(work)
            await inside.wait()
            tg.cancel_scope.cancel()
        await run.metric("after", 2)  # the run itself goes on
    statuses = _statuses(tmp_path)
    assert statuses["sample:p.r.s.case"] == "cancelled"
    assert statuses["stage:p.r.s"] == "cancelled"
    assert statuses["run:p.r"] == "completed"
    assert _values(tmp_path, "run:p.r") == [1, 2]


# asyncio only: this is about asyncio's own cancellation (Task.cancel, asyncio.timeout); the
# task-group test above and the trio test below cover the backend-neutral and trio ways.
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("how", ["task.cancel", "asyncio.timeout"])
async def test_an_asyncio_cancelled_task_closes_its_scopes_as_cancelled(
    tmp_path: Path, how: str
) -> None:
    async with Contexta(workspace=tmp_path, config={"project_name": "p"}) as ctx:
        inside = asyncio.Event()

        async def work() -> None:
            async with ctx.run("r") as run, run.stage("s") as stage, stage.sample("c") as sample:
                await sample.metric("m", 1)
                inside.set()
                await asyncio.sleep(3600)

        if how == "task.cancel":
            task = asyncio.create_task(work())
            await inside.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await work()
    statuses = _statuses(tmp_path)
    assert statuses == {
        "run:p.r": "cancelled",
        "stage:p.r.s": "cancelled",
        "sample:p.r.s.c": "cancelled",
    }
    reasons = [line["payload"]["failure_reason"] for line in read_family(tmp_path, "CONTEXT")]
    assert "CancelledError" in reasons


async def test_a_cancelled_sync_scope_inside_a_task_closes_as_cancelled_on_every_backend(
    tmp_path: Path, anyio_backend: str
) -> None:
    # The sync face inside async code: `with` exits with the backend's own cancellation
    # exception (trio.Cancelled on trio), which must read as cancelled, not failed.
    with Contexta(workspace=tmp_path, config={"project_name": "p"}) as ctx:
        with anyio.CancelScope() as scope:
            with ctx.run("r") as run:
                run.metric("m", 1)
                scope.cancel()
                await anyio.sleep_forever()
        assert scope.cancelled_caught
    assert _statuses(tmp_path) == {"run:p.r": "cancelled"}
    reasons = [line["payload"]["failure_reason"] for line in read_family(tmp_path, "CONTEXT")]
    named = {reason.split(":")[0] for reason in reasons if reason}
    assert named == {"CancelledError" if anyio_backend == "asyncio" else "Cancelled"}


async def test_closing_the_context_under_cancellation_still_drains_everything_captured(
    tmp_path: Path,
) -> None:
    queue_size = 2_000
    sink = GateSink(tmp_path)  # the writer holds the first line until the queue is full
    ctx = Contexta(
        workspace=tmp_path, config={"project_name": "p"}, sinks=[sink], queue_size=queue_size
    )
    captured = 0

    async def cancel_once_full(scope: anyio.CancelScope) -> None:
        await until_parked(ctx, 1)
        scope.cancel()
        sink.gate.set()

    try:
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as scope:
                tg.start_soon(cancel_once_full, scope)
                # The cancellation hits the producers, the run and the context's own exit; the
                # exit is shielded, so it still drains the full queue before returning.
                async with ctx, ctx.run("r") as run:
                    while True:
                        await run.metric("seq", captured)
                        captured += 1
    finally:
        sink.gate.set()
    assert scope.cancelled_caught
    assert captured >= queue_size - 1  # the queue was full (run's opening line aside)
    stats = ctx.statistics()
    assert stats.failed == 0 and stats.queued == 0 and stats.written == stats.enqueued
    values = _values(tmp_path, "run:p.r")
    # The capture waiting for room when the cancellation hit may or may not have got in.
    assert values in (list(range(captured)), list(range(captured + 1)))
    assert _statuses(tmp_path)["run:p.r"] == "cancelled"


# ---- exit ----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["return", "exception", "sys_exit"])
def test_a_sync_program_that_never_closes_its_context_loses_nothing_at_exit(
    tmp_path: Path, how: str
) -> None:
    count = 20_000
    proc = subprocess.run(
        [sys.executable, str(CHILDREN / "never_closes.py"), str(tmp_path), str(count), how],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == {"return": 0, "exception": 1, "sys_exit": 2}[how], proc.stderr
    assert b"contexta-async:" not in proc.stderr  # nothing was reported lost
    assert _values(tmp_path, "run:exit.closed") == list(range(count))
    assert _values(tmp_path, "run:exit.left-open") == list(range(100))
    statuses = _statuses(tmp_path)
    assert statuses["run:exit.closed"] == "completed"
    assert statuses["stage:exit.closed.work"] == "completed"
    # Exit drains the queue and closes what the program left open, saying why.
    assert statuses["run:exit.left-open"] == "cancelled"
    [last] = [
        line["payload"]
        for line in read_family(tmp_path, "CONTEXT")
        if line["payload_ref"] == "run:exit.left-open"
    ][-1:]
    assert last["failure_reason"] == "the program exited before the run was closed"


@pytest.mark.parametrize(
    ("mode", "returncode"), [("atexit", 0), ("close", 3), ("async", 1)], ids=str
)
def test_exit_with_a_stuck_sink_takes_at_most_the_shutdown_timeout_and_reports_the_loss(
    mode: str, returncode: int
) -> None:
    shutdown_timeout = 1.0
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(CHILDREN / "stuck_sink.py"), mode, str(shutdown_timeout)],
        capture_output=True,
        timeout=shutdown_timeout + EXIT_MARGIN + 30,  # a hang fails here instead of blocking
    )
    elapsed = time.monotonic() - started
    print(f"\nexit with a stuck sink ({mode}): {elapsed:.2f} s, shutdown_timeout 1 s")
    assert elapsed < shutdown_timeout + EXIT_MARGIN
    assert proc.returncode == returncode
    # 100 metrics + the run's open and close lines: all stuck behind the hung write.
    assert b"shutdown timed out after 1s with 102 line(s) not yet durable" in proc.stderr


def test_exit_with_several_stuck_contexts_takes_one_shutdown_timeout_not_one_per_context() -> None:
    shutdown_timeout, contexts = 4.0, 4  # one after another they would take 16 s
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(CHILDREN / "stuck_sink.py"), "atexit_many", str(shutdown_timeout)],
        capture_output=True,
        timeout=contexts * shutdown_timeout + EXIT_MARGIN + 30,  # a hang fails here
    )
    elapsed = time.monotonic() - started
    print(f"\nexit with {contexts} stuck contexts: {elapsed:.2f} s, shutdown_timeout 4 s")
    assert proc.returncode == 0
    assert elapsed < shutdown_timeout + EXIT_MARGIN  # only the sum of the timeouts exceeds it
    reported = b"shutdown timed out after 4s with 102 line(s) not yet durable"
    assert proc.stderr.count(reported) == contexts, proc.stderr
