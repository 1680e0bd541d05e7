"""Contexta: the workspace, its sinks and the one pipeline that feeds them."""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio

from . import _validation as v
from ._errors import ClosedScopeError, ConfigurationError, ContextaError, ValidationError
from ._format.refs import is_valid_ref, normalize_name
from ._pipeline import OverflowPolicy, Pipeline, PipelineOptions, Statistics
from ._scope_core import ScopeCore, ScopeRegistry
from ._scopes import AsyncRun, Opening, Run
from .sinks import LocalJsonlSink, Sink
from .sinks._base import check_sink_name
from .stores import InProcessShipper, start_shipper, url_scheme

__all__ = ["Contexta"]

_CAPTURE_DIR = ("cache", "capture")


def _time_left(deadline: float) -> float:
    """Seconds until ``deadline`` (inf stays inf), never below zero."""
    return max(0.0, deadline - time.monotonic())


def _cancel_open_runs(registry: ScopeRegistry, pipeline: Pipeline, reason: str) -> None:
    if pipeline.closed:
        return
    for core in registry.close_all():
        try:
            core.close("cancelled", reason)  # queues its closing lines
        except ContextaError:
            # Its lines cannot be queued (the writer stopped): the pipeline's close, which
            # follows, raises why; every other run is still closed.
            continue


