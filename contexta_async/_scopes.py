"""The two faces of a scope: ``with`` (sync) and ``async with`` (async), over one ScopeCore.

``ctx.run(...)``, ``run.stage(...)``, ``stage.batch(...)`` and ``.sample(...)`` return an
:class:`Opening`. Entering it with ``with`` gives the sync face (:class:`Run`, :class:`Stage`,
...), whose capture methods return when the line is queued, blocking the thread only while the
queue is full. Entering it with ``async with`` gives the async face (:class:`AsyncRun`, ...),
whose capture methods are awaited and wait for room without blocking the event loop. Every face
also has ``*_nowait`` variants that never wait (see the ``overflow`` option).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Mapping
from types import TracebackType
from typing import Any, Generic, TypeVar

import anyio

from . import _validation as v
from ._artifacts import inspect_artifact, resolve_artifact_path
from ._scope_core import ScopeCore, Status
from ._waiters import ThreadWaiter, async_waiter

__all__ = [
    "AsyncBatch",
    "AsyncRun",
    "AsyncSample",
    "AsyncStage",
    "Batch",
    "Opening",
    "Run",
    "Sample",
    "Stage",
]

S = TypeVar("S")
A = TypeVar("A")


def _exit_status(
    exc_type: type[BaseException] | None, exc: BaseException | None, cancelled: tuple[type, ...]
) -> tuple[Status, str | None]:
    if exc_type is None:
        return "completed", None
    if issubclass(exc_type, SystemExit) and getattr(exc, "code", 1) in (0, None):
        return "completed", None  # sys.exit(0) or sys.exit(): the program says it succeeded
    try:
        message = str(exc)
    except Exception:  # an exception whose __str__ fails must not keep its scope open
        message = ""
    reason = f"{exc_type.__name__}: {message}" if message else exc_type.__name__
    return ("cancelled" if issubclass(exc_type, cancelled) else "failed"), reason


_SYNC_CANCELLED: tuple[type, ...] = (KeyboardInterrupt, GeneratorExit, asyncio.CancelledError)


def _sync_cancelled() -> tuple[type, ...]:
    """What counts as cancellation when a sync ``with`` exits: asyncio's and, if trio is loaded,
    trio's Cancelled (a sync scope inside a trio task sees trio's cancellation, not asyncio's)."""
    trio_module = sys.modules.get("trio")
    if trio_module is None:
        return _SYNC_CANCELLED
    return (*_SYNC_CANCELLED, trio_module.Cancelled)


def _close(core: ScopeCore, status: Status, reason: str | None) -> None:
    core.close(status, reason)


class Opening(Generic[S, A]):
    """A scope not yet entered: ``with`` it for the sync face, ``async with`` for the async one."""

    __slots__ = ("_async_face", "_core", "_sync_face")

    def __init__(self, core: ScopeCore, sync_face: type[S], async_face: type[A]) -> None:
        self._core = core
        self._sync_face = sync_face
        self._async_face = async_face

    @property
    def ref(self) -> str:
        """The ref the scope will have, known before it is entered."""
        return self._core.ref

    @property
    def name(self) -> str:
        """The name as given (stripped)."""
        return self._core.name

    def __enter__(self) -> S:
        core = self._core
        core.open()
        try:
            waiter = core.queue_opening(ThreadWaiter)
            if waiter is not None:
                try:
                    waiter.wait()
                except BaseException:
                    core.opening_abandoned(waiter)
                    raise
                core.opening_queued(waiter)
        except BaseException as exc:  # closes the scope only if its opening line was queued
            _close(core, *_exit_status(type(exc), exc, _sync_cancelled()))
            raise
        return self._sync_face(core)  # type: ignore[call-arg]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _close(self._core, *_exit_status(exc_type, exc, _sync_cancelled()))

    async def __aenter__(self) -> A:
        core = self._core
        core.open()
        try:
            waiter = core.queue_opening(async_waiter)
            if waiter is not None:
                try:
                    await waiter.wait()
                except BaseException:
                    core.opening_abandoned(waiter)
                    raise
                core.opening_queued(waiter)
        except BaseException as exc:  # closes the scope only if its opening line was queued
            cancelled = (anyio.get_cancelled_exc_class(), *_SYNC_CANCELLED)
            _close(core, *_exit_status(type(exc), exc, cancelled))
            raise
        return self._async_face(core)  # type: ignore[call-arg]

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        cancelled = (anyio.get_cancelled_exc_class(), *_SYNC_CANCELLED)
        _close(self._core, *_exit_status(exc_type, exc, cancelled))

    def __repr__(self) -> str:
        return f"<Opening {self._core.ref} ({self._core.status})>"


