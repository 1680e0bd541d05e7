"""msgspec Structs for every line the library writes, and the narrow ones the readers decode.

A format change shows in this one module: the Structs written (first half) and the readers'
and the view's Structs (second half), which name only the fields they use so that msgspec
skips the rest of a line without building Python objects for it (most of the cost of
reading), with the byte patterns that find lines before any is decoded.

Written lines: fields are declared in alphabetical order, and every mapping a user passes in
(tags, attributes, metadata) is copied with its keys sorted at validation time, so every object
in a line has sorted keys, as in Contexta 1.0.0's ``json.dumps(sort_keys=True)`` output,
without paying for the encoder to sort on the hot path.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

__all__ = [
    "ARTIFACT",
    "CONTEXT",
    "DECODED_CONTEXT_TYPES",
    "DEGRADATION",
    "ENVELOPE",
    "EVENT_LINE",
    "FAMILIES",
    "PRODUCER_REF",
    "RECORD",
    "RUN_LINE",
    "SCHEMA_VERSION",
    "STAGE_LINE",
    "ArtifactLine",
    "ArtifactManifest",
    "ArtifactPayload",
    "ArtifactRequest",
    "ArtifactSource",
    "BatchExecution",
    "CaptureLine",
    "ContextLine",
    "CorrelationRefs",
    "CountLine",
    "DegradationRecord",
    "Envelope",
    "EventPayload",
    "FullRecordLine",
    "Item",
    "MetricPayload",
    "ReadEnvelope",
    "RecordPayload",
    "Run",
    "RunCountLine",
    "RunValueLine",
    "SampleObservation",
    "ScanLine",
    "StageExecution",
    "VerificationPolicy",
    "run_marker",
]

SCHEMA_VERSION: Final = "1.0.0"
PRODUCER_REF: Final = "sdk.python.local"

CONTEXT: Final = "CONTEXT"
RECORD: Final = "RECORD"
ARTIFACT: Final = "ARTIFACT"
DEGRADATION: Final = "DEGRADATION"
FAMILIES: Final = (CONTEXT, RECORD, ARTIFACT, DEGRADATION)


# ==== written: every line capture produces ================================================


class _Line(msgspec.Struct, kw_only=True, gc=False):
    """Base for the objects inside a line: keyword-only, no cyclic GC (they hold no cycles)."""


class CorrelationRefs(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    session_id: str | None = None
    trace_id: str | None = None


_NO_CORRELATION: Final = CorrelationRefs()


class Envelope(_Line, kw_only=True):
    batch_execution_ref: str | None
    completeness_marker: str = "complete"
    correlation_refs: CorrelationRefs = _NO_CORRELATION
    degradation_marker: str = "none"
    deployment_execution_ref: str | None = None
    extensions: tuple[Any, ...] = ()
    observed_at: str
    operation_context_ref: str | None = None
    producer_ref: str = PRODUCER_REF
    record_ref: str
    record_type: str
    recorded_at: str
    run_ref: str
    sample_observation_ref: str | None
    schema_version: str = SCHEMA_VERSION
    stage_execution_ref: str | None


class MetricPayload(_Line, kw_only=True):
    aggregation_scope: str
    metric_key: str
    slice_ref: str | None = None
    subject_ref: str
    summary_basis: str
    tags: dict[str, str]
    unit: str | None
    value: int | float
    value_type: str


class EventPayload(_Line, kw_only=True):
    attributes: dict[str, Any]
    event_key: str
    level: str
    message: str
    origin_marker: str = "explicit_capture"
    subject_ref: str


class RecordPayload(_Line, kw_only=True):
    """The ``payload`` of a RECORD line: ``{"envelope": ..., "payload": ...}``."""

    envelope: Envelope
    payload: MetricPayload | EventPayload


class ArtifactManifest(_Line, kw_only=True):
    artifact_kind: str
    artifact_ref: str
    attributes: dict[str, Any]
    batch_execution_ref: str | None
    created_at: str
    deployment_execution_ref: str | None = None
    extensions: tuple[Any, ...] = ()
    hash_value: str | None
    location_ref: str
    operation_context_ref: str | None = None
    producer_ref: str = PRODUCER_REF
    run_ref: str
    sample_observation_ref: str | None
    schema_version: str = SCHEMA_VERSION
    size_bytes: int | None
    stage_execution_ref: str | None


class VerificationPolicy(_Line, kw_only=True):
    compute_hash: bool
    require_existing_source: bool


class ArtifactRequest(_Line, kw_only=True):
    artifact_kind: str
    artifact_ref: str
    attributes: dict[str, Any]
    source: str
    verification_policy: VerificationPolicy


class ArtifactSource(_Line, kw_only=True):
    exists: bool
    kind: str = "PATH"
    uri: str


class ArtifactPayload(_Line, kw_only=True):
    binding_status: str
    manifest: ArtifactManifest
    request: ArtifactRequest
    source: ArtifactSource


class Run(_Line, kw_only=True):
    """CONTEXT line for a run: Contexta's ``Run`` fields plus capture metadata."""

    code_revision: str | None
    dataset_ref: str | None
    description: str | None = None
    ended_at: str | None
    extensions: tuple[Any, ...] = ()
    failure_reason: str | None
    metadata: dict[str, Any]
    name: str
    project_ref: str
    run_ref: str
    schema_version: str = SCHEMA_VERSION
    started_at: str
    status: str
    tags: dict[str, str]


