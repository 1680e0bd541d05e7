"""The shipper of ``Contexta(..., ship_to="postgresql://...")``: a helper process, driven by a
thread.

The shipping itself (reading the workspace, parsing, COPY) runs in a helper process (see
``_ship_process``) at a lower CPU priority, so that it takes neither the capturing process's
GIL nor, when the cores are busy, capture's CPU. One daemon thread per Contexta starts the
helper, asks it for passes, reads its answers and re-emits its log events. A pass ships every
whole line the files hold, from the position the store remembers, one transaction per batch,
so neither adds a guarantee of its own to get wrong: what a pass did not commit is still in
the workspace, and the next pass (or helper, or process, or ``contexta-async ship``) takes it
from the stored position. An unreachable store is retried with backoff, forever, and a helper
that dies is started again: capture never waits on either, and the lines wait in the
workspace.

The helper also yields to capture (see ``_pacing``): on a small machine any memory-heavy work
beside capture slows it down, whatever its CPU priority. While the capture files grow and
nobody waits for the store, it pauses after each committed batch so that it ships at most
``share`` of the wall-clock time (``SHARE`` by default; 1: never pauses). A
``wait_committed()`` (or ``close()``) ends a pause at once and is answered at full speed, and
once capture stops writing what is left drains at full speed: under sustained full-speed
capture the store lags behind, and catches up when capture pauses or someone waits.

Threads do not survive ``fork()``: in a forked child the shipper is not running (``running`` is
False, ``wait_committed`` raises, ``close`` ships nothing). The child's lines land in the same
workspace files, which the parent's helper ships.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import msgspec
import structlog

from contexta_async import LifecycleError, ValidationError
from contexta_async.stores import ShipTimeoutError

from ._args import (
    MAX_BACKOFF,
    MIN_BACKOFF,
    check_count,
    check_poll_interval,
    check_seconds,
    check_url,
    check_workspace,
)
from ._identity import FAMILY_FILES, display_path
from ._pacing import check_share, file_sizes
from ._target import Target, parse_target

__all__ = ["NICE", "SHARE", "BackgroundShipper"]

logger = structlog.get_logger("contexta_async")

_COUNT_BLOCK = 1 << 22
# The nice value is set before anything is imported: the imports take the CPU of a few
# thousand lines, while capture is under way.
_HELPER_MAIN = (
    "import os, sys; os.nice(int(sys.argv[1]))\n"
    "from contexta_async_postgres._ship_process import main; main()"
)
NICE = 19
"""How much lower the helper's CPU priority is than the capturing process's (``os.nice``)."""
SHARE = 0.25
"""The default ``share``: while capture writes and nobody waits, the helper ships at most this
fraction of the wall-clock time (see ``_pacing``)."""


class BackgroundShipper:
    """Ships one workspace to one store from a helper process; see the module docstring.

    ``share`` (0 < share <= 1) is the most of the wall-clock time the helper ships while
    capture writes and nobody waits: after a batch that took ``busy`` seconds it pauses
    ``busy * (1 - share) / share``. ValidationError at the call otherwise, and unless
    ``poll_interval`` is positive and finite, ``batch_lines`` an int of at least 1,
    0.01 <= ``backoff`` <= ``max_backoff`` <= 3600 (seconds), and ``nice`` an int from 0 to 19:
    the helper would otherwise fail on them, again and again.
    """

    def __init__(
        self,
        workspace: Path,
        url: str,
        *,
        poll_interval: float = 0.5,
        batch_lines: int = 50_000,
        backoff: float = 0.25,
        max_backoff: float = 5.0,
        nice: int = NICE,
        share: float = SHARE,
    ) -> None:
        # Checked here: a value the helper refused would fail it in a restart loop.
        check_workspace(workspace)
        check_url(url)
        self._poll = check_poll_interval(poll_interval)
        self._batch_lines = check_count("batch_lines", batch_lines, 1)
        self._backoff = check_seconds("backoff", backoff, MIN_BACKOFF, MAX_BACKOFF)
        self._max_backoff = check_seconds("max_backoff", max_backoff, self._backoff, MAX_BACKOFF)
        if isinstance(nice, bool) or not isinstance(nice, int) or not 0 <= nice <= 19:
            raise ValidationError("nice", "must be an integer from 0 to 19", nice)
        self._nice = nice
        self._share = check_share(share)
        self._target: Target = parse_target(url)  # a bad URL fails here, at the call
        self.target = self._target.display
        self._url = url
        self._workspace = Path(workspace)
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._requested = 0  # passes asked for (wait_committed)
        self._done = 0  # the newest request a completed pass began after
        self._stop = threading.Event()
        self._finished = False  # the thread's loop has ended (set under _cond)
        self._last_error: str | None = None
        self._positions: dict[str, int] = {}  # file -> offset the store holds it up to
        self._proc: subprocess.Popen[bytes] | None = None
        self._send_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._run, name="contexta-async-shipper", daemon=True
        )
        self._thread.start()

    @property
    def running(self) -> bool:
        return os.getpid() == self._pid and self._thread.is_alive() and not self._stop.is_set()

    @property
    def last_error(self) -> str | None:
        return self._last_error

    # ---- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        delay = self._backoff
        try:
            while not self._stop.is_set():
                try:
                    proc = self._start_helper()
                    if self._stop.is_set():
                        break  # closed while it started: the finally below ends it
                except OSError as exc:
                    self._failed(f"the shipper's helper process cannot start: {exc}", delay)
                else:
                    assert proc.stdout is not None
                    self._listen(proc.stdout)
                    if self._stop.is_set():
                        break
                    code = proc.wait()
                    self._failed(f"the shipper's helper process exited ({code})", delay)
                if self._stop.wait(delay):
                    break
                delay = min(delay * 2, self._max_backoff)
        finally:
            self._end_helper(wait=0.0, reader=True)
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    def _start_helper(self) -> subprocess.Popen[bytes]:
        # Where capture stood when the helper started: its pacer counts its start as work.
        started = time.monotonic()
        sizes = file_sizes(self._workspace / "cache" / "capture" / f for f in FAMILY_FILES)
        proc = subprocess.Popen(
            # -P: the caller's working directory is not put on sys.path (a msgspec.py there
            # must not run in the helper)
            [sys.executable, "-P", "-c", _HELPER_MAIN, str(self._nice)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            # Its own process group: a Ctrl-C at the terminal is the caller's to handle
            # (close() drains and stops the helper), and does not kill it behind the caller's
            # back. Not its own session: where the kernel groups tasks by session for the
            # scheduler (Linux autogroup), a session of its own would compete with capture
            # as an equal, whatever its nice value.
            process_group=0,
        )
        # Under the send lock: the settings are the helper's first line, and a request made
        # meanwhile is either in them or sent after them, never lost with the old helper.
        with self._send_lock:
            self._proc = proc
            with self._cond:
                requested, answered = self._requested, self._done
            self._write(
                {
                    # Its bytes: a Linux path need not be UTF-8 (JSON strings must be).
                    "workspace": base64.b64encode(os.fsencode(self._workspace)).decode(),
                    "url": self._url,  # over the pipe, never on the command line
                    "poll_interval": self._poll,
                    "batch_lines": self._batch_lines,
                    "backoff": self._backoff,
                    "max_backoff": self._max_backoff,
                    "share": self._share,
                    "requested": requested,
                    "answered": answered,
                    "started": started,
                    "sizes": sizes,
                }
            )
        return proc

    def _listen(self, out: IO[bytes]) -> None:
        """The helper's messages, until it exits (or close() closed the pipe)."""
        try:
            for line in out:
                self._handle(line)
        except (OSError, ValueError):
            pass

    def _handle(self, line: bytes) -> None:
        """One message of the helper (see ``_ship_process``)."""
        try:
            message: dict[str, Any] = msgspec.json.decode(line)
        except msgspec.DecodeError:
            return
        if "log" in message:
            event = dict(message["log"])
            level = str(event.pop("level", "warning"))
            name = str(event.pop("event", "contexta_async.ship"))
            log = getattr(logger, level, None) or logger.warning
            log(name, **event)
        elif "positions" in message:
            with self._cond:
                self._positions.update(message["positions"])
        elif "error" in message:
            error = str(message["error"])
            if error != self._last_error:
                logger.warning(
                    "contexta_async.ship_retry",
                    target=self.target,
                    error=error,
                    in_process=True,
                )
            self._last_error = error
        elif "done" in message:
            if self._last_error is not None:
                logger.info("contexta_async.ship_recovered", target=self.target)
            self._last_error = None
            with self._cond:
                self._done = max(self._done, int(message["done"]))
                self._cond.notify_all()

    def _failed(self, message: str, delay: float) -> None:
        if message != self._last_error:
            logger.warning(
                "contexta_async.ship_retry",
                target=self.target,
                delay=delay,
                error=message,
                in_process=True,
            )
        self._last_error = message

    def _send(self, message: dict[str, Any]) -> None:
        with self._send_lock:
            self._write(message)

    def _write(self, message: dict[str, Any]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        try:
            proc.stdin.write(msgspec.json.encode(message) + b"\n")
            proc.stdin.flush()
        except (OSError, ValueError):  # the helper is gone: the thread starts another
            pass

    def _end_helper(self, wait: float | None, *, reader: bool) -> None:
        """Tell the helper to stop; kill it if it has not exited after ``wait`` seconds (a
        batch in flight then rolls back: its lines stay in the workspace). Its stdin is
        closed under the send lock (no write is under way); its stdout only by ``reader``,
        the thread that reads it (closing a pipe another thread is reading or closing
        raises in that thread)."""
        proc = self._proc
        if proc is None:
            return
        self._send({"stop": True})
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        pipes = [proc.stdin, proc.stdout] if reader else [proc.stdin]
        with self._send_lock:
            for pipe in pipes:
                if pipe is not None:
                    try:
                        pipe.close()
                    except (OSError, ValueError):
                        pass

    # ---- callers ------------------------------------------------------------------------

    def wait_committed(self, timeout: float | None) -> None:
        if os.getpid() != self._pid:
            raise LifecycleError(
                f"the shipper to {self.target} runs in process {self._pid}, not in this forked "
                "child: the child's lines are in the workspace, for that process's shipper "
                "(or contexta-async ship) to ship"
            )
        timeout = _finite(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._requested += 1
            mine = self._requested
        self._send({"pass": mine})
        with self._cond:
            while self._done < mine:
                # Not is_alive(): the thread notifies before it ends, and a waiter woken then
                # would find it alive and wait forever.
                if self._finished or self._stop.is_set():
                    raise LifecycleError(f"the shipper to {self.target} is closed")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(left)
            else:
                return
        raise ShipTimeoutError(self.lines_waiting(), timeout or 0.0, self.target, self._last_error)

    def close(self, timeout: float) -> int:
        if os.getpid() != self._pid:
            return self.lines_waiting()  # no thread here: nothing to drain or stop
        limit = _finite(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        if self._thread.is_alive() and not self._stop.is_set():
            try:
                self.wait_committed(limit)
            except (ShipTimeoutError, LifecycleError):
                pass
        self._stop.set()
        with self._cond:
            self._cond.notify_all()  # waiters see _stop: they end now, not with the thread
        # A batch in flight commits or rolls back: the helper gets what is left of the
        # deadline to finish it, then is killed (its batch rolls back, nothing is lost).
        self._end_helper(
            None if deadline is None else max(0.1, deadline - time.monotonic()), reader=False
        )
        self._thread.join(None if deadline is None else max(0.1, deadline - time.monotonic()))
        if not self._thread.is_alive():
            self._end_helper(0.0, reader=True)  # the thread never got to its own (idempotent)
        waiting = self.lines_waiting()
        if waiting:
            logger.warning(
                "contexta_async.ship_left_in_spool",
                target=self.target,
                lines=waiting,
                workspace=display_path(self._workspace),
                error=self._last_error,
                hint="they stay in the workspace: the next shipper or `contexta-async ship` "
                "ships them",
            )
        return waiting

    def lines_waiting(self) -> int:
        """Whole lines of the workspace past the positions this shipper saw committed (from
        the start of a file it never saw committed: an upper bound)."""
        with self._cond:
            positions = dict(self._positions)
        capture = self._workspace / "cache" / "capture"
        total = 0
        for file in FAMILY_FILES:
            try:
                with open(capture / file, "rb") as f:
                    f.seek(positions.get(file, 0))
                    while block := f.read(_COUNT_BLOCK):
                        total += block.count(b"\n")
            except OSError:
                continue
        return total


def _finite(timeout: float | None) -> float | None:
    """None (no limit) for a timeout past what the platform can wait, such as ``inf``."""
    if timeout is None or timeout >= threading.TIMEOUT_MAX:
        return None
    return timeout
