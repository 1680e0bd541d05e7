"""Whole lines of a family file -> rows of the store's tables, or a reason to skip them.

A line is shipped when it is a JSON object whose ``family`` is the one its file holds. Its
typed columns are filled where the payload has the expected shape; a line of a known family
whose fields have another type than expected (a newer payload type, a hand-edited value) is
still shipped, raw, with its typed columns empty. Anything else is *corrupt*: reported,
counted and never shipped; so is a line that is not valid UTF-8 anywhere, even in a field no
typed column reads (the store's text column would refuse it, and the whole batch with it).
The raw line itself is always kept, byte for byte, for fidelity.
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
    "STAGING_CODES",
    "STAGING_TYPES",
    "TABLES",
    "Corrupt",
    "LineParser",
    "is_utf8",
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
_TEXT, _TIME, _FLOAT8, _INT4_CODE, _INT8_CODE = range(5)
STAGING_CODES: Final[dict[str, int]] = {
    **{c: _TEXT for cols in COLUMNS.values() for c in cols},
    **{c: _TIME for cols in COLUMNS.values() for c in cols if c.endswith("_at")},
    "value": _FLOAT8,
    "order_index": _INT4_CODE,
    "size_bytes": _INT8_CODE,
    "count": _INT8_CODE,
}
STAGING_TYPES: Final[dict[int, str]] = {
    _TEXT: "text",
    _TIME: "timestamptz",
    _FLOAT8: "double precision",
    _INT4_CODE: "integer",
    _INT8_CODE: "bigint",
}
# Values that psycopg's binary COPY would not send in the column's own binary form go as bytes,
# already in that form (psycopg passes bytes through as the field's content): int4, int8 and
# timestamptz fields, the workspace's uuid and the raw line. Text goes as str, value as float.
_INT4 = struct.Struct("!i").pack
_INT8 = struct.Struct("!q").pack
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # binary timestamptz: microseconds since then
_MICROSECOND = timedelta(microseconds=1)


class _LooseLine(msgspec.Struct, gc=False):
    """What a shipped line must be: a JSON object with a string ``family``."""

    family: str


# ---- typed payloads: every field optional, unknown fields ignored ---------------------------
# gc=False: they hold strings, numbers and each other, never a cycle; untracked, the
# collector does not run once per 700 of them.


class _Scope(msgspec.Struct, gc=False):
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


class _Envelope(msgspec.Struct, gc=False):
    record_ref: Str = None
    record_type: Str = None
    run_ref: Str = None
    stage_execution_ref: Str = None
    batch_execution_ref: Str = None
    sample_observation_ref: Str = None
    observed_at: Ts = None
    recorded_at: Ts = None


class _RecordBody(msgspec.Struct, gc=False):
    subject_ref: Str = None
    metric_key: Str = None
    event_key: Str = None
    span_name: Str = None
    value: float | None = None
    value_type: Str = None
    unit: Str = None
    level: Str = None
    message: Str = None


class _Record(msgspec.Struct, gc=False):
    envelope: _Envelope = msgspec.field(default_factory=_Envelope)
    payload: _RecordBody = msgspec.field(default_factory=_RecordBody)


class _Manifest(msgspec.Struct, gc=False):
    artifact_ref: Str = None
    artifact_kind: Str = None
    run_ref: Str = None
    stage_execution_ref: Str = None
    batch_execution_ref: Str = None
    sample_observation_ref: Str = None
    location_ref: Str = None
    hash_value: Str = None
    size_bytes: int | None = None


class _Artifact(msgspec.Struct, gc=False):
    binding_status: Str = None
    manifest: _Manifest = msgspec.field(default_factory=_Manifest)


class _Degradation(msgspec.Struct, gc=False):
    run_ref: Str = None
    degradation_kind: Str = None
    count: int | None = None
    sink_name: Str = None
    reason: Str = None
    first_observed_at: Ts = None
    last_observed_at: Ts = None


# One struct per family for the whole line: a single decoding pass.
class _ContextLine(msgspec.Struct, gc=False):
    family: str
    payload: _Scope = msgspec.field(default_factory=_Scope)
    payload_type: Str = None
    captured_at: Ts = None


class _RecordLine(msgspec.Struct, gc=False):
    family: str
    payload: _Record = msgspec.field(default_factory=_Record)
    payload_type: Str = None
    captured_at: Ts = None


class _ArtifactLine(msgspec.Struct, gc=False):
    family: str
    payload: _Artifact = msgspec.field(default_factory=_Artifact)
    payload_type: Str = None
    captured_at: Ts = None


class _DegradationLine(msgspec.Struct, gc=False):
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


Value = str | bytes | float | None
Row = tuple[Value, ...]


class LineParser:
    """Turns the whole lines of one family file into rows of its table, as tuples for
    psycopg's binary ``Copy.write_row`` (formatted in C: a Python encoder per field cost
    twice the time of the whole row there). The raw line travels as it is: no escaping."""

    def __init__(self, workspace_id: uuid.UUID, file: str, family: str) -> None:
        self.workspace_id = workspace_id
        self.file = file
        self.family = family
        self.table = TABLES[family]
        self._id = workspace_id.bytes  # binary uuid
        self._width = len(COLUMNS[self.table]) - 1  # the typed columns: all but raw
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(
            {
                "CONTEXT": _ContextLine,
                "RECORD": _RecordLine,
                "ARTIFACT": _ArtifactLine,
                "DEGRADATION": _DegradationLine,
            }[family]
        )
        self._row: Callable[[Any, bytes, bytes, bytes], Row] = {  # type: ignore[assignment]
            "CONTEXT": _context,
            "RECORD": _record,
            "ARTIFACT": _artifact,
            "DEGRADATION": _degradation,
        }[family]
        self._loose = msgspec.json.Decoder(_LooseLine)

    def parse(self, line: bytes, offset: int) -> Row | Corrupt:
        """The row for one whole line (without its newline) at ``offset``, or why the line is
        corrupt."""
        key = _INT8(offset)
        try:
            # msgspec checks UTF-8 only in the fields it decodes; the raw column takes it all.
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Corrupt(self.file, offset, f"not valid UTF-8: {exc.reason} at byte {exc.start}")
        try:
            head = self._decoder.decode(line)
            family = head.family
            row = self._row(head, self._id, key, line)
        except msgspec.ValidationError:
            # An odd field (a newer payload type, a hand edit): shipped raw, typed columns
            # empty. Not even an object with a string family: corrupt.
            try:
                family = self._loose.decode(line).family
            except msgspec.ValidationError as exc:
                return Corrupt(self.file, offset, f"not a line of the format: {exc}")
            row = (self._id, key, *((None,) * self._width), line)
        except msgspec.DecodeError as exc:
            return Corrupt(self.file, offset, f"not valid JSON: {exc}")
        except RecursionError:  # msgspec's depth limit: a damaged or crafted line
            return Corrupt(self.file, offset, "nested too deep to decode")
        if family != self.family:
            return Corrupt(
                self.file, offset, f"family {family[:40]!r} does not belong in {self.file}"
            )
        if b"\\u" in line:
            # Escapes can decode to what a text column refuses (NUL, lone surrogates); only the
            # typed copies are cleaned, the raw line stays as written.
            row = tuple(_clean(v) if isinstance(v, str) else v for v in row)
        return row

    def write(
        self,
        lines: list[bytes],
        offset: int,
        write_row: Callable[[Row], object],
        corrupt: list[Corrupt],
        escapes: bool = True,
        utf8: bool = False,
    ) -> tuple[int, int]:
        """Hand the rows of whole ``lines`` (without their newlines; the first at ``offset``)
        to ``write_row``, and their corrupt lines to ``corrupt``; return (rows written, offset
        past the last line). The rows :meth:`parse` gives, in one loop that takes the common
        line (decodes, no escape) without the checks of the careful path. ``escapes=False``
        says that no line holds a ``\\u`` escape (one search of the whole batch instead of
        one per line); ``utf8=True`` that every line is valid UTF-8 (one check of the whole
        chunk: otherwise each line is checked, and one that is not is corrupt)."""
        decode = self._decoder.decode
        row = self._row
        family = self.family
        wid = self._id
        pack = _INT8
        parse = self.parse
        rows = 0
        for line in lines:
            if (utf8 or is_utf8(line)) and not (escapes and b"\\u" in line):
                try:
                    head = decode(line)
                except (msgspec.DecodeError, RecursionError):  # parse() says which
                    head = None
                if head is not None and head.family == family:
                    write_row(row(head, wid, pack(offset), line))
                    rows += 1
                    offset += len(line) + 1
                    continue
            found = parse(line, offset)
            if isinstance(found, Corrupt):
                corrupt.append(found)
            else:
                write_row(found)
                rows += 1
            offset += len(line) + 1
        return rows, offset


def is_utf8(data: bytes) -> bool:
    """Whether ``data`` is valid UTF-8 (the store's text columns take nothing else). Checked
    in C, about a GB/s: once per chunk of lines, line by line only in a chunk that fails."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# Timestamp -> its binary timestamptz (microseconds since 2000-01-01 UTC), or None for one
# that is not ISO 8601 with an offset, or no real date. A line's timestamps often repeat
# (captured_at is one per flush, observed_at and recorded_at are often equal): most cost one
# dict lookup.
_TIMES: dict[str, bytes | None] = {}
# Second -> its microseconds: the format's timestamps share their second with many neighbours.
_SECONDS: dict[str, int] = {}


def _ts(value: str | None, times: dict[str, bytes | None] = _TIMES) -> bytes | None:
    if value is None:
        return None
    try:
        return times[value]
    except KeyError:
        pass
    field = _timestamp(value)
    if len(_TIMES) >= 8192:
        _TIMES.clear()
    _TIMES[value] = field
    return field


_Ts = Callable[[str | None], bytes | None]


def _timestamp(value: str) -> bytes | None:
    """``value`` as a binary timestamptz, or None. The format's own timestamps
    (``2026-11-26T06:25:51.650841Z``) skip the shape check."""
    canonical = len(value) == 27 and value[10] == "T" and value[19] == "." and value[26] == "Z"
    if canonical:
        base = _SECONDS.get(value[:19])
        fraction = value[20:26]
        if base is not None and fraction.isdigit():
            try:
                return _INT8(base + int(fraction))
            except ValueError:  # a digit int() does not take (e.g. a superscript)
                return None
    elif _TIMESTAMP.match(value) is None:
        return None
    try:
        micros = (datetime.fromisoformat(value) - _PG_EPOCH) // _MICROSECOND
        field = _INT8(micros)
    except (ValueError, OverflowError, struct.error):
        return None
    if canonical:
        if len(_SECONDS) > 4096:
            _SECONDS.clear()
        _SECONDS[value[:19]] = micros - micros % 1_000_000
    return field


def _context(line: _ContextLine, wid: bytes, key: bytes, raw: bytes, ts: _Ts = _ts) -> Row:
    p = line.payload
    kind = _SCOPE_KINDS.get(line.payload_type or "")
    ref = {
        "run": p.run_ref,
        "stage": p.stage_execution_ref,
        "batch": p.batch_execution_ref,
        "sample": p.sample_observation_ref,
    }.get(kind or "")
    order = p.order_index
    return (
        wid,
        key,
        ts(line.captured_at),
        line.payload_type,
        ref,
        kind,
        p.project_ref,
        p.run_ref,
        p.stage_execution_ref,
        p.batch_execution_ref,
        p.name or p.stage_name or p.batch_name or p.sample_name,
        None if order is None or abs(order) >= _INT32 else _INT4(order),
        p.status,
        ts(p.started_at or p.observed_at),
        ts(p.ended_at),
        p.dataset_ref,
        p.failure_reason,
        raw,
    )


def _record(
    line: _RecordLine,
    wid: bytes,
    key: bytes,
    raw: bytes,
    ts: _Ts = _ts,
    isfinite: Callable[[float], bool] = math.isfinite,
) -> Row:
    e, b = line.payload.envelope, line.payload.payload
    value = b.value
    if value is not None and not isfinite(value):
        value = None
    return (
        wid,
        key,
        ts(line.captured_at),
        line.payload_type,
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
        ts(e.observed_at),
        ts(e.recorded_at),
        raw,
    )


def _artifact(line: _ArtifactLine, wid: bytes, key: bytes, raw: bytes, ts: _Ts = _ts) -> Row:
    a = line.payload
    m = a.manifest
    size = m.size_bytes
    return (
        wid,
        key,
        ts(line.captured_at),
        line.payload_type,
        m.artifact_ref,
        m.artifact_kind,
        m.run_ref,
        m.stage_execution_ref,
        m.batch_execution_ref,
        m.sample_observation_ref,
        a.binding_status,
        m.location_ref,
        m.hash_value,
        None if size is None or abs(size) >= _INT64 else _INT8(size),
        raw,
    )


def _degradation(line: _DegradationLine, wid: bytes, key: bytes, raw: bytes, ts: _Ts = _ts) -> Row:
    d = line.payload
    count = d.count
    return (
        wid,
        key,
        ts(line.captured_at),
        line.payload_type,
        d.run_ref,
        d.degradation_kind,
        None if count is None or abs(count) >= _INT64 else _INT8(count),
        d.sink_name,
        d.reason,
        ts(d.first_observed_at),
        ts(d.last_observed_at),
        raw,
    )


def _clean(value: str) -> str:
    return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
