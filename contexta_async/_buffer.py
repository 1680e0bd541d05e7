"""The bounded, thread-safe capture queue, and what a full queue means (``offer``).

Items get consecutive sequence numbers when they enter the queue; the writer takes everything
queued (up to a batch size) in one call. Every line enters through ``offer``, which decides
under one lock, by the kind of line and the overflow policy, whether it is queued, parked,
dropped or refused. A producer that waits for room parks its item with a waiter; when the
writer makes room, parked items move into the queue in arrival order and their producers are
woken, so waiting producers are served first-come first-served and no newcomer can overtake
them.

Woken producers pass the turn on: the writer wakes the first 4, and the last of them, once it
runs, wakes the next 4 (``pass_turn``). Hundreds of producers whose lines went in at once
therefore resume a group per turn of their event loop, instead of all in one turn that would
hold every other task of the loop (a service's request handlers, a ticker) for the whole herd.
Should the turn stall (a producer's loop is gone), the writer wakes the rest at its next batch
once half a second went by without a turn passed on (it looks at least every 0.1 s).
"""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Final, Generic, Literal, TypeVar

from ._errors import ClosedScopeError, QueueFullError
from ._waiters import Waiter, WaiterT

__all__ = ["DROPPED", "QUEUED", "WAIT", "Admitted", "BoundedBuffer", "Line", "OverflowPolicy"]

OverflowPolicy = Literal["wait", "drop_newest", "raise"]
Line = Literal["record", "record_nowait", "opening", "closing"]
"""What is offered: a record (metric, event, artifact) from a call that may wait for room, one
from a ``*_nowait`` call, or a scope's opening or closing line."""


class Admitted(enum.Enum):
    """What ``offer`` did with a line, when it did not park it."""

    QUEUED = "queued"
    DROPPED = "dropped"  # by drop_newest: the caller counts it
    WAIT = "wait"  # it must wait for room, and the caller gave no waiter: offer it again


QUEUED: Final = Admitted.QUEUED
DROPPED: Final = Admitted.DROPPED
WAIT: Final = Admitted.WAIT

T = TypeVar("T")
_TURN_STALLED = 0.5  # seconds without a turn passed on before the writer wakes them all
_TURN_GROUP = 4  # producers woken per turn: the loop's other tasks wait for 4, not hundreds


def _closed() -> ClosedScopeError:
    # The queue closes only when its context does: say so in the context's terms.
    return ClosedScopeError("the Contexta context is closed")


