"""External stores: how the core finds a store distribution by the scheme of its URL.

Each store (PostgreSQL first) is its own distribution, so that the core keeps its small
dependency set. A distribution registers an object in the ``contexta_async.stores`` entry point
group under the URL scheme it serves (``postgresql``, ``postgres``); the object implements
:class:`StoreBackend`. ``contexta-async ship --to URL``, ``Contexta(..., ship_to=URL)`` and
the readers (``Workspace(URL)``, ``contexta-async --workspace URL ...``: ``open_store_source``)
look the scheme up here.
"""

from __future__ import annotations

import importlib.metadata
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TextIO, runtime_checkable

import anyio
import anyio.to_thread

from ._errors import ConfigurationError, ContextaError, StoreNotInstalledError, ValidationError
from ._validation import check_timeout
from .sinks import LocalJsonlSink, Sink

if TYPE_CHECKING:
    from .readers._source import RecordSource

__all__ = [
    "ENTRY_POINT_GROUP",
    "BackgroundShipper",
    "InProcessShipper",
    "ShipRequest",
    "ShipTimeoutError",
    "StoreBackend",
    "load_store_backend",
    "open_store_source",
    "start_shipper",
    "url_scheme",
]

ENTRY_POINT_GROUP = "contexta_async.stores"
"""The entry point group a store distribution registers its :class:`StoreBackend` in."""

# Which distribution serves a scheme, for the error that says what to install.
_DISTRIBUTIONS = {
    "postgresql": "contexta-async-postgres",
    "postgres": "contexta-async-postgres",
}


@dataclass(frozen=True, slots=True)
class ShipRequest:
    """What ``contexta-async ship`` was asked to do, handed to the store's backend."""

    workspace: str
    """The workspace directory (or its capture folder), as given."""
    url: str = field(repr=False)
    """The store URL, as given. It may hold a password: never print or log it as is (it is
    left out of this object's repr)."""
    follow: bool
    """Keep shipping new lines until SIGINT or SIGTERM (otherwise ship what is there, exit)."""
    batch_lines: int
    """Most lines per transaction."""
    retries: int
    """Reconnection attempts after a dropped or refused connection before giving up."""
    poll_interval: float
    """With ``follow``: seconds between looks at the workspace when it has nothing new."""
    json: bool
    """Print the result as JSON."""
    out: TextIO
    """Where the result goes."""
    err: TextIO
    """Where progress goes (a progress line only when this is a terminal)."""


class ShipTimeoutError(ContextaError, TimeoutError):
    """``wait_committed(timeout=...)`` ran out of time before the store had every line.

    Nothing is lost by it: the lines stay in the workspace (the spool) and the shipper goes on.
    """

    code = "ship_timeout"

    def __init__(self, waiting: int, timeout: float, target: str, last_error: str | None) -> None:
        why = f"; last error: {last_error}" if last_error else ""
        super().__init__(
            f"shipping to {target} timed out after {timeout:g}s with {waiting} line(s) not yet "
            f"committed in the store (they stay in the workspace){why}",
            details={"waiting": waiting, "timeout": timeout, "target": target},
        )
        self.waiting = waiting
        """Lines of the workspace not known to be committed in the store."""
        self.last_error = last_error
        """The shipper's last error (one line, no password), or None."""


@runtime_checkable
class BackgroundShipper(Protocol):
    """What a backend's ``start_shipper`` returns: a thread shipping one workspace."""

    target: str
    """Where it ships, without the password (``host:port/db``)."""

    @property
    def running(self) -> bool:
        """Whether its thread runs in this process (False after close, and in a fork child)."""
        ...

    @property
    def last_error(self) -> str | None:
        """The last error of a pass (one line, no password); None once a pass succeeds."""
        ...

    def wait_committed(self, timeout: float | None) -> None:
        """Return once a pass that began after the call has committed every whole line the
        workspace files hold; raise ShipTimeoutError after ``timeout`` seconds."""
        ...

    def close(self, timeout: float) -> int:
        """Ship what is there for up to ``timeout`` seconds, stop the thread, and return how
        many lines stay in the workspace not known to be in the store (logged when not 0)."""
        ...


@runtime_checkable
class StoreBackend(Protocol):
    """What a store distribution's entry point object provides."""

    def ship_command(self, request: ShipRequest) -> int:
        """Run ``contexta-async ship``; return the exit status, or raise a ContextaError."""
        ...

    def start_shipper(self, workspace: Path, url: str) -> BackgroundShipper:
        """Start a thread shipping ``workspace`` to ``url`` (``Contexta(ship_to=url)``).

        Raises ValidationError for a bad URL at once; the store being unreachable is not an
        error here (the thread retries, the lines wait in the workspace)."""
        ...

    def open_source(self, url: str) -> RecordSource:
        """The readers' source over the store at ``url`` (``Workspace(url)``).

        Raises ValidationError (field ``workspace``) for a bad URL at once; the store is first
        reached by a read. The source never shows the URL's password."""
        ...


def url_scheme(url: str) -> str:
    """The scheme of a store URL, lower-cased (``"postgresql"``), or ``""`` when it has none."""
    head, sep, _ = url.partition("://")
    if not sep or not head or not all(c.isalnum() or c in "+-." for c in head):
        return ""
    return head.lower()


def _entry_points(scheme: str) -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=scheme))


