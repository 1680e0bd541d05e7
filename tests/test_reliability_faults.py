"""I/O faults: a full disk, failing writes and a failing fsync.

A real full file system where the machine allows one (a small tmpfs mounted for the test),
and failures injected at the OS-call boundary (``os.write`` / ``os.fsync`` for files under the
test's directory) for the errors a root process cannot provoke (EIO, EACCES, a failed fsync).
"""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from contexta_async import Contexta, DeliveryError, LocalJsonlSink
from contexta_async.sinks import Chunk

from ._children.verify import read_family

_real_write = os.write
_real_fsync = os.fsync


class Faults:
    """Fail ``os.write`` / ``os.fsync`` on files under ``root`` as planned, then let them pass.

    A planned write fault is an errno (the call raises) or ``("partial", errno)``: the call
    writes half the bytes and the next call raises, as a disk filling up mid-write does.
    """

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = str(root)
        self.writes: list[int | tuple[str, int]] = []
        self.fsyncs: list[int] = []
        self.fsync_suffix = ".jsonl"  # which fsyncs fail: the capture files' or a directory's
        self.synced: list[str] = []  # every fsync that succeeded, by path
        self.failed_at: list[float] = []  # when each injected fault fired
        monkeypatch.setattr(os, "write", self._write)
        monkeypatch.setattr(os, "fsync", self._fsync)

    def _ours(self, fd: int, suffix: str = "") -> bool:
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return False
        return path.startswith(self.root) and path.endswith(suffix)

    def _write(self, fd: int, data: Any) -> int:
        if self.writes and self._ours(fd):
            fault = self.writes.pop(0)
            self.failed_at.append(time.monotonic())
            if isinstance(fault, tuple):
                self.writes.insert(0, fault[1])
                return _real_write(fd, bytes(data)[: len(data) // 2])
            raise OSError(fault, os.strerror(fault))
        return _real_write(fd, data)

    def _fsync(self, fd: int) -> None:
        if self.fsyncs and self._ours(fd, self.fsync_suffix):
            fault = self.fsyncs.pop(0)
            self.failed_at.append(time.monotonic())
            raise OSError(fault, os.strerror(fault))
        _real_fsync(fd)
        self.synced.append(os.readlink(f"/proc/self/fd/{fd}"))


@pytest.fixture
def faults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Faults:
    return Faults(tmp_path, monkeypatch)


def _open_files() -> list[str]:
    paths = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:  # the descriptor listdir itself used
            pass
    return paths


def _values(workspace: Path) -> Counter[tuple[str, int]]:
    return Counter(
        (line["payload"]["envelope"]["run_ref"], line["payload"]["payload"]["value"])
        for line in read_family(workspace, "RECORD")
        if line["payload_type"] == "MetricRecord"
    )


def _degradations(workspace: Path) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for line in read_family(workspace, "DEGRADATION"):
        assert line["payload_type"] == "DegradationRecord"
        counts[line["payload"]["run_ref"]] += line["payload"]["count"]
    return dict(counts)


# ---- injected faults -----------------------------------------------------------------------


def test_failed_writes_are_retried_with_backoff_and_leave_no_torn_line(
    tmp_path: Path, faults: Faults
) -> None:
    with Contexta(
        workspace=tmp_path, config={"project_name": "p"}, max_retries=3, retry_backoff=0.02
    ) as ctx:
        with ctx.run("a") as run:
            run.metric("m", 0)
            ctx.flush()
            # Half a chunk lands, then the disk errors; then two plain errors; then success.
            faults.writes = [("partial", errno.ENOSPC), errno.EIO, errno.EIO]
            for i in range(1, 200):
                run.metric("m", i)
            ctx.flush()  # recovered within the retry bound: nothing to report
        stats = ctx.statistics()
    assert stats.retries == 3 and stats.failed == 0
    # Every line exactly once: the half-written chunk was cut off before the retry.
    assert _values(tmp_path) == Counter(("run:p.a", i) for i in range(200))
    gaps = [
        later - earlier
        for earlier, later in zip(faults.failed_at[1:], faults.failed_at[2:], strict=False)
    ]
    # Backoff doubles: at least 0.02 s, then 0.04 s, between attempts.
    assert gaps[0] >= 0.02 * 0.9 and gaps[1] >= 0.04 * 0.9


@pytest.mark.parametrize("error", [errno.EIO, errno.ENOSPC, errno.EACCES], ids=errno.errorcode.get)
async def test_a_write_that_keeps_failing_is_reported_by_flush_then_as_degradation_lines(
    tmp_path: Path, faults: Faults, error: int
) -> None:
    async with Contexta(
        workspace=tmp_path, config={"project_name": "p"}, max_retries=2, retry_backoff=0.001
    ) as ctx:
        async with ctx.run("a") as a, ctx.run("b") as b:
            await ctx.aflush()
            faults.writes = [error] * 3  # the first try and both retries fail
            for i in range(30):
                await a.metric("m", i)  # producers never see the fault
            for i in range(12):
                b.metric_nowait("m", i)
            with pytest.raises(DeliveryError) as caught:
                await ctx.aflush()
            # The disk is back: new captures are written, with the story of the loss.
            await a.metric("m", 100)
            await ctx.aflush()  # the failure was reported once, not again
        stats = ctx.statistics()
    assert caught.value.failed == 42
    assert caught.value.runs == {"run:p.a": 30, "run:p.b": 12}
    assert os.strerror(error) in str(caught.value)
    assert "run:p.a (30)" in str(caught.value) and "run:p.b (12)" in str(caught.value)
    assert stats.retries == 2 and stats.failed == 42
    # Lost lines are absent, not half there; the rest is intact.
    assert _values(tmp_path) == Counter([("run:p.a", 100)])
    assert _degradations(tmp_path) == {"run:p.a": 30, "run:p.b": 12}
    (line,) = [
        d for d in read_family(tmp_path, "DEGRADATION") if d["payload"]["run_ref"] == "run:p.a"
    ]
    assert line["payload"]["degradation_kind"] == "delivery_failed"
    assert os.strerror(error) in line["payload"]["reason"]
    assert line["payload"]["sink_name"] == "local-jsonl"


async def test_a_failed_fsync_is_reported_even_after_a_later_fsync_of_the_same_file_succeeds(
    tmp_path: Path, faults: Faults
) -> None:
    async with (
        Contexta(workspace=tmp_path, config={"project_name": "p"}) as ctx,
        ctx.run("a") as run,
    ):
        await ctx.aflush()
        faults.fsyncs = [errno.EIO]
        for i in range(10):  # queued without yielding: the writer takes them as one batch
            await run.metric("m", i)
        while ctx.statistics().failed == 0:  # noqa: ASYNC110 - polling the writer's counter
            await anyio.sleep(0.001)  # until the batch whose fsync failed is done
        for i in range(10, 15):
            await run.metric("m", i)
        # This flush's own fsync succeeds and covers the same file. The earlier lines may
        # already be gone from the page cache ("fsyncgate"): they must still be reported.
        with pytest.raises(DeliveryError) as caught:
            await ctx.aflush()
    stats = ctx.statistics()
    assert caught.value.failed == 10 and caught.value.runs == {"run:p.a": 10}
    assert "fsync failed" in str(caught.value)
    assert stats.retries == 0  # never rewritten: a retry would duplicate lines that did land
    # The written-but-not-durable lines stay in the file once, flagged by a DEGRADATION line.
    assert _values(tmp_path) == Counter(("run:p.a", i) for i in range(15))
    assert _degradations(tmp_path) == {"run:p.a": 10}


def test_a_sink_that_raises_a_non_os_error_is_reported_like_an_io_failure(tmp_path: Path) -> None:
    class Flaky(LocalJsonlSink):
        fail = 1

        def write(self, chunk: Chunk) -> None:
            if chunk.family == "RECORD" and self.fail:
                self.fail -= 1
                raise RuntimeError("sink bug")
            super().write(chunk)

    sink = Flaky(tmp_path / "cache" / "capture")
    with (
        Contexta(workspace=tmp_path, config={"project_name": "p"}, sinks=[sink]) as ctx,
        ctx.run("a") as run,
    ):
        ctx.flush()
        run.metric("m", 1)
        with pytest.raises(DeliveryError, match="sink bug"):
            ctx.flush()
        run.metric("m", 2)
        ctx.flush()
    assert _values(tmp_path) == Counter([("run:p.a", 2)])
    assert _degradations(tmp_path) == {"run:p.a": 1}


class _FullDisk(LocalJsonlSink):
    """The local sink on real files, whose writes fail with ENOSPC while ``full`` is set."""

    full = False

    def write(self, chunk: Chunk) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), chunk.target)
        super().write(chunk)


