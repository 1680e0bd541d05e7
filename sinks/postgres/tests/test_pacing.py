"""The in-process shipper yields to capture: while the capture files grow and nobody waits, its
helper pauses after each committed batch so that it ships at most ``share`` of the time; a
waiter (``wait_committed``, ``close``) or a stop ends a pause at once and stops the pacing."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
from contexta_async_postgres import BackgroundShipper
from contexta_async_postgres._pacing import MAX_PAUSE, Pacer, file_sizes
from contexta_async_postgres._ship_process import _Channel
from pgtest import Database, store_lines, workspace_lines

from contexta_async import Contexta, ValidationError

WAIT = 60.0  # seconds; only a hang comes near it


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    capture = tmp_path / "cache" / "capture"
    capture.mkdir(parents=True)
    (capture / "record.jsonl").write_bytes(b"{}\n")
    # A file capture has not created yet counts too, once it appears.
    return [capture / "record.jsonl", capture / "context.jsonl"]


def _append(path: Path) -> None:
    with path.open("ab") as f:
        f.write(b"{}\n")


def _pacer(
    files: list[Path], share: float, clock: Clock, *, waiting: Callable[[], bool] = lambda: False
) -> tuple[Pacer, list[float]]:
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        clock.now += seconds

    pacer = Pacer(share, files, waiting=waiting, pause=pause, clock=clock)
    return pacer, pauses


def test_a_batch_while_capture_writes_is_followed_by_a_pause_that_keeps_the_share(
    files: list[Path],
) -> None:
    clock = Clock()
    pacer, pauses = _pacer(files, 0.25, clock)
    pacer.begin()
    clock.now += 0.2  # the batch took 0.2 s
    _append(files[0])  # meanwhile capture wrote
    pacer.after_batch()
    assert pauses == [pytest.approx(0.6)]  # 0.2 s of 0.8 s: a quarter
    # The next batch counts from the end of the pause, not from the pass's start.
    clock.now += 0.1
    (files[1]).write_bytes(b"{}\n")  # a file that appeared is growth too
    pacer.after_batch()
    assert pauses == [pytest.approx(0.6), pytest.approx(0.3)]


def _started_pacer(
    files: list[Path], clock: Clock, *, waiting: Callable[[], bool] = lambda: False
) -> tuple[Pacer, list[float]]:
    """A pacer whose helper started 0.4 s ago (Python, imports, connecting)."""
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        clock.now += seconds

    started = (clock.now - 0.4, file_sizes(files))  # as the caller saw them then
    pacer = Pacer(0.25, files, waiting=waiting, pause=pause, clock=clock, started=started)
    return pacer, pauses


def test_the_first_pass_first_pauses_for_the_helpers_start_while_capture_writes(
    files: list[Path],
) -> None:
    clock = Clock()
    _append(files[0])
    pacer, pauses = _started_pacer(files, clock)
    _append(files[0])  # capture writes while the helper starts
    pacer.begin()
    assert pauses == [pytest.approx(1.2)]  # 0.4 s of start in 1.6 s: a quarter
    _append(files[0])
    pacer.begin()  # later passes begin without it
    assert pauses == [pytest.approx(1.2)]


def test_the_helpers_start_is_not_paused_for_when_capture_is_idle_or_someone_waits(
    files: list[Path],
) -> None:
    clock = Clock()
    pacer, pauses = _started_pacer(files, clock)
    pacer.begin()  # nothing written since the helper started
    assert pauses == []
    pacer, pauses = _started_pacer(files, clock, waiting=lambda: True)
    _append(files[0])
    pacer.begin()
    assert pauses == []


def test_no_pause_once_capture_has_stopped_writing(files: list[Path]) -> None:
    clock = Clock()
    pacer, pauses = _pacer(files, 0.25, clock)
    _append(files[0])  # before the pass: its lines are what the pass ships
    pacer.begin()
    clock.now += 0.2
    pacer.after_batch()
    clock.now += 0.2
    pacer.after_batch()
    assert pauses == []  # drains at full speed


def test_no_pause_while_someone_waits_for_the_store(files: list[Path]) -> None:
    clock = Clock()
    someone_waits = True
    pacer, pauses = _pacer(files, 0.25, clock, waiting=lambda: someone_waits)
    pacer.begin()
    clock.now += 0.2
    _append(files[0])
    pacer.after_batch()
    assert pauses == []
    someone_waits = False  # answered: pacing again
    clock.now += 0.1
    _append(files[0])
    pacer.after_batch()
    assert pauses == [pytest.approx(0.3)]


def test_a_share_of_one_never_pauses(files: list[Path]) -> None:
    clock = Clock()
    pacer, pauses = _pacer(files, 1, clock)
    pacer.begin()
    for _ in range(3):
        clock.now += 0.2
        _append(files[0])
        pacer.after_batch()
    assert pauses == []


@pytest.mark.parametrize("share", [0, -0.5, 1.5, math.nan, math.inf, True, "0.5", None])
def test_a_share_outside_zero_to_one_is_refused_at_the_call(tmp_path: Path, share: object) -> None:
    with pytest.raises(ValidationError) as caught:
        BackgroundShipper(tmp_path / "ws", "postgresql://u@127.0.0.1:1/db", share=share)  # type: ignore[arg-type]
    assert caught.value.field == "share"
    assert "0 < share <= 1" in caught.value.rule


class Pipe:
    """The caller's end of the helper's request pipe."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def send(self, message: dict[str, object]) -> None:
        assert self._fd is not None
        os.write(self._fd, msgspec.json.encode(message) + b"\n")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@pytest.fixture
