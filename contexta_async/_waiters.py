"""One-shot wake-ups that work across threads and event loops.

The capture queue is shared by producers on event loops and on plain threads (the sync face),
and by the writer thread, so a wait is either a wait on the waiting task's event loop (asyncio
or trio, whichever anyio runs on) or a threading event, and waking one is safe from any thread.

Waking never blocks the waking thread: the writer must not wait for a loop that may itself be
blocked (a sync ``flush()`` on the loop's thread waits for the writer), so the wake is handed to
the loop with its own non-blocking thread-safe call (``call_soon_threadsafe`` on asyncio,
``TrioToken.run_sync_soon`` on trio). anyio's ``from_thread.run_sync`` waits for the call to
run, which is why it is not used here.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import TypeVar

__all__ = ["READY", "AsyncWaiter", "ThreadWaiter", "Waiter", "WaiterT", "async_waiter"]


class AsyncWaiter:
    """A wait on the current event loop that any thread can end with wake()."""

    __slots__ = ()

    def wake(self) -> bool:
        """End the wait; False when nobody is left to wake (the loop is closed)."""
        raise NotImplementedError

    async def wait(self) -> None:
        raise NotImplementedError


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _AsyncioWaiter(AsyncWaiter):
    __slots__ = ("_future", "_loop", "_thread")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._future: asyncio.Future[None] = loop.create_future()
        self._thread = threading.get_ident()

    def wake(self) -> bool:
        if threading.get_ident() == self._thread:
            if self._loop.is_closed():  # set_result would schedule onto a closed loop
                return False
            _resolve(self._future)
            return True
        try:
            self._loop.call_soon_threadsafe(_resolve, self._future)
        except RuntimeError:  # that loop is closed: nobody is left to wake
            return False
        return True

    async def wait(self) -> None:
        await self._future


class _TrioWaiter(AsyncWaiter):
    __slots__ = ("_event", "_thread", "_token")

    def __init__(self) -> None:
        import trio  # only ever reached inside a trio run: trio is already imported

        self._token = trio.lowlevel.current_trio_token()
        self._event = trio.Event()
        self._thread = threading.get_ident()

    def wake(self) -> bool:
        if threading.get_ident() == self._thread:
            self._event.set()
            return True
        import trio

        try:
            self._token.run_sync_soon(self._event.set)
        except trio.RunFinishedError:  # that run is over: nobody is left to wake
            return False
        return True

    async def wait(self) -> None:
        await self._event.wait()


def _in_trio() -> bool:
    """True when the current task is a trio task.

    trio is looked up, never imported: if nothing imported it, no trio run can be going on.
    sniffio (a dependency of trio) names the library of the current task, as anyio does.
    """
    if "trio" not in sys.modules:
        return False
    import sniffio

    try:
        return sniffio.current_async_library() == "trio"
    except sniffio.AsyncLibraryNotFoundError:
        return False


def async_waiter() -> AsyncWaiter:
    """A waiter for the running event loop: asyncio or trio (the two anyio backends)."""
    if _in_trio():
        return _TrioWaiter()
    return _AsyncioWaiter(asyncio.get_running_loop())


class ThreadWaiter:
    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = threading.Event()

    def wake(self) -> bool:
        self._event.set()
        return True

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)


Waiter = AsyncWaiter | ThreadWaiter
WaiterT = TypeVar("WaiterT", bound=Waiter)  # a waiter of the kind the caller made


class _Ready:
    """An awaitable that is already done: the fast path of an awaited capture with room."""

    __slots__ = ()

    def __await__(self):  # type: ignore[no-untyped-def]
        return iter(())

    def __repr__(self) -> str:
        return "<ready>"


READY = _Ready()
