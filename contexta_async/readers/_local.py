"""The local-file source: a workspace folder's capture files (the default ``RecordSource``).

Every read is blocking work done in anyio's worker threads, so the event loop stays free and
the same code serves asyncio and trio: ``record.jsonl`` is scanned in one thread
(``scan_file``: from ``record.index`` where it verifiably matches, from the JSON elsewhere,
aggregated as it goes by ``_scan.Accumulator``) while the small files are read in another.
``records`` steps through ``record.jsonl`` one block per thread hop, so a stream holds one
block of rows at a time. ``context.jsonl`` and ``artifact.jsonl`` are small and read whole.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import threading
from collections.abc import (
    AsyncGenerator,
    Callable,
    Collection,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import aclosing
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.to_thread
import structlog

from .._format.index import Frame
from .._format.lines import FullRecordLine, run_marker
from .._format.refs import last_component, run_matches
from ._context import SampleScan, read_artifacts, read_context
from ._errors import AmbiguousRunError, EmptyWorkspaceError, UnknownRunError, UnreadableFileError
from ._index import NO_INDEX, index_beside, load_index, pieces, read_entry
from ._model import ReadReport, RecordRow
from ._read import (
    CHUNK_SIZE,
    Issues,
    LineDecoder,
    ReadAbandoned,
    open_regular_file,
    read_blocks,
    read_file,
    read_lines,
)
from ._scan import Accumulator, BlockFeeder
from ._source import (
    TYPE_KIND,
    ArtifactInfo,
    RecordScan,
    RowFilter,
    RunInfo,
    SampleFacts,
    SourceData,
    resolve_run_ref,
)

__all__ = ["LocalSource", "artifact_blocks", "record_row", "scan_file"]

_log = structlog.get_logger("contexta_async")
# A run ref spelt with a JSON escape (another writer's): no marker finds it, so its block is
# decoded.
_ESCAPED_RUN_REF: Final = re.compile(rb'"run_ref":"[^"\\]*\\')


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf exception of a task group's failure (readers raise one at a time)."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _nonempty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


# ---- records and artifacts as RecordRow, with the stream's filters ---------------------


def _matches(value: str | None, wanted: str | None) -> bool:
    if wanted is None:
        return True
    if value is None:
        return False
    return value == wanted or last_component(value) == wanted


def record_row(
    line: FullRecordLine,
    ref: str,
    kinds: Collection[str],
    key: str | None,
    stage: str | None,
    sample: str | None,
    samples: Mapping[str, SampleFacts] | None = None,
) -> RecordRow | None:
    """The row of a RECORD line, or None when the filters leave it out; ``samples``: the
    cluster and epoch of the samples that have one, by sample ref."""
    env = line.payload.envelope
    if env.run_ref != ref:
        return None
    kind = TYPE_KIND.get(line.payload_type)
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
    sample_ref = env.sample_observation_ref
    if not _matches(env.stage_execution_ref, stage) or not _matches(sample_ref, sample):
        return None
    info = samples.get(sample_ref) if samples and sample_ref is not None else None
    return RecordRow(
        kind=kind,  # type: ignore[arg-type]
        ref=env.record_ref or line.payload_ref or "",
        run_ref=ref,
        key=name,
        stage=last_component(env.stage_execution_ref),
        batch=last_component(env.batch_execution_ref),
        sample=last_component(sample_ref),
        recorded_at=env.recorded_at,
        value=body.value,
        value_type=body.value_type,
        unit=body.unit,
        tags=body.tags or {},
        level=body.level,
        message=body.message,
        attributes=body.attributes or {},
        status=body.status,
        cluster=None if info is None else info[2],
        epoch=None if info is None else info[1],
    )


def artifact_blocks(
    artifacts: Mapping[str, list[ArtifactInfo]], refs: Iterable[str], rows: RowFilter
) -> Iterator[list[RecordRow]]:
    """The artifact rows of each of ``refs`` that ``rows`` lets through, a block per run."""
    for ref in refs:
        yield [
            row
            for item in artifacts.get(ref, [])
            if (row := _artifact_row(item, rows.key, rows.stage, rows.sample)) is not None
        ]


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


class LocalSource:
    """The capture files of ``capture_dir``, read in ``chunk_size`` blocks; ``use_index``:
    take what ``record.index`` verifiably describes from it (same answers, faster)."""

    def __init__(
        self,
        capture_dir: Path,
        *,
        root: Path | None = None,
        chunk_size: int = CHUNK_SIZE,
        use_index: bool = True,
    ) -> None:
        self.capture_dir = capture_dir
        self.root = capture_dir if root is None else root
        self.chunk_size = chunk_size
        self.use_index = use_index
        self.last_report = ReadReport()

    def describe(self) -> str:
        return str(self.root)

    def _file(self, family: str) -> Path:
        return self.capture_dir / f"{family}.jsonl"

    def _small_files(
        self, issues: Issues, samples: SampleScan | None = None
    ) -> tuple[dict[str, RunInfo], dict[str, list[ArtifactInfo]]]:
        runs = read_context(
            self._file("context"),
            issues,
            chunk_size=self.chunk_size,
            samples=samples,
            use_index=self.use_index,
        )
        artifacts = read_artifacts(self._file("artifact"), issues, chunk_size=self.chunk_size)
        return runs, artifacts

    def _scan(
        self, wanted: frozenset[str] | None, values: bool, stop: threading.Event
    ) -> tuple[RecordScan, Issues]:
        path = str(self._file("record"))
        # Record times are decoded only without CONTEXT lines (a Contexta 1.0.0 workspace);
        # the index holds no record times, so such a workspace is read from the JSON.
        times = not _nonempty(self._file("context"))
        index = load_index(path) if self.use_index and not times else NO_INDEX
        scan, found = scan_file(
            path, wanted, values, self.chunk_size, times=times, frames=index.frames, stop_event=stop
        )
        found.index_frames_rejected += index.rejected
        return scan, found

    async def read(self, runs: Collection[str] | None, *, values: bool) -> SourceData:
        wanted = None if runs is None else frozenset(runs)
        small_issues = Issues()
        samples = SampleScan() if values else None
        found: dict[str, Any] = {}
        stop = threading.Event()

        async def run(name: str, work: Callable[..., Any], *args: Any) -> None:
            # Cancelled, the read returns at once; the scan stops at its next frame or block.
            found[name] = await anyio.to_thread.run_sync(work, *args, abandon_on_cancel=True)

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(run, "scan", self._scan, wanted, values, stop)
                group.start_soon(run, "small", self._small_files, small_issues, samples)
        except BaseExceptionGroup as failed:
            raise _first_error(failed) from None
        finally:
            stop.set()
        scan_result, scan_issues = found["scan"]
        runs_info, artifacts = found["small"]
        issues = small_issues.merge(scan_issues)

        def finish() -> SourceData:  # per-line and per-sample work: in the thread too
            report = self.last_report = issues.report()
            if samples is None:
                return SourceData(runs_info, scan_result, artifacts, report)
            return SourceData(
                runs_info, scan_result, artifacts, report, samples.samples, samples.reopened()
            )

        return await anyio.to_thread.run_sync(finish)

    async def records(self, run: str, rows: RowFilter) -> AsyncGenerator[RecordRow, None]:
        runs, artifacts = await anyio.to_thread.run_sync(self._small_files, Issues())
        known = set(runs) | set(artifacts)
        ref: str | None = None
        if runs:
            # Every run writes a CONTEXT line when it opens: the run is known from it (or
            # from its artifacts) without reading record.jsonl first. If not, perhaps it is a
            # run known only from its records: found while streaming.
            with contextlib.suppress(UnknownRunError):
                ref = resolve_run_ref(run, known)
        issues = Issues()
        if ref is None:  # a run without CONTEXT lines has no sample metadata
            blocks = self._find_rows(run, known, rows, issues)
        else:
            blocks = self._rows_of([ref], rows, issues, await self._samples([ref]))
        # aclosing: a consumer's aclose() closes the file before it returns, not whenever
        # the async generator is finalized.
        async with aclosing(self._drive(blocks, issues)) as stream:
            async for block in stream:
                for row in block:
                    yield row

    async def record_blocks(
        self, refs: Sequence[str], rows: RowFilter
    ) -> AsyncGenerator[list[RecordRow], None]:
        issues = Issues()
        blocks = self._rows_of(list(dict.fromkeys(refs)), rows, issues, await self._samples(refs))
        async with aclosing(self._drive(blocks, issues)) as stream:
            async for block in stream:
                yield block

    async def _samples(self, refs: Sequence[str]) -> Mapping[str, SampleFacts]:
        """The cluster and epoch of the samples of the runs ``refs`` that have one, by sample
        ref (a light pass over the small files: no other run's samples are kept)."""
        samples = SampleScan(by_ref=True, runs=refs)
        await anyio.to_thread.run_sync(self._small_files, Issues(), samples)
        return samples.by_ref or {}

    async def _drive(
        self, blocks: Generator[list[RecordRow], None, None], issues: Issues
    ) -> AsyncGenerator[list[RecordRow], None]:
        """Step a blocking row generator one block per worker-thread hop; then report."""
        try:
            while (block := await anyio.to_thread.run_sync(next, blocks, None)) is not None:
                yield block
        finally:
            # Closes the file: no worker thread needed (the loop may be closing). Cancelled
            # natively (asyncio.Runner on Ctrl-C) while a worker thread is still inside
            # next(), the generator is running: that thread's step ends, and the generator
            # is closed when its last reference goes.
            if inspect.getgeneratorstate(blocks) != inspect.GEN_RUNNING:
                blocks.close()
        self.last_report = await anyio.to_thread.run_sync(issues.report)

    def _rows_of(
        self, refs: list[str], rows: RowFilter, issues: Issues, samples: Mapping[str, SampleFacts]
    ) -> Generator[list[RecordRow], None, None]:
        """The rows of the runs ``refs`` (full refs), a block at a time (blocking): one pass
        over record.jsonl for all of them, then their artifacts run after run."""
        wanted = frozenset(refs)
        if wanted and rows.kinds & {"metric", "event", "span"}:
            path = self._file("record")
            decoder = LineDecoder(FullRecordLine)
            # Looking for each run's marker pays while the runs are few; past that, decode.
            markers = [run_marker(ref) for ref in refs] if len(refs) <= 8 else []
            kinds, key, stage, sample = rows.kinds, rows.key, rows.stage, rows.sample
            for block in read_file(path, issues, chunk_size=self.chunk_size):
                if (
                    markers
                    and all(block.find(marker) < 0 for marker in markers)
                    and block.find(b'"run_ref":"') >= 0
                    and _ESCAPED_RUN_REF.search(block.buffer, block.start, block.end) is None
                ):
                    continue  # compact lines, none of these runs: skip decoding the block
                out = []
                for line in decoder.decode(block.view(), str(path), block.offset, issues):
                    run = line.payload.envelope.run_ref
                    if run in wanted:
                        row = record_row(line, run, kinds, key, stage, sample, samples)
                        if row is not None:
                            out.append(row)
                yield out
        if wanted:
            yield from self._artifact_rows(refs, rows, issues)

    def _find_rows(
        self, name: str, known: set[str], rows: RowFilter, issues: Issues
    ) -> Generator[list[RecordRow], None, None]:
        """The rows of the run ``name`` names among the runs of the artifacts and the record
        lines, found as they come (blocking, a block at a time): AmbiguousRunError at a
        second one, UnknownRunError if none."""
        path = self._file("record")
        candidates = {r for r in known if run_matches(r, name)}
        if len(candidates) > 1:
            raise AmbiguousRunError(name, sorted(candidates))
        ref = next(iter(candidates), None)
        seen: set[str] = set()
        for lines in read_lines(path, FullRecordLine, issues, chunk_size=self.chunk_size):
            out = []
            for line in lines:
                run = line.payload.envelope.run_ref
                if run not in seen:
                    seen.add(run)
                    if run_matches(run, name) and run not in candidates:
                        candidates.add(run)
                        if len(candidates) > 1:
                            raise AmbiguousRunError(name, sorted(candidates))
                        ref = run
                if run == ref:
                    row = record_row(line, ref, rows.kinds, rows.key, rows.stage, rows.sample)
                    if row is not None:
                        out.append(row)
            yield out
        known |= seen
        if ref is None:
            if not known:
                raise EmptyWorkspaceError(self.describe())
            ref = resolve_run_ref(name, known)  # raises: nothing named it
        yield from self._artifact_rows([ref], rows, issues)

    def _artifact_rows(
        self, refs: list[str], rows: RowFilter, issues: Issues
    ) -> Iterator[list[RecordRow]]:
        if "artifact" in rows.kinds:
            artifacts = read_artifacts(
                self._file("artifact"), issues, wanted=refs, chunk_size=self.chunk_size
            )
            yield from artifact_blocks(artifacts, refs, rows)


def scan_file(
    path: str,
    wanted: frozenset[str] | None,
    keep_values: bool,
    chunk_size: int = CHUNK_SIZE,
    *,
    times: bool = False,
    frames: Sequence[Frame] = (),
    stop_event: threading.Event | None = None,
) -> tuple[RecordScan, Issues]:
    """Scan ``record.jsonl`` (blocking: the source runs it in a worker thread), in file
    order: the parts that ``frames`` (verified index frames) describe from their columns,
    the rest from the JSON. A missing file is an empty scan. ``stop_event`` set: give up
    (``ReadAbandoned``) at the next frame or block."""
    issues = Issues()
    acc = Accumulator(wanted, keep_values, times)
    try:
        handle = open_regular_file(path)  # closed below, after the index
    except FileNotFoundError:
        return acc.finish(), issues
    try:
        with handle, index_beside(path, bool(frames)) as index:
            for piece_start, piece_end, frame in pieces(frames, 0, None):
                if stop_event is not None and stop_event.is_set():
                    raise ReadAbandoned
                if frame is not None:
                    # One frame's columns in memory at a time: read when they are used.
                    entry = None if index is None else read_entry(index.fileno(), frame)
                    if entry is not None and acc.feed_entry(entry):
                        issues.records_from_index += entry.lines
                        continue
                    issues.index_frames_rejected += 1
                feeder = BlockFeeder(acc, path, issues, piece_start)
                for block in read_blocks(
                    handle, feeder.cutter, piece_end, chunk_size=chunk_size, stop_event=stop_event
                ):
                    feeder.feed(block)
                feeder.close()
    except OSError as exc:
        raise UnreadableFileError(path, exc.strerror or str(exc)) from exc
    return acc.finish(), issues
