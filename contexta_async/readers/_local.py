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
import re
import threading
from collections import Counter
from collections.abc import (
    AsyncGenerator,
    Collection,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from pathlib import Path
from typing import Any, BinaryIO, Final

import anyio
import anyio.to_thread
import msgspec
import structlog

from .._format.index import Frame, index_path_for
from .._format.lines import (
    RUN_LINE,
    STAGE_LINE,
    ArtifactLine,
    ContextLine,
    FullRecordLine,
    run_marker,
)
from .._format.refs import (
    components,
    last_component,
    parse_sample_head,
    run_matches,
)
from ._errors import (
    AmbiguousRunError,
    EmptyWorkspaceError,
    UnknownRunError,
    UnreadableFileError,
)
from ._index import load_index, open_index, pieces, read_entry
from ._model import ReadReport, RecordRow
from ._read import (
    CHUNK_SIZE,
    Block,
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
    SampleInfo,
    SourceData,
    resolve_run_ref,
)

__all__ = [
    "LocalSource",
    "SampleScan",
    "artifact_row",
    "context_lines",
    "read_artifacts",
    "read_context",
    "record_row",
    "scan_file",
]

_log = structlog.get_logger("contexta_async")


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


# ---- the small files: runs and stages from context.jsonl, artifacts ------------------


# A sample's opening line as this library writes it (keys sorted, compact JSON: a quote
# inside a string is escaped, so these bytes only occur as the line's own keys and values):
# _SAMPLE_OPENED finds the ref of every opening line (a sample opened twice, the alignment
# report's duplicates, has two); in blocks that hold a cluster or an epoch, _SAMPLE_META reads
# them at the start of each such line. No line is decoded. Contexta 1.0 writes no CONTEXT
# lines: there is no other layout to match.
_SAMPLE_OPENED: Final = re.compile(rb'"status":"open"\},"payload_ref":"(sample:[^"]+)"')
_SAMPLE_META: Final = re.compile(
    rb'\{"captured_at":"[^"]*","family":"CONTEXT","payload":\{"batch_execution_ref":'
    rb'(?:null|"[^"]*"),(?:"cluster":"((?:[^"\\]|\\.)*)",)?"ended_at":null,(?:"epoch":(\d+),)?'
)


def _json_text(raw: bytes) -> str:
    """A JSON string's content as found in a line: escapes decoded where there are any."""
    if b"\\" in raw:
        return str(msgspec.json.decode(b'"' + raw + b'"'))
    return raw.decode("utf-8", "replace")


class SampleScan:
    """What the sample CONTEXT lines say that pairing needs: clusters and epochs (see
    ``SourceData.samples``) and the refs opened more than once. ``by_ref``: also keep each
    sample's SampleInfo by its full ref (for ``records``)."""

    def __init__(self, *, by_ref: bool = False) -> None:
        self.samples: dict[str, dict[str, SampleInfo]] = {}
        self.opened: Counter[bytes] = Counter()
        self._parents: dict[str, str | None] = {}  # sample ref head -> the stage or batch ref
        self._clusters: dict[bytes, str] = {}  # many samples share a cluster: decoded once
        self.by_ref: dict[str, SampleInfo] | None = {} if by_ref else None

    def feed(self, block: Block) -> None:
        buffer, start, end = block.buffer, block.start, block.end
        # An opening line writes its epoch right after "ended_at":null (longer needles are
        # found faster: these two searches are all a workspace without either pays besides
        # the refs of the opening lines).
        if block.find(b',"cluster":"') < 0 and block.find(b'"ended_at":null,"epoch":') < 0:
            self.opened.update(_SAMPLE_OPENED.findall(buffer, start, end))
            return
        samples, parents, by_ref = self.samples, self._parents, self.by_ref
        clusters = self._clusters
        line_meta = _SAMPLE_META.match
        openings = list(_SAMPLE_OPENED.finditer(buffer, start, end))
        self.opened.update([opening[1] for opening in openings])
        for opening in openings:
            raw_ref = opening[1]
            # The cluster and epoch are at the start of the same line.
            meta = line_meta(buffer, max(start, buffer.rfind(b"\n", start, opening.start()) + 1))
            if meta is None:
                continue
            raw_cluster, raw_epoch = meta.groups()
            if not raw_cluster and not raw_epoch:
                continue
            ref = raw_ref.decode()
            head, _, component = ref.rpartition(".")
            parent = parents.get(head, "")
            if parent == "":
                scope = parse_sample_head(head)
                parent = parents[head] = None if scope is None else scope.parent_ref
            if parent is None:
                continue
            item, epoch = component, None
            if raw_epoch:
                epoch = int(raw_epoch)
                suffix = f"-epoch-{epoch}"
                if component.endswith(suffix) and len(component) > len(suffix):
                    item = component[: -len(suffix)]
            cluster = None
            if raw_cluster:
                cluster = clusters.get(raw_cluster)
                if cluster is None:
                    cluster = clusters[raw_cluster] = _json_text(raw_cluster)
            info = SampleInfo(item, epoch, cluster)
            per_parent = samples.get(parent)
            if per_parent is None:
                per_parent = samples[parent] = {}
            per_parent[component] = info
            if by_ref is not None:
                by_ref[ref] = info

    def reopened(self) -> dict[str, int]:
        return {ref.decode(): n for ref, n in self.opened.items() if n > 1}


def read_context(
    path: Path,
    issues: Issues,
    *,
    chunk_size: int = CHUNK_SIZE,
    samples: SampleScan | None = None,
) -> dict[str, RunInfo]:
    """Runs and their stages from ``context.jsonl``; sample and batch lines are not decoded
    (``samples``, when given, takes their clusters, epochs and openings)."""
    runs: dict[str, RunInfo] = {}
    decoder = LineDecoder(ContextLine)
    name = str(path)
    for block in read_file(path, issues, chunk_size=chunk_size):
        if samples is not None:
            samples.feed(block)
        for value in context_lines(block, decoder, name, issues):
            _apply_context(runs, value)
    return runs


def context_lines(
    block: Block, decoder: LineDecoder[ContextLine], name: str, issues: Issues
) -> Iterator[ContextLine]:
    """The Run and StageExecution lines of a block of ``context.jsonl`` (file ``name``), in
    file order; sample and batch lines are skipped by a byte search (RUN_LINE, STAGE_LINE)."""
    buffer = block.buffer
    starts: list[int] = []
    for pattern in (RUN_LINE, STAGE_LINE):
        at = block.find(pattern)
        while at >= 0:
            starts.append(max(block.start, buffer.rfind(b"\n", block.start, at) + 1))
            at = block.find(pattern, at + len(pattern))
    starts.sort()
    for start in starts:
        end = buffer.find(b"\n", start, block.end)
        line = memoryview(buffer)[start : end + 1]
        yield from decoder.decode(line, name, block.offset + start - block.start, issues)


def _apply_context(runs: dict[str, RunInfo], line: ContextLine) -> None:
    body = line.payload
    info = runs.get(body.run_ref)
    if info is None:
        info = runs[body.run_ref] = RunInfo(body.run_ref)
    if line.payload_type == "Run":
        if body.name:
            info.name = body.name
        if body.project_ref:
            info.project = components(body.project_ref)
        info.status = body.status
        info.started_at = body.started_at
        info.ended_at = body.ended_at
        info.dataset_ref = body.dataset_ref
        info.failure_reason = body.failure_reason
        info.tags = dict(body.tags or {})
    elif line.payload_type == "StageExecution":
        stage = last_component(body.stage_execution_ref or "") or body.stage_name or "?"
        info.stages.setdefault(stage, body.order_index)


def read_artifacts(
    path: Path,
    issues: Issues,
    *,
    wanted: Iterable[str] | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> dict[str, list[ArtifactInfo]]:
    """Artifacts per run ref, in capture order."""
    chosen = None if wanted is None else frozenset(wanted)
    out: dict[str, list[ArtifactInfo]] = {}
    for lines in read_lines(path, ArtifactLine, issues, chunk_size=chunk_size):
        for line in lines:
            run = line.payload.manifest.run_ref
            if chosen is None or run in chosen:
                out.setdefault(run, []).append(ArtifactInfo(line))
    return out


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
    samples: Mapping[str, SampleInfo] | None = None,
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
    if not _matches(env.stage_execution_ref, stage):
        return None
    if not _matches(env.sample_observation_ref, sample):
        return None
    info = (
        samples.get(env.sample_observation_ref)
        if samples and env.sample_observation_ref is not None
        else None
    )
    return RecordRow(
        kind=kind,  # type: ignore[arg-type]
        ref=env.record_ref or line.payload_ref or "",
        run_ref=ref,
        key=name,
        stage=last_component(env.stage_execution_ref),
        batch=last_component(env.batch_execution_ref),
        sample=last_component(env.sample_observation_ref),
        recorded_at=env.recorded_at,
        value=body.value,
        value_type=body.value_type,
        unit=body.unit,
        tags=body.tags or {},
        level=body.level,
        message=body.message,
        attributes=body.attributes or {},
        status=body.status,
        cluster=None if info is None else info.cluster,
        epoch=None if info is None else info.epoch,
    )


def artifact_row(
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
            self._file("context"), issues, chunk_size=self.chunk_size, samples=samples
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
        frames = []
        issues = Issues()
        if self.use_index and not times:
            index = load_index(path)
            issues.index_frames_rejected += index.rejected
            frames = index.frames
        scan, found = scan_file(
            path, wanted, values, self.chunk_size, times=times, frames=frames, stop_event=stop
        )
        found.index_frames_rejected += issues.index_frames_rejected
        return scan, found

    async def read(self, runs: Collection[str] | None, *, values: bool) -> SourceData:
        wanted = None if runs is None else frozenset(runs)
        small_issues = Issues()
        samples = SampleScan() if values else None
        found: dict[str, Any] = {}
        stop = threading.Event()

        async def scan() -> None:
            # Cancelled, the read returns at once; the thread stops at its next frame or block.
            found["scan"] = await anyio.to_thread.run_sync(
                self._scan, wanted, values, stop, abandon_on_cancel=True
            )

        async def small() -> None:
            found["small"] = await anyio.to_thread.run_sync(
                self._small_files, small_issues, samples, abandon_on_cancel=True
            )

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(scan)
                group.start_soon(small)
        except BaseExceptionGroup as failed:
            raise _first_error(failed) from None
        finally:
            stop.set()
        scan_result, scan_issues = found["scan"]
        runs_info, artifacts = found["small"]
        issues = small_issues.merge(scan_issues)
        report = await anyio.to_thread.run_sync(issues.report)
        self.last_report = report
        if samples is None:
            return SourceData(runs_info, scan_result, artifacts, report)
        return SourceData(
            runs_info, scan_result, artifacts, report, samples.samples, samples.reopened()
        )

    async def records(self, run: str, rows: RowFilter) -> AsyncGenerator[RecordRow, None]:
        issues = Issues()
        samples = SampleScan(by_ref=True)
        runs, artifacts = await anyio.to_thread.run_sync(self._small_files, Issues(), samples)
        known = set(runs) | set(artifacts)
        ref: str | None = None
        if runs:
            # Every run writes a CONTEXT line when it opens: the run is known from it (or
            # from its artifacts) without reading record.jsonl first.
            try:
                ref = resolve_run_ref(run, known)
            except UnknownRunError:
                ref = None  # perhaps a run known only from its records: found while streaming
        lines = self._rows(run, ref, known, rows, issues, samples.by_ref)
        try:
            while (block := await anyio.to_thread.run_sync(next, lines, None)) is not None:
                for row in block:
                    yield row
        finally:
            lines.close()  # closes the file: no worker thread needed (the loop may be closing)
        self.last_report = await anyio.to_thread.run_sync(issues.report)

    def _rows(
        self,
        name: str,
        ref: str | None,
        known: set[str],
        rows: RowFilter,
        issues: Issues,
        samples: Mapping[str, SampleInfo] | None = None,
    ) -> Generator[list[RecordRow], None, None]:
        """The rows of the run, a block at a time (blocking). With ``ref`` None, the run is
        the one ``name`` names among the runs of the artifacts and the record lines, found as
        they come: AmbiguousRunError at a second one, UnknownRunError if none."""
        path = self._file("record")
        resolved = ref is not None
        candidates = set() if resolved else {r for r in known if run_matches(r, name)}
        if len(candidates) > 1:
            raise AmbiguousRunError(name, sorted(candidates))
        if candidates:
            (ref,) = candidates
        if not resolved or rows.kinds & {"metric", "event", "span"}:
            decoder = LineDecoder(FullRecordLine)
            marker = run_marker(ref or "")  # used only when resolved (ref set)
            seen: set[str] = set()
            for block in read_file(path, issues, chunk_size=self.chunk_size):
                if resolved and block.find(marker) < 0 and block.find(b'"run_ref":"') >= 0:
                    continue  # compact lines, none of this run: skip decoding the block
                out = []
                for line in decoder.decode(block.view(), str(path), block.offset, issues):
                    run = line.payload.envelope.run_ref
                    if not resolved and run not in seen:
                        seen.add(run)
                        if run_matches(run, name) and run not in candidates:
                            candidates.add(run)
                            if len(candidates) > 1:
                                raise AmbiguousRunError(name, sorted(candidates))
                            ref = run
                    if run == ref:
                        row = record_row(
                            line, ref, rows.kinds, rows.key, rows.stage, rows.sample, samples
                        )
                        if row is not None:
                            out.append(row)
                yield out
            known |= seen
        if ref is None:
            if not known:
                raise EmptyWorkspaceError(self.describe())
            ref = resolve_run_ref(name, known)  # raises: nothing named it
        if "artifact" in rows.kinds:
            artifacts = read_artifacts(
                self._file("artifact"), issues, wanted=[ref], chunk_size=self.chunk_size
            )
            yield [
                row
                for item in artifacts.get(ref, [])
                if (row := artifact_row(item, rows.key, rows.stage, rows.sample)) is not None
            ]


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
        with handle, _index_file(path, bool(frames)) as index:
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


def _index_file(path: str, wanted: bool) -> contextlib.AbstractContextManager[BinaryIO | None]:
    """``record.index`` open for reading; None (its frames' lines are then parsed) when not
    wanted or no longer readable."""
    if wanted:
        with contextlib.suppress(OSError):
            return open_index(index_path_for(path))
    return contextlib.nullcontext()
