"""Whole lines of a family file -> rows of the store's tables, or a reason to skip them.

A line is shipped when it is a JSON object whose ``family`` is the one its file holds. Its
typed columns are filled where the payload has the expected shape; a line of a known family
whose fields have another type than expected (a newer payload type, a hand-edited value) is
still shipped, raw, with its typed columns empty. Anything else is *corrupt*: reported,
counted and never shipped. The raw line itself is always kept, byte for byte, for fidelity.
"""

from __future__ import annotations

import math
import re
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec

__all__ = [
    "COLUMNS",
    "COPY_SIGNATURE",
    "COPY_TRAILER",
    "STAGING_CODES",
    "STAGING_TYPES",
    "TABLES",
    "Corrupt",
    "LineParser",
]

# Column lists (after workspace_id, byte_offset) per table; kept in one place so the DDL, the
# staging COPY and the INSERT ... SELECT cannot disagree.
COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "context_lines": (
        "captured_at",
        "payload_type",
        "ref",
        "kind",
        "project_ref",
        "run_ref",
        "stage_ref",
        "batch_ref",
        "name",
        "order_index",
        "status",
        "started_at",
        "ended_at",
        "dataset_ref",
        "failure_reason",
        "raw",
    ),
    "records": (
        "captured_at",
        "payload_type",
        "record_ref",
        "record_type",
        "run_ref",
        "stage_ref",
        "batch_ref",
        "sample_ref",
        "subject_ref",
        "key",
        "value",
        "value_type",
        "unit",
        "level",
        "message",
        "observed_at",
        "recorded_at",
        "raw",
    ),
    "artifacts": (
        "captured_at",
        "payload_type",
        "artifact_ref",
        "artifact_kind",
        "run_ref",
        "stage_ref",
        "batch_ref",
        "sample_ref",
        "binding_status",
        "location_ref",
        "hash_value",
        "size_bytes",
        "raw",
    ),
    "degradations": (
        "captured_at",
        "payload_type",
        "run_ref",
        "degradation_kind",
        "count",
        "sink_name",
        "reason",
        "first_observed_at",
        "last_observed_at",
        "raw",
    ),
}

TABLES: Final[dict[str, str]] = {
    "CONTEXT": "context_lines",
    "RECORD": "records",
    "ARTIFACT": "artifacts",
    "DEGRADATION": "degradations",
}
"""The table each family's lines go to."""

Str = str | None
# Timestamps are decoded as strings and sent in PostgreSQL's binary timestamptz form: one that
# is not ISO 8601 with an offset, or no real date (2026-02-30), gets NULL in its typed column.
Ts = str | None
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)\Z")

# How each column travels in the binary COPY (into the line table, or its staging table).
_TEXT, _TIME, _FLOAT8, _INT4, _INT8_CODE = range(5)
STAGING_CODES: Final[dict[str, int]] = {
    **{c: _TEXT for cols in COLUMNS.values() for c in cols},
    **{c: _TIME for cols in COLUMNS.values() for c in cols if c.endswith("_at")},
    "value": _FLOAT8,
    "order_index": _INT4,
    "size_bytes": _INT8_CODE,
    "count": _INT8_CODE,
}
STAGING_TYPES: Final[dict[int, str]] = {
    _TEXT: "text",
    _TIME: "timestamptz",
    _FLOAT8: "double precision",
    _INT4: "integer",
    _INT8_CODE: "bigint",
}
COPY_SIGNATURE: Final = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
COPY_TRAILER: Final = struct.pack("!h", -1)
_FIELDS = struct.Struct("!h").pack
_LEN = struct.Struct("!i").pack
_INT = struct.Struct("!ii").pack
_INT8 = struct.Struct("!iq").pack
_FLOAT = struct.Struct("!id").pack
_NULL = _LEN(-1)
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # binary timestamptz: microseconds since then
_MICROSECOND = timedelta(microseconds=1)


