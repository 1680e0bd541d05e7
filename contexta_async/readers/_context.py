"""The small capture files: runs, stages and samples from ``context.jsonl``, artifacts from
``artifact.jsonl`` (read whole, in a worker thread, beside the scan of ``record.jsonl``)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from itertools import chain, compress, repeat
from operator import itemgetter
from pathlib import Path
from typing import Final, Protocol

import msgspec

from .._format.lines import RUN_LINE, STAGE_LINE, ArtifactLine, ContextLine
from .._format.refs import components, last_component, parse_sample_head
from ._read import CHUNK_SIZE, Block, Issues, LineDecoder, read_file, read_lines
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
# inside a string is escaped, so these bytes only occur as the line's own keys and values):
# _SAMPLE_OPENED finds the ref of every opening line (a sample opened twice, the alignment
# report's duplicates, has two). _PLAIN_OPENING starts an opening line without batch, cluster
# or epoch: as many of them as openings in a block, and the block has no cluster or epoch.
# Otherwise _SAMPLE_META reads the cluster and epoch at the start of every sample line still
# open (ended_at null: the opening lines, one per ref found, in the same order). No line is
# decoded. Contexta 1.0 writes no CONTEXT lines: there is no other layout to match.
# _SAMPLE_OPENED starts at the last key's name ("status", last in sorted order), not at
# ":" (a stop at every key): ~10 % faster.
_SAMPLE_OPENED: Final = re.compile(rb'status":"open"\},"payload_ref":"(sample:[^"]+)"')
_PLAIN_OPENING: Final = b'{"batch_execution_ref":null,"ended_at":null,"extensions":'
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
    the samples of these run refs (a stream of some runs keeps no other run's samples)."""

    def __init__(self, *, by_ref: bool = False, runs: Collection[str] | None = None) -> None:
        self.samples: dict[str, dict[str, SampleFacts]] = {}
        # The refs of the opening lines, per block, and the distinct ones: counted only when
        # fewer distinct than openings (a sample opened twice).
        self._opened: list[list[bytes]] = []
        self._distinct: set[bytes] = set()
        self._parents: dict[bytes, str | None] = {}  # sample ref head -> stage or batch ref
        # Many samples share a cluster or an epoch: each decoded once.
        self._clusters: dict[bytes, str | None] = {}
        self._epochs: dict[bytes, tuple[int | None, str]] = {}  # -> the epoch, its ref suffix
        self.by_ref: dict[str, SampleFacts] | None = {} if by_ref else None
        self._runs = None if runs is None else frozenset(runs)
        self._run_of: dict[bytes, str | None] = {}  # sample ref head -> its run ref

    def feed(self, block: Block) -> None:
        buffer, start, end = block.buffer, block.start, block.end
        raw_refs = _SAMPLE_OPENED.findall(buffer, start, end)
        if self._runs is None:  # a scan of some runs is for their records: no reopened count
            self._opened.append(raw_refs)
            self._distinct.update(raw_refs)
        if buffer.count(_PLAIN_OPENING, start, end) == len(raw_refs):
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
        # Column by column (C-level passes, plain tuples: a block holds thousands of
        # openings). Only the samples with a cluster or an epoch, under a stage or batch ref.
        keep = list(map(any, metas))
        if not all(keep):
            metas, raw_refs = list(compress(metas, keep)), list(compress(raw_refs, keep))
            if not raw_refs:
                return
        if self._runs is not None:
            raw_refs, metas = self._of_runs(raw_refs, metas)
            if not raw_refs:
                return
        # Usually every ref of a block is "<head>.<name>" with one head: the names are what
        # is left of the refs without it (and without a dot: a name has none).
        head = raw_refs[0].rpartition(b".")[0]
        joined = b'"'.join(raw_refs)
        if all(map(bytes.startswith, raw_refs, repeat(head + b"."))) and b"." not in (
            rest := joined.replace(head + b".", b"")
        ):
            heads: Iterable[bytes] = [head]
            raw_names = rest
        else:
            splits = list(map(bytes.rpartition, raw_refs, repeat(b".")))
            heads = list(map(itemgetter(0), splits))
            raw_names = b'"'.join(map(itemgetter(2), splits))
        parents = self._parents
        for head in set(heads) - parents.keys():
            scope = parse_sample_head(head.decode())
            parents[head] = None if scope is None else scope.parent_ref
        of_parent = list(map(parents.__getitem__, heads))
        if len(of_parent) == 1:
            of_parent *= len(raw_refs)
        clusters, epochs = self._clusters, self._epochs
        for raw in set(map(itemgetter(0), metas)) - clusters.keys():
            clusters[raw] = _json_text(raw) if raw else None
        for raw in set(map(itemgetter(1), metas)) - epochs.keys():
            # No epoch: a suffix no name has (a name holds no quote).
            epochs[raw] = (int(raw), f"-epoch-{int(raw)}") if raw else (None, '"')
        # A quote ends a ref: one decode for the block's names.
        names = raw_names.decode(errors="replace").split('"')
        epoch_of = list(map(epochs.__getitem__, map(itemgetter(1), metas)))
        items = list(map(str.removesuffix, names, map(itemgetter(1), epoch_of)))
        if "" in items:  # a name that is only its suffix is its own item
            items = [item or name for item, name in zip(items, names, strict=True)]
        infos = list(
            zip(
                items,
                map(itemgetter(0), epoch_of),
                map(clusters.__getitem__, map(itemgetter(0), metas)),
                strict=True,
            )
        )
        parent = of_parent[0]
        if parent is not None and of_parent.count(parent) == len(of_parent):
            self.samples.setdefault(parent, {}).update(zip(names, infos, strict=True))
            if self.by_ref is not None:
                self.by_ref.update(zip(map(bytes.decode, raw_refs), infos, strict=True))
            return
        for parent, name, info, ref in zip(of_parent, names, infos, raw_refs, strict=True):
            if parent is not None:  # else not a sample ref: ignored
                self.samples.setdefault(parent, {})[name] = info
                if self.by_ref is not None:
                    self.by_ref[ref.decode()] = info

    def _of_runs(
        self, raw_refs: list[bytes], metas: list[tuple[bytes, bytes]]
    ) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
        """The openings of the wanted runs (one decision per block when its refs share a
        head, as usual)."""
        assert self._runs is not None
        run_of = self._run_of
        head = raw_refs[0].rpartition(b".")[0]
        shared = all(map(bytes.startswith, raw_refs, repeat(head + b".")))
        heads = [head] if shared else [ref.rpartition(b".")[0] for ref in raw_refs]
        for unknown in set(heads) - run_of.keys():
            scope = parse_sample_head(unknown.decode(errors="replace"))
            run_of[unknown] = None if scope is None else scope.run_ref
        wanted = [run_of[h] in self._runs for h in heads]
        if shared:
            return (raw_refs, metas) if wanted[0] else ([], [])
        return list(compress(raw_refs, wanted)), list(compress(metas, wanted))

    def reopened(self) -> dict[str, int]:
        if len(self._distinct) == sum(map(len, self._opened)):
            return {}
        opened = Counter(chain.from_iterable(self._opened))
        return {ref.decode(): n for ref, n in opened.items() if n > 1}


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
