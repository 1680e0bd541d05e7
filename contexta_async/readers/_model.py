"""The readers' result types, plain msgspec Structs (``msgspec.to_builtins`` gives JSON), and
the options a comparison is computed with.

Their notebook tables (``_repr_html_``) are rendered by ``contexta_async.report._notebook``,
imported on first display: presentation sits above the readers, and reading never loads it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

import msgspec

from .._errors import ValidationError
from ..stats._bootstrap import BootstrapMethod, check_options
from ..stats._inference import ADJUSTMENTS, Adjustment

__all__ = [
    "Alignment",
    "ArtifactChange",
    "BestRun",
    "CompareOptions",
    "Direction",
    "LineProblem",
    "MetricDelta",
    "MultiRunComparison",
    "MultiRunRow",
    "PairedResult",
    "PairedSample",
    "RankedRun",
    "ReadReport",
    "RecordCounts",
    "RecordKind",
    "RecordRow",
    "RunComparison",
    "RunStatus",
    "RunSummary",
    "Scope",
]

RunStatus = Literal["open", "completed", "failed", "cancelled", "unknown"]
Direction = Literal["maximize", "minimize"]
_DIRECTIONS: Final[tuple[Direction, ...]] = get_args(Direction)
Scope = Literal["run", "stage", "batch", "sample"]
RecordKind = Literal["metric", "event", "span", "artifact"]


@dataclass(frozen=True, kw_only=True, slots=True)
class CompareOptions:
    """How a comparison is computed (see ``Workspace.compare``), checked once when built:
    a field that breaks its rule raises ValidationError naming it (``directions['loss']``,
    ``seed``...), before anything is read (not deep in numpy after a scan, nor silently)."""

    directions: Mapping[str, Direction] | None = None
    confidence: float = 0.95
    resamples: int = 2000
    seed: int = 0
    bootstrap: BootstrapMethod = "auto"
    include_samples: bool = False
    adjustment: Adjustment = "holm"

    def __post_init__(self) -> None:
        directions = self.directions
        if directions is not None:
            if not isinstance(directions, Mapping):
                raise ValidationError(
                    "directions", "must be a mapping of metric key to direction", directions
                )
            for key, direction in directions.items():
                if not isinstance(key, str):
                    raise ValidationError("directions", "keys must be metric keys (str)", key)
                if direction not in _DIRECTIONS:
                    raise ValidationError(
                        f"directions[{key!r}]", "must be 'maximize' or 'minimize'", direction
                    )
        check_options(
            self.confidence, self.resamples, self.seed, self.bootstrap, method_field="bootstrap"
        )
        if not isinstance(self.include_samples, bool):
            raise ValidationError("include_samples", "must be True or False", self.include_samples)
        if not isinstance(self.adjustment, str) or self.adjustment not in ADJUSTMENTS:
            raise ValidationError(
                "adjustment", f"must be one of {list(ADJUSTMENTS)}", self.adjustment
            )
        # numpy scalars pass the checks above; the results carry plain Python numbers.
        object.__setattr__(self, "confidence", float(self.confidence))
        object.__setattr__(self, "resamples", int(self.resamples))
        object.__setattr__(self, "seed", int(self.seed))


class _R(msgspec.Struct, kw_only=True):
    """Base of the result types."""


class LineProblem(_R):
    """A line that could not be decoded: its file, 1-based line number, byte offset, why."""

    file: str
    line: int
    offset: int
    reason: str


class ReadReport(_R):
    """What reading skipped. ``problems`` keeps the first 50 corrupt lines.

    ``torn_tails`` lists files whose last line had no newline yet (a writer was mid-line);
    that line was left out silently and is read once complete.

    ``records_from_index`` counts the RECORD lines whose type, subject, key and value came
    from ``record.index`` instead of their JSON; ``index_frames_rejected`` the frames of
    ``record.index`` and ``context.index`` not used: damaged, no longer matching their file,
    overlapping another, or naming a scope that does not parse (their lines were parsed
    instead: nothing is lost, it is only slower).
    """

    corrupt_lines: int = 0
    problems: list[LineProblem] = msgspec.field(default_factory=list)
    torn_tails: list[str] = msgspec.field(default_factory=list)
    records_from_index: int = 0
    index_frames_rejected: int = 0


class RecordCounts(_R):
    """How many records of each kind a run holds."""

    metrics: int = 0
    events: int = 0
    spans: int = 0
    artifacts: int = 0
    other: int = 0

    @property
    def total(self) -> int:
        """All records of the run, of every kind."""
        return self.metrics + self.events + self.spans + self.artifacts + self.other


class RunSummary(_R):
    """One run as the workspace records it.

    ``status`` is the newest CONTEXT line's status, or ``"unknown"`` for a run known only from
    its records (a Contexta 1.0.0 workspace); there ``started_at``/``ended_at`` are the first
    and last record times. ``source`` says which: ``"context"`` or ``"records"``.
    """

    ref: str
    name: str
    project: str
    status: RunStatus
    started_at: str | None
    ended_at: str | None
    dataset_ref: str | None
    stages: list[str]
    counts: RecordCounts
    failure_reason: str | None = None
    tags: dict[str, str] = msgspec.field(default_factory=dict)
    source: Literal["context", "records"] = "context"

    def __repr__(self) -> str:
        return f"RunSummary(ref={self.ref!r}, status={self.status!r}, records={self.counts.total})"

    def _repr_html_(self) -> str:
        from ..report._notebook import summary_html

        return summary_html(self)


class RecordRow(_R, gc=False):
    """One metric, event, span or artifact of a run, as streamed by ``Workspace.records``.

    ``key`` is the metric key, event key, span name or artifact kind; ``stage``, ``batch`` and
    ``sample`` are names (the last ref component: ``<name>-epoch-<k>`` for an attempt captured
    with an epoch), ``None`` where the record has no such scope. ``cluster`` and ``epoch`` are
    the sample's, as given to ``stage.sample(...)`` (None when not given, or for records
    outside a sample).
    """

    kind: RecordKind
    ref: str
    run_ref: str
    key: str
    stage: str | None
    batch: str | None
    sample: str | None
    recorded_at: str
    value: float | None = None
    value_type: str | None = None
    unit: str | None = None
    tags: dict[str, str] = msgspec.field(default_factory=dict)
    level: str | None = None
    message: str | None = None
    attributes: dict[str, Any] = msgspec.field(default_factory=dict)
    status: str | None = None
    hash_value: str | None = None
    location_ref: str | None = None
    size_bytes: int | None = None
    cluster: str | None = None
    epoch: int | None = None


class MetricDelta(_R):
    """One metric of one place in both runs.

    ``basis`` is ``"latest"`` for run-, stage- and batch-level metrics (the value captured last)
    and ``"mean"`` for sample-level metrics (the mean over samples, each sample's latest value;
    ``left_count``/``right_count`` samples; with epochs, over items, each the mean of its
    attempts, and the counts are items). ``delta = right - left``; ``relative_change =
    delta / |left|`` (``None`` when left is 0 or a side is missing).
    """

    stage: str | None
    scope: Scope
    batch: str | None
    key: str
    basis: Literal["latest", "mean"]
    left: float | None
    right: float | None
    delta: float | None
    relative_change: float | None
    left_count: int
    right_count: int


class ArtifactChange(_R):
    """An artifact present in one run only (added/removed) or in both with a different file."""

    change: Literal["added", "removed", "changed"]
    kind: str
    place: str
    left_ref: str | None
    right_ref: str | None
    left_hash: str | None
    right_hash: str | None
    left_location: str | None
    right_location: str | None


class PairedSample(_R):
    """One matched sample: its value in each run and ``diff = right - left``."""

    name: str
    left: float
    right: float
    diff: float


class PairedResult(_R):
    """Paired per-sample analysis of one sample-level metric (right run minus left run).

    Samples are matched by name (the last component of the sample ref) within the stage,
    whatever their batch. ``wins`` counts samples where the right run is better in
    ``direction``, ``losses`` where it is worse. For 0/1 metrics ``mcnemar_p`` is the exact
    McNemar p-value (two-sided binomial test on the discordant pairs), ``regressed`` names the
    samples that went from good to bad and ``fixed`` those that went from bad to good.
    ``method`` says how the interval's bootstrap distribution was obtained: ``"numpy"``
    (``resamples`` resamples with ``seed``), ``"saddlepoint"`` (approximated, no
    resampling: ``resamples`` and ``seed`` played no part), ``"constant"`` (every difference
    equal), ``"none"`` (no matched sample), ``"non-finite"`` (a difference overflowed: no
    interval), ``"cluster-bootstrap"`` (with clusters: ``resamples`` resamples of whole
    clusters with ``seed``) or ``"one-cluster"`` (every matched item in one cluster: no
    interval).

    Samples captured with an ``epoch`` are attempts of one item: each item's attempts are
    averaged first, and the item means are paired (``n_matched`` counts items).
    """

    stage: str | None
    key: str
    direction: Direction
    direction_inferred: bool
    n_matched: int
    unmatched_left: list[str]
    unmatched_right: list[str]
    mean_left: float | None
    mean_right: float | None
    mean_diff: float | None
    ci_low: float | None
    ci_high: float | None
    confidence: float
    resamples: int
    seed: int
    method: str
    binary: bool
    wins: int
    losses: int
    ties: int
    mcnemar_p: float | None
    regressed: list[str]
    fixed: list[str]
    samples: list[PairedSample] | None = None
    se: float | None = None
    """Standard error of the mean difference: s/√n of the paired differences."""
    unpaired_se: float | None = None
    """The SE had the runs been measured on different items, √(var_left/n + var_right/n):
    next to ``se``, what pairing bought."""
    correlation: float | None = None
    """Pearson correlation of the two runs' per-sample values (None if either is constant)."""
    mde: float | None = None
    """Minimum detectable effect: the smallest true difference a two-sided test at alpha 0.05
    detects with 80 % power, (z₀.₉₇₅ + z₀.₈) × se ≈ 2.80 × se. None when it is not estimable:
    ``se`` is None, or 0 (every paired difference equal, e.g. identical runs: no spread to
    estimate power from)."""
    p_value: float | None = None
    """Two-sided p-value of no difference: ``p_test`` says which test."""
    p_test: str | None = None
    """``"mcnemar-exact"`` (0/1 metrics) or ``"paired-t"`` (Student's t, n − 1 df)."""
    p_adjusted: float | None = None
    """``p_value`` adjusted across the paired metrics of the comparison
    (``RunComparison.adjustment``)."""
    small_n_low: float | None = None
    """0/1 metrics: Newcombe's interval (method 10) for the paired difference of proportions,
    at ``confidence``; it keeps its coverage at a few dozen pairs, where normal intervals are
    too narrow."""
    small_n_high: float | None = None
    clusters: int | None = None
    """The number of clusters among the matched items (an item without a cluster counts as
    one of its own); None when no item has a cluster. With clusters, ``se`` is the
    cluster-robust SE (Liang-Zeger with the C/(C−1) factor, Miller 2024), ``p_value`` a
    Student t test on it with C − 1 df (``p_test`` ``"clustered-t"``), ``mde`` uses it, and
    the interval resamples whole clusters (``method`` ``"cluster-bootstrap"``)."""
    naive_se: float | None = None
    """With clusters: the SE as if every item were independent, s/√n (``se`` is clustered)."""
    design_effect: float | None = None
    """With clusters: clustered variance / naive variance, (se / naive_se)²."""
    attempts_left: float | None = None
    """Mean number of attempts (epochs) per matched item in the left run; None without
    epochs. Each item's attempts are averaged before pairing: ``n_matched`` counts items."""
    attempts_right: float | None = None
    within_item_variance_left: float | None = None
    """Mean, over the matched items with two or more attempts in the left run, of the sample
    variance of their attempts: how much an item's value varies from one attempt to the next."""
    within_item_variance_right: float | None = None


