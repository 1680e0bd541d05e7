"""File writers, one per format; each is given records (``RecordRow``) batch by batch, makes
them its rows and keeps at most a Parquet row group of them."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

import msgspec

from ._columns import Table, arrow_batch, arrow_schema, attributes_text, columns_of, rows_of
from ._optional import import_optional

if TYPE_CHECKING:
    from ..readers import RecordRow

__all__ = ["FORMATS", "ExportFormat", "Writer", "open_writer"]

ExportFormat = Literal["parquet", "csv", "jsonl"]
FORMATS: tuple[ExportFormat, ...] = ("parquet", "csv", "jsonl")


class Writer(Protocol):
    def write(self, records: Sequence[RecordRow]) -> None: ...

    def close(self) -> None: ...


class _ParquetWriter:
    """pyarrow's ParquetWriter, one row group per ``row_group_rows`` rows.

    Rows come in smaller batches; each is made an Arrow batch at once (a few dozen bytes a
    row, against a kilobyte or more as Python objects) and held until a row group is full.
    """

    def __init__(self, path: Path, table: Table, row_group_rows: int) -> None:
        pq = import_optional("pyarrow.parquet", "--format parquet")
        self._pa: Any = import_optional("pyarrow", "--format parquet")
        self._table: Table = table
        self._schema = arrow_schema(table)
        self._writer: Any = pq.ParquetWriter(str(path), self._schema, compression="zstd")
        self._row_group_rows = row_group_rows
        self._pending: list[Any] = []
        self._pending_rows = 0

    def write(self, records: Sequence[RecordRow]) -> None:
        self._pending.append(arrow_batch(self._table, records))
        self._pending_rows += len(records)
        while self._pending_rows >= self._row_group_rows:
            self._flush(self._row_group_rows)

    def _flush(self, rows: int) -> None:
        pending = self._pa.Table.from_batches(self._pending, schema=self._schema)
        self._writer.write_table(pending.slice(0, rows), row_group_size=rows)
        rest = pending.slice(rows)
        self._pending = rest.to_batches() if rest.num_rows else []
        self._pending_rows = rest.num_rows

    def close(self) -> None:
        if self._pending_rows:
            self._flush(self._pending_rows)
        self._writer.close()


class _CsvWriter:
    """A header line, then one line per row; null is an empty field, attributes JSON text."""

    def __init__(self, path: Path, table: Table) -> None:
        self._table: Table = table
        self._file: IO[str] = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115
        self._csv = csv.writer(self._file)
        self._csv.writerow([name for name, _ in columns_of(table)])

    def write(self, records: Sequence[RecordRow]) -> None:
        rows = rows_of(self._table, records)
        self._csv.writerows(attributes_text(rows) if self._table == "events" else rows)

    def close(self) -> None:
        self._file.close()


class _JsonlWriter:
    """One JSON object per line, every column present (null where there is no value)."""

    def __init__(self, path: Path, table: Table) -> None:
        self._table: Table = table
        self._names = [name for name, _ in columns_of(table)]
        self._encoder = msgspec.json.Encoder()
        self._file: IO[bytes] = open(path, "wb")  # noqa: SIM115

    def write(self, records: Sequence[RecordRow]) -> None:
        names, rows = self._names, rows_of(self._table, records)
        self._file.write(
            self._encoder.encode_lines([dict(zip(names, row, strict=True)) for row in rows])
        )

    def close(self) -> None:
        self._file.close()


def open_writer(path: Path, format: ExportFormat, table: Table, row_group_rows: int) -> Writer:
    if format == "parquet":
        return _ParquetWriter(path, table, row_group_rows)
    if format == "csv":
        return _CsvWriter(path, table)
    return _JsonlWriter(path, table)
