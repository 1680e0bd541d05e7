"""The bounded, thread-safe capture queue.

Items get consecutive sequence numbers when they enter the queue; the writer takes everything
queued (up to a batch size) in one call. A producer that finds the queue full parks its item
with a waiter; when the writer makes room, parked items move into the queue in arrival order
and their producers are woken, so waiting producers are served first-come first-served and no
newcomer can overtake them.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from ._errors import ClosedScopeError
from ._waiters import Waiter

__all__ = ["BoundedBuffer"]

T = TypeVar("T")
W = TypeVar("W", bound=Waiter)


def _closed() -> ClosedScopeError:
    # The queue closes only when its context does: say so in the context's terms.
    return ClosedScopeError("the Contexta context is closed")


class BoundedBuffer(Generic[T]):
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.lock = threading.Lock()
        self._items: deque[T] = deque()
        self._parked: deque[tuple[T, Waiter]] = deque()
        self._reader: Waiter | None = None
        self._closed = False
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

    def try_put(self, item: T) -> bool:
        """Queue ``item`` if there is room and nobody is waiting; never blocks."""
        with self.lock:
            if self._closed:
                raise _closed()
            if len(self._items) >= self.capacity or self._parked:
                return False
            self._append_locked(item)
            return True

    def force_put(self, item: T) -> None:
        """Queue ``item`` even past capacity (lifecycle lines, which are never dropped)."""
        with self.lock:
            if self._closed:
                raise _closed()
            self._append_locked(item)

    def put_or_park(self, item: T, waiter: Waiter) -> bool:
        """Queue ``item`` (True) or park it with ``waiter`` to be woken once it is queued."""
        with self.lock:
            if self._closed:
                raise _closed()
            if len(self._items) < self.capacity and not self._parked:
                self._append_locked(item)
                return True
            self._parked.append((item, waiter))
            return False

    def put_or_park_opening(
        self, item: T, make_waiter: Callable[[], W], *, past_bound: bool
    ) -> W | None:
        """Queue a scope's opening line (None) or park it with a new waiter (returned).

        ``past_bound``: it may go past the capacity, up to twice the capacity, and overtake
        parked items (lifecycle lines are never dropped or refused, and stay bounded).
        """
        with self.lock:
            if self._closed:
                raise _closed()
            queued = len(self._items)
            if (queued < self.capacity and not self._parked) or (
                past_bound and queued < 2 * self.capacity
            ):
                self._append_locked(item)
                return None
            waiter = make_waiter()
            self._parked.append((item, waiter))
            return waiter

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
            if not items:
                if reader is not None and not self._closed:
                    self._reader = reader
                return [], self.appended
            if len(items) <= max_items:
                batch = list(items)
                items.clear()
            else:
                batch = [items.popleft() for _ in range(max_items)]
            last_seq = self.appended - len(items)
            while self._parked and len(items) < self.capacity:
                item, waiter = self._parked.popleft()
                self._append_locked(item)
                waiter.wake()
            return batch, last_seq

    def close(self) -> None:
        """Refuse new items; items already queued or parked stay to be drained."""
        with self.lock:
            self._closed = True
            reader = self._reader
            self._reader = None
        if reader is not None:
            reader.wake()