def channel() -> Iterator[tuple[_Channel, Pipe]]:
    """The helper's real channel, its requests read by its listener from a pipe."""
    read, write = os.pipe()
    src = os.fdopen(read, "rb")
    out = open(os.devnull, "wb")  # noqa: SIM115 - closed below
    chan = _Channel(src, out)
    pipe = Pipe(write)
    listener = threading.Thread(target=chan.listen, daemon=True)
    listener.start()
    try:
        yield chan, pipe
    finally:
        pipe.close()
        listener.join(WAIT)
        src.close()
        out.close()


def _pause_in_thread(pacer: Pacer) -> threading.Thread:
    paused = threading.Thread(target=pacer.after_batch, daemon=True)
    paused.start()
    return paused


@pytest.mark.parametrize("how", ["pass requested", "stop", "caller gone"])
def test_a_pause_ends_when_a_pass_is_requested_or_the_helper_stops(
    files: list[Path], channel: tuple[_Channel, Pipe], how: str
) -> None:
    chan, pipe = channel
    clock = Clock()
    asked: list[float] = []
    pausing = threading.Event()

    def pause(seconds: float) -> bool:
        asked.append(seconds)
        pausing.set()
        return chan.wake.wait(seconds)

    # No bound on the pause here: a day's batch, a day's pause, unless it is cut short.
    pacer = Pacer(0.5, files, waiting=chan.waiting, pause=pause, clock=clock, max_pause=math.inf)
    pacer.begin()
    clock.now += 86_400
    _append(files[0])
    assert not chan.waiting()
    paused = _pause_in_thread(pacer)
    assert pausing.wait(WAIT)  # in the pause: what comes next must end it
    if how == "pass requested":
        pipe.send({"pass": 1})
    elif how == "stop":
        pipe.send({"stop": True})
    else:
        pipe.close()
    paused.join(WAIT)
    assert not paused.is_alive()  # before the fix: paused for a day
    assert asked == [pytest.approx(86_400)]
    assert chan.waiting()
    # And from then on no pause at all, until the pass has answered the request.
    clock.now += 1
    _append(files[0])
    pacer.after_batch()
    assert asked == [pytest.approx(86_400)]