class StageExecution(_Line, kw_only=True):
    ended_at: str | None
    extensions: tuple[Any, ...] = ()
    failure_reason: str | None
    order_index: int
    run_ref: str
    schema_version: str = SCHEMA_VERSION
    stage_execution_ref: str
    stage_name: str
    started_at: str
    status: str


class BatchExecution(_Line, kw_only=True):
    batch_execution_ref: str
    batch_name: str
    ended_at: str | None
    extensions: tuple[Any, ...] = ()
    failure_reason: str | None
    order_index: int
    run_ref: str
    schema_version: str = SCHEMA_VERSION
    stage_execution_ref: str
    started_at: str
    status: str


class SampleObservation(_Line, kw_only=True, omit_defaults=True):
    """A sample's CONTEXT line. ``cluster`` and ``epoch`` are written only when given (the
    only fields with a default, so the only ones ``omit_defaults`` leaves out): a sample
    without them is the line Contexta 1.0 would write."""

    batch_execution_ref: str | None
    cluster: str | None = None
    ended_at: str | None
    epoch: int | None = None
    extensions: tuple[Any, ...]
    failure_reason: str | None
    observed_at: str
    run_ref: str
    sample_name: str
    sample_observation_ref: str
    schema_version: str
    stage_execution_ref: str
    status: str


class DegradationRecord(_Line, kw_only=True):
    """What the pipeline could not deliver (``delivery_failed``) or chose to drop (``dropped``)."""

    count: int
    degradation_kind: str
    extensions: tuple[Any, ...] = ()
    first_observed_at: str
    last_observed_at: str
    reason: str
    recorded_at: str
    run_ref: str | None
    schema_version: str = SCHEMA_VERSION
    sink_name: str | None


class CaptureLine(_Line, kw_only=True):
    """One line of a capture file."""

    captured_at: str
    family: str
    payload: Any
    payload_ref: str | None
    payload_type: str
    sink_name: str


class Item(msgspec.Struct, gc=False, array_like=True):
    """A queued line, before a sink stamps ``captured_at`` and its name on it.

    ``run_ref`` is kept beside the payload so that failures can be reported per run.
    """

    family: str
    payload_type: str
    payload_ref: str | None
    run_ref: str | None
    payload: Any


# ==== read: what the readers decode of each line ==========================================

# Byte patterns that find lines of one type before any is decoded. Lines are compact JSON and
# a quote inside a JSON string is escaped, so in a CONTEXT line these bytes only occur as the
# line's own payload_type. A RECORD line may hold them inside a user's tags or attributes
# (``"payload_type": "StructuredEventRecord"`` as a tag key and value): there they only
# prefilter, and the decoded line says what it is.
RUN_LINE: Final = b'"payload_type":"Run"'
STAGE_LINE: Final = b'"payload_type":"StageExecution"'
EVENT_LINE: Final = b'"payload_type":"StructuredEventRecord"'
# The CONTEXT lines readers decode (found by RUN_LINE and STAGE_LINE, or where context.index
# says they are); of the others they only take the sample openings.
DECODED_CONTEXT_TYPES: Final = frozenset({"Run", "StageExecution"})


def run_marker(ref: str) -> bytes:
    """The bytes of a line whose envelope names run ``ref`` (a prefilter, as above)."""
    return f'"run_ref":"{ref}"'.encode()


class _N(msgspec.Struct, gc=False):
    """Base: untracked by the cyclic GC (no cycles), unknown fields ignored."""


# ---- RECORD lines, for scanning (list runs, compare) -----------------------------------


