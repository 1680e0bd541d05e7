"""The exported columns: one row per metric record (or per event), flat and typed."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Final, Literal

import msgspec

from ._optional import import_optional

if TYPE_CHECKING:
    from ..readers import RecordRow

__all__ = [
    "EVENT_COLUMNS",
    "METRIC_COLUMNS",
    "Row",
    "Table",
    "arrow_batch",
    "arrow_schema",
    "attributes_text",
    "columns_of",
    "event_row",
    "metric_row",
    "rows_of",
]

Table = Literal["metrics", "events"]
Row = tuple[Any, ...]

# (name, Arrow/Parquet type). cluster and epoch: the sample's (stage.sample(..., cluster=,
# epoch=)), null when not given.
_WHERE: Final[tuple[tuple[str, str], ...]] = (
    ("run", "string"),
    ("stage", "string"),
    ("batch", "string"),
    ("sample", "string"),
    ("cluster", "string"),
    ("epoch", "int64"),
    ("key", "string"),
)
_WHEN: Final = (("captured_at", "timestamp[us, UTC]"),)
METRIC_COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    *_WHERE,
    ("value", "float64"),
    ("unit", "string"),
    *_WHEN,
)
EVENT_COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    *_WHERE,
    ("level", "string"),
    ("message", "string"),
    ("attributes", "string"),
    *_WHEN,
)
_ATTRIBUTES: Final = [name for name, _ in EVENT_COLUMNS].index("attributes")
_json = msgspec.json.Encoder(order="deterministic")


def metric_row(row: RecordRow) -> Row:
    value = None if row.value is None else float(row.value)
    return (
        row.run_ref, row.stage, row.batch, row.sample, row.cluster, row.epoch,
        row.key, value, row.unit, row.recorded_at,
    )  # fmt: skip


def event_row(row: RecordRow) -> Row:
    # attributes stay a mapping here: JSON Lines writes it as an object, the others as text
    return (
        row.run_ref, row.stage, row.batch, row.sample, row.cluster, row.epoch,
        row.key, row.level, row.message, row.attributes, row.recorded_at,
    )  # fmt: skip


def columns_of(table: Table) -> tuple[tuple[str, str], ...]:
    return METRIC_COLUMNS if table == "metrics" else EVENT_COLUMNS


def attributes_text(rows: Sequence[Row]) -> list[Row]:
    """Event rows with ``attributes`` as JSON text (CSV and Parquet have no free-form map)."""
    return [
        (*row[:_ATTRIBUTES], _json.encode(row[_ATTRIBUTES]).decode(), *row[_ATTRIBUTES + 1 :])
        for row in rows
    ]


def arrow_schema(table: Table) -> Any:
    pa = import_optional("pyarrow", "Arrow and Parquet export")
    types = {
        "string": pa.string(),
        "int64": pa.int64(),
        "float64": pa.float64(),
        "timestamp[us, UTC]": pa.timestamp("us", tz="UTC"),
    }
    return pa.schema([pa.field(name, types[kind]) for name, kind in columns_of(table)])


def _timestamps(pa: Any, values: Sequence[str | None], kind: Any) -> Any:
    text = pa.array(values, pa.string())
    try:
        return text.cast(kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # A time Arrow's ISO 8601 parser refuses (another writer's format): parsed one by one,
        # null where it is no time at all.
        return pa.array([_parse_time(v) for v in values], kind)


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


# The RecordRow attribute of each column, in column order.
_ATTRS: Final[dict[Table, tuple[str, ...]]] = {
    "metrics": (
        "run_ref", "stage", "batch", "sample", "cluster", "epoch",
        "key", "value", "unit", "recorded_at",
    ),
    "events": (
        "run_ref", "stage", "batch", "sample", "cluster", "epoch",
        "key", "level", "message", "attributes", "recorded_at",
    ),
}  # fmt: skip


def rows_of(table: Table, records: Sequence[RecordRow]) -> list[Row]:
    """The table's rows (tuples) of ``records``."""
    make = metric_row if table == "metrics" else event_row
    return [make(record) for record in records]


def arrow_batch(table: Table, records: Sequence[RecordRow]) -> Any:
    """One pyarrow RecordBatch of ``records``' metric or event rows, made column by column
    (no row tuples: a C-level pass over the records per column)."""
    pa = import_optional("pyarrow", "Arrow and Parquet export")
    schema = arrow_schema(table)
    arrays = []
    for name, field in zip(_ATTRS[table], schema, strict=True):
        column: list[Any] = list(map(attrgetter(name), records))
        if name == "attributes":
            encode = _json.encode
            column = [encode(value).decode() for value in column]
        if pa.types.is_timestamp(field.type):
            arrays.append(_timestamps(pa, column, field.type))
        else:
            # value: RecordRow.value is a float (msgspec decodes the JSON's ints as floats)
            arrays.append(pa.array(column, field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