def test_a_request_made_before_the_batch_ended_means_no_pause(
    files: list[Path], channel: tuple[_Channel, Pipe]
) -> None:
    chan, pipe = channel
    clock = Clock()
    pauses: list[float] = []
    pacer = Pacer(0.5, files, waiting=chan.waiting, pause=pauses.append, clock=clock)
    pacer.begin()
    pipe.send({"pass": 1})
    chan.wake.wait(WAIT)  # the listener has read it
    clock.now += 1
    _append(files[0])
    pacer.after_batch()
    assert pauses == []
    chan.answered = 1  # a pass that began after the request completed
    clock.now += 1
    _append(files[0])
    pacer.after_batch()
    assert pauses == [pytest.approx(1.0)]


def _capture_until(
    ctx: Contexta, stop: threading.Event, errors: list[BaseException], first: threading.Event
) -> None:
    try:
        with ctx.run("eval") as run, run.stage("evaluate") as stage:
            i = 0
            while not stop.is_set():
                with stage.sample(f"case-{i}") as sample:
                    sample.metric("correct", float(i % 2))
                first.set()
                i += 1
                stop.wait(0.001)  # a steady stream, not a flood: the test reads it all back
    except BaseException as exc:  # pragma: no cover - reported by the test
        errors.append(exc)


def test_wait_committed_brings_the_store_up_to_date_while_capture_goes_on(
    tmp_path: Path, db: Database
) -> None:
    """With a share so small that every pause would last for days, a waiter still gets every
    line captured before its call: pacing never makes a waiter wait."""
    ws = tmp_path / "ws"
    ctx = Contexta(workspace=ws, config={"project_name": "proj"})
    stop = threading.Event()
    errors: list[BaseException] = []
    first = threading.Event()
    capturing = threading.Thread(
        target=_capture_until, args=(ctx, stop, errors, first), daemon=True
    )
    shipper = BackgroundShipper(ws, db.url, batch_lines=200, share=1e-9)
    try:
        capturing.start()
        assert first.wait(WAIT)  # (flushed before the first sample, there was nothing to ship)
        for _ in range(3):
            ctx.flush(WAIT)
            before = workspace_lines(ws)
            shipper.wait_committed(WAIT)  # before the fix: ShipTimeoutError, after WAIT
            stored = store_lines(db, ws)
            assert before and all(stored[f][: len(lines)] == lines for f, lines in before.items())
        assert capturing.is_alive() and not errors  # capture went on all along
    finally:
        stop.set()
        capturing.join(WAIT)
        ctx.close()
        waiting = shipper.close(WAIT)
    assert not errors
    assert waiting == 0
    assert store_lines(db, ws) == workspace_lines(ws)


def test_only_the_helpers_own_start_counts_not_the_wait_for_capture_to_begin(
    files: list[Path],
) -> None:
    """A helper started an hour before the first capture file appears pauses for its start
    (0.4 s of work), not for the hour."""
    clock = Clock()
    pacer, pauses = _started_pacer(files, clock)
    clock.now += 3600.0  # the program loads its model; no capture yet
    _append(files[0])
    pacer.begin()
    assert pauses == [pytest.approx(1.2)]


def test_a_pause_is_never_longer_than_max_pause(files: list[Path]) -> None:
    """A batch that waited ten minutes (on a lock) did not work ten minutes."""
    clock = Clock()
    pacer, pauses = _pacer(files, 0.25, clock)
    pacer.begin()
    clock.now += 600.0
    _append(files[0])
    pacer.after_batch()
    assert pauses == [MAX_PAUSE]


def test_a_restarted_helper_knows_which_requests_were_answered() -> None:
    """The settings carry the requests made and answered so far: a helper started again
    after they were all answered sees no one waiting (and paces), one started with a request
    unanswered sees someone waiting."""
    for answered, waiting in ((3, False), (2, True)):
        settings = {"workspace": "/w", "url": "postgresql://h/d", "requested": 3}
        settings["answered"] = answered
        read, write = os.pipe()
        with open(read, "rb") as src, open(write, "wb") as dst, open(os.devnull, "wb") as out:
            dst.write(msgspec.json.encode(settings) + b"\n")
            dst.flush()
            channel = _Channel(src, out)
            channel.settings()
            assert channel.waiting() is waiting
