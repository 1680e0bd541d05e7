"""Workspace: list runs, stream their records, compare them. Every method is async."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, get_args

import anyio
import structlog

from ._compare import (
    RunMetrics,
    artifact_changes,
    infer_direction,
    metric_deltas,
    multi_rows,
    paired_results,
    rank_runs,
)
from ._decode import CHUNK_SIZE, FullRecordLine, Issues, LineDecoder, read_blocks
from ._errors import (
    AmbiguousMetricError,
    AmbiguousRunError,
    EmptyWorkspaceError,
    MetricNotFoundError,
    UnknownRunError,
    UnreadableFileError,
    WorkspaceNotFoundError,
)
from ._model import (
    BestRun,
    Direction,
    MultiRunComparison,
    ReadReport,
    RecordCounts,
    RecordKind,
    RecordRow,
    RunComparison,
    RunStatus,
    RunSummary,
)
from ._parallel import PARALLEL_MIN_BYTES, default_workers, scan_records_parallel
from ._scan import (
    ArtifactInfo,
    RecordScan,
    RunInfo,
    read_artifacts,
    read_context,
    run_matches,
    scan_records,
)

__all__ = ["Workspace", "resolve_run_ref"]

_log = structlog.get_logger("contexta_async")

_FILES: Final = ("context.jsonl", "record.jsonl", "artifact.jsonl", "degradation.jsonl")
_KINDS: Final = frozenset(get_args(RecordKind))
_STATUSES: Final = frozenset(get_args(RunStatus))
_TYPE_KIND: Final = {
    "MetricRecord": "metric",
    "StructuredEventRecord": "event",
    "TraceSpanRecord": "span",
}
LATEST_NOTE: Final = (
    "run-, stage- and batch-level metrics show the latest captured value; sample-level "
    "metrics show the mean over samples of each sample's latest value (count = samples)"
)


def resolve_run_ref(name: str, refs: Iterable[str]) -> str:
    """The run ref ``name`` stands for: the full ref, or a unique suffix of whole components
    (``grounded`` and ``mock-openai-compare.grounded`` both name
    ``run:mock-openai-compare.grounded``)."""
    known = sorted(refs)
    if name.strip() in known:
        return name.strip()
    matches = [ref for ref in known if run_matches(ref, name)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise AmbiguousRunError(name, matches)
    raise UnknownRunError(name, known)


async def _nonempty(path: Path) -> bool:
    try:
        return (await anyio.Path(path).stat()).st_size > 0
    except OSError:
        return False


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf exception of a task group's failure (readers raise one at a time)."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _name(ref: str | None) -> str | None:
    return None if ref is None else ref.rsplit(".", 1)[-1]


class _Snapshot:
    """One read of the workspace: context, record scan, artifacts, and what was skipped."""

    def __init__(
        self,
        runs: dict[str, RunInfo],
        scan: RecordScan,
        artifacts: dict[str, list[ArtifactInfo]],
        report: ReadReport,
    ) -> None:
        self.runs = runs
        self.scan = scan
        self.artifacts = artifacts
        self.report = report

    def refs(self) -> set[str]:
        return set(self.runs) | self.scan.run_refs() | set(self.artifacts)

    def summary(self, ref: str) -> RunSummary:
        info = self.runs.get(ref)
        from_context = info is not None and info.status != "unknown"
        if info is None:
            info = RunInfo(ref)
        counts = RecordCounts()
        for (run, payload_type), n in self.scan.counts.items():
            if run != ref:
                continue
            kind = _TYPE_KIND.get(payload_type)
            if kind == "metric":
                counts.metrics += n
            elif kind == "event":
                counts.events += n
            elif kind == "span":
                counts.spans += n
            else:
                counts.other += n
        counts.artifacts = len(self.artifacts.get(ref, ()))
        stages = [s for s, _ in sorted(info.stages.items(), key=lambda item: item[1])]
        prefix = "stage:" + ref.split(":", 1)[-1] + "."
        extra = {
            st[len(prefix) :]
            for st in self.scan.stage_refs
            if st is not None and st.startswith(prefix) and "." not in st[len(prefix) :]
        }
        stages.extend(sorted(s for s in extra if s is not None and s not in info.stages))
        status = info.status if info.status in _STATUSES else "unknown"
        return RunSummary(
            ref=ref,
            name=info.name,
            project=info.project,
            status=status,  # type: ignore[arg-type]
            started_at=info.started_at if from_context else self.scan.first_time.get(ref),
            ended_at=info.ended_at if from_context else self.scan.last_time.get(ref),
            dataset_ref=info.dataset_ref,
            stages=stages,
            counts=counts,
            failure_reason=info.failure_reason,
            tags=info.tags,
            source="context" if from_context else "records",
        )


class Workspace:
    """A workspace on disk, read asynchronously.

    ``path`` is the workspace directory (``.contexta``) or its capture folder
    (``.contexta/cache/capture``). Files are read in ``chunk_size`` blocks with aiofiles; the
    event loop is never blocked by file I/O. Each method reads the files afresh, so a
    workspace that is still being written can be read again for newer data; the last line of a
    file still being written is left out until complete, and corrupt lines are skipped and
    counted (``last_report`` and each result's ``read_report``).

    A ``record.jsonl`` of 64 MiB or more is scanned by ``workers`` forked processes (default:
    the usable cores, at most 8; ``workers=1`` keeps everything in this process).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = ".contexta",
        *,
        chunk_size: int = CHUNK_SIZE,
        workers: int | None = None,
    ) -> None:
        if chunk_size < 4096:
            raise ValueError("chunk_size must be at least 4096 bytes")
        if workers is not None and workers < 1:
            raise ValueError("workers must be at least 1")
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
        self.workers = default_workers() if workers is None else workers
        self.last_report = ReadReport()

    def __repr__(self) -> str:
        return f"Workspace({str(self.path)!r})"

    def _file(self, family: str) -> Path:
        return self.capture_dir / f"{family}.jsonl"

    async def _snapshot(
        self, names: Sequence[str] | None = None, *, keep_values: bool = False
    ) -> tuple[_Snapshot, list[str]]:
        """Read the workspace; with ``names``, resolve them and keep their metric values."""
        issues = Issues()
        # Record times are decoded only without CONTEXT lines (a Contexta 1.0.0 workspace).
        times = not await _nonempty(self._file("context"))
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

        # The record scan may run in forked processes: read the small files meanwhile.
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(records)
                group.start_soon(context)
                group.start_soon(artifacts)
        except BaseExceptionGroup as failed:
            raise _first(failed) from None
        snapshot = _Snapshot(found["runs"], found["scan"], found["artifacts"], ReadReport())
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
        workers = self.workers
        if workers > 1:
            try:
                size = (await anyio.Path(path).stat()).st_size
            except FileNotFoundError:
                size = 0
            except OSError as exc:
                raise UnreadableFileError(str(path), exc.strerror or str(exc)) from exc
            # At least half the threshold per process, so small files are not split thin.
            workers = min(workers, max(1, size // max(1, PARALLEL_MIN_BYTES // 2)))
            if size >= PARALLEL_MIN_BYTES and workers > 1:
                return await scan_records_parallel(
                    path,
                    issues,
                    workers=workers,
                    wanted=wanted,
                    keep_values=keep_values,
                    times=times,
                    chunk_size=self.chunk_size,
                )
        return await scan_records(
            path,
            issues,
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
        if statuses is not None and not statuses <= _STATUSES:
            raise ValueError(f"status must be among {sorted(_STATUSES)}, got {sorted(statuses)}")
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
    ) -> AsyncIterator[RecordRow]:
        """Stream the records of one run in capture order, then its artifacts.

        Filters: ``kind`` (metric, event, span, artifact), ``key`` (metric key, event key, span
        name or artifact kind), ``stage`` and ``sample`` (a name or a full ref).
        """
        kinds = set(_KINDS) if kind is None else {kind} if isinstance(kind, str) else set(kind)
        if not kinds <= _KINDS:
            raise ValueError(f"kind must be among {sorted(_KINDS)}, got {sorted(kinds)}")
        ref = await self.resolve(run)
        issues = Issues()
        marker = f'"run_ref":"{ref}"'.encode()
        decoder = LineDecoder(FullRecordLine)
        path = self._file("record")
        if kinds & {"metric", "event", "span"}:
            async for block, offset in read_blocks(path, issues, chunk_size=self.chunk_size):
                if marker not in block and b'"run_ref":"' in block:
                    continue  # compact lines, none of this run: skip decoding the block
                for line in decoder.decode(block, str(path), offset, issues):
                    row = _record_row(line, ref, kinds, key, stage, sample)
                    if row is not None:
                        yield row
        if "artifact" in kinds:
            artifacts = await read_artifacts(
                self._file("artifact"), issues, wanted=[ref], chunk_size=self.chunk_size
            )
            for item in artifacts.get(ref, []):
                row = _artifact_row(item, key, stage, sample)
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
        include_samples: bool = False,
    ) -> RunComparison:
        """Compare two runs: metric deltas (right - left), paired per-sample statistics,
        artifact changes and warnings. ``directions`` overrides the inferred direction per
        metric key; ``include_samples`` keeps every matched sample's values and difference."""
        snapshot, refs = await self._snapshot([left, right], keep_values=True)
        lref, rref = refs
        metrics = snapshot.scan.metrics
        lsum, rsum = snapshot.summary(lref), snapshot.summary(rref)
        order = _stage_order([lsum, rsum])
        lm, rm = metrics[lref], metrics[rref]
        warnings = _run_warnings([lsum, rsum], [lm, rm], snapshot.report)
        if lref == rref:
            warnings.insert(0, "both sides name the same run")
        if lsum.dataset_ref != rsum.dataset_ref:
            warnings.append(
                f"the runs used different datasets: {lsum.dataset_ref} (left) vs "
                f"{rsum.dataset_ref} (right)"
            )
        for stage in order_all(order, lm, rm):
            only_left = lm.sample_names(stage) - rm.sample_names(stage)
            only_right = rm.sample_names(stage) - lm.sample_names(stage)
            if only_left or only_right:
                warnings.append(
                    f"stage {stage}: the sample sets differ ({len(only_left)} only in left, "
                    f"{len(only_right)} only in right)"
                )
        paired = paired_results(
            lm,
            rm,
            order,
            directions=directions,
            confidence=confidence,
            resamples=resamples,
            seed=seed,
            include_samples=include_samples,
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
            notes=[LATEST_NOTE, _pairing_note(confidence, resamples, seed)],
            read_report=snapshot.report,
        )

    async def compare_many(
        self, runs: Sequence[str], *, directions: Mapping[str, Direction] | None = None
    ) -> MultiRunComparison:
        """Every metric of every run in one table, with the best run(s) per row."""
        if not runs:
            raise ValueError("give at least one run")
        snapshot, refs = await self._snapshot(list(runs), keep_values=True)
        unique = list(dict.fromkeys(refs))
        metrics = snapshot.scan.metrics
        summaries = [snapshot.summary(ref) for ref in unique]
        ordered = [metrics[ref] for ref in unique]
        warnings = _run_warnings(summaries, ordered, snapshot.report)
        datasets = {s.dataset_ref for s in summaries}
        if len(datasets) > 1:
            warnings.append(
                "the runs used different datasets: "
                + ", ".join(f"{s.ref}={s.dataset_ref}" for s in summaries)
            )
        return MultiRunComparison(
            runs=summaries,
            rows=multi_rows(unique, ordered, _stage_order(summaries), directions),
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
            raise ValueError("direction must be 'maximize' or 'minimize'")
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


def order_all(order: list[str], *metrics: RunMetrics) -> list[str | None]:
    stages: list[str | None] = list(order)
    for m in metrics:
        for st, _ in m.samples:
            if st not in stages:
                stages.append(st)
    return stages


def _stage_order(summaries: Sequence[RunSummary]) -> list[str]:
    order: list[str] = []
    for s in summaries:
        order.extend(st for st in s.stages if st not in order)
    return order


def _pairing_note(confidence: float, resamples: int, seed: int) -> str:
    return (
        "paired analysis: samples matched by name within the stage (whatever their batch); "
        f"{confidence:.0%} percentile bootstrap interval of the mean difference (right - left), "
        f"{resamples} resamples, seed {seed}; McNemar p-value exact (binomial) for 0/1 metrics"
    )


def _run_warnings(
    summaries: Sequence[RunSummary], metrics: Sequence[RunMetrics], report: ReadReport
) -> list[str]:
    warnings = []
    for summary, m in zip(summaries, metrics, strict=True):
        if summary.status == "open":
            warnings.append(f"{summary.ref} is still open: its data may be incomplete")
        elif summary.status in ("failed", "cancelled"):
            warnings.append(f"{summary.ref} {summary.status}")
        for st, name in sorted(m.duplicates, key=lambda d: (d[0] or "", d[1])):
            warnings.append(
                f"{summary.ref}: stage {st} holds several samples named {name!r} (in different "
                f"batches); one value is used for it"
            )
    if report.corrupt_lines:
        first = report.problems[0] if report.problems else None
        where = f" (first: {first.file}:{first.line})" if first else ""
        warnings.append(f"{report.corrupt_lines} corrupt line(s) were skipped{where}")
    return warnings


def _matches(value: str | None, wanted: str | None) -> bool:
    if wanted is None:
        return True
    if value is None:
        return False
    return value == wanted or value.rsplit(".", 1)[-1] == wanted


def _record_row(
    line: FullRecordLine,
    ref: str,
    kinds: set[str],
    key: str | None,
    stage: str | None,
    sample: str | None,
) -> RecordRow | None:
    env = line.payload.envelope
    if env.run_ref != ref:
        return None
    kind = _TYPE_KIND.get(line.payload_type)
    if kind is None or kind not in kinds:
        return None
    body = line.payload.payload
    name = (
        body.metric_key
        if kind == "metric"
        else body.event_key
        if kind == "event"
        else body.span_name
    ) or ""
    if key is not None and name != key:
        return None
    if not _matches(env.stage_execution_ref, stage):
        return None
    if not _matches(env.sample_observation_ref, sample):
        return None
    return RecordRow(
        kind=kind,  # type: ignore[arg-type]
        ref=env.record_ref or line.payload_ref or "",
        run_ref=ref,
        key=name,
        stage=_name(env.stage_execution_ref),
        batch=_name(env.batch_execution_ref),
        sample=_name(env.sample_observation_ref),
        recorded_at=env.recorded_at,
        value=body.value,
        value_type=body.value_type,
        unit=body.unit,
        tags=body.tags or {},
        level=body.level,
        message=body.message,
        attributes=body.attributes or {},
        status=body.status,
    )


def _artifact_row(
    item: ArtifactInfo, key: str | None, stage: str | None, sample: str | None
) -> RecordRow | None:
    if key is not None and item.kind != key:
        return None
    if stage is not None and stage not in (item.stage, item.stage_ref):
        return None
    if sample is not None and sample not in (item.sample, item.sample_ref):
        return None
    return RecordRow(
        kind="artifact",
        ref=item.ref,
        run_ref=item.run_ref,
        key=item.kind,
        stage=item.stage,
        batch=item.batch,
        sample=item.sample,
        recorded_at=item.recorded_at,
        hash_value=item.hash_value,
        location_ref=item.location_ref,
        size_bytes=item.size_bytes,
    )
