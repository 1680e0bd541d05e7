"""The I/O-free core of runs, stages, batches and samples: refs, lifecycle, record building.

Both faces (``with`` and ``async with``) delegate here, so every rule is written once. The core
builds queue items; handing them to the pipeline is the face's job.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

from . import _validation as v
from ._artifacts import ArtifactFile
from ._clock import format_timestamp
from ._errors import ClosedScopeError, LifecycleError, ValidationError
from ._format.lines import (
    ARTIFACT,
    CONTEXT,
    RECORD,
    SCHEMA_VERSION,
    ArtifactManifest,
    ArtifactPayload,
    ArtifactRequest,
    ArtifactSource,
    BatchExecution,
    Envelope,
    EventPayload,
    Item,
    MetricPayload,
    RecordPayload,
    Run,
    SampleObservation,
    StageExecution,
    VerificationPolicy,
)
from ._format.refs import MAX_COMPONENT_LENGTH, components, join_ref, normalize_name
from ._run_state import RunState, ScopeRegistry
from ._waiters import Waiter, WaiterT

if TYPE_CHECKING:
    from ._pipeline import Pipeline

__all__ = ["RunState", "ScopeCore", "ScopeKind", "ScopeRegistry", "Status"]

ScopeKind = Literal["run", "stage", "batch", "sample"]
Status = Literal["open", "completed", "failed", "cancelled"]
_FINAL_STATUSES: Final = ("completed", "failed", "cancelled")
# The suffix _with_epoch gives an attempt's ref component (an epoch is an int >= 1).
_EPOCH_SUFFIX: Final = re.compile(r"-epoch-[1-9][0-9]*\Z")
_MAX_REASON: Final = 2048


class ScopeCore:
    """One run, stage, batch or sample: its refs, its status and the lines it produces."""

    __slots__ = (
        "_child_order",
        "_children",
        "_closing",
        "_lock",
        "_opening",
        "_parked_opening",
        "batch_ref",
        "closed_at",
        "cluster",
        "epoch",
        "failure_reason",
        "inherited",
        "kind",
        "name",
        "order_index",
        "parent",
        "pipeline",
        "ref",
        "run",
        "run_fields",
        "sample_ref",
        "stage_ref",
        "started_at",
        "status",
    )

    def __init__(
        self,
        kind: ScopeKind,
        name: object,
        *,
        parent: ScopeCore | None,
        pipeline: Pipeline | None = None,
        registry: ScopeRegistry | None = None,
        project: str | None = None,
        run_fields: Mapping[str, Any] | None = None,
        cluster: object = None,
        epoch: object = None,
    ) -> None:
        """A run (``parent=None``, with the pipeline, registry and project it belongs to), or a
        stage, batch or sample of ``parent``'s run (a sample may have a cluster and an
        epoch)."""
        component = normalize_name(name, field=f"{kind} name")
        self.cluster = v.check_cluster(cluster)
        self.epoch = v.check_epoch(epoch)
        if self.epoch is not None:
            component = _with_epoch(component, self.epoch)
        elif kind == "sample" and _EPOCH_SUFFIX.search(component):
            # Its ref would be the ref of an attempt of another item: "q-epoch-2" is "q" with
            # epoch=2 on disk, and two samples must never share a ref.
            raise ValidationError(
                "sample name",
                "must not end in '-epoch-<k>' without an epoch: that is the ref of attempt k "
                "of another sample (give the item's name and epoch=k, or another name)",
                name,
            )
        self.kind: ScopeKind = kind
        self.name: str = name.strip()  # type: ignore[attr-defined]
        self.parent = parent
        self.status: Status = "open"
        self.started_at: str | None = None
        self.closed_at: str | None = None
        self.failure_reason: str | None = None
        self.run_fields = run_fields
        self._children: dict[int, ScopeCore] = {}
        self._closing: tuple[Status, str | None] | None = None  # how the first closer closes it
        self._child_order = 0
        self._lock = threading.Lock()
        self.order_index = 0
        self.inherited = False  # open when this process was forked from the one that opened it
        self._opening: Item | None = None  # the opening line, from open() until it is queued
        self._parked_opening: Item | None = None  # the opening line, while it waits for room
        if parent is None:
            assert project is not None and pipeline is not None and registry is not None
            self.ref = join_ref("run", project, component, field="run name")
            self.run = RunState(self.ref, project, pipeline, registry)
            self.stage_ref = self.batch_ref = self.sample_ref = None
        else:
            self.run = parent.run
            self.ref = join_ref(kind, components(parent.ref), component, field=f"{kind} name")
            self.stage_ref = self.ref if kind == "stage" else parent.stage_ref
            self.batch_ref = self.ref if kind == "batch" else parent.batch_ref
            self.sample_ref = self.ref if kind == "sample" else None
        self.pipeline = self.run.pipeline  # the faces' shortcut on the hot path

    # ---- lifecycle -------------------------------------------------------------------

    def open(self) -> None:
        """Mark the scope open; its opening CONTEXT line is queued next (``queue_opening``).

        From here on the scope can be closed, from another thread too: under this scope's lock
        it is entered, and its opening line kept, in one step, so a close finds either a scope
        not yet entered (nothing to close) or one whose opening line it can queue first.
        """
        parent = self.parent
        with self._lock:
            if self.started_at is not None:
                raise LifecycleError(f"{self.ref} was already entered; a scope is entered once")
            try:
                self.run.registry.add(self)
                if parent is not None:
                    parent.ensure_open()
                    self.order_index = parent.attach(self)
                self.started_at = format_timestamp(time.time_ns())
                self._opening = self.context_item()
            except BaseException:
                self.started_at = None
                self._forget()  # out of the registry and the parent's children, if it got in
                raise

    def attach(self, child: ScopeCore) -> int:
        """Take ``child`` in as an open child (closing this scope closes it); return its
        order among this scope's children."""
        with self._lock:
            if self.status != "open" or self._closing is not None:
                state = "closing" if self.status == "open" else self.status
                raise ClosedScopeError(f"{self.ref} is {state}; cannot open {child.ref}")
            self._children[id(child)] = child
            index = self._child_order
            self._child_order += 1
            return index

    def close(self, status: Status, reason: str | None = None) -> None:
        """Close this scope and its open children, and queue their closing CONTEXT lines (a
        scope's after its children's). Closing twice is harmless: the second call does nothing.

        A scope turns closed and its closing line is queued in one step, under its lock, so a
        close that finds it closed (from another thread: the context's, a parent's) knows its
        line is queued; the context's close relies on that before it closes the queue. Two
        closes at once agree, and neither waits for the other to finish: the first one's
        status and reason go to the children and the scope, whichever of the two gets there
        first.
        """
        if status not in _FINAL_STATUSES:
            raise ValidationError("status", f"must be one of {list(_FINAL_STATUSES)}", status)
        if reason is not None and not isinstance(reason, str):
            raise ValidationError("reason", "must be a string or None", reason)
        with self._lock:
            if self.status != "open" or self.started_at is None or self.inherited:
                return
            self._queue_opening_now_locked()
            if self._closing is None:
                self._closing = (status, reason)  # and no child opens from now on
            status, reason = self._closing
            children = list(self._children.values())
        try:
            for child in children:
                child.close(status, reason)
        finally:  # a child whose line cannot be queued (the writer stopped) still closes this
            self._close_self(status, reason)

    def _close_self(self, status: Status, reason: str | None) -> None:
        """The second half of ``close``: this scope's own status and closing line."""
        if reason is not None:
            if len(reason) > _MAX_REASON:
                reason = reason[: _MAX_REASON - 3] + "..."
            reason = v.writable_text(reason)  # an exception's message may hold a surrogate
        try:
            with self._lock:
                if self.status != "open":
                    return  # the other close got here first: the line is queued
                self._children.clear()  # all closed above: none opened since
                self.status = status
                self.closed_at = format_timestamp(time.time_ns())
                self.failure_reason = reason
                self.pipeline.submit_closing(self.context_item())
        finally:
            self._forget()

    def _queue_opening_now_locked(self) -> None:
        """Closing: an opening line not queued yet goes in first, past the bound like the
        closing line (a scope's lock held)."""
        if self._opening is not None:
            # Entered, not queued yet (another thread closes it between the two): the opener
            # finds it queued. Should the context be closed, this raises and the scope stays
            # as it was: the opener's own attempt fails, and no line is written at all.
            self.pipeline.submit_closing(self._opening)
            self._opening = None
        if self._parked_opening is not None:
            # Its opening line still waits for room: it goes in now, and wakes its opener.
            self.pipeline.queue_parked_now(self._parked_opening)
            self._parked_opening = None

    # The opening line is queued, or parked, under this scope's lock: a close from another
    # thread finds it either not yet queued or parked (close queues it first) or queued (its
    # closing line goes after it), never in between; and a scope whose opening line is
    # withdrawn writes nothing.

    def queue_opening(self, make_waiter: Callable[[], WaiterT]) -> WaiterT | None:
        """Queue the opening line kept by ``open`` (None), or park it: wait on the waiter
        returned, then call ``opening_queued``, or ``opening_abandoned`` if the wait is
        interrupted. None too when a close from another thread queued it already (the scope is
        entered closed, as when it is closed while its opening line waits for room)."""
        try:
            with self._lock:
                item, self._opening = self._opening, None
                if item is None:
                    return None
                try:
                    waiter = self.pipeline.queue_opening(item, make_waiter)
                except BaseException:  # the context is closed: the scope never opened
                    self.status = "cancelled"
                    raise
                self._parked_opening = None if waiter is None else item
        except BaseException:
            self._forget()
            raise
        return waiter

    def opening_queued(self, waiter: Waiter) -> None:
        """The wait for room ended. Woken because the writer stopped, the opening line never
        reaches a file: the scope never opened, and the opener gets WriterStoppedError."""
        stopped = self.pipeline.stopped_error()
        with self._lock:
            self._parked_opening = None
            if stopped is not None:
                self.status = "cancelled"
        if stopped is not None:
            self._forget()
            raise stopped
        self.pipeline.pass_turn(waiter)

    def opening_abandoned(self, waiter: Waiter) -> None:
        """The wait for room was interrupted: a line still parked is withdrawn, and the scope
        never opened (no line at all); a line already queued stays, and closing follows."""
        with self._lock:
            self._parked_opening = None
            if not self.pipeline.waiting_ended(waiter) or self.status != "open":
                return
            self.status = "cancelled"
        self._forget()

    def detach(self, child: ScopeCore) -> None:
        """``child`` is no longer open: closing this scope no longer closes it."""
        with self._lock:
            self._children.pop(id(child), None)

    def _forget(self) -> None:
        """No longer open: out of the parent's children and the registry."""
        if self.parent is not None:
            self.parent.detach(self)
        self.run.registry.discard(self)

    def reinit_after_fork(self) -> None:
        """In a forked child (see ScopeRegistry.reinit_after_fork): a fresh lock, and the scope
        is inherited; an inherited run numbers its records from a new random start."""
        self._lock = threading.Lock()
        self.inherited = True
        if self.parent is None:
            self.run.restart_counter()

    def ensure_open(self) -> None:
        if self.status != "open":
            raise ClosedScopeError(f"{self.ref} is {self.status}; capture needs an open scope")
        if self.started_at is None:
            raise LifecycleError(
                f"{self.ref} has not been entered; use 'with' or 'async with' before capturing"
            )

    def context_item(self) -> Item:
        """This scope's CONTEXT line as it stands: open, or closed with its status."""
        payload_type, payload = _CONTEXT_LINES[self.kind](self)
        return Item(CONTEXT, payload_type, self.ref, self.run.ref, payload)

    # ---- records ---------------------------------------------------------------------

    def _record_item(
        self, record_type: str, payload_type: str, payload: MetricPayload | EventPayload
    ) -> Item:
        """Wrap a validated payload in its envelope: a fresh record ref, now as the time."""
        run = self.run
        prefix = run.metric_prefix if record_type == "metric" else run.event_prefix
        # The counter starts below 2**47, so the suffix stays 12 digits for 2**47 records.
        record_ref = prefix + "%012x" % next(run.record_counter)  # noqa: UP031
        stamp = format_timestamp(time.time_ns())
        envelope = Envelope(
            batch_execution_ref=self.batch_ref,
            observed_at=stamp,
            record_ref=record_ref,
            record_type=record_type,
            recorded_at=stamp,
            run_ref=run.ref,
            sample_observation_ref=self.sample_ref,
            stage_execution_ref=self.stage_ref,
        )
        return Item(
            RECORD,
            payload_type,
            record_ref,
            run.ref,
            RecordPayload(envelope=envelope, payload=payload),
        )

    def metric_item(
        self,
        key: object,
        value: object,
        unit: object,
        tags: object,
        aggregation_scope: object,
        summary_basis: object,
    ) -> Item:
        # The hot path: every metric passes here, so the common defaults skip their checks.
        number, value_type = v.check_metric_value(value)
        payload = MetricPayload(
            aggregation_scope=(
                aggregation_scope
                if type(aggregation_scope) is str and aggregation_scope == "step"
                else v.check_aggregation_scope(aggregation_scope)
            ),
            metric_key=v.check_key(key),
            subject_ref=self.ref,
            summary_basis=(
                summary_basis
                if type(summary_basis) is str and summary_basis == "raw_observation"
                else v.check_optional_text(summary_basis, "summary_basis") or ""
            ),
            tags=v.check_tags(tags),
            unit=v.check_unit(unit),
            value=number,
            value_type=value_type,
        )
        self.ensure_open()
        return self._record_item("metric", "MetricRecord", payload)

    def event_item(self, key: object, message: object, level: object, attributes: object) -> Item:
        payload = EventPayload(
            attributes=v.check_attributes(attributes),
            event_key=v.check_key(key),
            level=v.check_level(level),
            message=v.check_message(message),
            subject_ref=self.ref,
        )
        self.ensure_open()
        return self._record_item("event", "StructuredEventRecord", payload)

    def artifact_item(
        self,
        kind: str,
        source: str,
        absolute_path: str,
        attributes: dict[str, Any],
        found: ArtifactFile,
        *,
        compute_hash: bool,
        allow_missing: bool,
    ) -> Item:
        """Build the ARTIFACT line once the file has been inspected (off the event loop)."""
        self.ensure_open()
        run = self.run
        suffix = "%012x" % next(run.record_counter)  # noqa: UP031
        artifact_ref = f"artifact:{components(run.ref)}.{kind.replace('_', '-')}-{suffix}"
        stamp = format_timestamp(time.time_ns())
        payload = ArtifactPayload(
            binding_status="BOUND" if found.exists else "PENDING",
            manifest=ArtifactManifest(
                artifact_kind=kind,
                artifact_ref=artifact_ref,
                attributes=attributes,
                batch_execution_ref=self.batch_ref,
                created_at=stamp,
                hash_value=found.hash_value,
                location_ref=f"path:{absolute_path}",
                run_ref=run.ref,
                sample_observation_ref=self.sample_ref,
                size_bytes=found.size_bytes,
                stage_execution_ref=self.stage_ref,
            ),
            request=ArtifactRequest(
                artifact_kind=kind,
                artifact_ref=artifact_ref,
                attributes=attributes,
                source=source,
                verification_policy=VerificationPolicy(
                    compute_hash=compute_hash, require_existing_source=not allow_missing
                ),
            ),
            source=ArtifactSource(exists=found.exists, uri=absolute_path),
        )
        return Item(ARTIFACT, "dict", None, run.ref, payload)