class BoundedBuffer(Generic[T]):
    def __init__(self, capacity: int, overflow: OverflowPolicy) -> None:
        self.capacity = capacity
        self.overflow: OverflowPolicy = overflow
        self.lock = threading.Lock()
        self._items: deque[T] = deque()
        self._parked: deque[tuple[T, Waiter]] = deque()
        self._reader: Waiter | None = None
        self._turns: deque[Waiter] = deque()  # queued producers still to be woken, in order
        self._holder: Waiter | None = None  # the producer that passes the turn on next
        self._turn_passed = 0.0
        self._closed = False
        self.refusal: Callable[[], Exception] = _closed  # what a closed queue raises
        self.appended = 0  # sequence number of the newest queued item (0: none yet)
        self.peak = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def parked(self) -> int:
        return len(self._parked)

    @property
    def closed(self) -> bool:
        return self._closed

    def _append_locked(self, item: T) -> None:
        self._items.append(item)
        self.appended += 1
        if len(self._items) > self.peak:
            self.peak = len(self._items)
        reader = self._reader
        if reader is not None:
            self._reader = None
            reader.wake()

    def offer(
        self, item: T, line: Line, make_waiter: Callable[[], WaiterT] | None = None
    ) -> WaiterT | Admitted:
        """Queue, park, drop or refuse ``item``: the one place that decides what a full queue
        means. Returns QUEUED, DROPPED, WAIT (only without ``make_waiter``), or the new waiter
        of the parked item: wait on it; it is woken once the item is queued.

        With room, and nobody waiting for room before it, a line is queued whatever the
        policy. Otherwise, by line and ``overflow`` policy:

            line           wait             drop_newest                     raise
            record         park             dropped (the caller counts it)  QueueFullError
            record_nowait  QueueFullError   dropped (the caller counts it)  QueueFullError
            opening        park             past the bound while the queue holds less than
                                            twice its capacity, then park
            closing        past the bound, always

        Lifecycle lines are never dropped or refused: a closing line without its opening line
        would be a format defect. A closing line never waits either (closing runs on
        cancellation); an opening line waits only where records would wait, or where memory
        would no longer be bounded. ScopeCore keeps the two in order.
        """
        with self.lock:
            if self._closed:
                raise self.refusal()
            queued = len(self._items)
            if queued < self.capacity and not self._parked:
                self._append_locked(item)
                return QUEUED
            policy = self.overflow
            if line == "closing" or (
                line == "opening" and policy != "wait" and queued < 2 * self.capacity
            ):
                self._append_locked(item)
                return QUEUED
            if line == "opening" or (line == "record" and policy == "wait"):
                if make_waiter is None:
                    return WAIT
                waiter = make_waiter()
                self._parked.append((item, waiter))
                return waiter
            if policy == "drop_newest":
                return DROPPED
            raise QueueFullError(
                f"the capture queue is full ({self.capacity} lines) "
                f"and the call may not wait (overflow={policy!r})"
            )

    def queue_parked_now(self, item: T) -> bool:
        """Move ``item`` from the parked ones into the queue now (past the capacity) and wake
        its producer; False if it is not parked (already queued, or never parked)."""
        with self.lock:
            for index, (parked, waiter) in enumerate(self._parked):
                if parked is item:
                    del self._parked[index]
                    self._append_locked(item)
                    waiter.wake()
                    return True
            return False

    def queue_all_parked(self) -> None:
        """Move every parked item into the queue (past the capacity) and wake its producer:
        at exit, with the writer stuck, nobody may wait for room any more."""
        with self.lock:
            parked, self._parked = self._parked, deque()
            for item, _ in parked:
                self._append_locked(item)
        for _, waiter in parked:
            waiter.wake()

    def unpark(self, waiter: Waiter) -> bool:
        """Withdraw a parked item (its producer was cancelled). False if it was already queued."""
        with self.lock:
            for index, (_, parked_waiter) in enumerate(self._parked):
                if parked_waiter is waiter:
                    del self._parked[index]
                    return True
            return False

    def take(self, max_items: int, reader: Waiter | None) -> tuple[list[T], int]:
        """Take up to ``max_items`` and return them with the sequence number of the last one.

        When the queue is empty and ``reader`` is given, it is woken by the next append (or by
        close()). Parked items are moved in as room appears.
        """
        with self.lock:
            items = self._items
            stalled = self._stalled_turns_locked()
            if not items:
                if reader is not None and not self._closed:
                    self._reader = reader
                batch, last_seq = [], self.appended
            else:
                if len(items) <= max_items:
                    batch = list(items)
                    items.clear()
                else:
                    batch = [items.popleft() for _ in range(max_items)]
                last_seq = self.appended - len(items)
                while self._parked and len(items) < self.capacity:
                    item, waiter = self._parked.popleft()
                    self._append_locked(item)
                    self._turns.append(waiter)
        for waiter in stalled:  # nobody passed the turn on for a while: wake them all
            waiter.wake()
        if batch:
            self.pass_turn()
        return batch, last_seq

    def _stalled_turns_locked(self) -> deque[Waiter]:
        if self._turns and time.monotonic() - self._turn_passed > _TURN_STALLED:
            stalled, self._turns, self._holder = self._turns, deque(), None
            return stalled
        return deque()

    def release_turns(self) -> None:
        """Wake every producer still waiting for its turn (the writer stops)."""
        with self.lock:
            waiting, self._turns, self._holder = self._turns, deque(), None
        for waiter in waiting:
            waiter.wake()

    @property
    def turns_pending(self) -> bool:
        """Producers whose lines went in still wait to be woken (the writer checks on them)."""
        return bool(self._turns)

    def pass_turn(self, waiter: Waiter | None = None, *, leaving: bool = False) -> None:
        """``waiter``'s producer runs again (or, ``leaving``, stopped waiting for its turn):
        if it held the turn, wake the next group. None: the writer starts a turn if none is
        going on."""
        with self.lock:
            if leaving and waiter is not None:
                try:
                    self._turns.remove(waiter)
                except ValueError:
                    pass
            if waiter is not self._holder:
                return
            self._holder = None
            self._turn_passed = time.monotonic()
            woken = 0
            while self._turns and woken < _TURN_GROUP:
                candidate = self._turns.popleft()
                if candidate.wake():
                    woken += 1
                    self._holder = candidate  # the last of the group passes the turn on

    def abandon(self, refusal: Callable[[], Exception]) -> int:
        """Nothing will drain the queue again (the writer stopped): refuse every new item with
        ``refusal()``, drop what is queued or parked, and wake every producer still waiting.
        Returns how many parked items were dropped (they were never counted in ``appended``)."""
        with self.lock:
            self._closed = True
            self.refusal = refusal
            parked, self._parked = self._parked, deque()
            self._items.clear()
            waiting, self._turns, self._holder = self._turns, deque(), None
            reader, self._reader = self._reader, None
        for _, waiter in parked:
            waiter.wake()
        for waiter in waiting:
            waiter.wake()
        if reader is not None:
            reader.wake()
        return len(parked)

    def close(self) -> None:
        """Refuse new items; items already queued or parked stay to be drained."""
        with self.lock:
            self._closed = True
            reader = self._reader
            self._reader = None
        if reader is not None:
            reader.wake()