class Alignment(_R):
    """How well the two runs' items line up, over every stage: items only in the left run,
    only in the right, captured more than once without an epoch (``duplicates_*``: one value
    is used, the last), and matched items whose number of attempts differs. Names are
    ``stage.item``, the first ``listed`` of each, in natural order.

    ``share`` is the number of misaligned items (only in one run, duplicated, or attempted a
    different number of times) over the items of either run; above ``threshold`` (5 %) the
    comparison warns: its paired statistics then describe a different set of items than each
    run's mean.
    """

    items: int
    only_left: int
    only_right: int
    duplicates_left: int
    duplicates_right: int
    attempts_differ: int
    share: float
    threshold: float
    warn: bool
    listed: int
    only_left_names: list[str]
    only_right_names: list[str]
    duplicate_left_names: list[str]
    duplicate_right_names: list[str]
    attempts_differ_names: list[str]

    def kinds(self) -> list[tuple[str, int, list[str]]]:
        """Each kind of misalignment as (label, count, the first names), as outputs list them."""
        return [
            ("only in left", self.only_left, self.only_left_names),
            ("only in right", self.only_right, self.only_right_names),
            ("duplicated in left", self.duplicates_left, self.duplicate_left_names),
            ("duplicated in right", self.duplicates_right, self.duplicate_right_names),
            ("different attempt counts", self.attempts_differ, self.attempts_differ_names),
        ]


