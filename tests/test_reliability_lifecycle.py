"""Lifecycle lines when a scope is closed from another thread while it is being opened.

Every scope has its opening CONTEXT line, then its closing one: a scope closed (by the
context, or by a parent) between being entered and its opening line being queued must not get
its closing line first (the readers take the newest line and would show it open forever), nor a
closing line alone.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from contexta_async import Contexta
from contexta_async._scope_core import ScopeCore
from contexta_async.readers import Workspace

from ._children.verify import read_family

FINAL = ("completed", "failed", "cancelled")


def _lifecycles(workspace: Path) -> dict[str, list[str]]:
    """The statuses each scope's CONTEXT lines carry, in file order."""
    found: dict[str, list[str]] = {}
    for line in read_family(workspace, "CONTEXT"):
        found.setdefault(line["payload_ref"], []).append(line["payload"]["status"])
    return found


def _assert_opened_then_closed(workspace: Path) -> dict[str, list[str]]:
    """Every scope has its opening line, then its closing line."""
    lifecycles = _lifecycles(workspace)
    for ref, statuses in lifecycles.items():
        assert len(statuses) == 2, (ref, statuses)
        assert statuses[0] == "open" and statuses[1] in FINAL, (ref, statuses)
    return lifecycles


async def _runs_read_open(workspace: Path) -> list[str]:
    """The runs the readers show as open (every context is closed: there must be none)."""
    runs = await Workspace(workspace).list_runs()
    assert runs
    return [run.ref for run in runs if run.status == "open"]


def _close_while_opening(
    monkeypatch: pytest.MonkeyPatch, ref: str, close: Callable[[], None]
) -> threading.Event:
    """Once the scope ``ref`` is entered, and before its opening line is queued, run ``close``
    to the end on another thread (the opener waits for it there). Returns an event set once
    ``close`` has run."""
    original = ScopeCore.queue_opening
    closed = threading.Event()

    def queue_opening(self: ScopeCore, *args: Any) -> Any:
        if self.ref == ref and not closed.is_set():
            closer = threading.Thread(target=close, name="closer")
            closer.start()
            closer.join(60)  # guards against a hang only
            assert not closer.is_alive(), "close() hung while the scope was being opened"
            closed.set()
        return original(self, *args)

    monkeypatch.setattr(ScopeCore, "queue_opening", queue_opening)
    return closed


def test_a_run_closed_by_the_context_while_it_opens_gets_its_opening_line_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = Contexta(workspace=tmp_path, config={"project_name": "p"})
    with ctx.run("warm"):
        pass
    closed = _close_while_opening(monkeypatch, "run:p.r", ctx.close)
    with ctx.run("r") as run:  # entered, already closed by the context
        assert closed.is_set()
        assert run.status == "cancelled"
    ctx.close()
    assert _assert_opened_then_closed(tmp_path)["run:p.r"] == ["open", "cancelled"]
    assert anyio.run(_runs_read_open, tmp_path) == []


def test_a_sample_closed_by_its_stage_while_it_opens_gets_its_opening_line_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Contexta(workspace=tmp_path, config={"project_name": "p"}) as ctx:
        with ctx.run("r") as run, run.stage("s") as stage:
            closed = _close_while_opening(monkeypatch, "sample:p.r.s.q", stage.close)
            with stage.sample("q") as sample:
                assert closed.is_set()
                assert sample.status == "completed"  # closed with its stage
    lifecycles = _assert_opened_then_closed(tmp_path)
    assert lifecycles["sample:p.r.s.q"] == ["open", "completed"]
    assert lifecycles["stage:p.r.s"] == ["open", "completed"]
    assert anyio.run(_runs_read_open, tmp_path) == []


@pytest.mark.parametrize("closer", ["context", "parent"])
async def test_the_async_face_gets_the_opening_line_first_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closer: str
) -> None:
    ctx = Contexta(workspace=tmp_path, config={"project_name": "p"})
    try:
        async with ctx.run("r") as run, run.stage("s") as stage:
            close = ctx.close if closer == "context" else stage.close
            closed = _close_while_opening(monkeypatch, "sample:p.r.s.q", close)
            async with stage.sample("q") as sample:
                assert closed.is_set()
                assert sample.status == ("cancelled" if closer == "context" else "completed")
    finally:
        await ctx.aclose()
    lifecycles = _assert_opened_then_closed(tmp_path)
    assert lifecycles["sample:p.r.s.q"][0] == "open"
    assert await _runs_read_open(tmp_path) == []


def test_a_run_closing_on_its_own_while_the_context_closes_still_gets_its_closing_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run's own exit has begun closing it (it is closing its stage) when the context closes
    # on another thread: the context must not close the queue before the run's closing line is
    # in it (it would stay open forever on disk, and the exit would raise ClosedScopeError).
    ctx = Contexta(workspace=tmp_path, config={"project_name": "p"})
    original = ScopeCore.close
    closed = threading.Event()

    def close(self: ScopeCore, *args: Any, **kwargs: Any) -> Any:
        if self.ref == "stage:p.r.s" and not closed.is_set():
            closed.set()  # first: the context's close closes the stage too
            closer = threading.Thread(target=ctx.close, name="closer")
            closer.start()
            closer.join(60)  # guards against a hang only
            assert not closer.is_alive(), "the context's close() hung"
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ScopeCore, "close", close)
    with ctx.run("r") as run:
        run.stage("s").__enter__()  # left open: the run's exit closes it
    assert closed.is_set()
    assert run.status == "completed"  # as the run's own exit closed it, first
    lifecycles = _assert_opened_then_closed(tmp_path)
    assert lifecycles["run:p.r"] == ["open", "completed"]
    assert lifecycles["stage:p.r.s"] == ["open", "completed"]
    assert anyio.run(_runs_read_open, tmp_path) == []


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Threads switch every microsecond: races that need an unlucky switch happen often."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


@pytest.mark.usefixtures("fast_switching")
def test_closing_the_context_while_another_thread_opens_scopes_leaves_every_scope_closed(
    tmp_path: Path,
) -> None:
    # No hook: the context closes at whatever point the opener thread has reached, over and over
    # (a few seconds at most). On the code before the fix a few percent of the trials left a
    # scope with its closing line first, a closing line alone, or an opening line alone.
    stop_at = time.monotonic() + 3.0
    trials = 0
    while trials < 2000 and time.monotonic() < stop_at:
        ctx = Contexta(workspace=tmp_path, config={"project_name": "p"}, fsync=False)
        started = threading.Event()

        def opener(ctx: Contexta = ctx, trial: int = trials, started: threading.Event = started):
            try:
                for i in range(1000):
                    with ctx.run(f"t{trial}-r{i}") as run:
                        started.set()
                        with run.stage("s") as stage, stage.sample("q"):
                            pass
            except Exception:  # the context closed: ClosedScopeError, here or at exit
                started.set()

        thread = threading.Thread(target=opener)
        thread.start()
        started.wait(60)
        ctx.close()
        thread.join(60)  # guards against a hang only
        assert not thread.is_alive()
        trials += 1
    lifecycles = _assert_opened_then_closed(tmp_path)
    assert sum(ref.startswith("run:") for ref in lifecycles) > trials
    assert anyio.run(_runs_read_open, tmp_path) == []