class _Face:
    __slots__ = ("_core",)

    def __init__(self, core: ScopeCore) -> None:
        self._core = core

    @property
    def ref(self) -> str:
        """The scope's ref, e.g. ``run:iris-svm.linear-svm``."""
        return self._core.ref

    @property
    def name(self) -> str:
        """The name as given (stripped); the ref holds its normalised form."""
        return self._core.name

    @property
    def status(self) -> Status:
        """``open``, then ``completed``, ``failed`` or ``cancelled``."""
        return self._core.status

    @property
    def started_at(self) -> str | None:
        """When the scope was entered (UTC, six fractional digits)."""
        return self._core.started_at

    @property
    def closed_at(self) -> str | None:
        """When the scope was closed, or None while it is open."""
        return self._core.closed_at

    def close(self, status: Status = "completed", *, reason: str | None = None) -> None:
        """Close the scope (and its open children) now; closing twice is harmless."""
        _close(self._core, status, reason)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._core.ref} ({self._core.status})>"


def _child(
    parent: ScopeCore, kind: Any, name: object, sync: type[S], aio: type[A]
) -> Opening[S, A]:
    core = ScopeCore(kind, name, parent=parent)
    return Opening(core, sync, aio)


def _check_artifact_args(
    kind: object, path: object, attributes: object, compute_hash: object, allow_missing: object
) -> tuple[str, str, str, dict[str, Any]]:
    checked_kind = v.check_artifact_kind(kind)
    source, absolute = resolve_artifact_path(path)
    v.check_flag(compute_hash, "compute_hash")  # written into the line's bool fields
    v.check_flag(allow_missing, "allow_missing")
    return checked_kind, source, absolute, v.check_attributes(attributes)


# ---- opening children: the same on both faces ----------------------------------------------
# A child is an Opening either way; the face is chosen by how it is entered.


class _OpensStages(_Face):
    __slots__ = ()

    def stage(self, name: str) -> Opening[Stage, AsyncStage]:
        """A stage of this run (``train``, ``evaluate``...): ``with run.stage("evaluate")``."""
        return _child(self._core, "stage", name, Stage, AsyncStage)


class _OpensBatches(_Face):
    __slots__ = ()

    def batch(self, name: str) -> Opening[Batch, AsyncBatch]:
        """A batch within this stage: ``with stage.batch("holdout-split") as batch``."""
        return _child(self._core, "batch", name, Batch, AsyncBatch)


class _OpensSamples(_Face):
    __slots__ = ()

    def sample(
        self, name: str, *, cluster: str | None = None, epoch: int | None = None
    ) -> Opening[Sample, AsyncSample]:
        """A sample (one case, one prediction): ``with scope.sample("case-1") as sample``.

        ``cluster`` names the group of correlated items the sample belongs to (questions about
        one passage, turns of one conversation): the comparison's standard errors and
        intervals then treat clusters, not samples, as independent. ``epoch`` (an int >= 1)
        is the attempt number when one item is run several times: attempts of one item are
        averaged before pairing; the sample's ref then ends in ``-epoch-<k>``. So a name that
        normalises to something ending in ``-epoch-<k>`` is refused without an epoch
        (ValidationError naming ``sample name``): it would share that attempt's ref.
        """
        core = ScopeCore("sample", name, parent=self._core, cluster=cluster, epoch=epoch)
        return Opening(core, Sample, AsyncSample)


# ---- capturing without waiting: the same on both faces --------------------------------------


