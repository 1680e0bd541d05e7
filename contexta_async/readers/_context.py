"""The small capture files: runs, stages and samples from ``context.jsonl``, artifacts from
``artifact.jsonl`` (read whole, in a worker thread, beside the scan of ``record.jsonl``)."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from itertools import chain, compress, repeat
from operator import itemgetter
from pathlib import Path
from typing import Final, Protocol

import msgspec

from .._format.index import ContextEntry, Frame
from .._format.lines import RUN_LINE, STAGE_LINE, ArtifactLine, ContextLine
from .._format.refs import components, last_component, parse_sample_head
from ._errors import UnreadableFileError
from ._index import index_beside, load_index, pieces, read_context_entry
from ._read import (
    CHUNK_SIZE,
    Block,
    Issues,
    LineCutter,
    LineDecoder,
    open_regular_file,
    read_blocks,
    read_lines,
)
from ._source import ArtifactInfo, RunInfo, SampleFacts

__all__ = [
    "RunFacts",
    "SampleScan",
    "context_lines",
    "fold_context_line",
    "read_artifacts",
    "read_context",
]


# A sample's opening line as this library writes it (keys sorted, compact JSON: a quote
# inside a string is escaped). A Run line's ``metadata`` is the user's JSON object, written as
# it is, so any run of bytes inside a line may be a look-alike; a line's end cannot be (a
# newline inside a string is escaped). _SAMPLE_OPENED finds the ref of every opening line
# (a sample opened twice, the alignment report's duplicates, has two) by the line's last
# keys up to its newline. A block without _CLUSTER and _EPOCH has no cluster and no epoch
# (a look-alike only sends the block down the careful path). Otherwise _SAMPLE_META reads
# the cluster and epoch at the start of every sample line still open (ended_at null: the
# opening lines, one per ref found, in the same order) and, if it finds more than there are
# openings (a look-alike), each opening's in its own line. No line is decoded. Contexta 1.0
# writes no CONTEXT lines: there is no other layout to match. _SAMPLE_OPENED starts at the
# payload's last key ("status"), not at ":", where the engine would stop at every key
# (docs/performance.md, Readers).
_SAMPLE_OPENED: Final = re.compile(
    rb'status":"open"\},"payload_ref":"(sample:[^"]+)","payload_type":"SampleObservation"'
    rb'(?:,"[^"]*":(?:"[^"\\]*+(?:\\.[^"\\]*+)*+"|null|-?\d+))*\}\n'
)
_CLUSTER: Final = b',"cluster":"'
_EPOCH: Final = b'"ended_at":null,"epoch":'
_SAMPLE_META: Final = re.compile(
    rb'\{"batch_execution_ref":(?:null|"[^"]*"),(?:"cluster":"([^"\\]*+(?:\\.[^"\\]*+)*+)",)?'
    rb'"ended_at":null,(?:"epoch":(\d+),)?'
)


def _json_text(raw: bytes) -> str:
    """A JSON string's content as found in a line: escapes decoded where there are any."""
    if b"\\" in raw:
        return str(msgspec.json.decode(b'"' + raw + b'"'))
    return raw.decode("utf-8", "replace")