def load_store_backend(url: str, *, field: str = "--to") -> StoreBackend:
    """The backend registered for ``url``'s scheme.

    Raises :class:`StoreNotInstalledError` (naming the distribution to install) for a known
    scheme whose distribution is missing, and ``ValidationError`` for a URL without a scheme or
    with a scheme nothing serves. Neither message holds the URL: it may hold a password.
    """
    scheme = url_scheme(url)
    if not scheme:
        raise ValidationError(field, "must be a store URL such as postgresql://host/db", "...")
    found = _entry_points(scheme)
    if not found:
        distribution = _DISTRIBUTIONS.get(scheme)
        if distribution is not None:
            raise StoreNotInstalledError(field, scheme, distribution)
        known = ", ".join(f"{s}://" for s in sorted(_DISTRIBUTIONS))
        raise ValidationError(
            field, f"no installed store serves this scheme (known: {known})", scheme
        )
    try:
        backend = found[0].load()
    except ImportError as exc:  # installed, but something it needs is not (e.g. its driver)
        raise ValidationError(
            field,
            f"the {scheme} store ({found[0].value}) cannot be loaded: {exc}; reinstall "
            f"{_DISTRIBUTIONS.get(scheme, 'its distribution')}",
            scheme,
        ) from None
    if not isinstance(backend, StoreBackend):
        raise ValidationError(
            field, f"the {scheme} entry point ({found[0].value}) is not a StoreBackend", scheme
        )
    return backend


def open_store_source(url: str, *, field: str = "workspace") -> RecordSource:
    """The readers' source for a store URL (``Workspace("postgresql://...")``), from the
    distribution serving its scheme; the same errors as :func:`load_store_backend`."""
    return load_store_backend(url, field=field).open_source(url)


class InProcessShipper:
    """The shipper thread of a ``Contexta(..., ship_to=URL)``: ``ctx.shipper``.

    It ships what the workspace holds to the store in the background, from the position the
    store remembers, one transaction per batch; capture never waits on it, and while the store
    is unreachable the lines wait in the workspace and the thread retries with backoff. Closing
    the Contexta drains it for up to ``shutdown_timeout`` seconds.
    """

    def __init__(
        self,
        inner: BackgroundShipper,
        flush: Callable[[float | None], None],
        aflush: Callable[[float | None], Awaitable[None]],
    ) -> None:
        self._inner = inner
        self._flush = flush
        self._aflush = aflush
        self._closed = False
        self.lines_waiting: int | None = None
        """After close: lines left in the workspace not known to be in the store (0 when the
        store has everything); None before close."""

    @property
    def target(self) -> str:
        """Where it ships: ``host:port/database`` (never the password)."""
        return self._inner.target

    @property
    def running(self) -> bool:
        """Whether the thread runs in this process (False after close, and in a fork child:
        threads do not survive a fork; see docs/scale-out.md)."""
        return self._inner.running

    @property
    def last_error(self) -> str | None:
        """The last error while shipping (one line, no password); None once a pass succeeds."""
        return self._inner.last_error

    def wait_committed(self, timeout: float | None = None) -> None:
        """Block until every line captured before the call is committed in the store.

        Flushes the pipeline first (as :meth:`Contexta.flush`), then waits for the shipper.
        Raises ShipTimeoutError when ``timeout`` seconds pass first (the lines stay in the
        workspace; the thread goes on), FlushTimeoutError when the flush alone takes them.
        """
        deadline = _deadline(timeout)
        self._flush(timeout)
        self._inner.wait_committed(_left(deadline))

    async def await_committed(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - as wait_committed()
        """Like :meth:`wait_committed`, awaited without blocking the event loop (asyncio and
        trio). Cancelling the wait leaves the shipper shipping."""
        deadline = _deadline(timeout)
        await self._aflush(timeout)
        await anyio.to_thread.run_sync(
            self._inner.wait_committed, _left(deadline), abandon_on_cancel=True
        )

    def close(self, timeout: float) -> int:
        """Drain for up to ``timeout`` seconds and stop; the lines left (see ``lines_waiting``).

        Called by ``Contexta.close()`` after the pipeline has drained. Idempotent."""
        if not self._closed:
            self._closed = True
            self.lines_waiting = self._inner.close(timeout)
        return self.lines_waiting or 0

    async def aclose(self, timeout: float) -> int:  # noqa: ASYNC109 - as close()
        """Like :meth:`close`, in a worker thread."""
        return await anyio.to_thread.run_sync(self.close, timeout)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<InProcessShipper to={self.target!r} {state}>"


def _deadline(timeout: object) -> float | None:
    # Checked as flush's timeout: past what the platform can wait (10**400 too) is inf.
    seconds = check_timeout(timeout, "timeout")
    return None if seconds is None else time.monotonic() + seconds


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def start_shipper(
    url: str,
    workspace: Path,
    sinks: Iterable[Sink],
    *,
    flush: Callable[[float | None], None],
    aflush: Callable[[float | None], Awaitable[None]],
) -> InProcessShipper:
    """Start the shipper thread of ``Contexta(..., ship_to=url)``.

    The workspace's default sink must be among ``sinks``: the shipper ships the files it
    writes (``<workspace>/cache/capture``).
    """
    if not isinstance(url, str):
        raise ConfigurationError("ship_to", "must be a store URL such as postgresql://h/db", url)
    capture = workspace / "cache" / "capture"
    if not any(
        isinstance(s, LocalJsonlSink) and os.path.normpath(s.storage_root) == str(capture)
        for s in sinks
    ):
        raise ConfigurationError(
            "ship_to",
            "ships the workspace's files: a LocalJsonlSink writing to "
            "<workspace>/cache/capture must be among the sinks",
            str(capture),
        )
    backend = load_store_backend(url, field="ship_to")
    return InProcessShipper(backend.start_shipper(workspace, url), flush, aflush)
