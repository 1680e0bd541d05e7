"""One-shot wake-ups that work across threads and event loops.

The capture queue is shared by producers on event loops and on plain threads (the sync face),
and by the writer thread, so a wait is either an asyncio future on the waiting loop or a
threading event, and waking one is safe from any thread.
"""

from __future__ import annotations

import asyncio
import threading

__all__ = ["READY", "AsyncWaiter", "ThreadWaiter", "Waiter"]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class AsyncWaiter:
    __slots__ = ("_future", "_loop", "_thread")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._future: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.get_ident()

    def wake(self) -> None:
        if threading.get_ident() == self._thread:
            _resolve(self._future)
        else:
            try:
                self._loop.call_soon_threadsafe(_resolve, self._future)
            except RuntimeError:  # that loop is closed: nobody is left to wake
                pass

    async def wait(self) -> None:
        await self._future


class ThreadWaiter:
    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = threading.Event()

    def wake(self) -> None:
        self._event.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)


Waiter = AsyncWaiter | ThreadWaiter


class _Ready:
    """An awaitable that is already done: the fast path of an awaited capture with room."""

    __slots__ = ()

    def __await__(self):  # type: ignore[no-untyped-def]
        return iter(())

    def __repr__(self) -> str:
        return "<ready>"


READY = _Ready()