class SampleScan:
    """What the sample CONTEXT lines say that pairing needs: clusters and epochs (see
    ``SourceData.samples``) and the refs opened more than once. ``by_ref``: also keep each
    sample's (item, epoch, cluster) by its full ref (for ``records``). ``runs``: keep only
    the samples of these run refs (a stream of some runs keeps no other run's samples).

    Fed blocks of JSON (``feed``) and the openings ``context.index`` lists (``feed_opened``),
    in file order."""

    def __init__(self, *, by_ref: bool = False, runs: Collection[str] | None = None) -> None:
        self.samples: dict[str, dict[str, SampleFacts]] = {}
        # The refs of the opening lines, per block or frame, and the distinct ones: counted
        # only when fewer distinct than openings (a sample opened twice).
        self._opened: list[list[str]] = []
        self._distinct: set[str] = set()
        self._parents: dict[str, str | None] = {}  # sample ref head -> stage or batch ref
        # Many samples share a cluster or an epoch: each decoded once.
        self._clusters: dict[bytes, str | None] = {}
        self._epochs: dict[bytes, int | None] = {}
        self._suffixes: dict[int | None, str] = {}  # epoch -> its suffix of sample names
        self.by_ref: dict[str, SampleFacts] | None = {} if by_ref else None
        self._runs = None if runs is None else frozenset(runs)
        self._run_of: dict[str, str | None] = {}  # sample ref head -> its run ref

    def feed(self, block: Block) -> None:
        """The sample lines of a block of ``context.jsonl``."""
        buffer, start, end = block.buffer, block.start, block.end
        raw_refs = _SAMPLE_OPENED.findall(buffer, start, end)
        # A quote ends a ref: one decode for the block's refs.
        refs = b'"'.join(raw_refs).decode(errors="replace").split('"') if raw_refs else []
        if buffer.find(_CLUSTER, start, end) < 0 and buffer.find(_EPOCH, start, end) < 0:
            self._openings(refs, [None] * len(refs), [None] * len(refs))
            return
        metas: list[tuple[bytes, bytes]] = _SAMPLE_META.findall(buffer, start, end)
        if len(metas) != len(raw_refs):
            # Not only lines this library writes (an open sample line written twice?): the
            # cluster and epoch of each opening line, searched for in that line.
            metas = []
            for opening in _SAMPLE_OPENED.finditer(buffer, start, end):
                line = max(start, buffer.rfind(b"\n", start, opening.start()) + 1)
                meta = _SAMPLE_META.search(buffer, line, opening.start())
                metas.append((b"", b"") if meta is None else (meta[1] or b"", meta[2] or b""))
        clusters, epochs = self._clusters, self._epochs
        raw_clusters = list(map(itemgetter(0), metas))
        raw_epochs = list(map(itemgetter(1), metas))
        for raw in set(raw_clusters) - clusters.keys():
            clusters[raw] = _json_text(raw) if raw else None
        for raw in set(raw_epochs) - epochs.keys():
            epochs[raw] = int(raw) if raw else None
        self._openings(
            refs,
            list(map(clusters.__getitem__, raw_clusters)),
            list(map(epochs.__getitem__, raw_epochs)),
        )

    def feed_opened(
        self, refs: list[str], clusters: list[str | None], epochs: list[int | None]
    ) -> None:
        """Openings as ``context.index`` lists them: refs, and each one's cluster and epoch."""
        self._openings(refs, clusters, epochs)

    def _openings(
        self, refs: list[str], clusters: list[str | None], epochs: list[int | None]
    ) -> None:
        if self._runs is None:  # a scan of some runs is for their records: no reopened count
            self._opened.append(refs)
            self._distinct.update(refs)
        if not refs:  # a frame of Run and Stage lines only, or of sample closings
            return
        if None in clusters and None in epochs:  # else every opening has one or the other
            keep = [c is not None or e is not None for c, e in zip(clusters, epochs, strict=True)]
            if not any(keep):
                return
            refs = list(compress(refs, keep))
            clusters, epochs = list(compress(clusters, keep)), list(compress(epochs, keep))
        # Usually every ref is "<head>.<name>" with one head: the names are what is left of
        # the refs without it (and without a dot: a name has none).
        head = refs[0].rpartition(".")[0]
        joined = '"'.join(refs)
        if all(map(str.startswith, refs, repeat(head + "."))) and "." not in (
            rest := joined.replace(head + ".", "")
        ):
            self._add([head], rest.split('"'), epochs, clusters, refs)
            return
        splits = list(map(str.rpartition, refs, repeat(".")))
        heads = list(map(itemgetter(0), splits))
        self._add(heads, list(map(itemgetter(2), splits)), epochs, clusters, refs)

    def _add(
        self,
        heads: list[str],
        names: list[str],
        epochs: list[int | None],
        clusters: list[str | None],
        refs: list[str],
    ) -> None:
        """Keep the facts of these openings (one head for all of them, or one each)."""
        if self._runs is not None:
            run_of = self._run_of
            for unknown in set(heads) - run_of.keys():
                scope = parse_sample_head(unknown)
                run_of[unknown] = None if scope is None else scope.run_ref
            wanted = [run_of[h] in self._runs for h in heads]
            if len(heads) == 1:
                if not wanted[0]:
                    return
            elif not all(wanted):
                heads = list(compress(heads, wanted))
                names, refs = list(compress(names, wanted)), list(compress(refs, wanted))
                epochs, clusters = list(compress(epochs, wanted)), list(compress(clusters, wanted))
                if not heads:
                    return
        parents, suffixes = self._parents, self._suffixes
        for head in set(heads) - parents.keys():
            scope = parse_sample_head(head)
            parents[head] = None if scope is None else scope.parent_ref
        # No epoch: a suffix no name has (a name holds no quote).
        for epoch in set(epochs) - suffixes.keys():
            suffixes[epoch] = '"' if epoch is None else f"-epoch-{epoch}"
        items = list(map(str.removesuffix, names, map(suffixes.__getitem__, epochs)))
        if "" in items:  # a name that is only its suffix is its own item
            items = [item or name for item, name in zip(items, names, strict=True)]
        infos = list(zip(items, epochs, clusters, strict=True))
        by_ref = self.by_ref
        if len(heads) == 1:
            parent = parents[heads[0]]
            if parent is not None:
                self.samples.setdefault(parent, {}).update(zip(names, infos, strict=True))
                if by_ref is not None:
                    by_ref.update(zip(refs, infos, strict=True))
            return
        for ref, head, name, info in zip(refs, heads, names, infos, strict=True):
            parent = parents[head]
            if parent is not None:  # else not a sample ref: ignored
                self.samples.setdefault(parent, {})[name] = info
                if by_ref is not None:
                    by_ref[ref] = info

    def reopened(self) -> dict[str, int]:
        if len(self._distinct) == sum(map(len, self._opened)):
            return {}
        opened = Counter(chain.from_iterable(self._opened))
        return {ref: n for ref, n in opened.items() if n > 1}