class _LooseLine(msgspec.Struct):
    """What a shipped line must be: a JSON object with a string ``family``."""

    family: str


# ---- typed payloads: every field optional, unknown fields ignored ---------------------------


class _Scope(msgspec.Struct):
    run_ref: Str = None
    project_ref: Str = None
    stage_execution_ref: Str = None
    batch_execution_ref: Str = None
    sample_observation_ref: Str = None
    name: Str = None
    stage_name: Str = None
    batch_name: Str = None
    sample_name: Str = None
    order_index: int | None = None
    status: Str = None
    started_at: Ts = None
    observed_at: Ts = None
    ended_at: Ts = None
    dataset_ref: Str = None
    failure_reason: Str = None


class _Envelope(msgspec.Struct):
    record_ref: Str = None
    record_type: Str = None
    run_ref: Str = None
    stage_execution_ref: Str = None
    batch_execution_ref: Str = None
    sample_observation_ref: Str = None
    observed_at: Ts = None
    recorded_at: Ts = None


class _RecordBody(msgspec.Struct):
    subject_ref: Str = None
    metric_key: Str = None
    event_key: Str = None
    span_name: Str = None
    value: float | None = None
    value_type: Str = None
    unit: Str = None
    level: Str = None
    message: Str = None


class _Record(msgspec.Struct):
    envelope: _Envelope = msgspec.field(default_factory=_Envelope)
    payload: _RecordBody = msgspec.field(default_factory=_RecordBody)


class _Manifest(msgspec.Struct):
    artifact_ref: Str = None
    artifact_kind: Str = None
    run_ref: Str = None
    stage_execution_ref: Str = None
    batch_execution_ref: Str = None
    sample_observation_ref: Str = None
    location_ref: Str = None
    hash_value: Str = None
    size_bytes: int | None = None


class _Artifact(msgspec.Struct):
    binding_status: Str = None
    manifest: _Manifest = msgspec.field(default_factory=_Manifest)


class _Degradation(msgspec.Struct):
    run_ref: Str = None
    degradation_kind: Str = None
    count: int | None = None
    sink_name: Str = None
    reason: Str = None
    first_observed_at: Ts = None
    last_observed_at: Ts = None


# One struct per family for the whole line: a single decoding pass.
class _ContextLine(msgspec.Struct):
    family: str
    payload: _Scope = msgspec.field(default_factory=_Scope)
    payload_type: Str = None
    captured_at: Ts = None


class _RecordLine(msgspec.Struct):
    family: str
    payload: _Record = msgspec.field(default_factory=_Record)
    payload_type: Str = None
    captured_at: Ts = None


class _ArtifactLine(msgspec.Struct):
    family: str
    payload: _Artifact = msgspec.field(default_factory=_Artifact)
    payload_type: Str = None
    captured_at: Ts = None


class _DegradationLine(msgspec.Struct):
    family: str
    payload: _Degradation = msgspec.field(default_factory=_Degradation)
    payload_type: Str = None
    captured_at: Ts = None


_SCOPE_KINDS = {
    "Run": "run",
    "StageExecution": "stage",
    "BatchExecution": "batch",
    "SampleObservation": "sample",
}
_INT64 = 2**63
_INT32 = 2**31


@dataclass(frozen=True, slots=True)
class Corrupt:
    """A whole line that was not shipped, and why."""

    file: str
    byte_offset: int
    reason: str


Value = str | int | float | None


