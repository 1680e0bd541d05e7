"""Workspace: list runs, stream their records, compare them. Every method is async."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, get_args

import anyio
import anyio.to_thread
import structlog

from .._errors import ValidationError
from ._compare import (
    artifact_changes,
    differing_samples,
    infer_direction,
    metric_deltas,
    multi_rows,
    paired_results,
    rank_runs,
)
from ._decode import CHUNK_SIZE, FullRecordLine, Issues, LineDecoder, read_blocks
from ._errors import (
    AmbiguousMetricError,
    EmptyWorkspaceError,
    MetricNotFoundError,
    WorkspaceNotFoundError,
)
from ._files import read_artifacts, read_context
from ._indexed import load_index
from ._indexed_scan import scan_indexed
from ._inference import ADJUSTMENTS, Adjustment
from ._model import (
    BestRun,
    Direction,
    MultiRunComparison,
    ReadReport,
    RecordKind,
    RecordRow,
    RunComparison,
    RunSummary,
)
from ._rows import artifact_row, record_row
from ._scan import RecordScan
from ._snapshot import (
    INFERENCE_NOTES,
    LATEST_NOTE,
    STATUSES,
    Snapshot,
    first_error,
    nonempty,
    order_all,
    pairing_note,
    resolve_run_ref,
    run_warnings,
    stage_order,
)
from ._stats import BootstrapMethod, check_options

if TYPE_CHECKING:
    import pandas
    import polars
    import pyarrow

    from ..export import ExportFormat, ExportResult

__all__ = ["Workspace", "resolve_run_ref"]

_log = structlog.get_logger("contexta_async")

_FILES: Final = ("context.jsonl", "record.jsonl", "artifact.jsonl", "degradation.jsonl")
_KINDS: Final = frozenset(get_args(RecordKind))


class Workspace:
    """A workspace on disk, read asynchronously.

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
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = ".contexta",
        *,
        chunk_size: int = CHUNK_SIZE,
        use_index: bool = True,
    ) -> None:
        if not isinstance(use_index, bool):
            raise ValidationError("use_index", "must be a bool", use_index)
        if chunk_size < 4096:
            raise ValidationError("chunk_size", "must be at least 4096 bytes", chunk_size)
        root = Path(path).absolute()
        if (root / "cache" / "capture").is_dir():
            capture = root / "cache" / "capture"
        elif root.is_dir() and (
            root.name == "capture" or any((root / name).exists() for name in _FILES)
        ):
            capture = root
        else:
            raise WorkspaceNotFoundError(str(root))
        self.path = root
        self.capture_dir = capture
        self.chunk_size = chunk_size
        self.use_index = use_index
        self.last_report = ReadReport()

    def __repr__(self) -> str:
        return f"Workspace({str(self.path)!r})"

    def _file(self, family: str) -> Path:
        return self.capture_dir / f"{family}.jsonl"

    async def _snapshot(
        self, names: Sequence[str] | None = None, *, keep_values: bool = False
    ) -> tuple[Snapshot, list[str]]:
        """Read the workspace; with ``names``, resolve them and keep their metric values."""
        issues = Issues()
        # Record times are decoded only without CONTEXT lines (a Contexta 1.0.0 workspace).
        times = not await nonempty(self._file("context"))
        wanted = None if names is None else frozenset(names)
        found: dict[str, Any] = {}

        async def context() -> None:
            found["runs"] = await read_context(
                self._file("context"), issues, chunk_size=self.chunk_size
            )

        async def records() -> None:
            found["scan"] = await self._scan_records(issues, wanted, keep_values, times)

        async def artifacts() -> None:
            found["artifacts"] = await read_artifacts(
                self._file("artifact"), issues, chunk_size=self.chunk_size
            )

        # The record scan runs in a worker thread: read the small files meanwhile.
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(records)
                group.start_soon(context)
                group.start_soon(artifacts)
        except BaseExceptionGroup as failed:
            raise first_error(failed) from None
        snapshot = Snapshot(found["runs"], found["scan"], found["artifacts"], ReadReport())
        refs: list[str] = []
        if names is not None:
            known = snapshot.refs()
            if not known:
                raise EmptyWorkspaceError(str(self.path))
            refs = [resolve_run_ref(n, known) for n in names]
        snapshot.report = await issues.report()
        self.last_report = snapshot.report
        if snapshot.report.corrupt_lines:
            _log.warning(
                "corrupt lines skipped",
                workspace=str(self.path),
                corrupt_lines=snapshot.report.corrupt_lines,
            )
        return snapshot, refs

    async def _scan_records(
        self, issues: Issues, wanted: frozenset[str] | None, keep_values: bool, times: bool
    ) -> RecordScan:
        path = self._file("record")
        # The index holds no record times: a workspace that needs them (no CONTEXT lines, as
        # Contexta 1.0.0 writes) is read from the JSON.
        index = None
        if self.use_index and not times:
            # Bounded work, but a cancelled read need not wait for it.
            index = await anyio.to_thread.run_sync(load_index, str(path), abandon_on_cancel=True)
            issues.index_frames_rejected += index.rejected
        return await scan_indexed(
            path,
            issues,
            index,
            wanted=wanted,
            keep_values=keep_values,
            times=times,
            chunk_size=self.chunk_size,
        )

    # ---- listing -----------------------------------------------------------------------

    async def list_runs(
        self,
        *,
        project: str | None = None,
        status: str | Iterable[str] | None = None,
    ) -> list[RunSummary]:
        """Every run, oldest first, optionally only those of ``project`` and ``status``."""
        statuses = {status} if isinstance(status, str) else None if status is None else set(status)
        if statuses is not None and not statuses <= STATUSES:
            raise ValidationError("status", f"must be among {sorted(STATUSES)}", sorted(statuses))
        snapshot, _ = await self._snapshot()
        out = []
        for ref in snapshot.refs():
            summary = snapshot.summary(ref)
            if project is not None and summary.project != project:
                continue
            if statuses is not None and summary.status not in statuses:
                continue
            out.append(summary)
        out.sort(key=lambda s: (s.started_at or "", s.ref))
        return out

    async def resolve(self, run: str) -> str:
        """The full ref of ``run`` (a full ref or a unique suffix)."""
        _, refs = await self._snapshot([run])
        return refs[0]

    async def get_run(self, run: str) -> RunSummary:
        """The summary of one run, named by full ref or unique suffix."""
        snapshot, refs = await self._snapshot([run])
        return snapshot.summary(refs[0])

    # ---- records -----------------------------------------------------------------------

    async def records(
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
        name or artifact kind), ``stage`` and ``sample`` (a name or a full ref).
        """
        kinds = set(_KINDS) if kind is None else {kind} if isinstance(kind, str) else set(kind)
        if not kinds <= _KINDS:
            raise ValidationError("kind", f"must be among {sorted(_KINDS)}", sorted(kinds))
        ref = await self.resolve(run)
        issues = Issues()
        marker = f'"run_ref":"{ref}"'.encode()
        decoder = LineDecoder(FullRecordLine)
        path = self._file("record")
        if kinds & {"metric", "event", "span"}:
            async for block in read_blocks(path, issues, chunk_size=self.chunk_size):
                if block.find(marker) < 0 and block.find(b'"run_ref":"') >= 0:
                    continue  # compact lines, none of this run: skip decoding the block
                for line in decoder.decode(block.view(), str(path), block.offset, issues):
                    row = record_row(line, ref, kinds, key, stage, sample)
                    if row is not None:
                        yield row
        if "artifact" in kinds:
            artifacts = await read_artifacts(
                self._file("artifact"), issues, wanted=[ref], chunk_size=self.chunk_size
            )
            for item in artifacts.get(ref, []):
                row = artifact_row(item, key, stage, sample)
                if row is not None:
                    yield row
        self.last_report = await issues.report()

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
        check_options(confidence, resamples, bootstrap, method_field="bootstrap")
        if adjustment not in ADJUSTMENTS:
            raise ValidationError("adjustment", f"must be one of {list(ADJUSTMENTS)}", adjustment)
        snapshot, refs = await self._snapshot([left, right], keep_values=True)
        lref, rref = refs
        lsum, rsum = snapshot.summary(lref), snapshot.summary(rref)
        order = stage_order([lsum, rsum])
        lm, rm = snapshot.metrics(lref), snapshot.metrics(rref)
        warnings = run_warnings([lsum, rsum], [lm, rm], snapshot.report)
        if lref == rref:
            warnings.insert(0, "both sides name the same run")
        if lsum.dataset_ref != rsum.dataset_ref:
            warnings.append(
                f"the runs used different datasets: {lsum.dataset_ref} (left) vs "
                f"{rsum.dataset_ref} (right)"
            )
        for stage in order_all(order, lm, rm):
            only_left, only_right = differing_samples(lm, rm, stage)
            if only_left or only_right:
                warnings.append(
                    f"stage {stage}: the sample sets differ ({only_left} only in left, "
                    f"{only_right} only in right)"
                )
        # The bootstraps take CPU seconds on large runs: off the event loop, in a thread.
        paired = await anyio.to_thread.run_sync(
            partial(
                paired_results,
                lm,
                rm,
                order,
                directions=directions,
                confidence=confidence,
                resamples=resamples,
                seed=seed,
                bootstrap=bootstrap,
                include_samples=include_samples,
                adjustment=adjustment,
            ),
            # A cancelled compare returns at once; the thread finishes its pure computation.
            abandon_on_cancel=True,
        )
        return RunComparison(
            left=lsum,
            right=rsum,
            metrics=metric_deltas(lm, rm, order),
            paired=paired,
            artifacts=artifact_changes(
                snapshot.artifacts.get(lref, []), snapshot.artifacts.get(rref, [])
            ),
            warnings=warnings,
            notes=[
                LATEST_NOTE,
                INFERENCE_NOTES[adjustment],
                pairing_note(confidence, resamples, seed, (p.method for p in paired)),
            ],
            read_report=snapshot.report,
            adjustment=adjustment,
        )

    async def compare_many(
        self, runs: Sequence[str], *, directions: Mapping[str, Direction] | None = None
    ) -> MultiRunComparison:
        """Every metric of every run in one table, with the best run(s) per row."""
        if not runs:
            raise ValidationError("runs", "must name at least one run", runs)
        snapshot, refs = await self._snapshot(list(runs), keep_values=True)
        unique = list(dict.fromkeys(refs))
        summaries = [snapshot.summary(ref) for ref in unique]
        ordered = [snapshot.metrics(ref) for ref in unique]
        warnings = run_warnings(summaries, ordered, snapshot.report)
        datasets = {s.dataset_ref for s in summaries}
        if len(datasets) > 1:
            warnings.append(
                "the runs used different datasets: "
                + ", ".join(f"{s.ref}={s.dataset_ref}" for s in summaries)
            )
        return MultiRunComparison(
            runs=summaries,
            rows=multi_rows(unique, ordered, stage_order(summaries), directions),
            warnings=warnings,
            notes=[LATEST_NOTE],
            read_report=snapshot.report,
        )

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
        if direction is not None and direction not in ("maximize", "minimize"):
            raise ValidationError("direction", "must be 'maximize' or 'minimize'", direction)
        comparison = await self.compare_many(runs)
        rows = [
            row
            for row in comparison.rows
            if row.key == metric and (stage is None or row.stage == stage)
        ]
        if not rows or all(v is None for row in rows for v in row.values):
            raise MetricNotFoundError(metric, stage)
        if len(rows) > 1:
            places = [
                f"{row.stage or '(run)'}/{row.scope}" + (f"/{row.batch}" if row.batch else "")
                for row in rows
            ]
            raise AmbiguousMetricError(metric, places)
        row = rows[0]
        chosen: Direction = direction or infer_direction(metric)
        refs = [s.ref for s in comparison.runs]
        ranking, winners, missing = rank_runs(list(zip(refs, row.values, strict=True)), chosen)
        return BestRun(
            metric=metric,
            stage=row.stage,
            scope=row.scope,
            batch=row.batch,
            basis=row.basis,
            direction=chosen,
            direction_inferred=direction is None,
            winners=winners,
            tie=len(winners) > 1,
            ranking=ranking,
            missing=missing,
            read_report=comparison.read_report,
        )

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