def _with_epoch(component: str, epoch: int) -> str:
    """The ref component of attempt ``epoch`` of a sample: ``<name>-epoch-<k>``. The ref
    grammar has no character left to mark an epoch with, so it goes in the name; the readers
    identify the item by the CONTEXT line's name and epoch, never by parsing the ref. No
    sample without an epoch may take such a component (_EPOCH_SUFFIX): the two would share a
    ref; two attempts never do, since the last ``-epoch-`` of a component tells them apart."""
    suffixed = f"{component}-epoch-{epoch}"
    if len(suffixed) > MAX_COMPONENT_LENGTH:
        raise ValidationError(
            "sample name",
            f"with its epoch suffix ({suffixed!r}) normalises to more than "
            f"{MAX_COMPONENT_LENGTH} characters",
            component,
        )
    return suffixed


# ---- the CONTEXT line of each kind of scope ----------------------------------------------


def _run_line(core: ScopeCore) -> tuple[str, Run]:
    fields = core.run_fields or {}
    return "Run", Run(
        code_revision=fields.get("code_revision"),
        dataset_ref=fields.get("dataset_ref"),
        ended_at=core.closed_at,
        failure_reason=core.failure_reason,
        metadata=fields.get("metadata") or {},
        name=core.name,
        project_ref=core.run.project_ref,
        run_ref=core.ref,
        started_at=core.started_at or "",
        status=core.status,
        tags=fields.get("tags") or {},
    )