class LineParser:
    """Parses the whole lines of one family file into rows of its table, each already in
    PostgreSQL's binary COPY format (the raw line travels as it is: no escaping)."""

    def __init__(self, workspace_id: uuid.UUID, file: str, family: str) -> None:
        self.workspace_id = workspace_id
        self.file = file
        self.family = family
        self.table = TABLES[family]
        # Binary COPY: each row is a field count, then (length, bytes) per field.
        self._head = _FIELDS(len(COLUMNS[self.table]) + 2) + _LEN(16) + workspace_id.bytes
        self._width = len(COLUMNS[self.table]) - 3  # typed columns: all but the first two, raw
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(
            {
                "CONTEXT": _ContextLine,
                "RECORD": _RecordLine,
                "ARTIFACT": _ArtifactLine,
                "DEGRADATION": _DegradationLine,
            }[family]
        )
        self._typed: Callable[[Any], tuple[Value, ...]] = {  # type: ignore[assignment]
            "CONTEXT": _context,
            "RECORD": _record,
            "ARTIFACT": _artifact,
            "DEGRADATION": _degradation,
        }[family]
        self._loose = msgspec.json.Decoder(_LooseLine)
        # Per value (captured_at, payload_type, typed columns): how it is sent.
        self._encode = _row_encoder(tuple(STAGING_CODES[c] for c in COLUMNS[self.table][:-1]))

    def parse(self, line: bytes, offset: int) -> bytes | Corrupt:
        """The binary COPY row for one whole line (without its newline) at ``offset``, or why
        the line is corrupt."""
        captured: Value = None
        kind: Value = None
        try:
            head = self._decoder.decode(line)
            family = head.family
            captured, kind = head.captured_at, head.payload_type
            typed = self._typed(head)
        except msgspec.ValidationError:
            # An odd field (a newer payload type, a hand edit): shipped raw, typed columns
            # empty. Not even an object with a string family: corrupt.
            try:
                family = self._loose.decode(line).family
            except msgspec.ValidationError as exc:
                return Corrupt(self.file, offset, f"not a line of the format: {exc}")
            typed = (None,) * self._width
        except msgspec.DecodeError as exc:
            return Corrupt(self.file, offset, f"not valid JSON: {exc}")
        if family != self.family:
            return Corrupt(
                self.file, offset, f"family {family[:40]!r} does not belong in {self.file}"
            )
        values = (captured, kind, *typed)
        if b"\\u" in line:
            # Escapes can decode to what a text column refuses (NUL, lone surrogates); only the
            # typed copies are cleaned, the raw line stays as written.
            values = tuple(_clean(v) if isinstance(v, str) else v for v in values)
        parts = [self._head, _INT8(8, offset)]
        self._encode(values, parts)
        parts.append(_LEN(len(line)))
        parts.append(line)  # the raw line, byte for byte (valid UTF-8: the decoder accepted it)
        return b"".join(parts)


_ENCODERS: dict[tuple[int, ...], Callable[[tuple[Value, ...], list[bytes]], None]] = {}


def _row_encoder(codes: tuple[int, ...]) -> Callable[[tuple[Value, ...], list[bytes]], None]:
    """A function appending the binary COPY fields of one row's values to a list, generated
    for the table's column types: one unrolled statement per column, where a loop dispatching
    on each column's type cost about a third of the client's time per line."""
    found = _ENCODERS.get(codes)
    if found is not None:
        return found
    names = ", ".join(f"v{i}" for i in range(len(codes)))
    body = [f"def encode(values, parts):\n    {names}, = values\n    a = parts.append\n"]
    for i, code in enumerate(codes):
        v = f"v{i}"
        if code == _TEXT:
            body.append(
                f"    if {v} is None:\n        a(N)\n    else:\n"
                f"        d = {v}.encode()\n        a(L(len(d)))\n        a(d)\n"
            )
        elif code == _TIME:
            body.append(f"    a(N if {v} is None else T({v}))\n")
        elif code == _FLOAT8:
            body.append(f"    a(N if {v} is None else F(8, float({v})))\n")
        elif code == _INT4:
            body.append(f"    a(N if {v} is None else I4(4, {v}))\n")
        else:
            body.append(f"    a(N if {v} is None else I8(8, {v}))\n")
    scope: dict[str, Any] = {
        "N": _NULL,
        "L": _LEN,
        "T": _timestamp,
        "F": _FLOAT,
        "I4": _INT,
        "I8": _INT8,
    }
    exec("".join(body), scope)  # code built above from the fixed column types only
    encode: Callable[[tuple[Value, ...], list[bytes]], None] = scope["encode"]
    _ENCODERS[codes] = encode
    return encode


