"""A process forked while capturing: the child keeps capturing, the parent is unaffected.

The child inherits the context but not its writer thread, and perhaps locks that another
thread held at the fork. It must start afresh (as OpenTelemetry's batch processors do): write
its own lines once, never the parent's queued ones, and never hang.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from contexta_async import Contexta
from contexta_async._pipeline import _close_at_exit
from contexta_async.readers._index import load_index

from ._children.verify import read_family
from ._sinks import GateSink

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")

CHILD_DEADLINE = 60.0  # seconds; only a hang comes near it


def _run_forked(child: Callable[[], None]) -> int:
    """Fork, run ``child`` in the child, and return its exit status (1 on an exception)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which never returns to pytest
        status = 0
        try:
            child()
        except BaseException:
            traceback.print_exc()
            status = 1
        finally:
            sys.stderr.flush()
            os._exit(status)
    deadline = time.monotonic() + CHILD_DEADLINE
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError(f"the forked child hung for {CHILD_DEADLINE} s")


def _metrics(workspace: Path) -> Counter[tuple[str, int]]:
    return Counter(
        (line["payload"]["envelope"]["run_ref"], line["payload"]["payload"]["value"])
        for line in read_family(workspace, "RECORD")
        if line["payload_type"] == "MetricRecord"
    )


def _statuses(workspace: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in read_family(workspace, "CONTEXT"):
        found.setdefault(line["payload_ref"], []).append(line["payload"]["status"])
    return found


def test_a_child_forked_mid_capture_writes_its_own_lines_once_and_the_parents_never(
    tmp_path: Path,
) -> None:
    sink = GateSink(tmp_path)  # the parent's writer is mid-write, more lines queued behind it
    ctx = Contexta(workspace=tmp_path, config={"project_name": "p"}, sinks=[sink])
    with ctx.run("parent") as run:
        for i in range(100):
            run.metric("m", i)
        assert sink.entered.wait(30)

        def child() -> None:
            sink.gate.set()  # the child's copy of the gate: its own writes go through
            with ctx.run("child") as mine:
                for i in range(50):
                    mine.metric("m", i)
                run.metric("m", 1000)  # the inherited run is usable in the child too
            ctx.flush(timeout=30)
            ctx.close()

        assert _run_forked(child) == 0
        sink.gate.set()
        for i in range(100, 120):  # the parent is unaffected
            run.metric("m", i)
    ctx.close()
    expected = Counter({("run:p.parent", i): 1 for i in range(120)})
    expected.update({("run:p.child", i): 1 for i in range(50)})
    expected[("run:p.parent", 1000)] = 1
    assert _metrics(tmp_path) == expected
    statuses = _statuses(tmp_path)
    assert statuses["run:p.child"] == ["open", "completed"]
    # The child's close did not close the parent's run for it.
    assert statuses["run:p.parent"] == ["open", "completed"]


def _capture_in_child(ctx: Contexta, run_ref_name: str) -> None:
    with ctx.run(run_ref_name) as run, run.stage("s") as stage:
        for i in range(200):
            with stage.sample(f"case-{i}") as sample:
                sample.metric("score", i)
    ctx.flush(timeout=30)
    ctx.close()  # writes the child's pending index frame


def test_multiprocessing_fork_children_capture_through_the_inherited_context(
    tmp_path: Path,
) -> None:
    ctx = Contexta(workspace=tmp_path, config={"project_name": "p"})
    with ctx.run("parent") as run:
        for i in range(100):  # the writer runs, and holds an index frame not written yet
            run.metric("m", i)
        ctx.flush()
        fork = multiprocessing.get_context("fork")
        children = [
            fork.Process(target=_capture_in_child, args=(ctx, f"child-{n}"), daemon=True)
            for n in range(3)
        ]
        try:
            for process in children:
                process.start()
            for process in children:
                process.join(CHILD_DEADLINE)
                assert process.exitcode == 0, "a child hung or failed"
        finally:
            for process in children:  # a hung child must not hang pytest's exit too
                if process.is_alive():
                    process.kill()
        run.metric("m", 100)
    ctx.close()
    metrics = _metrics(tmp_path)
    assert sorted(v for (ref, v) in metrics if ref == "run:p.parent") == list(range(101))
    assert all(count == 1 for count in metrics.values())
    for n in range(3):
        assert sorted(v for (ref, v) in metrics if ref == f"run:p.child-{n}") == list(range(200))
    # The index describes every line at most once: no child wrote the parent's frame too.
    loaded = load_index(str(tmp_path / "cache" / "capture" / "record.jsonl"))
    assert loaded.rejected == 0
    ranges = sorted((frame.start, frame.end) for frame in loaded.frames)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(ranges))
    assert loaded.frames and sum(frame.lines for frame in loaded.frames) <= sum(metrics.values())
    statuses = _statuses(tmp_path)
    assert statuses["run:p.parent"] == ["open", "completed"]
    assert all(statuses[f"run:p.child-{n}"] == ["open", "completed"] for n in range(3))