class Contexta:
    """A capture context: ``async with Contexta(...) as ctx`` or plain ``ctx = Contexta(...)``.

    Args:
        workspace: the workspace directory; the default sink writes to
            ``<workspace>/cache/capture/<family>.jsonl``.
        config: a mapping; ``project_name`` (default ``"default"``) names the project.
        sinks: replaces the default ``LocalJsonlSink``.
        queue_size: lines the queue holds before producers wait (back-pressure).
        max_batch_size: most lines the writer takes per batch (one write + fsync per file).
        fsync: the default sink fsyncs every batch before it is acknowledged (default True);
            sinks given in ``sinks`` carry their own setting.
        overflow: what a full queue means: ``"wait"`` (awaited and sync calls wait, ``*_nowait``
            raise QueueFullError), ``"drop_newest"`` (the new line is dropped and counted) or
            ``"raise"`` (every call raises QueueFullError).
        shutdown_timeout: seconds closing may take to drain before it reports what is lost
            (``inf``, or anything past what the platform can wait, means no limit).
        max_retries: how often a failed write is retried before its lines are reported lost.
        retry_backoff: seconds before the first retry (at most 3600); doubled for each next one
            (up to 2 s).
        ship_to: a store URL (``postgresql://...``, with contexta-async-postgres installed):
            a background thread ships the workspace there as it is captured (``ctx.shipper``;
            see docs/scale-out.md). Closing drains it for up to ``shutdown_timeout`` seconds.

    Raises ConfigurationError (a ValidationError) naming the option for a bad option,
    ``config["project_name"]`` and ``ship_to`` included, before anything is created.
    """

    def __init__(
        self,
        *,
        workspace: str | os.PathLike[str] = ".contexta",
        config: Mapping[str, Any] | None = None,
        sinks: Iterable[Sink] | None = None,
        queue_size: int = 16_384,
        max_batch_size: int = 8_192,
        fsync: bool = True,
        overflow: OverflowPolicy = "wait",
        shutdown_timeout: float = 10.0,
        max_retries: int = 3,
        retry_backoff: float = 0.05,
        ship_to: str | None = None,
    ) -> None:
        if not isinstance(workspace, (str, os.PathLike)) or not os.fspath(workspace):
            raise ConfigurationError("workspace", "must be a non-empty path", workspace)
        if config is not None and not isinstance(config, Mapping):
            raise ConfigurationError("config", "must be a mapping", config)
        self.config: dict[str, Any] = dict(config or {})
        """The configuration mapping (a copy), with ``project_name`` filled in."""
        project_name = self.config.setdefault("project_name", "default")
        try:
            project = normalize_name(project_name, field="config.project_name")
        except ValidationError as exc:  # an option: ConfigurationError, as for the others
            raise ConfigurationError(exc.field, exc.rule, project_name) from None
        self.project = project
        """The project's ref component: ``project_name`` normalised."""
        self.workspace = Path(workspace).absolute()
        """The workspace directory, absolute."""
        options = PipelineOptions(
            queue_size=queue_size,
            max_batch_size=max_batch_size,
            overflow=overflow,
            shutdown_timeout=shutdown_timeout,
            max_retries=max_retries,
            retry_backoff=retry_backoff,
        )
        if sinks is None:
            chosen: tuple[Sink, ...] = (
                LocalJsonlSink(self.workspace.joinpath(*_CAPTURE_DIR), fsync=fsync),
            )
        else:
            chosen = tuple(sinks)
            if not chosen:
                raise ConfigurationError("sinks", "must hold at least one sink", sinks)
            names = [getattr(s, "name", None) for s in chosen]
            for sink in chosen:
                if not isinstance(sink, Sink):
                    raise ConfigurationError("sinks", "every sink must subclass Sink", sink)
                try:  # the name is written into every line
                    check_sink_name(sink.name)
                except ValidationError as exc:
                    raise ConfigurationError("sinks", f"sink name {exc.rule}", sink.name) from None
            if len(set(names)) != len(names):
                raise ConfigurationError("sinks", "sink names must be unique", names)
        self.sinks: tuple[Sink, ...] = chosen
        """Where lines go: by default one LocalJsonlSink at ``<workspace>/cache/capture``."""
        self._pipeline = Pipeline(chosen, options)
        self._registry = ScopeRegistry()
        # At interpreter exit the pipeline closes what a program left open, saying why. (The
        # pipeline outlives this object: its writer thread holds it, not the other way round.)
        self._pipeline.before_exit = functools.partial(
            _cancel_open_runs,
            self._registry,
            self._pipeline,
            "the program exited before the run was closed",
        )
        self.shipper: InProcessShipper | None = None
        """With ``ship_to``: the thread shipping the workspace to the store, else None."""
        self._shipper_closing = threading.Lock()  # a second close waits for the first's drain
        if ship_to is not None:
            try:
                self.shipper = start_shipper(
                    ship_to, self.workspace, chosen, flush=self.flush, aflush=self.aflush
                )
            except ConfigurationError:
                raise
            except ValidationError as exc:  # a scheme nothing serves, a malformed URL...
                shown = url_scheme(ship_to) or "..."  # never the URL: it may hold a password
                raise ConfigurationError("ship_to", exc.rule, shown) from None

    # ---- capture ---------------------------------------------------------------------

    def run(
        self,
        name: str,
        *,
        dataset_ref: str | None = None,
        tags: Mapping[str, str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        code_revision: str | None = None,
    ) -> Opening[Run, AsyncRun]:
        """A run: ``with ctx.run("name") as run`` or ``async with ctx.run("name") as run``.

        Its ref is ``run:<project>.<normalised name>``. A second run with the same ref cannot be
        open at the same time in one context (DuplicateScopeError).
        """
        if dataset_ref is not None and not is_valid_ref(dataset_ref):
            raise ValidationError(
                "dataset_ref", "must be a ref such as 'dataset:sklearn.iris'", dataset_ref
            )
        fields = {
            "dataset_ref": dataset_ref,
            "tags": v.check_tags(tags),
            "metadata": v.check_attributes(metadata, "metadata"),
            "code_revision": v.check_optional_text(code_revision, "code_revision"),
        }
        if self._pipeline.closed:
            raise ClosedScopeError("the Contexta context is closed")
        core = ScopeCore(
            "run",
            name,
            parent=None,
            pipeline=self._pipeline,
            registry=self._registry,
            project=self.project,
            run_fields=fields,
        )
        return Opening(core, Run, AsyncRun)

    # ---- durability and shutdown -----------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Block this thread until every line captured before the call is written and fsynced.

        Always blocking, on any thread but the writer's own (a sink's ``write``, or a hook the
        writer runs, gets LifecycleError: it would wait for itself). On a thread that runs an
        event loop it stalls that loop until the flush is done: async code awaits
        :meth:`aflush` instead. Raises DeliveryError naming the lines and runs that a sink
        could not make durable since the last flush, and FlushTimeoutError when ``timeout``
        seconds pass first (the lines stay queued).
        """
        self._pipeline.flush_blocking(timeout)

    async def aflush(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - the same signature as flush()
        """Like :meth:`flush`, awaited: ``await ctx.aflush()`` waits without blocking the loop.

        Works on every anyio backend (asyncio and trio). Cancelling the wait leaves the lines
        queued; they are still written.
        """
        await self._pipeline.flush(timeout)

    def close(self) -> None:
        """Close open runs (as cancelled), drain, fsync and stop. Idempotent; blocking.

        A close on another thread, or a second one, waits for the close in progress (for up
        to ``shutdown_timeout`` of its own) and raises what it raises; once a close is over,
        close() returns at once.

        With ``ship_to``, then ships what is left for up to ``shutdown_timeout`` seconds; the
        lines still not in the store stay in the workspace (``ctx.shipper.lines_waiting``)."""
        self._pipeline.check_not_on_writer("close")
        deadline = self._shutdown_deadline()
        try:
            try:
                self._close_open_runs()
            finally:
                self._pipeline.close_blocking()
        finally:
            if self.shipper is not None:
                self._close_shipper(_time_left(deadline))

    async def aclose(self) -> None:
        """Like close(), without blocking the event loop; shielded from cancellation."""
        self._pipeline.check_not_on_writer("aclose")
        with anyio.CancelScope(shield=True):
            deadline = self._shutdown_deadline()
            try:
                try:
                    self._close_open_runs()
                finally:
                    await self._pipeline.aclose()
            finally:
                if self.shipper is not None:
                    await anyio.to_thread.run_sync(self._close_shipper, _time_left(deadline))

    def _close_shipper(self, timeout: float) -> None:
        assert self.shipper is not None
        with self._shipper_closing:
            self.shipper.close(timeout)

    def _shutdown_deadline(self) -> float:
        # One shutdown_timeout for the whole close: the shipper gets what the drain left.
        # (A float, inf for no limit: PipelineOptions turns a huge int into inf.)
        return time.monotonic() + self._pipeline.options.shutdown_timeout

    def _close_open_runs(self) -> None:
        _cancel_open_runs(self._registry, self._pipeline, "the Contexta context closed first")

    def statistics(self) -> Statistics:
        """Counters: queued, enqueued, written, fsyncs, batches, failures, drops..."""
        return self._pipeline.statistics()

    @property
    def closed(self) -> bool:
        """True once close() or aclose() has begun."""
        return self._pipeline.closed

    # ---- context management ----------------------------------------------------------

    def __enter__(self) -> Contexta:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Contexta:
        """Start the writer now; leaving the block drains, fsyncs and stops it (aclose)."""
        self._pipeline.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Contexta project={self.project!r} workspace={str(self.workspace)!r} {state}>"