class _CapturesNowait(_Face):
    __slots__ = ()

    def metric_nowait(
        self,
        key: str,
        value: float,
        *,
        unit: str | None = None,
        tags: Mapping[str, str] | None = None,
        aggregation_scope: str = "step",
        summary_basis: str = "raw_observation",
    ) -> None:
        """Record a metric without waiting; a full queue drops or raises per ``overflow``."""
        item = self._core.metric_item(key, value, unit, tags, aggregation_scope, summary_basis)
        self._core.pipeline.submit_nowait(item)

    def event_nowait(
        self,
        key: str,
        *,
        message: str,
        level: str = "info",
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a structured event without waiting."""
        item = self._core.event_item(key, message, level, attributes)
        self._core.pipeline.submit_nowait(item)


# ---- the sync face ------------------------------------------------------------------------


class _SyncCapture(_CapturesNowait):
    __slots__ = ()

    def metric(
        self,
        key: str,
        value: float,
        *,
        unit: str | None = None,
        tags: Mapping[str, str] | None = None,
        aggregation_scope: str = "step",
        summary_basis: str = "raw_observation",
    ) -> None:
        """Record a metric; blocks this thread only while the queue is full."""
        item = self._core.metric_item(key, value, unit, tags, aggregation_scope, summary_basis)
        self._core.pipeline.submit_blocking(item)

    def event(
        self,
        key: str,
        *,
        message: str,
        level: str = "info",
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a structured event."""
        item = self._core.event_item(key, message, level, attributes)
        self._core.pipeline.submit_blocking(item)


class _SyncArtifacts(_SyncCapture):
    __slots__ = ()

    def register_artifact(
        self,
        kind: str,
        path: str | Any,
        *,
        attributes: Mapping[str, Any] | None = None,
        compute_hash: bool = True,
        allow_missing: bool = False,
    ) -> str:
        """Register a file (hashed with SHA-256 unless ``compute_hash=False``); return its ref."""
        checked_kind, source, absolute, attrs = _check_artifact_args(
            kind, path, attributes, compute_hash, allow_missing
        )
        self._core.ensure_open()
        found = inspect_artifact(absolute, compute_hash=compute_hash, allow_missing=allow_missing)
        item = self._core.artifact_item(
            checked_kind,
            source,
            absolute,
            attrs,
            found,
            compute_hash=compute_hash,
            allow_missing=allow_missing,
        )
        self._core.pipeline.submit_blocking(item)
        return item.payload.manifest.artifact_ref  # type: ignore[no-any-return]


class Sample(_SyncCapture):
    """A sample (one case, one prediction) seen through the sync face."""

    __slots__ = ()


class Batch(_SyncCapture, _OpensSamples):
    """A batch within a stage, sync face."""

    __slots__ = ()


class Stage(_SyncArtifacts, _OpensBatches, _OpensSamples):
    """A stage of a run (``train``, ``evaluate``...), sync face."""

    __slots__ = ()


class Run(_SyncArtifacts, _OpensStages):
    """A run, sync face."""

    __slots__ = ()


# ---- the async face -----------------------------------------------------------------------


class _AsyncCapture(_CapturesNowait):
    __slots__ = ()

    def metric(
        self,
        key: str,
        value: float,
        *,
        unit: str | None = None,
        tags: Mapping[str, str] | None = None,
        aggregation_scope: str = "step",
        summary_basis: str = "raw_observation",
    ) -> Awaitable[None]:
        """Record a metric: ``await sample.metric("correct", 1.0)``.

        Bad input raises here, at the call. With room in the queue the line is queued before
        this returns; the await waits for room when the queue is full.
        """
        item = self._core.metric_item(key, value, unit, tags, aggregation_scope, summary_basis)
        return self._core.pipeline.submit_awaitable(item)

    def event(
        self,
        key: str,
        *,
        message: str,
        level: str = "info",
        attributes: Mapping[str, Any] | None = None,
    ) -> Awaitable[None]:
        """Record a structured event: ``await run.event("retry", message="...")``."""
        item = self._core.event_item(key, message, level, attributes)
        return self._core.pipeline.submit_awaitable(item)


class _AsyncArtifacts(_AsyncCapture):
    __slots__ = ()

    def register_artifact(
        self,
        kind: str,
        path: str | Any,
        *,
        attributes: Mapping[str, Any] | None = None,
        compute_hash: bool = True,
        allow_missing: bool = False,
    ) -> Awaitable[str]:
        """Register a file; hashing runs in a worker thread. Returns the artifact ref."""
        checked_kind, source, absolute, attrs = _check_artifact_args(
            kind, path, attributes, compute_hash, allow_missing
        )
        self._core.ensure_open()
        return self._register(checked_kind, source, absolute, attrs, compute_hash, allow_missing)

    async def _register(
        self,
        kind: str,
        source: str,
        absolute: str,
        attributes: dict[str, Any],
        compute_hash: bool,
        allow_missing: bool,
    ) -> str:
        found = await anyio.to_thread.run_sync(
            lambda: inspect_artifact(
                absolute, compute_hash=compute_hash, allow_missing=allow_missing
            )
        )
        item = self._core.artifact_item(
            kind,
            source,
            absolute,
            attributes,
            found,
            compute_hash=compute_hash,
            allow_missing=allow_missing,
        )
        await self._core.pipeline.submit_awaitable(item)
        return item.payload.manifest.artifact_ref  # type: ignore[no-any-return]


class AsyncSample(_AsyncCapture):
    """A sample, async face."""

    __slots__ = ()


class AsyncBatch(_AsyncCapture, _OpensSamples):
    """A batch within a stage, async face."""

    __slots__ = ()


class AsyncStage(_AsyncArtifacts, _OpensBatches, _OpensSamples):
    """A stage of a run, async face."""

    __slots__ = ()


class AsyncRun(_AsyncArtifacts, _OpensStages):
    """A run, async face."""

    __slots__ = ()
