"""The shipper thread of ``Contexta(..., ship_to="postgresql://...")``.

One daemon thread per Contexta runs passes of :class:`Shipper` over the workspace: every
``poll_interval`` seconds, and at once when someone waits for the store to have everything. A
pass ships every whole line the files hold, from the position the store remembers, one
transaction per batch, so the thread adds no guarantee of its own to get wrong: what a pass did
not commit is still in the workspace, and the next pass (or process, or ``contexta-async
ship``) takes it from the stored position. An unreachable store is retried with backoff,
forever: capture never waits on it, and the lines wait in the workspace.

Threads do not survive ``fork()``: in a forked child the shipper is not running (``running`` is
False, ``wait_committed`` raises, ``close`` ships nothing). The child's lines land in the same
workspace files, which the parent's thread ships.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import structlog

from contexta_async import ContextaError, LifecycleError, ValidationError
from contexta_async.stores import ShipTimeoutError

from ._identity import FAMILY_FILES
from ._shipper import Shipper
from ._target import Target, parse_target

__all__ = ["BackgroundShipper"]

logger = structlog.get_logger("contexta_async")

_COUNT_BLOCK = 1 << 22


class BackgroundShipper:
    """Ships one workspace to one store from a daemon thread; see the module docstring."""

    def __init__(
        self,
        workspace: Path,
        url: str,
        *,
        poll_interval: float = 0.5,
        batch_lines: int = 50_000,
        backoff: float = 0.25,
        max_backoff: float = 5.0,
    ) -> None:
        if not poll_interval > 0:
            raise ValidationError("poll_interval", "must be positive", poll_interval)
        self._target: Target = parse_target(url)  # a bad URL fails here, at the call
        self.target = self._target.display
        self._url = url
        self._workspace = Path(workspace)
        self._poll = poll_interval
        self._batch_lines = batch_lines
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._requested = 0  # passes asked for (wait_committed)
        self._done = 0  # the newest request a completed pass began after
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._finished = False  # the thread's loop has ended (set under _cond)
        self._last_error: str | None = None
        self._positions: dict[str, int] = {}  # file -> offset the store holds it up to
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
        shipper: Shipper | None = None
        delay = self._backoff
        try:
            while not self._stop.is_set():
                self._wake.clear()  # before reading the requests: a later one wakes the wait
                with self._cond:
                    asked = self._requested  # what this pass will answer if it completes
                try:
                    if shipper is None and (self._workspace / "cache" / "capture").is_dir():
                        # retries=0: this loop retries, so that close() can stop it any time
                        shipper = Shipper(
                            self._workspace, self._url, batch_lines=self._batch_lines, retries=0
                        )
                    if shipper is not None:
                        result = shipper.ship(stop=self._stop)
                        with self._cond:
                            self._positions.update(result.positions)
                        if self._stop.is_set():
                            break  # the pass may have stopped early: it answers nothing
                except Exception as exc:
                    message = _one_line(exc)
                    if message != self._last_error:
                        logger.warning(
                            "contexta_async.ship_retry",
                            target=self.target,
                            delay=delay,
                            error=message,
                            in_process=True,
                        )
                    self._last_error = message
                    if shipper is not None and not isinstance(exc, ContextaError):
                        shipper.close()
                        shipper = None
                    self._stop.wait(delay)
                    delay = min(delay * 2, self._max_backoff)
                    continue
                if self._last_error is not None:
                    logger.info("contexta_async.ship_recovered", target=self.target)
                self._last_error = None
                delay = self._backoff
                with self._cond:
                    self._done = max(self._done, asked)
                    self._cond.notify_all()
                self._wake.wait(self._poll)
        finally:
            if shipper is not None:
                try:
                    shipper.close()
                except Exception:
                    pass
            with self._cond:
                self._finished = True
                self._cond.notify_all()

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
        self._wake.set()
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
        self._wake.set()
        with self._cond:
            self._cond.notify_all()  # waiters see _stop: they end now, not with the thread
        # A batch in flight commits or rolls back; past the deadline the daemon thread is left
        # to finish it (the count below is then an upper bound).
        self._thread.join(None if deadline is None else max(0.1, deadline - time.monotonic()))
        waiting = self.lines_waiting()
        if waiting:
            logger.warning(
                "contexta_async.ship_left_in_spool",
                target=self.target,
                lines=waiting,
                workspace=str(self._workspace),
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


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
