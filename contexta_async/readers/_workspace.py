"""Workspace: list runs, stream their records, compare them. Every method is async.

It only orchestrates: a ``RecordSource`` reads (the local files by default), the aggregate
layer arranges what it read, the analysis layer builds the answer.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Final, cast, get_args

import anyio
import anyio.to_thread
import structlog

from .._errors import ValidationError
from ..stats._bootstrap import BootstrapMethod
from ..stats._inference import Adjustment
from ..stores import open_store_source, url_scheme
from ._aggregate import STATUSES, Aggregate
from ._analysis import best_run, compare_many, compare_two
from ._errors import EmptyWorkspaceError, WorkspaceNotFoundError
from ._local import LocalSource
from ._model import (
    BestRun,
    CompareOptions,
    Direction,
    MultiRunComparison,
    ReadReport,
    RecordKind,
    RecordRow,
    RunComparison,
    RunSummary,
)
from ._read import CHUNK_SIZE
from ._source import MultiRunSource, RecordSource, RowFilter, resolve_run_ref, run_names

if TYPE_CHECKING:
    import pandas
    import polars
    import pyarrow

    from ..export import ExportFormat, ExportResult

__all__ = ["Workspace", "resolve_run_ref"]

_FALLBACK_BLOCK: Final = 1_024  # rows per list from a source without record_blocks

_log = structlog.get_logger("contexta_async")

_FILES: Final = ("context.jsonl", "record.jsonl", "artifact.jsonl", "degradation.jsonl")
_KINDS: Final = frozenset(get_args(RecordKind))


def _text(field: str, value: object, rule: str = "must be a str") -> None:
    if not isinstance(value, str):
        raise ValidationError(field, rule, value)


def _optional_text(field: str, value: object) -> None:
    if value is not None:
        _text(field, value, "must be a str or None")


def _texts(field: str, values: object, rule: str) -> list[str]:
    """``values`` (one str, or an iterable of them) as a list; ValidationError otherwise."""
    if isinstance(values, str):
        return [values]
    if not isinstance(values, Iterable):
        raise ValidationError(field, rule, values)
    found: list[str] = []
    for value in values:
        _text(field, value, rule)
        found.append(value)
    return found


def _some_run_names(runs: object) -> list[str]:
    names = run_names(runs)
    if not names:
        raise ValidationError("runs", "must name at least one run", runs)
    return names


class Workspace:
    """A workspace, read asynchronously.

    ``path`` is the workspace directory (``.contexta``) or its capture folder
    (``.contexta/cache/capture``). Files are read in ``chunk_size`` blocks in worker
    threads (anyio's), and ``record.jsonl`` is scanned and aggregated in one: the event loop
    is never blocked by file I/O or decoding, and every method works the same on asyncio and
    trio. Each method reads the files afresh, so a workspace that is still being written can
    be read again for newer data; the last line of a file still being written is left out
    until complete, and corrupt lines are skipped and counted (``last_report`` and each
    result's ``read_report``).

    Listing and comparing take what they need of each record from ``record.index`` (written
    by the local sink) wherever it verifiably matches ``record.jsonl``, and parse the JSON
    elsewhere; ``use_index=False`` parses all of it (same answers, slower).

    ``path`` may also be a store URL (``postgresql://user@host/db``, served by the
    contexta-async-postgres distribution): the store is then read as the folder would be, and
    every answer is computed by the same code (StoreNotInstalledError names what to install
    when nothing serves the scheme; ``path``, ``repr()`` and every message name the store
    without the URL's password). ``source`` replaces the local files with any other
    ``RecordSource``: then ``path`` is only its name.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = ".contexta",
        *,
        chunk_size: int = CHUNK_SIZE,
        use_index: bool = True,
        source: RecordSource | None = None,
    ) -> None:
        if not isinstance(use_index, bool):
            raise ValidationError("use_index", "must be a bool", use_index)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 4096:
            raise ValidationError("chunk_size", "must be an integer of at least 4096", chunk_size)
        self.chunk_size = chunk_size
        self.use_index = use_index
        if source is None and isinstance(path, str) and url_scheme(path):
            # A store URL (postgresql://...): its distribution's source, found by the scheme.
            # ``path`` then names the store without the URL's password.
            source = open_store_source(path)
            root = Path(source.describe())
        else:
            root = Path(path).absolute()
        self.path = root
        self.capture_dir = root
        if source is None:
            if (root / "cache" / "capture").is_dir():
                capture = root / "cache" / "capture"
            elif root.is_dir() and (
                root.name == "capture" or any((root / name).exists() for name in _FILES)
            ):
                capture = root
            else:
                raise WorkspaceNotFoundError(str(root))
            self.capture_dir = capture
            source = LocalSource(capture, root=root, chunk_size=chunk_size, use_index=use_index)
        self.source: RecordSource = source

    @property
    def last_report(self) -> ReadReport:
        """What the last finished read skipped."""
        return self.source.last_report

    def __repr__(self) -> str:
        return f"Workspace({self.source.describe()!r})"

    async def _read(
        self, names: Sequence[str] | None = None, *, values: bool = False
    ) -> tuple[Aggregate, list[str]]:
        """Read the workspace; with ``names``, resolve them (and with ``values``, keep the
        metric values of the runs they name)."""
        data = await self.source.read(names, values=values)
        if data.report.corrupt_lines:
            _log.warning(
                "corrupt lines skipped",
                workspace=self.source.describe(),
                corrupt_lines=data.report.corrupt_lines,
            )
        # Arranging the values by run is per-sample work: off the event loop too.
        agg = await anyio.to_thread.run_sync(Aggregate, data, abandon_on_cancel=True)
        refs: list[str] = []
        if names is not None:
            known = agg.refs()
            if not known:
                raise EmptyWorkspaceError(self.source.describe())
            refs = [resolve_run_ref(n, known) for n in names]
        return agg, refs

    # ---- listing -----------------------------------------------------------------------

    async def list_runs(
        self, *, project: str | None = None, status: str | Iterable[str] | None = None
    ) -> list[RunSummary]:
        """Every run, oldest first, optionally only those of ``project`` and ``status``."""
        _optional_text("project", project)
        rule = f"must be among {sorted(STATUSES)}"
        statuses = None if status is None else set(_texts("status", status, rule))
        if statuses is not None and not statuses <= STATUSES:
            raise ValidationError("status", rule, sorted(statuses))
        agg, _ = await self._read()

        def summaries() -> list[RunSummary]:
            out = []
            for ref in agg.refs():
                summary = agg.summary(ref)
                if project is not None and summary.project != project:
                    continue
                if statuses is not None and summary.status not in statuses:
                    continue
                out.append(summary)
            out.sort(key=lambda s: (s.started_at or "", s.ref))
            return out

        # A summary per run: thousands of runs are work for a thread, not for the event loop.
        return await anyio.to_thread.run_sync(summaries, abandon_on_cancel=True)

    async def resolve(self, run: str) -> str:
        """The full ref of ``run`` (a full ref or a unique suffix)."""
        _text("run", run)
        return (await self._resolve_all([run]))[0]

    async def _resolve_all(self, runs: Sequence[str]) -> list[str]:
        """The full refs of ``runs``, in one read (``resolve`` reads once per name)."""
        _, refs = await self._read(list(runs))
        return refs

    async def get_run(self, run: str) -> RunSummary:
        """The summary of one run, named by full ref or unique suffix."""
        _text("run", run)
        agg, refs = await self._read([run])
        return agg.summary(refs[0])

    # ---- records -----------------------------------------------------------------------

    def records(
        self,
        run: str,
        *,
        kind: RecordKind | Iterable[RecordKind] | None = None,
        key: str | None = None,
        stage: str | None = None,
        sample: str | None = None,
    ) -> AsyncGenerator[RecordRow, None]:
        """Stream the records of one run in capture order, then its artifacts.

        Filters: ``kind`` (metric, event, span, artifact), ``key`` (metric key, event key, span
        name or artifact kind), ``stage`` and ``sample`` (a name or a full ref); a bad filter
        raises ValidationError at the call. The files are read once, a block at a time: memory
        stays bounded however large the run.
        """
        _text("run", run)
        for field, value in (("key", key), ("stage", stage), ("sample", sample)):
            _optional_text(field, value)
        rule = f"must be among {sorted(_KINDS)}"
        kinds = set(_KINDS) if kind is None else set(_texts("kind", kind, rule))
        if not kinds <= _KINDS:
            raise ValidationError("kind", rule, sorted(kinds))
        chosen = cast(frozenset[RecordKind], frozenset(kinds))
        return self.source.records(run, RowFilter(chosen, key, stage, sample))

    async def _record_blocks(
        self, refs: Sequence[str], rows: RowFilter
    ) -> AsyncGenerator[list[RecordRow], None]:
        """The rows of the runs ``refs`` (full refs), in lists, in one pass over the records
        where the source can (``record_blocks``), else run after run (a source without it)."""
        if hasattr(self.source, "record_blocks"):
            many = cast(MultiRunSource, self.source)
            async with aclosing(many.record_blocks(refs, rows)) as blocks:
                async for block in blocks:
                    yield block
            return
        for ref in refs:
            part: list[RecordRow] = []
            async with aclosing(self.source.records(ref, rows)) as stream:
                async for row in stream:
                    part.append(row)
                    if len(part) >= _FALLBACK_BLOCK:
                        yield part
                        part = []
            yield part

    # ---- comparison --------------------------------------------------------------------

    async def compare(
        self,
        left: str,
        right: str,
        *,
        directions: Mapping[str, Direction] | None = None,
        confidence: float = 0.95,
        resamples: int = 2000,
        seed: int = 0,
        bootstrap: BootstrapMethod = "auto",
        include_samples: bool = False,
        adjustment: Adjustment = "holm",
    ) -> RunComparison:
        """Compare two runs: metric deltas (right - left), paired per-sample statistics,
        artifact changes and warnings. ``directions`` overrides the inferred direction per
        metric key; ``include_samples`` keeps every matched sample's values and difference.
        ``bootstrap`` says how the intervals' bootstrap distribution is obtained:
        ``"resample"`` (``resamples`` resamples, ``seed``), ``"saddlepoint"`` (approximated,
        no resampling, wherever the approximation settles), or ``"auto"``: the approximation
        from ``SADDLEPOINT_MIN_PAIRS`` matched samples on, unless the distribution is lumpy
        (a few differences standing apart from the rest); ``PairedResult.method`` tells
        which was used."""
        options = CompareOptions(
            directions=directions,
            confidence=confidence,
            resamples=resamples,
            seed=seed,
            bootstrap=bootstrap,
            include_samples=include_samples,
            adjustment=adjustment,
        )
        _text("left", left)
        _text("right", right)
        agg, (lref, rref) = await self._read([left, right], values=True)
        # The bootstraps take CPU seconds on large runs: off the event loop, in a thread. A
        # cancelled compare returns at once; the thread finishes its pure computation.
        return await anyio.to_thread.run_sync(
            compare_two, agg, lref, rref, options, abandon_on_cancel=True
        )

    async def compare_many(
        self,
        runs: Sequence[str],
        *,
        directions: Mapping[str, Direction] | None = None,
        adjustment: Adjustment = "holm",
    ) -> MultiRunComparison:
        """Every metric of every run in one table, with the best run(s) per row.

        The first run is the baseline: for each sample-level metric, every other run's
        paired p-value against it (``MultiRunRow.p_values``, as ``compare`` computes it) and
        the same adjusted across those runs (``p_adjusted``): ``"holm"`` (the default,
        family-wise error), ``"bh"`` (Benjamini-Hochberg, false discovery rate) or
        ``"none"``.
        """
        names = _some_run_names(runs)
        options = CompareOptions(directions=directions, adjustment=adjustment)
        agg, refs = await self._read(names, values=True)
        return await anyio.to_thread.run_sync(compare_many, agg, refs, options)

    async def best_run(
        self,
        runs: Sequence[str],
        metric: str,
        *,
        direction: Direction | None = None,
        stage: str | None = None,
    ) -> BestRun:
        """The best run(s) by ``metric``: explicit ``direction``, or inferred from the key.

        Runs without the metric are listed in ``missing``; equal best values are a tie (all
        of them are winners). When the key is captured at several places (stages, or both
        per sample and per stage), name the ``stage`` or AmbiguousMetricError says which.
        """
        _some_run_names(runs)
        _text("metric", metric)
        _optional_text("stage", stage)
        if direction is not None and direction not in ("maximize", "minimize"):
            raise ValidationError("direction", "must be 'maximize' or 'minimize'", direction)
        return best_run(await self.compare_many(runs), metric, direction, stage)

    # ---- export (contexta_async.export; imported on use: it builds on this class) -------

    async def export(
        self,
        output: str | os.PathLike[str],
        *,
        format: ExportFormat | None = None,
        runs: Sequence[str] | None = None,
        events: bool = False,
        overwrite: bool = False,
    ) -> ExportResult:
        """Write one row per metric record (or event) to a file: see ``export_workspace``."""
        from ..export import export_workspace

        return await export_workspace(
            self, output, format=format, runs=runs, events=events, overwrite=overwrite
        )

    async def to_arrow(
        self, runs: Sequence[str] | None = None, *, events: bool = False
    ) -> pyarrow.Table:
        """One row per metric record (or event) as a pyarrow Table (the ``analysis`` extra)."""
        from ..export import to_arrow

        return await to_arrow(self, runs, events=events)

    async def to_pandas(
        self, runs: Sequence[str] | None = None, *, events: bool = False
    ) -> pandas.DataFrame:
        """``to_arrow()`` as a pandas DataFrame (needs pandas)."""
        from ..export import to_pandas

        return await to_pandas(self, runs, events=events)

    async def to_polars(
        self, runs: Sequence[str] | None = None, *, events: bool = False
    ) -> polars.DataFrame:
        """``to_arrow()`` as a polars DataFrame (needs polars)."""
        from ..export import to_polars

        return await to_polars(self, runs, events=events)
