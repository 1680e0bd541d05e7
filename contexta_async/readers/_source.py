"""The seam between where records live and the answers: ``RecordSource``.

A source turns a workspace into what the answers are computed from; every answer (list_runs,
get_run, compare, compare_many, best_run) is computed from a ``SourceData`` by the same
aggregate and analysis code, and ``records`` streams rows, whatever the source. The
local-file source (``_local.LocalSource``) is the default; a store (PostgreSQL) is a second
implementation of this Protocol.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncGenerator, Collection, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Final, NamedTuple, Protocol

from .._errors import ValidationError
from .._format.lines import ArtifactLine
from .._format.refs import components, last_component, run_matches
from ._errors import AmbiguousRunError, UnknownRunError
from ._model import ReadReport, RecordKind, RecordRow

__all__ = [
    "NO_REOPENED",
    "NO_SAMPLES",
    "TYPE_KIND",
    "ArtifactInfo",
    "MultiRunSource",
    "RecordScan",
    "RecordSource",
    "RowFilter",
    "RunInfo",
    "SampleFacts",
    "SampleInfo",
    "SourceData",
    "resolve_run_ref",
    "run_names",
]

# payload_type -> record kind; other types are counted as "other".
TYPE_KIND: Final = {
    "MetricRecord": "metric",
    "StructuredEventRecord": "event",
    "TraceSpanRecord": "span",
}


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


def run_names(runs: object) -> list[str]:
    """``runs`` (of ``compare_many``, ``best_run``, ``export``...) as a list: a sequence of
    run names, never one string (whose letters would name runs); ValidationError naming
    ``runs`` or the item (``runs[1]``) otherwise."""
    if isinstance(runs, str):
        raise ValidationError("runs", "must be a sequence of run names, not one string", runs)
    if isinstance(runs, bytes | bytearray | memoryview) or not isinstance(runs, Iterable):
        raise ValidationError("runs", "must be a sequence of run names (str)", runs)
    names = list(runs)
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise ValidationError(f"runs[{i}]", "must be a run name (str)", name)
    return names


class RunInfo:
    """What the CONTEXT lines say about one run (the newest line wins)."""

    __slots__ = (
        "dataset_ref",
        "ended_at",
        "failure_reason",
        "name",
        "project",
        "ref",
        "stages",
        "started_at",
        "status",
        "tags",
    )

    def __init__(self, ref: str) -> None:
        self.ref = ref
        value = components(ref)
        self.project = value.split(".", 1)[0]
        self.name = last_component(value) or ""
        self.status = "unknown"
        self.started_at: str | None = None
        self.ended_at: str | None = None
        self.dataset_ref: str | None = None
        self.failure_reason: str | None = None
        self.tags: dict[str, str] = {}
        self.stages: dict[str, int] = {}  # stage name -> order index


class ArtifactInfo:
    """One ARTIFACT line, narrowed; ``place`` is its scope relative to the run
    (``""`` for the run itself, ``"evaluate"``, ``"evaluate.case-1"``...)."""

    __slots__ = (
        "batch",
        "hash_value",
        "kind",
        "location_ref",
        "place",
        "recorded_at",
        "ref",
        "run_ref",
        "sample",
        "sample_ref",
        "size_bytes",
        "stage",
        "stage_ref",
    )

    def __init__(self, line: ArtifactLine) -> None:
        manifest = line.payload.manifest
        self.ref = manifest.artifact_ref
        self.kind = manifest.artifact_kind
        self.run_ref = manifest.run_ref
        self.hash_value = manifest.hash_value
        self.location_ref = manifest.location_ref
        self.size_bytes = manifest.size_bytes
        self.recorded_at = manifest.created_at
        self.stage_ref = manifest.stage_execution_ref
        self.sample_ref = manifest.sample_observation_ref
        self.stage = last_component(manifest.stage_execution_ref)
        self.batch = last_component(manifest.batch_execution_ref)
        self.sample = last_component(manifest.sample_observation_ref)
        self.place = ".".join(p for p in (self.stage, self.batch, self.sample) if p)


class RecordScan:
    """What the RECORD lines say: per-run counts and stages of every run, and the latest
    metric values of the wanted runs, by the scope ref they were captured under."""

    def __init__(self) -> None:
        # (run ref, payload_type) -> lines.
        self.counts: Counter[tuple[str, str]] = Counter()
        # The stage refs records were captured under (None: a run-level record).
        self.stage_refs: set[str | None] = set()
        # First and last record time per run: only filled for runs without CONTEXT lines.
        self.first_time: dict[str, str] = {}
        self.last_time: dict[str, str] = {}
        # (stage or batch ref of the samples, metric key) -> sample name -> the latest value.
        self.samples: dict[tuple[str, str], dict[str, float | None]] = {}
        # (scope ref, metric key) -> the latest value (run, stage and batch metrics).
        self.others: dict[tuple[str, str], float | None] = {}
        self.kept: set[str] = set()  # the runs whose values are in samples and others
        self.records = 0

    def run_refs(self) -> set[str]:
        return {run for run, _ in self.counts}


class SampleInfo(NamedTuple):
    """What a sample's CONTEXT line says beyond its ref: the item it is an attempt of, its
    epoch and its cluster."""

    item: str
    """The item's name as the ref spells it (normalised), without any ``-epoch-<k>`` suffix:
    attempts of one item share it."""
    epoch: int | None
    cluster: str | None


# What the readers take for a sample: a SampleInfo or a plain tuple in its order. The local
# source builds plain tuples: a workspace holds one per sample, and the garbage collector
# stops tracking a plain tuple of strings and numbers, never a NamedTuple (docs/performance.md,
# Readers).
SampleFacts = tuple[str, int | None, str | None]


# The default of SourceData.samples: no sample has a cluster or an epoch.
NO_SAMPLES: Final[Mapping[str, Mapping[str, SampleFacts]]] = MappingProxyType({})

NO_REOPENED: Final[Mapping[str, int]] = MappingProxyType({})


class SourceData(NamedTuple):
    """One read of a workspace: everything the answers are computed from."""

    runs: dict[str, RunInfo]  # from CONTEXT lines
    scan: RecordScan
    artifacts: dict[str, list[ArtifactInfo]]  # per run ref, in capture order
    report: ReadReport
    samples: Mapping[str, Mapping[str, SampleFacts]] = NO_SAMPLES
    """Samples with a cluster or an epoch: stage or batch ref -> the sample's last ref
    component -> SampleInfo (or a plain tuple of its fields). Empty (the default) means no
    cluster and no epoch anywhere: every sample is an item of its own, in a cluster of its
    own."""
    reopened: Mapping[str, int] = NO_REOPENED
    """Sample refs opened more than once (the same item captured twice without an epoch) ->
    how many times; empty (the default) when none was, or the source cannot tell."""


class RowFilter(NamedTuple):
    """The filters of ``Workspace.records``: kinds, and key/stage/sample (a name or a full
    ref), None for any."""

    kinds: frozenset[RecordKind]
    key: str | None = None
    stage: str | None = None
    sample: str | None = None


class RecordSource(Protocol):
    """Where a workspace's records come from.

    ``read(runs, values=...)`` returns a ``SourceData``:

    - ``runs``: a ``RunInfo`` per run ref known from run metadata (CONTEXT lines; a store's
      runs table), with its stages by name and order;
    - ``scan``: a ``RecordScan``: ``counts`` of records per (run ref, payload_type) and
      ``stage_refs`` for every run; ``first_time``/``last_time``, the first and last record
      time per run, used only for runs missing from ``runs`` (the local source fills them
      for a workspace without CONTEXT lines); with ``values=True``, the latest value of each
      metric: per sample in ``samples[(stage or batch ref, key)][sample name]`` and for run-,
      stage- and batch-level metrics in ``others[(scope ref, key)]``, in capture order (the
      last value captured wins), for the runs in ``kept``: every run when ``runs`` is None,
      else every run that one of the names in ``runs`` names (``refs.run_matches``: a full
      ref or a suffix of whole components). A value is None where the line held none. Scope
      refs follow the grammar of ``contexta_async._format.refs``;
    - ``artifacts``: an ``ArtifactInfo`` per ARTIFACT line, per run ref;
    - ``report``: what was skipped (corrupt lines, torn tails, index use);
    - ``samples`` (optional; the default says "no cluster and no epoch anywhere"): for each
      sample whose metadata (a CONTEXT line's ``cluster``/``epoch``, a store's sample row)
      gives a cluster or an epoch, a ``SampleInfo`` (or a plain tuple of its fields, in
      order) under its stage or batch ref and the last component of its ref (the name
      ``scan.samples`` knows it by): ``item`` is that component without its ``-epoch-<k>``
      suffix when an epoch is given, else the component itself. A source without this
      metadata leaves the default: every sample is its own item and its own cluster (a
      Contexta 1.0 workspace);
    - ``reopened`` (optional, default empty): sample refs opened more than once, with the
      count, for the alignment report's duplicates.

    A store that aggregates in SQL returns the latest value per sample (and per scope and
    key) it computed, not raw lines: the aggregate and analysis code only ever sees these
    values.

    ``records(run, rows)`` streams the records of the run ``run`` names (a full ref or a
    unique suffix, resolved as ``resolve_run_ref`` does; ``UnknownRunError``,
    ``AmbiguousRunError``, ``EmptyWorkspaceError`` otherwise) as ``RecordRow`` in capture
    order, metrics, events and spans first, then artifacts, filtered by ``rows``, holding a
    bounded amount of memory; a source that knows the samples' clusters and epochs sets
    ``RecordRow.cluster``/``epoch`` (they default to None: not given). ``last_report`` is
    what the last finished read skipped.

    ``record_blocks(refs, rows)`` (``MultiRunSource``; optional: ``Workspace`` falls back to
    ``records`` run after run for a source without it) streams the rows of several runs,
    given by full ref, in ONE pass over the records, as lists of rows (a block of the file,
    a fetch from a store; some may be empty): the metrics, events and spans of all of them
    in capture order (interleaved as they were captured), then the artifacts, run after run
    in the order of ``refs``, filtered by ``rows``, holding a block at a time. A ref that
    names no run has no rows.

    Neither ``read`` nor the stream ``records`` returns may block the event loop (on asyncio
    and trio): blocking work goes to worker threads.
    """

    last_report: ReadReport

    def describe(self) -> str:
        """Where the records are, for messages (a folder, a store URL without secrets)."""
        ...

    async def read(self, runs: Collection[str] | None, *, values: bool) -> SourceData: ...

    def records(self, run: str, rows: RowFilter) -> AsyncGenerator[RecordRow, None]: ...


class MultiRunSource(RecordSource, Protocol):
    """A ``RecordSource`` that also streams several runs in one pass (``record_blocks``)."""

    def record_blocks(
        self, refs: Sequence[str], rows: RowFilter
    ) -> AsyncGenerator[list[RecordRow], None]: ...