def test_a_long_full_disk_owes_one_degradation_line_per_run_and_counts_each_loss_once(
    tmp_path: Path,
) -> None:
    sink = _FullDisk(tmp_path / "cache" / "capture")
    flushes = 50
    reported = []
    with Contexta(
        workspace=tmp_path, config={"project_name": "p"}, sinks=[sink], max_retries=0
    ) as ctx:
        with ctx.run("a") as a, ctx.run("b") as b:
            ctx.flush()
            sink.full = True
            # Every batch fails, and with it the DEGRADATION lines owed for the batches before.
            for i in range(flushes):
                a.metric("m", i)
                b.metric("m", i)
                with pytest.raises(DeliveryError) as caught:
                    ctx.flush()
                reported.append(caught.value.failed)
            # Each lost line counted once: statistics agree with what flush raised.
            assert reported == [2] * flushes
            assert ctx.statistics().failed == sum(reported)
            sink.full = False
            a.metric("m", 1000)
            ctx.flush()  # the disk is back: nothing new is lost
    assert ctx.statistics().failed == 2 * flushes
    # The loss is recorded compactly: one line per run for the whole outage, counts added up.
    lines = read_family(tmp_path, "DEGRADATION")
    assert sorted((d["payload"]["run_ref"], d["payload"]["count"]) for d in lines) == [
        ("run:p.a", flushes),
        ("run:p.b", flushes),
    ]
    for line in lines:
        payload = line["payload"]
        assert payload["degradation_kind"] == "delivery_failed"
        assert "No space left on device" in payload["reason"]
        assert payload["first_observed_at"] < payload["last_observed_at"]
    assert _values(tmp_path) == Counter([("run:p.a", 1000)])