def read_context(
    path: Path,
    issues: Issues,
    *,
    chunk_size: int = CHUNK_SIZE,
    samples: SampleScan | None = None,
    use_index: bool = True,
) -> dict[str, RunInfo]:
    """Runs and their stages from ``context.jsonl``; sample and batch lines are not decoded
    (``samples``, when given, takes their clusters, epochs and openings). The parts that
    verified frames of ``context.index`` describe are not read: their Run and StageExecution
    lines are read where the frame says they are, their openings come from the frame."""
    runs: dict[str, RunInfo] = {}
    decoder = LineDecoder(ContextLine)
    name = str(path)
    frames: list[Frame] = []
    if use_index:
        loaded = load_index(name, ContextEntry)
        frames = loaded.frames
        issues.index_frames_rejected += loaded.rejected
    try:
        handle = open_regular_file(path)
    except FileNotFoundError:
        return runs
    cutter = LineCutter()
    try:
        with handle, index_beside(path, bool(frames)) as index:
            for start, end, frame in pieces(frames, 0, None):
                if frame is not None:
                    entry = None if index is None else read_context_entry(index.fileno(), frame)
                    if entry is not None:
                        if samples is not None:
                            samples.feed_opened(entry.opened, entry.clusters, entry.epochs)
                        for at, length in zip(entry.kept_starts, entry.kept_lengths, strict=True):
                            line = os.pread(handle.fileno(), length, at)
                            for value in decoder.decode(line, name, at, issues):
                                _apply_context(runs, value)
                        continue
                    issues.index_frames_rejected += 1
                cutter = LineCutter(start)
                for block in read_blocks(handle, cutter, end, chunk_size=chunk_size):
                    if samples is not None:
                        samples.feed(block)
                    for value in context_lines(block, decoder, name, issues):
                        _apply_context(runs, value)
    except OSError as exc:
        raise UnreadableFileError(name, exc.strerror or str(exc)) from exc
    if cutter.torn:
        issues.torn_tails.append(name)
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
    starts = sorted(set(starts))  # a look-alike inside a Run line names its line twice
    for start in starts:
        end = buffer.find(b"\n", start, block.end)
        line = memoryview(buffer)[start : end + 1]
        yield from decoder.decode(line, name, block.offset + start - block.start, issues)


class RunFacts(Protocol):
    """What a Run line and a StageExecution line say about a run (the readers' RunInfo, the
    live view's RunState)."""

    name: str
    project: str
    status: str
    started_at: str | None
    ended_at: str | None
    dataset_ref: str | None
    failure_reason: str | None
    tags: dict[str, str]
    stages: dict[str, int]


def fold_context_line(run: RunFacts, line: ContextLine) -> None:
    """Apply a Run or StageExecution line to what is known of its run (the newest line wins;
    a stage keeps the order index it was first seen with)."""
    body = line.payload
    if line.payload_type == "Run":
        if body.name:
            run.name = body.name
        if body.project_ref:
            run.project = components(body.project_ref)
        run.status = body.status
        run.started_at = body.started_at
        run.ended_at = body.ended_at
        run.dataset_ref = body.dataset_ref
        run.failure_reason = body.failure_reason
        run.tags = dict(body.tags or {})
    elif line.payload_type == "StageExecution":
        stage = last_component(body.stage_execution_ref or "") or body.stage_name or "?"
        run.stages.setdefault(stage, body.order_index)


def _apply_context(runs: dict[str, RunInfo], line: ContextLine) -> None:
    info = runs.get(line.payload.run_ref)
    if info is None:
        info = runs[line.payload.run_ref] = RunInfo(line.payload.run_ref)
    fold_context_line(info, line)


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