# Second -> its binary timestamptz: the format's timestamps share their second with many
# neighbours, so most cost a dict lookup and an int() of the microseconds.
_SECONDS: dict[str, int] = {}


def _timestamp(value: str) -> bytes:
    """``value`` as a binary timestamptz field (microseconds since 2000-01-01 UTC), or NULL
    when it is not an ISO 8601 timestamp with an offset, or no real date. The format's own
    timestamps (``2026-11-26T06:25:51.650841Z``) skip the shape check."""
    canonical = len(value) == 27 and value[10] == "T" and value[19] == "." and value[26] == "Z"
    if canonical:
        base = _SECONDS.get(value[:19])
        fraction = value[20:26]
        if base is not None and fraction.isdigit():
            try:
                return _INT8(8, base + int(fraction))
            except ValueError:  # a digit int() does not take (e.g. a superscript)
                return _NULL
    elif _TIMESTAMP.match(value) is None:
        return _NULL
    try:
        micros = (datetime.fromisoformat(value) - _PG_EPOCH) // _MICROSECOND
    except (ValueError, OverflowError):
        return _NULL
    if canonical:
        if len(_SECONDS) > 4096:
            _SECONDS.clear()
        _SECONDS[value[:19]] = micros - micros % 1_000_000
    return _INT8(8, micros)


def _context(line: _ContextLine) -> tuple[Value, ...]:
    p = line.payload
    kind = _SCOPE_KINDS.get(line.payload_type or "")
    ref = {
        "run": p.run_ref,
        "stage": p.stage_execution_ref,
        "batch": p.batch_execution_ref,
        "sample": p.sample_observation_ref,
    }.get(kind or "")
    return (
        ref,
        kind,
        p.project_ref,
        p.run_ref,
        p.stage_execution_ref,
        p.batch_execution_ref,
        p.name or p.stage_name or p.batch_name or p.sample_name,
        p.order_index if p.order_index is None or abs(p.order_index) < _INT32 else None,
        p.status,
        p.started_at or p.observed_at,
        p.ended_at,
        p.dataset_ref,
        p.failure_reason,
    )


def _record(line: _RecordLine) -> tuple[Value, ...]:
    e, b = line.payload.envelope, line.payload.payload
    value = b.value
    if value is not None and not math.isfinite(value):
        value = None
    return (
        e.record_ref,
        e.record_type,
        e.run_ref,
        e.stage_execution_ref,
        e.batch_execution_ref,
        e.sample_observation_ref,
        b.subject_ref,
        b.metric_key or b.event_key or b.span_name,
        value,
        b.value_type,
        b.unit,
        b.level,
        b.message,
        e.observed_at,
        e.recorded_at,
    )


def _artifact(line: _ArtifactLine) -> tuple[Value, ...]:
    a = line.payload
    m = a.manifest
    return (
        m.artifact_ref,
        m.artifact_kind,
        m.run_ref,
        m.stage_execution_ref,
        m.batch_execution_ref,
        m.sample_observation_ref,
        a.binding_status,
        m.location_ref,
        m.hash_value,
        m.size_bytes if m.size_bytes is None or abs(m.size_bytes) < _INT64 else None,
    )


def _degradation(line: _DegradationLine) -> tuple[Value, ...]:
    d = line.payload
    return (
        d.run_ref,
        d.degradation_kind,
        d.count if d.count is None or abs(d.count) < _INT64 else None,
        d.sink_name,
        d.reason,
        d.first_observed_at,
        d.last_observed_at,
    )


def _clean(value: str) -> str:
    return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