class ReadEnvelope(_N):
    """The refs of the scopes around a record, and its time."""

    run_ref: str
    stage_execution_ref: str | None = None
    batch_execution_ref: str | None = None
    sample_observation_ref: str | None = None
    recorded_at: str = ""

    def innermost(self) -> str:
        return (
            self.sample_observation_ref
            or self.batch_execution_ref
            or self.stage_execution_ref
            or self.run_ref
        )


class _CountBody(_N):
    # Metrics and events name the innermost scope around them; spans do not (None).
    subject_ref: str | None = None


class _ScanBody(_N):
    # An event or span has neither: its key is None and it is skipped when grouping metrics.
    metric_key: str | None = None
    subject_ref: str | None = None
    value: float | None = None


class _CountPayload(_N):
    # The envelope repeats what subject_ref says in ~600 bytes: it is kept raw (msgspec only
    # finds where it ends) and decoded for the few lines that need it.
    envelope: msgspec.Raw
    payload: _CountBody


class _ScanPayload(_N):
    envelope: msgspec.Raw
    payload: _ScanBody


class CountLine(_N):
    """A RECORD line as counting needs it: its type and the scope it belongs to."""

    payload: _CountPayload
    payload_type: str = ""


class ScanLine(_N):
    """A RECORD line as the comparison needs it: CountLine plus the metric key and value."""

    payload: _ScanPayload
    payload_type: str = ""


ENVELOPE: Final = msgspec.json.Decoder(ReadEnvelope)


# ---- RECORD lines, for the live view (counted per run as they are appended) ------------


class _RunOnly(_N):
    run_ref: str


class _RunCountPayload(_N):
    envelope: _RunOnly


class RunCountLine(_N):
    """A RECORD line as the view counts it: its run and type. CountLine names the subject
    instead of the run (spans name none); the envelope's run_ref costs no more here."""

    payload: _RunCountPayload
    payload_type: str = ""


class _ValueBody(_N):
    subject_ref: str | None = None
    metric_key: str | None = None
    value: float | None = None
    unit: str | None = None


class _RunValuePayload(_N):
    envelope: _RunOnly
    payload: _ValueBody


class RunValueLine(_N):
    """A RECORD line as a tracked run's page needs it: RunCountLine plus the metric key,
    value and unit (None for events and spans)."""

    payload: _RunValuePayload
    payload_type: str = ""


# ---- RECORD lines, for streaming (every field a user may want) -------------------------


class _FullEnvelope(_N):
    run_ref: str
    record_ref: str = ""
    record_type: str = ""
    recorded_at: str = ""
    stage_execution_ref: str | None = None
    batch_execution_ref: str | None = None
    sample_observation_ref: str | None = None


class _FullBody(_N):
    metric_key: str | None = None
    value: float | None = None
    value_type: str | None = None
    unit: str | None = None
    aggregation_scope: str | None = None
    tags: dict[str, str] | None = None
    event_key: str | None = None
    level: str | None = None
    message: str | None = None
    attributes: dict[str, Any] | None = None
    span_name: str | None = None
    status: str | None = None
    started_at: str | None = None
    ended_at: str | None = None


class _FullRecordPayload(_N):
    envelope: _FullEnvelope
    payload: _FullBody


class FullRecordLine(_N):
    payload: _FullRecordPayload
    payload_type: str = ""
    payload_ref: str | None = None


# ---- ARTIFACT lines ----------------------------------------------------------------------


class _Manifest(_N):
    artifact_ref: str
    artifact_kind: str
    run_ref: str
    stage_execution_ref: str | None = None
    batch_execution_ref: str | None = None
    sample_observation_ref: str | None = None
    hash_value: str | None = None
    location_ref: str | None = None
    size_bytes: int | None = None
    created_at: str = ""
    attributes: dict[str, Any] | None = None


class _ArtifactPayload(_N):
    manifest: _Manifest
    binding_status: str = ""


class ArtifactLine(_N):
    payload: _ArtifactPayload


# ---- CONTEXT lines -----------------------------------------------------------------------


class _ContextBody(_N):
    run_ref: str
    status: str = "unknown"
    name: str | None = None
    project_ref: str | None = None
    dataset_ref: str | None = None
    started_at: str | None = None
    observed_at: str | None = None
    ended_at: str | None = None
    failure_reason: str | None = None
    stage_name: str | None = None
    stage_execution_ref: str | None = None
    order_index: int = 0
    tags: dict[str, str] | None = None


class ContextLine(_N):
    payload: _ContextBody
    payload_type: str
    payload_ref: str | None = None
