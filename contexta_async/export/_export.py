"""Export a workspace's metric records (or events) to a file or an Arrow table, streaming."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from functools import partial
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.to_thread
import msgspec

from .._errors import ValidationError
from ._columns import Table, arrow_batch, arrow_schema
from ._optional import import_optional
from ._writers import FORMATS, ExportFormat, Writer, open_writer

if TYPE_CHECKING:
    import pandas
    import polars
    import pyarrow

    from ..readers import RecordKind, RecordRow, Workspace

__all__ = [
    "BATCH_ROWS",
    "ExportResult",
    "export_workspace",
    "to_arrow",
    "to_pandas",
    "to_polars",
]

BATCH_ROWS: Final = 65_536
"""Rows per Parquet row group (and most rows of an Arrow table's batches)."""

_READ_ROWS: Final = 8_192
# Rows held as Python objects at once (about 1.5 KB each): handed to the writer, which keeps
# at most a row group's worth, as Arrow data, before writing it.

_SUFFIXES: Final[dict[str, ExportFormat]] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


class ExportResult(msgspec.Struct, kw_only=True):
    """What ``export_workspace`` wrote: ``rows`` rows of ``table`` from ``runs`` (full refs)."""

    output: str
    format: ExportFormat
    table: Table
    rows: int
    runs: list[str]


async def _run_refs(ws: Workspace, runs: Sequence[str] | None) -> list[str]:
    if runs is None:
        return [summary.ref for summary in await ws.list_runs()]
    if isinstance(runs, str):
        raise ValidationError("runs", "must be a sequence of run names, not one string", runs)
    # One read resolves every name (not one per name).
    return list(dict.fromkeys(await ws._resolve_all(list(runs)) if runs else []))


async def _batches(
    ws: Workspace, refs: Sequence[str], table: Table, batch_rows: int
) -> AsyncGenerator[list[RecordRow], None]:
    """Rows of the runs ``refs`` in capture order, read in one pass over the records, in
    lists of ``batch_rows`` (the last one shorter)."""
    from ..readers._source import RowFilter

    kind: RecordKind = "metric" if table == "metrics" else "event"
    batch: list[RecordRow] = []
    if not refs:
        return
    async with aclosing(ws._record_blocks(refs, RowFilter(frozenset([kind])))) as blocks:
        async for block in blocks:
            batch += block
            while len(batch) >= batch_rows:
                yield batch[:batch_rows]
                del batch[:batch_rows]
    if batch:
        yield batch


def _check_batch_rows(batch_rows: int) -> None:
    if not isinstance(batch_rows, int) or isinstance(batch_rows, bool) or batch_rows < 1:
        raise ValidationError("batch_rows", "must be an int of at least 1", batch_rows)


def _format_of(output: PurePath, format: ExportFormat | None) -> ExportFormat:
    if format is None:
        inferred = _SUFFIXES.get(output.suffix.lower())
        if inferred is None:
            raise ValidationError(
                "format",
                f"not given, and the output's suffix does not name one of {list(FORMATS)}",
                output.suffix,
            )
        return inferred
    if format not in FORMATS:
        raise ValidationError("format", f"must be one of {list(FORMATS)}", format)
    return format


def _check_output(output: str | os.PathLike[str], overwrite: bool, capture_dir: Path) -> Path:
    """``output`` made absolute, if it can be written."""
    output = Path(os.path.abspath(output))
    real, capture = Path(os.path.realpath(output)), Path(os.path.realpath(capture_dir))
    if real == capture or capture in real.parents:
        # It would replace a capture file (record.jsonl, record.index...) or sit among them.
        raise ValidationError(
            "output", "must not be inside the workspace's capture folder", str(output)
        )
    if not output.parent.is_dir():
        raise ValidationError("output", "its directory does not exist", str(output))
    if output.is_dir():
        raise ValidationError("output", "is a directory, not a file", str(output))
    if output.exists() and not overwrite:
        raise ValidationError(
            "output", "already exists: pass overwrite=True (--force) to replace it", str(output)
        )
    return output


def _create_partial(target: Path) -> Path:
    """A new empty file next to ``target``, with the permissions the umask gives a new file
    (mkstemp's would be 0600)."""
    while True:
        partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
        try:
            os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return partial


async def export_workspace(
    ws: Workspace,
    output: str | os.PathLike[str],
    *,
    format: ExportFormat | None = None,
    runs: Sequence[str] | None = None,
    events: bool = False,
    overwrite: bool = False,
    batch_rows: int = BATCH_ROWS,
) -> ExportResult:
    """Write one row per metric record (``events=True``: per event) of ``runs`` to ``output``.

    ``runs`` are full refs or unique suffixes (default: every run); the rows of all of them
    come in capture order, from one pass over the records; ``format``
    is ``"parquet"``, ``"csv"`` or ``"jsonl"`` (default: from the output's suffix). Rows are
    read a few thousand at a time and written in worker threads, Parquet in row groups of
    ``batch_rows`` rows, so memory stays bounded whatever the workspace's size. The file is
    written under a temporary name next to ``output`` and renamed when complete: a failed
    or cancelled export leaves no partial file. An existing ``output`` is replaced only with
    ``overwrite=True``.
    """
    chosen = _format_of(PurePath(output), format)
    if not isinstance(events, bool):
        raise ValidationError("events", "must be a bool", events)
    if not isinstance(overwrite, bool):
        raise ValidationError("overwrite", "must be a bool", overwrite)
    _check_batch_rows(batch_rows)
    target = await anyio.to_thread.run_sync(_check_output, output, overwrite, ws.capture_dir)
    if chosen == "parquet":
        import_optional("pyarrow.parquet", "--format parquet")  # before any reading
    table: Table = "events" if events else "metrics"
    refs = await _run_refs(ws, runs)
    partial = await anyio.to_thread.run_sync(_create_partial, target)
    count = 0
    try:
        writer: Writer = await anyio.to_thread.run_sync(
            open_writer, partial, chosen, table, batch_rows
        )
        try:
            async with aclosing(_batches(ws, refs, table, min(batch_rows, _READ_ROWS))) as batches:
                async for batch in batches:
                    await anyio.to_thread.run_sync(writer.write, batch)
                    count += len(batch)
        finally:
            with anyio.CancelScope(shield=True):  # closed even when cancelled
                await anyio.to_thread.run_sync(writer.close)
        await anyio.to_thread.run_sync(os.replace, partial, target)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(partial.unlink, True)
        raise
    return ExportResult(output=str(target), format=chosen, table=table, rows=count, runs=refs)


async def to_arrow(
    ws: Workspace,
    runs: Sequence[str] | None = None,
    *,
    events: bool = False,
) -> pyarrow.Table:
    """The rows ``export_workspace`` writes, as one pyarrow Table (needs the analysis extra).

    The table is made of record batches of a few thousand rows each, converted as they are
    read."""
    pa = import_optional("pyarrow", "to_arrow()")
    if not isinstance(events, bool):
        raise ValidationError("events", "must be a bool", events)
    table: Table = "events" if events else "metrics"
    refs = await _run_refs(ws, runs)
    parts: list[Any] = []
    async with aclosing(_batches(ws, refs, table, _READ_ROWS)) as batches:
        async for batch in batches:
            parts.append(await anyio.to_thread.run_sync(arrow_batch, table, batch))
    return pa.Table.from_batches(parts, schema=arrow_schema(table))


async def to_pandas(
    ws: Workspace, runs: Sequence[str] | None = None, *, events: bool = False
) -> pandas.DataFrame:
    """``to_arrow`` as a pandas DataFrame (needs pandas and the analysis extra); ``epoch`` is
    a nullable ``Int64`` column."""
    pd = import_optional("pandas", "to_pandas()")
    pa = import_optional("pyarrow", "to_pandas()")
    table = await to_arrow(ws, runs, events=events)
    # epoch stays an integer column with missing values (Int64), not floats with NaN
    integers = {pa.int64(): pd.Int64Dtype()}
    return await anyio.to_thread.run_sync(partial(table.to_pandas, types_mapper=integers.get))


async def to_polars(
    ws: Workspace, runs: Sequence[str] | None = None, *, events: bool = False
) -> polars.DataFrame:
    """``to_arrow`` as a polars DataFrame (needs polars and the analysis extra)."""
    pl = import_optional("polars", "to_polars()")
    table = await to_arrow(ws, runs, events=events)
    frame: polars.DataFrame = await anyio.to_thread.run_sync(pl.from_arrow, table)
    return frame