class RunComparison(_R):
    """Two runs compared: metric deltas, paired per-sample results, artifact changes."""

    left: RunSummary
    right: RunSummary
    metrics: list[MetricDelta]
    paired: list[PairedResult]
    artifacts: list[ArtifactChange]
    warnings: list[str]
    notes: list[str]
    read_report: ReadReport
    adjustment: str = "holm"
    """How ``PairedResult.p_adjusted`` was adjusted across metrics: ``"holm"`` (family-wise
    error), ``"bh"`` (Benjamini-Hochberg, false discovery rate) or ``"none"``."""
    alignment: Alignment | None = None
    """Items only in one run, duplicated, or attempted a different number of times."""

    def __repr__(self) -> str:
        return (
            f"RunComparison(left={self.left.ref!r}, right={self.right.ref!r}, "
            f"metrics={len(self.metrics)}, paired={len(self.paired)}, "
            f"artifacts={len(self.artifacts)}, warnings={len(self.warnings)})"
        )

    def _repr_html_(self) -> str:
        from ..report._notebook import comparison_html

        return comparison_html(self)


class MultiRunRow(_R):
    """One metric across N runs; ``values[i]`` belongs to ``runs[i]`` (``None`` if missing)."""

    stage: str | None
    scope: Scope
    batch: str | None
    key: str
    basis: Literal["latest", "mean"]
    values: list[float | None]
    counts: list[int]
    direction: Direction
    direction_inferred: bool
    best: list[str]
    p_values: list[float | None] | None = None
    """Sample-level metrics: ``p_values[i]`` tests ``runs[i]`` against the baseline
    (``runs[0]``), paired as ``compare`` pairs (its ``p_value``); None for the baseline and
    where there is no test."""
    p_tests: list[str | None] | None = None
    p_adjusted: list[float | None] | None = None
    """``p_values`` adjusted across the runs compared with the baseline, for this metric
    (``MultiRunComparison.adjustment``)."""