class _FailingGate(LocalJsonlSink):
    """RECORD writes wait for the gate, then fail (EIO) while ``failing`` is set."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.failing = True
        self.entered = threading.Event()
        self.gate = threading.Event()

    def write(self, chunk: Chunk) -> None:
        if chunk.family == "RECORD" and self.failing:
            self.entered.set()
            self.gate.wait()
            raise OSError(errno.EIO, os.strerror(errno.EIO), chunk.target)
        super().write(chunk)


def test_a_failure_is_raised_by_every_flush_waiting_for_it_and_by_no_later_one(
    tmp_path: Path,
) -> None:
    # The rule docs/reliability.md states: flushes under way when the failure is raised each
    # waited on the lost lines, so each raises it (returning would acknowledge them); a flush
    # that begins once it was raised does not raise it again.
    sink = _FailingGate(tmp_path / "cache" / "capture")
    ctx = Contexta(workspace=tmp_path, config={"project_name": "p"}, sinks=[sink], max_retries=0)
    with ctx, ctx.run("a") as run:
        run.metric("m", 0)
        assert sink.entered.wait(60)  # the writer holds the line that will fail
        raised: list[int] = []

        def flush() -> None:
            try:
                ctx.flush(timeout=60)
            except DeliveryError as exc:
                raised.append(exc.failed)

        flushers = [threading.Thread(target=flush) for _ in range(2)]
        for flusher in flushers:
            flusher.start()
        pipeline = ctx._pipeline
        for _ in range(60_000):  # until both wait for the line (bounded: only a bug exceeds it)
            with pipeline._state_lock:
                if len(pipeline._flush_waiters) == 2:
                    break
            time.sleep(0.001)
        sink.gate.set()
        for flusher in flushers:
            flusher.join(60)
        assert raised == [1, 1]
        sink.failing = False
        run.metric("m", 1)
        ctx.flush()  # begun after the failure was raised: not raised again
    assert ctx.statistics().failed == 1
    assert _values(tmp_path) == Counter([("run:p.a", 1)])


# ---- a real full file system ---------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, if this machine lets the test mount one (root, no sandbox)."""
    mount_point = tmp_path / "small-fs"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({result.stderr.decode().strip()}); "
            "the injected-ENOSPC tests above cover this case"
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(path: Path, leave: int) -> None:
    """Write zeros into ``path`` until the file system is full, then free ``leave`` bytes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65_536, 4096, 1):
            block = b"\0" * size
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
        os.ftruncate(fd, os.fstat(fd).st_size - leave)
    finally:
        os.close(fd)


def test_a_full_disk_loses_only_what_it_reports_and_recovery_is_automatic(small_fs: Path) -> None:
    workspace = small_fs / "ws"
    filler = small_fs / "filler"
    with Contexta(
        workspace=workspace, config={"project_name": "p"}, max_retries=2, retry_backoff=0.01
    ) as ctx:
        with ctx.run("a") as a, ctx.run("b") as b:
            a.metric("m", 0)
            ctx.flush()
            # Two pages free: a 100-line chunk (~90 KB) starts, fills the disk, and fails.
            _fill(filler, leave=8192)
            for i in range(1, 101):
                a.metric("m", i)
            for i in range(50):
                b.metric("m", i)
            with pytest.raises(DeliveryError) as caught:
                ctx.flush()
            filler.unlink()  # space again: the next batch goes through
            a.metric("m", 1000)
            b.metric("m", 1000)
            ctx.flush()
        stats = ctx.statistics()
    present = _values(workspace)
    assert set(present.values()) == {1}, "a line was written twice"
    captured = {"run:p.a": [0, *range(1, 101), 1000], "run:p.b": [*range(50), 1000]}
    # Exactly the lines that are missing were reported, per run, by flush and in DEGRADATION.
    missing = {
        run: sum((run, value) not in present for value in values)
        for run, values in captured.items()
    }
    assert caught.value.runs == missing and caught.value.failed == sum(missing.values()) > 0
    assert "No space left on device" in str(caught.value)
    assert stats.retries >= 2 and stats.failed == caught.value.failed
    assert _degradations(workspace) == missing
    # Nothing after the disk recovered was lost.
    assert present[("run:p.a", 1000)] == present[("run:p.b", 1000)] == 1
    statuses = {
        line["payload_ref"]: line["payload"]["status"] for line in read_family(workspace, "CONTEXT")
    }
    assert statuses == {"run:p.a": "completed", "run:p.b": "completed"}


def test_a_failed_directory_fsync_for_a_new_file_is_retried_before_acknowledging(
    tmp_path: Path, faults: Faults
) -> None:
    capture = tmp_path / "cache" / "capture"
    capture.mkdir(parents=True)
    faults.fsync_suffix = "/cache/capture"  # the directory, fsynced once a new file is created
    faults.fsyncs = [errno.EIO]
    with Contexta(workspace=tmp_path, config={"project_name": "p"}, retry_backoff=0.001) as ctx:
        with ctx.run("a"):
            ctx.flush()  # the run's opening line: context.jsonl is created
            # A crash now must not lose the new file: its directory entry was fsynced after
            # the failed attempt, before flush returned.
            assert faults.fsyncs == []  # the fault fired
            assert str(capture) in faults.synced
            assert _open_files().count(str(capture / "context.jsonl")) == 1, "descriptor leaked"
        stats = ctx.statistics()
    assert stats.retries == 1 and stats.failed == 0
    statuses = [line["payload"]["status"] for line in read_family(tmp_path, "CONTEXT")]
    assert statuses == ["open", "completed"]


def test_directories_created_before_a_failed_file_open_are_fsynced_once_it_succeeds(
    tmp_path: Path, faults: Faults
) -> None:
    workspace = tmp_path / "ws"
    capture = workspace / "cache" / "capture"
    ctx = Contexta(workspace=workspace, config={"project_name": "p"}, max_retries=0)
    with ctx:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        lowest_free = os.open(os.devnull, os.O_RDONLY)
        os.close(lowest_free)
        # No descriptor left (EMFILE): the sink creates the directories, then cannot open the
        # file in them.
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
        try:
            with ctx.run("a") as run:
                with pytest.raises(DeliveryError, match="Too many open files"):
                    ctx.flush()
                assert capture.is_dir() and not (capture / "context.jsonl").exists()
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                run.metric("m", 1)
                ctx.flush()
                # A crash now must not lose the files: every directory entry this process
                # created, on the failed attempt too, was fsynced before flush returned.
                created = [workspace, workspace / "cache", capture]
                for directory in [tmp_path, *created]:
                    assert str(directory) in faults.synced, directory
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert _values(workspace) == Counter([("run:p.a", 1)])


def test_whole_lines_left_by_a_failed_write_that_could_not_be_cut_are_not_written_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The disk errors after the first lines of a chunk landed whole, and cutting them back
    # off fails too: the retry must not append those lines a second time.
    real_ftruncate = os.ftruncate
    plan = {"write": 1, "ftruncate": 1}

    def write(fd: int, data: Any) -> int:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if plan["write"] and path.endswith("record.jsonl") and len(data) > 4000:
            plan["write"] -= 1
            cut = bytes(data).rfind(b"\n", 0, len(data) // 2) + 1
            _real_write(fd, bytes(data)[:cut])
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return _real_write(fd, data)

    def ftruncate(fd: int, length: int) -> None:
        if plan["ftruncate"] and not plan["write"]:
            plan["ftruncate"] -= 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_ftruncate(fd, length)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "ftruncate", ftruncate)
    with Contexta(
        workspace=tmp_path, config={"project_name": "p"}, max_retries=3, retry_backoff=0.01
    ) as ctx:
        with ctx.run("a") as run:
            run.metric("m", 0)
            ctx.flush()
            for i in range(1, 200):
                run.metric("m", i)
            ctx.flush()
        stats = ctx.statistics()
    assert plan == {"write": 0, "ftruncate": 0}  # both faults happened
    assert stats.failed == 0
    assert _values(tmp_path) == Counter(("run:p.a", i) for i in range(200))


def test_one_sink_shared_by_two_clients_writes_every_line_once(tmp_path: Path) -> None:
    import threading

    from contexta_async.sinks import LocalJsonlSink

    # flock does not exclude two threads writing through one descriptor: without the sink's
    # own lock, one writer's torn-tail cut truncates the other's write in progress.
    sink = LocalJsonlSink(tmp_path / "cache" / "capture")
    clients = [
        Contexta(
            workspace=tmp_path, config={"project_name": f"p{i}"}, sinks=[sink], max_batch_size=64
        )
        for i in range(2)
    ]
    start = threading.Barrier(2)

    def capture(ctx: Contexta) -> None:
        start.wait()
        with ctx.run("a") as run:
            for i in range(20_000):
                run.metric("m", i)
        ctx.flush()

    threads = [threading.Thread(target=capture, args=(ctx,)) for ctx in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for ctx in clients:
        ctx.close()
    expected = Counter((f"run:p{c}.a", i) for c in range(2) for i in range(20_000))
    assert _values(tmp_path) == expected