def test_a_forked_child_that_exits_normally_does_not_cancel_the_parents_run(
    tmp_path: Path,
) -> None:
    ctx = Contexta(workspace=tmp_path, config={"project_name": "p"})
    with ctx.run("parent") as run:
        run.metric("m", 1)
        ctx.flush()

        def child() -> None:
            run.metric("m", 2)
            # What interpreter exit runs for this library: the at-exit close of open runs
            # (inside pytest the child cannot leave through sys.exit).
            _close_at_exit()

        assert _run_forked(child) == 0
        run.metric("m", 3)
    ctx.close()
    assert _statuses(tmp_path)["run:p.parent"] == ["open", "completed"]
    assert sorted(v for (_, v) in _metrics(tmp_path)) == [1, 2, 3]


def test_a_child_closing_an_inherited_run_writes_no_line_for_it(tmp_path: Path) -> None:
    ctx = Contexta(workspace=tmp_path, config={"project_name": "p"})
    with ctx.run("parent") as run:
        run.metric("m", 1)

        def child() -> None:
            # What leaving the parent's `with` block does in a child that unwinds (sys.exit).
            run.close("failed", reason="SystemExit: 0")
            ctx.close()

        assert _run_forked(child) == 0
        run.metric("m", 2)
    ctx.close()
    assert _statuses(tmp_path)["run:p.parent"] == ["open", "completed"]


def test_a_child_closing_its_context_closes_the_stages_it_opened_in_an_inherited_run(
    tmp_path: Path,
) -> None:
    ctx = Contexta(workspace=tmp_path, config={"project_name": "p"})
    with ctx.run("parent") as run:
        run.metric("m", 1)

        def child() -> None:
            stage = run.stage("child-stage").__enter__()
            stage.metric("x", 1)
            ctx.close()  # the stage is still open: closing the context closes it

        assert _run_forked(child) == 0
    ctx.close()
    statuses = _statuses(tmp_path)
    assert statuses["stage:p.parent.child-stage"] == ["open", "cancelled"]
    assert statuses["run:p.parent"] == ["open", "completed"]


def test_records_a_child_captures_in_an_inherited_run_never_share_a_ref_with_the_parents(
    tmp_path: Path,
) -> None:
    ctx = Contexta(workspace=tmp_path, config={"project_name": "p"})
    with ctx.run("parent") as run:
        run.metric("m", 0)

        def child() -> None:
            for i in range(1, 51):
                run.metric("m", i)
            ctx.close()

        assert _run_forked(child) == 0
        for i in range(51, 101):
            run.metric("m", i)
    ctx.close()
    lines = [line for line in read_family(tmp_path, "RECORD")]
    refs = [line["payload_ref"] for line in lines]
    assert len(lines) == 101
    assert len(set(refs)) == len(refs), "a child's record took a ref the parent also took"
