"""How the shipper's helper process yields to capture: a pause after each committed batch.

On a small machine, any memory-heavy work beside capture (reading, parsing, COPY; the server
storing the rows) slows capture down, whatever its CPU priority: the cores share caches and
memory bandwidth, which ``nice`` does not divide. So, like PostgreSQL's cost-based vacuum
delay or RocksDB's compaction rate limiter, the helper limits how much it works while capture
writes: after each committed batch that took ``busy`` seconds of wall-clock time (the
server's work included), it pauses ``busy * (1 - share) / share`` seconds, so that it ships at
most ``share`` of the time.

The helper's own start (Python, the imports, connecting) is work beside capture too: the
first pass begins with the pause it is due (``started``).

It pauses only while

- capture is writing: a capture file grew since the previous batch (a few ``os.stat``);
  once capture stops, what is left drains at full speed;
- and nobody waits: no pass was requested by ``wait_committed()`` or ``close()`` that has not
  been answered, and no stop. A pause ends at once when either comes (``pause`` returns early).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from contexta_async import ValidationError

from ._shipper import ShipProgress

__all__ = ["MAX_PAUSE", "Pacer", "check_share", "file_sizes"]

MAX_PAUSE = 5.0
"""The longest pause, in seconds (a bound like PostgreSQL's on its vacuum cost delay)."""


def check_share(share: float) -> float:
    """``share`` as a float, or ValidationError unless 0 < share <= 1."""
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
        raise ValidationError("share", "must be a number with 0 < share <= 1", share)
    return float(share)


def file_sizes(paths: Iterable[Path]) -> tuple[int, ...]:
    """The size of each file, -1 for one that is not there (yet)."""
    sizes = []
    for path in paths:
        try:
            sizes.append(os.stat(path).st_size)
        except OSError:
            sizes.append(-1)
    return tuple(sizes)


class Pacer:
    """Paces one shipper: call :meth:`begin` before each pass, and give :meth:`after_batch` to
    ``Shipper(progress=...)`` (called after each committed batch, between transactions).

    ``waiting()`` says whether someone waits for the store (or the helper is stopping);
    ``pause(seconds)`` waits that long, or less when someone comes to wait or a stop comes
    (``threading.Event.wait`` of an event set then); ``clock`` is a monotonic clock.
    ``started``: when the helper was started (on ``clock``, which ``time.monotonic`` shares
    between processes) and the files' sizes then, so that its start (until the pacer is made:
    Python and the imports) counts as work. A pause lasts at most ``max_pause`` seconds: a
    batch that waited (on a lock, a slow server) did not work all that time.
    """

    def __init__(
        self,
        share: float,
        files: Iterable[Path],
        *,
        waiting: Callable[[], bool],
        pause: Callable[[float], object],
        clock: Callable[[], float] = time.monotonic,
        started: tuple[float, Sequence[int]] | None = None,
        max_pause: float = MAX_PAUSE,
    ) -> None:
        self.share = check_share(share)
        self._files = tuple(files)
        self._waiting = waiting
        self._pause = pause
        self._clock = clock
        self._max_pause = max_pause
        # When the shipper's current stretch of work began, and the sizes then.
        self._mark = clock()
        self._sizes = self._measure()
        # The helper's own start: the work before this pacer existed, and the sizes before it.
        self._start_work = 0.0
        if started is not None and len(started[1]) == len(self._files):
            self._start_work = max(0.0, self._mark - started[0])
            self._sizes = tuple(started[1])

    def _measure(self) -> tuple[int, ...]:
        return file_sizes(self._files)

    def begin(self) -> None:
        """A pass begins: its work starts now, and growth counts from here. The first pass
        first pauses for the helper's start, if capture wrote since (see :meth:`delay`)."""
        if self._start_work:
            self._mark = self._clock() - self._start_work  # only the start, not idle time
            self._start_work = 0.0
            self.after_batch()
        self._mark = self._clock()
        self._sizes = self._measure()

    def delay(self) -> float:
        """The pause due now, after a batch: 0 unless capture writes and nobody waits. Takes
        the batch as done (its growth and its time are counted once)."""
        busy = self._clock() - self._mark
        sizes = self._measure()
        grew = sizes != self._sizes
        self._sizes = sizes
        if self.share >= 1 or not grew or self._waiting():
            return 0.0
        return min(self._max_pause, max(0.0, busy) * (1 - self.share) / self.share)

    def after_batch(self, progress: ShipProgress | None = None) -> None:
        """After a committed batch: pause if due (see :meth:`delay`)."""
        seconds = self.delay()
        if seconds > 0:
            self._pause(seconds)
        self._mark = self._clock()
