"""``Contexta(..., ship_to=URL)``: the shipper thread ships as the workspace is captured, capture
never waits on the store, an outage loses nothing, and close says what stays in the spool."""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

import anyio
import pytest
import structlog
from _cluster import Cluster
from contexta_async_postgres import Shipper
from pgtest import Database, store_lines, workspace_lines

from contexta_async import Contexta, LifecycleError, LocalJsonlSink, ShutdownTimeoutError
from contexta_async.sinks import Chunk
from contexta_async.stores import InProcessShipper, ShipTimeoutError

WAIT = 60.0  # seconds; only a hang comes near it


# An exception in the shipper thread fails the test that caused it (not a warning at the end).
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _capture(ctx: Contexta, run: str, samples: int) -> None:
    with ctx.run(run) as r, r.stage("evaluate") as stage:
        for i in range(samples):
            with stage.sample(f"case-{i}") as sample:
                sample.metric("correct", float(i % 2))


def _shipper(ctx: Contexta) -> InProcessShipper:
    assert ctx.shipper is not None
    return ctx.shipper


def _shipper_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "contexta-async-shipper"]


def test_captured_lines_are_in_the_store_once_wait_committed_returns(
    tmp_path: Path, db: Database
) -> None:
    ws = tmp_path / "ws"
    ctx = Contexta(workspace=ws, config={"project_name": "proj"}, ship_to=db.url)
    try:
        assert _shipper(ctx).running and _shipper(ctx).target.endswith(f"/{db.name}")
        with ctx.run("eval") as run, run.stage("evaluate") as stage:
            for i in range(20):
                with stage.sample(f"case-{i}") as sample:
                    sample.metric("correct", float(i % 2))
            # The run is still open: what is captured so far is in the store.
            _shipper(ctx).wait_committed(WAIT)
            assert store_lines(db, ws) == workspace_lines(ws)
            assert db.query("SELECT status FROM contexta.runs") == [("open",)]
    finally:
        ctx.close()
    assert _shipper(ctx).lines_waiting == 0 and not _shipper(ctx).running
    assert store_lines(db, ws) == workspace_lines(ws)  # close shipped the closing lines
    assert db.query("SELECT run_ref, status FROM contexta.runs") == [("run:proj.eval", "completed")]
    assert len(db.query("SELECT 1 FROM contexta.samples")) == 20


@pytest.mark.anyio
async def test_await_committed_waits_without_blocking_the_event_loop(
    tmp_path: Path, db: Database
) -> None:
    ws = tmp_path / "ws"
    ctx = Contexta(workspace=ws, config={"project_name": "proj"}, ship_to=db.url)
    async with ctx, ctx.run("eval") as run:
        await run.metric("accuracy", 0.75)
        await _shipper(ctx).await_committed(WAIT)
        assert store_lines(db, ws) == workspace_lines(ws)
    assert _shipper(ctx).lines_waiting == 0
    assert store_lines(db, ws) == workspace_lines(ws)


def test_a_store_outage_during_capture_loses_nothing_and_ships_after_the_restart(
    tmp_path: Path, cluster: Cluster, db: Database
) -> None:
    ws = tmp_path / "ws"
    ctx = Contexta(workspace=ws, config={"project_name": "proj"}, ship_to=db.url)
    try:
        _capture(ctx, "before", 5)
        _shipper(ctx).wait_committed(WAIT)
        cluster.stop("immediate")
        try:
            _capture(ctx, "during", 50)
            ctx.flush(WAIT)  # capture is unaffected: written and fsynced locally
            with pytest.raises(ShipTimeoutError) as caught:
                _shipper(ctx).wait_committed(0.5)
            assert caught.value.waiting > 0
            assert caught.value.last_error is not None
            assert f"127.0.0.1:{cluster.port}" in caught.value.last_error
            assert "s3cret" not in str(caught.value)
        finally:
            cluster.start()
        _shipper(ctx).wait_committed(WAIT)  # the thread reconnects by itself
        assert store_lines(db, ws) == workspace_lines(ws)
        assert _shipper(ctx).last_error is None
    finally:
        ctx.close()
    assert _shipper(ctx).lines_waiting == 0
    assert {r[0] for r in db.query("SELECT run_ref FROM contexta.runs")} == {
        "run:proj.before",
        "run:proj.during",
    }


def test_close_with_the_store_down_leaves_the_lines_in_the_spool_and_says_how_many(
    tmp_path: Path, cluster: Cluster, db: Database
) -> None:
    ws = tmp_path / "ws"
    cluster.stop("fast")
    try:
        ctx = Contexta(
            workspace=ws, config={"project_name": "proj"}, ship_to=db.url, shutdown_timeout=1.0
        )
        _capture(ctx, "eval", 10)
        with structlog.testing.capture_logs() as logs:
            ctx.close()
        lines = sum(len(v) for v in workspace_lines(ws).values())
        assert _shipper(ctx).lines_waiting == lines > 0
        left = [e for e in logs if e["event"] == "contexta_async.ship_left_in_spool"]
        assert len(left) == 1 and left[0]["lines"] == lines
        assert left[0]["log_level"] == "warning" and "s3cret" not in repr(left[0])
        assert not _shipper_threads()
    finally:
        cluster.start()
    # They wait in the workspace: the next shipper ships every one.
    with Shipper(ws, db.url) as shipper:
        assert shipper.ship().lines_shipped == lines
    assert store_lines(db, ws) == workspace_lines(ws)