def _stage_line(core: ScopeCore) -> tuple[str, StageExecution]:
    return "StageExecution", StageExecution(
        ended_at=core.closed_at,
        failure_reason=core.failure_reason,
        order_index=core.order_index,
        run_ref=core.run.ref,
        stage_execution_ref=core.ref,
        stage_name=core.name,
        started_at=core.started_at or "",
        status=core.status,
    )


def _batch_line(core: ScopeCore) -> tuple[str, BatchExecution]:
    return "BatchExecution", BatchExecution(
        batch_execution_ref=core.ref,
        batch_name=core.name,
        ended_at=core.closed_at,
        failure_reason=core.failure_reason,
        order_index=core.order_index,
        run_ref=core.run.ref,
        stage_execution_ref=core.stage_ref or "",
        started_at=core.started_at or "",
        status=core.status,
    )


def _sample_line(core: ScopeCore) -> tuple[str, SampleObservation]:
    return "SampleObservation", SampleObservation(
        batch_execution_ref=core.batch_ref,
        cluster=core.cluster,
        ended_at=core.closed_at,
        epoch=core.epoch,
        extensions=(),
        failure_reason=core.failure_reason,
        observed_at=core.started_at or "",
        run_ref=core.run.ref,
        sample_name=core.name,
        sample_observation_ref=core.ref,
        schema_version=SCHEMA_VERSION,
        stage_execution_ref=core.stage_ref or "",
        status=core.status,
    )


# The payload type (as written in the line) and payload of each kind's CONTEXT line.
_CONTEXT_LINES: Final[Mapping[ScopeKind, Callable[[ScopeCore], tuple[str, Any]]]] = {
    "run": _run_line,
    "stage": _stage_line,
    "batch": _batch_line,
    "sample": _sample_line,
}
