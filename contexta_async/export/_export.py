"""Export a workspace's metric records (or events) to a file or an Arrow table, streaming."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from functools import partial
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio
import anyio.to_thread
import msgspec

from .._errors import ValidationError
from ..readers._errors import EmptyWorkspaceError
from ..readers._source import run_names
from ._columns import Table, arrow_batch, arrow_schema
from ._optional import import_optional
from ._output import check_output, create_partial, move_into_place, unwritable
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

_T = TypeVar("_T")

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


def _check_runs(runs: object) -> list[str] | None:
    """``runs`` as a list of names (None: every run); ValidationError naming the field."""
    return None if runs is None else run_names(runs)


async def _run_refs(ws: Workspace, names: list[str] | None, *, require_runs: bool) -> list[str]:
    """The full refs of ``names`` (None: of every run; with ``require_runs``, a workspace
    holding none raises EmptyWorkspaceError, as naming a run in it does)."""
    if names is None:
        refs = [summary.ref for summary in await ws.list_runs()]
        if not refs and require_runs:
            raise EmptyWorkspaceError(ws.source.describe())
        return refs
    # One read resolves every name (not one per name).
    return list(dict.fromkeys(await ws._resolve_all(names) if names else []))


def _output_path(output: object) -> str:
    """``output`` as a str path; ValidationError unless it is a str or an os.PathLike of str."""
    path = os.fspath(output) if isinstance(output, os.PathLike) else output
    if not isinstance(path, str):
        raise ValidationError("output", "must be a path (a str or os.PathLike of str)", output)
    if "\0" in path:
        raise ValidationError("output", "must not contain a NUL character", path)
    return path


async def _writing(target: Path, step: Callable[..., _T], *args: Any) -> _T:
    """``step(*args)`` in a worker thread; an OSError (the output's directory, the disk, the
    name...) becomes UnwritableOutputError naming ``target``."""
    try:
        return await anyio.to_thread.run_sync(step, *args)
    except OSError as exc:
        raise unwritable(target, exc) from exc


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
    ``batch_rows`` rows, so memory stays bounded whatever the workspace's size.

    The file is written under a temporary name next to ``output`` and renamed when complete:
    a failed or cancelled export leaves no partial file. An existing ``output`` is replaced
    only with ``overwrite=True``, and only if it is a regular file (a FIFO, device, socket,
    symbolic link or directory is refused); without it, a file created at ``output`` while
    the export runs is not replaced either (ValidationError). An output that cannot be
    written (its directory, a full disk...) raises ``UnwritableOutputError``; a workspace
    holding no run (with ``runs`` not given) ``EmptyWorkspaceError``.
    """
    path = _output_path(output)
    chosen = _format_of(PurePath(path), format)
    names = _check_runs(runs)
    if not isinstance(events, bool):
        raise ValidationError("events", "must be a bool", events)
    if not isinstance(overwrite, bool):
        raise ValidationError("overwrite", "must be a bool", overwrite)
    _check_batch_rows(batch_rows)
    target = await anyio.to_thread.run_sync(check_output, path, overwrite, ws.capture_dir)
    if chosen == "parquet":
        import_optional("pyarrow.parquet", "--format parquet")  # before any reading
    table: Table = "events" if events else "metrics"
    # A file of no rows from a workspace holding no run would hide a wrong path: an error, as
    # for compare (runs=[] asks for no run and writes the header alone).
    refs = await _run_refs(ws, names, require_runs=True)
    partial = await _writing(target, create_partial, target)
    count = 0
    try:
        writer: Writer = await _writing(target, open_writer, partial, chosen, table, batch_rows)
        try:
            async with aclosing(_batches(ws, refs, table, min(batch_rows, _READ_ROWS))) as batches:
                async for batch in batches:
                    await _writing(target, writer.write, batch)
                    count += len(batch)
        finally:
            with anyio.CancelScope(shield=True):  # closed even when cancelled
                await _writing(target, writer.close)
        await _writing(target, move_into_place, partial, target, overwrite)
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
    names = _check_runs(runs)
    if not isinstance(events, bool):
        raise ValidationError("events", "must be a bool", events)
    table: Table = "events" if events else "metrics"
    # An empty table of an empty workspace, as list_runs() gives an empty list.
    refs = await _run_refs(ws, names, require_runs=False)
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