def _in_forked_child(ctx: Contexta, report: multiprocessing.Queue[str]) -> None:
    shipper = _shipper(ctx)
    try:
        shipper.wait_committed(1.0)
        committed = "returned"
    except LifecycleError as exc:
        committed = str(exc)
    report.put(f"threads={len(_shipper_threads())} running={shipper.running} wait={committed}")
    _capture(ctx, "child", 3)  # into the same workspace files: the parent's thread ships them
    ctx.close()
    report.put(f"closed lines_waiting={shipper.lines_waiting}")


def test_a_forked_child_does_not_inherit_the_running_shipper(tmp_path: Path, db: Database) -> None:
    ws = tmp_path / "ws"
    ctx = Contexta(workspace=ws, config={"project_name": "proj"}, ship_to=db.url)
    try:
        _capture(ctx, "parent", 3)
        _shipper(ctx).wait_committed(WAIT)
        fork = multiprocessing.get_context("fork")
        report: multiprocessing.Queue[str] = fork.Queue()
        child = fork.Process(target=_in_forked_child, args=(ctx, report), daemon=True)
        child.start()
        child.join(WAIT)
        if child.is_alive():
            child.kill()
        assert child.exitcode == 0
        seen = report.get(timeout=WAIT)
        assert seen.startswith("threads=0 running=False wait=the shipper to ")
        assert f"runs in process {os.getpid()}, not in this forked child" in seen
        assert report.get(timeout=WAIT).startswith("closed lines_waiting=")
        assert _shipper(ctx).running  # the parent's thread is unaffected
        _shipper(ctx).wait_committed(WAIT)  # and it ships the child's lines
        assert store_lines(db, ws) == workspace_lines(ws)
    finally:
        ctx.close()
    assert {r[0] for r in db.query("SELECT run_ref FROM contexta.runs")} == {
        "run:proj.parent",
        "run:proj.child",
    }


def test_an_infinite_shutdown_timeout_drains_without_a_limit(tmp_path: Path, db: Database) -> None:
    ws = tmp_path / "ws"
    ctx = Contexta(
        workspace=ws, config={"project_name": "proj"}, ship_to=db.url, shutdown_timeout=math.inf
    )
    _capture(ctx, "eval", 5)
    _shipper(ctx).wait_committed(math.inf)
    _capture(ctx, "more", 5)
    ctx.close()
    assert _shipper(ctx).lines_waiting == 0
    assert store_lines(db, ws) == workspace_lines(ws)


def test_close_and_the_shipper_thread_never_close_the_helper_pipes_under_each_other(
    tmp_path: Path, db: Database
) -> None:
    # Both end the helper when it has exited: close() from the caller's thread and the
    # shipper thread on its way out. Closing a pipe the other thread was reading or closing
    # raised in the shipper thread ("PyMemoryView_FromBuffer(): info->buf must not be NULL").
    for i in range(6):
        ws = tmp_path / f"ws{i}"
        ctx = Contexta(
            workspace=ws, config={"project_name": "proj"}, ship_to=db.url, shutdown_timeout=30
        )
        _capture(ctx, "eval", 2)
        ctx.close()
        assert store_lines(db, ws) == workspace_lines(ws)


UNREACHABLE = "postgresql://nobody@127.0.0.1:1/db"  # port 1: connection refused at once


def _threads_in_wait_committed() -> int:
    return sum(
        any(f.f_code.co_name == "wait_committed" for f, _ in traceback.walk_stack(frame))
        for frame in sys._current_frames().values()
    )


@pytest.mark.anyio
async def test_cancelled_await_committed_leaves_no_thread_waiting_after_close(
    tmp_path: Path,
) -> None:
    """A cancelled ``await_committed()`` leaves its worker thread in ``wait_committed``; closing
    the context ends that wait (LifecycleError, nobody to hear it) instead of leaving the thread
    blocked forever, which also kept the process from exiting."""
    ctx = Contexta(
        workspace=tmp_path / "ws",
        config={"project_name": "proj"},
        ship_to=UNREACHABLE,
        shutdown_timeout=0.3,
    )
    async with ctx.run("eval") as run:
        await run.metric("m", 1.0)
    for _ in range(5):
        with anyio.move_on_after(0.1):
            await _shipper(ctx).await_committed()
    assert _threads_in_wait_committed() == 5
    await ctx.aclose()
    # The waits end at once; the bound only turns a hang into a failure.
    with anyio.move_on_after(10):
        while _threads_in_wait_committed():  # noqa: ASYNC110 - polling what the test brought about
            await anyio.sleep(0.01)
    assert _threads_in_wait_committed() == 0  # before: 5, for good