class MultiRunComparison(_R):
    """N runs in one table: one row per (stage, scope, batch, key), one value per run."""

    runs: list[RunSummary]
    rows: list[MultiRunRow]
    warnings: list[str]
    notes: list[str]
    read_report: ReadReport
    adjustment: str = "holm"
    """How ``MultiRunRow.p_adjusted`` was adjusted across the runs compared with the baseline
    (``runs[0]``): ``"holm"``, ``"bh"`` or ``"none"``."""

    def __repr__(self) -> str:
        refs = [repr(run.ref) for run in self.runs]
        runs = ", ".join(refs if len(refs) <= 4 else [*refs[:3], f"...{len(refs)}"])
        return (
            f"MultiRunComparison(runs=[{runs}], rows={len(self.rows)}, "
            f"warnings={len(self.warnings)})"
        )

    def _repr_html_(self) -> str:
        from ..report._notebook import multi_html

        return multi_html(self)


class RankedRun(_R):
    """A run's place in a best-run ranking (``rank`` None when the metric is missing)."""

    run: str
    value: float | None
    rank: int | None


class BestRun(_R):
    """The best run(s) by one metric. ``winners`` has several refs when they tie."""

    metric: str
    stage: str | None
    scope: Scope
    batch: str | None
    basis: Literal["latest", "mean"]
    direction: Direction
    direction_inferred: bool
    winners: list[str]
    tie: bool
    ranking: list[RankedRun]
    missing: list[str]
    read_report: ReadReport

    def __repr__(self) -> str:
        return (
            f"BestRun(metric={self.metric!r}, direction={self.direction!r}, "
            f"winners={self.winners!r})"
        )

    def _repr_html_(self) -> str:
        from ..report._notebook import best_html

        return best_html(self)