def test_close_with_a_shipper_takes_one_shutdown_timeout_in_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline's drain and the shipper's share one deadline: a drain that used all of
    shutdown_timeout leaves the shipper nothing, not a second shutdown_timeout."""
    from contexta_async_postgres._background import BackgroundShipper

    given: list[float] = []
    real_close = BackgroundShipper.close

    def close(self: BackgroundShipper, timeout: float) -> int:
        given.append(timeout)  # what close() was left for the shipper
        return real_close(self, timeout)

    monkeypatch.setattr(BackgroundShipper, "close", close)
    gate = threading.Event()

    class HeldSink(LocalJsonlSink):
        def write(self, chunk: Chunk) -> None:
            gate.wait()  # held past shutdown_timeout: the drain times out
            super().write(chunk)

    ws = tmp_path / "ws"
    ctx = Contexta(
        workspace=ws,
        config={"project_name": "proj"},
        ship_to=UNREACHABLE,
        shutdown_timeout=1.0,
        sinks=[HeldSink(ws / "cache" / "capture")],
    )
    _capture(ctx, "eval", 3)
    try:
        with pytest.raises(ShutdownTimeoutError):
            ctx.close()
    finally:
        gate.set()
    assert len(given) == 1 and given[0] < 0.5  # before: a fresh 1.0 s


def _ship_helpers() -> list[int]:
    """Child processes of this one running the shipper's helper (from /proc)."""
    found = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"contexta_async_postgres._ship_process" in cmdline:
                found.append(int(pid))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_shipping_runs_in_a_helper_process_at_a_lower_cpu_priority(
    tmp_path: Path, db: Database
) -> None:
    """Reading, parsing and COPY cost about as much CPU per line as capture: out of the
    capturing process (its GIL) and behind it for the cores."""
    ws = tmp_path / "ws"
    ctx = Contexta(workspace=ws, config={"project_name": "proj"}, ship_to=db.url)
    try:
        _capture(ctx, "eval", 5)
        _shipper(ctx).wait_committed(WAIT)
        helpers = _ship_helpers()
        assert len(helpers) == 1  # before: none, the thread shipped in this process
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, helpers[0]) > mine
        # Its own process group (a terminal's Ctrl-C spares it), in this session: Linux's
        # autogroup schedules a session of its own as capture's equal, whatever its nice.
        assert os.getpgid(helpers[0]) != os.getpgrp()
        assert os.getsid(helpers[0]) == os.getsid(0)
        # The URL (its password) reaches it over a pipe, not on its command line.
        assert b"s3cret" not in Path(f"/proc/{helpers[0]}/cmdline").read_bytes()
        # What the helper ships is the workspace, as the thread shipped it.
        assert store_lines(db, ws) == workspace_lines(ws)
    finally:
        ctx.close()
    assert not _ship_helpers()  # close ends it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_helper_is_started_again_and_loses_nothing(tmp_path: Path, db: Database) -> None:
    ws = tmp_path / "ws"
    ctx = Contexta(workspace=ws, config={"project_name": "proj"}, ship_to=db.url)
    try:
        _capture(ctx, "before", 5)
        _shipper(ctx).wait_committed(WAIT)
        (killed,) = _ship_helpers()
        os.kill(killed, signal.SIGKILL)
        _capture(ctx, "after", 30)
        _shipper(ctx).wait_committed(WAIT)  # a new helper ships what the first did not
        assert _ship_helpers() and killed not in _ship_helpers()
        assert store_lines(db, ws) == workspace_lines(ws)
    finally:
        ctx.close()
    assert _shipper(ctx).lines_waiting == 0


def test_corrupt_lines_are_logged_by_the_capturing_process(tmp_path: Path, db: Database) -> None:
    """The helper's log events are the caller's: they go where its logging is configured."""
    ws = tmp_path / "ws"
    ctx = Contexta(workspace=ws, config={"project_name": "proj"}, ship_to=db.url)
    try:
        _capture(ctx, "eval", 3)
        ctx.flush(WAIT)
        record = ws / "cache" / "capture" / "record.jsonl"
        bad_at = record.stat().st_size
        with structlog.testing.capture_logs() as logs:
            with record.open("ab") as f:
                f.write(b"not json\n")
            _shipper(ctx).wait_committed(WAIT)
        corrupt = [e for e in logs if e["event"] == "contexta_async.ship_corrupt_line"]
        assert [(e["file"], e["byte_offset"], e["log_level"]) for e in corrupt] == [
            ("record.jsonl", bad_at, "warning")
        ]
    finally:
        ctx.close()


def test_the_helper_runs_no_module_from_the_callers_working_directory(
    tmp_path: Path, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "msgspec.py").write_text(
        f"open({str(cwd / 'ran')!r}, 'w').close()\nraise SystemExit(3)\n"
    )
    monkeypatch.chdir(cwd)
    ws = tmp_path / "ws"
    ctx = Contexta(workspace=ws, config={"project_name": "proj"}, ship_to=db.url)
    try:
        _capture(ctx, "eval", 3)
        _shipper(ctx).wait_committed(WAIT)  # without -P: the helper dies, again and again
        assert not (cwd / "ran").exists()
        assert store_lines(db, ws) == workspace_lines(ws)
    finally:
        ctx.close()
