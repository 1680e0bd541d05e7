"""The analysis layer: the answers (two runs compared, N runs in a table, the best run)
built from an ``Aggregate``, with their deltas, artifact changes, warnings and notes in one
place. Paired analysis is in ``_pairing``; statistics in ``contexta_async.stats``."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Literal

from .._format.refs import parse_scope
from ..stats._inference import Adjustment, adjust_p_values
from ._aggregate import Aggregate, RunMetrics, natural_key, order_all, stage_order
from ._direction import infer_direction
from ._errors import AmbiguousMetricError, MetricNotFoundError
from ._model import (
    Alignment,
    ArtifactChange,
    BestRun,
    CompareOptions,
    Direction,
    MetricDelta,
    MultiRunComparison,
    MultiRunRow,
    RankedRun,
    ReadReport,
    RunComparison,
    RunSummary,
)
from ._pairing import direction_for, paired_p_values, paired_results, places
from ._source import ArtifactInfo

__all__ = ["best_run", "compare_many", "compare_two"]

_LATEST_NOTE: Final = (
    "run-, stage- and batch-level metrics show the latest captured value; sample-level "
    "metrics show the mean over samples of each sample's latest value (count = samples)"
)
# With epochs the sample-level mean and its count are over items, each the mean of its attempts.
_LATEST_NOTE_EPOCHS: Final = (
    "run-, stage- and batch-level metrics show the latest captured value; sample-level "
    "metrics show the mean over items of each item's value, the mean of its attempts' latest "
    "values (count = items; a sample without an epoch is an item of one attempt)"
)


def _latest_note(metrics: Iterable[RunMetrics]) -> str:
    return _LATEST_NOTE_EPOCHS if any(m.attempts for m in metrics) else _LATEST_NOTE


_INFERENCE = (
    "p_value: exact McNemar for 0/1 metrics, paired t (n - 1 df) otherwise; se = s/sqrt(n) of "
    "the differences, unpaired_se as if the runs had different items; mde: smallest true "
    "difference detected with 80% power at two-sided alpha 0.05 (2.80 se; none when se is 0: "
    "not estimable); small_n_low/high: Newcombe's interval for 0/1 metrics; with clusters "
    "(clusters is set): se and unpaired_se cluster-robust (C/(C-1)), p_value Student t on se "
    "with C - 1 df, the interval resamples clusters; with epochs: each item's attempts are "
    "averaged before pairing (n = items)"
)
_INFERENCE_NOTES = {
    "holm": _INFERENCE + "; p_adjusted: Holm (family-wise) across the paired metrics",
    "bh": _INFERENCE + "; p_adjusted: Benjamini-Hochberg (false discovery rate) across the "
    "paired metrics",
    "none": _INFERENCE + "; p_adjusted: not adjusted",
}


def _pairing_note(options: CompareOptions, methods: Iterable[str], epochs: bool = False) -> str:
    """How the paired results were computed; ``methods`` are theirs (``PairedResult.method``),
    ``epochs`` whether items were attempted in epochs (then items are paired, not samples)."""
    confidence, resamples, seed = options.confidence, options.resamples, options.seed
    used = set(methods)
    resampled = "numpy" in used
    how = []
    if resampled:
        how.append(f"{resamples} resamples, seed {seed}")
    if "saddlepoint" in used:
        where = " where method is saddlepoint" if resampled else ""
        how.append(f"bootstrap distribution by saddlepoint approximation{where} (no resampling)")
    if "cluster-bootstrap" in used:
        how.append(
            f"whole clusters resampled where method is cluster-bootstrap ({resamples} "
            f"resamples, seed {seed})"
        )
    return (
        "paired analysis: "
        + (
            "items (each the mean of its attempts) matched by name"
            if epochs
            else "samples matched by name"
        )
        + " within the stage (whatever their batch); "
        f"{confidence:.0%} expanded percentile bootstrap interval of the mean difference "
        "(right - left)"
        + "".join(f", {part}" for part in how)
        + "; McNemar p-value exact (binomial) for 0/1 metrics"
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
        if not m.latest and not m.samples:
            why = "it holds no records" if summary.counts.total == 0 else "none were captured"
            warnings.append(f"{summary.ref} has no metrics ({why}): nothing of it to compare")
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


def _metric_deltas(
    left: RunMetrics, right: RunMetrics, stage_order: Sequence[str]
) -> list[MetricDelta]:
    rows = []
    for place in places((left, right), stage_order):
        lv, lc = left.value(place)
        rv, rc = right.value(place)
        delta = None if lv is None or rv is None else rv - lv
        relative = None if delta is None or lv is None or lv == 0 else delta / abs(lv)
        stage, scope, batch, key = place
        rows.append(
            MetricDelta(
                stage=stage,
                scope=scope,
                batch=batch,
                key=key,
                basis="mean" if scope == "sample" else "latest",
                left=lv,
                right=rv,
                delta=delta,
                relative_change=relative,
                left_count=lc,
                right_count=rc,
            )
        )
    return rows


def _artifact_changes(
    left: Sequence[ArtifactInfo], right: Sequence[ArtifactInfo]
) -> list[ArtifactChange]:
    """Pair artifacts by (place, kind) in capture order; report unpaired and differing ones."""

    def group(items: Sequence[ArtifactInfo]) -> dict[tuple[str, str], list[ArtifactInfo]]:
        out: dict[tuple[str, str], list[ArtifactInfo]] = {}
        for item in items:
            out.setdefault((item.place, item.kind), []).append(item)
        return out

    lgroups, rgroups = group(left), group(right)
    changes = []
    for place, kind in sorted(lgroups.keys() | rgroups.keys()):
        ls, rs = lgroups.get((place, kind), []), rgroups.get((place, kind), [])
        for i in range(max(len(ls), len(rs))):
            a = ls[i] if i < len(ls) else None
            b = rs[i] if i < len(rs) else None
            change: Literal["added", "removed", "changed"]
            if a is None:
                change = "added"
            elif b is None:
                change = "removed"
            elif a.hash_value != b.hash_value or a.location_ref != b.location_ref:
                change = "changed"
            else:
                continue
            changes.append(
                ArtifactChange(
                    change=change,
                    kind=kind,
                    place=place or "(run)",
                    left_ref=a.ref if a else None,
                    right_ref=b.ref if b else None,
                    left_hash=a.hash_value if a else None,
                    right_hash=b.hash_value if b else None,
                    left_location=a.location_ref if a else None,
                    right_location=b.location_ref if b else None,
                )
            )
    return changes


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)


def _rank_runs(
    values: Sequence[tuple[str, float | None]], direction: Direction
) -> tuple[list[RankedRun], list[str], list[str]]:
    """Competition ranking (1, 1, 3...) of the runs that have a value; ties share a rank.

    Returns (ranking, winners, missing). Runs without a value come last, unranked.
    """
    present = [(run, v) for run, v in values if v is not None and not math.isnan(v)]
    missing = [run for run, v in values if v is None or math.isnan(v)]
    present.sort(key=lambda item: item[1], reverse=direction == "maximize")
    ranking: list[RankedRun] = []
    for position, (run, value) in enumerate(present):
        previous = ranking[-1] if ranking else None
        tied = previous is not None and previous.value is not None and _same(value, previous.value)
        rank = previous.rank if tied and previous is not None else position + 1
        ranking.append(RankedRun(run=run, value=value, rank=rank))
    winners = [r.run for r in ranking if r.rank == 1]
    ranking.extend(RankedRun(run=run, value=None, rank=None) for run in missing)
    return ranking, winners, missing


def _multi_rows(
    refs: Sequence[str],
    metrics: Sequence[RunMetrics],
    stage_order: Sequence[str],
    directions: Mapping[str, Direction] | None = None,
) -> list[MultiRunRow]:
    rows = []
    for place in places(metrics, stage_order):
        stage, scope, batch, key = place
        pairs = [m.value(place) for m in metrics]
        direction, inferred = direction_for(key, directions)
        _, winners, _ = _rank_runs(
            [(ref, v) for ref, (v, _) in zip(refs, pairs, strict=True)], direction
        )
        rows.append(
            MultiRunRow(
                stage=stage,
                scope=scope,
                batch=batch,
                key=key,
                basis="mean" if scope == "sample" else "latest",
                values=[v for v, _ in pairs],
                counts=[c for _, c in pairs],
                direction=direction,
                direction_inferred=inferred,
                best=winners,
            )
        )
    return rows


_ALIGNMENT_THRESHOLD: Final = 0.05
_ALIGNMENT_LISTED: Final = 20


def _attempt_counts(metrics: RunMetrics, stage: str | None) -> dict[str, int]:
    """Attempts per item of ``stage`` (the most any metric saw); items absent have one."""
    counts: dict[str, int] = {}
    # Metrics over the same samples share one dict (see _aggregate): each is read once.
    for per_item in {id(d): d for (st, _), d in metrics.attempts.items() if st == stage}.values():
        for item, n in per_item.items():
            if n > counts.get(item, 0):
                counts[item] = n
    return counts


def _reopened(reopened: Mapping[str, int], run: str) -> set[tuple[str | None, str]]:
    """(stage, name) of the samples of ``run`` opened more than once."""
    found: set[tuple[str | None, str]] = set()
    for ref in reopened:
        scope = parse_scope(ref)
        if scope is not None and scope.run_ref == run and scope.name is not None:
            found.add((scope.stage, scope.name))
    return found


def _alignment(
    left: RunMetrics,
    right: RunMetrics,
    stages: Sequence[str | None],
    reopened: Mapping[str, int],
    lref: str,
    rref: str,
) -> tuple[Alignment, list[str]]:
    """How the items of two runs line up (see ``Alignment``), and a warning for each stage
    whose sample sets differ."""
    only_left: list[str] = []
    only_right: list[str] = []
    differ: list[str] = []
    stage_warnings: list[str] = []
    items = 0
    dup_left = {f"{st}.{n}" if st else n for st, n in left.duplicates | _reopened(reopened, lref)}
    dup_right = {f"{st}.{n}" if st else n for st, n in right.duplicates | _reopened(reopened, rref)}
    for stage in stages:
        lset, rset = set(left.sample_names(stage)), set(right.sample_names(stage))
        items += len(lset | rset)
        label = (f"{stage}." if stage else "").__add__
        lonly, ronly = lset - rset, rset - lset
        if lonly or ronly:
            stage_warnings.append(
                f"stage {stage}: the sample sets differ ({len(lonly)} only in left, "
                f"{len(ronly)} only in right)"
            )
        only_left.extend(map(label, lonly))
        only_right.extend(map(label, ronly))
        stage_warnings.extend(_cluster_conflicts(left, right, stage))
        lcounts, rcounts = _attempt_counts(left, stage), _attempt_counts(right, stage)
        if lcounts or rcounts:
            differ.extend(
                label(item) for item in lset & rset if lcounts.get(item, 1) != rcounts.get(item, 1)
            )
    misaligned = len(set(only_left) | set(only_right) | dup_left | dup_right | set(differ))
    share = misaligned / items if items else 0.0

    def first(names: Iterable[str]) -> list[str]:
        return sorted(names, key=natural_key)[:_ALIGNMENT_LISTED]

    found = Alignment(
        items=items,
        only_left=len(only_left),
        only_right=len(only_right),
        duplicates_left=len(dup_left),
        duplicates_right=len(dup_right),
        attempts_differ=len(differ),
        share=share,
        threshold=_ALIGNMENT_THRESHOLD,
        warn=share > _ALIGNMENT_THRESHOLD,
        listed=_ALIGNMENT_LISTED,
        only_left_names=first(only_left),
        only_right_names=first(only_right),
        duplicate_left_names=first(dup_left),
        duplicate_right_names=first(dup_right),
        attempts_differ_names=first(differ),
    )
    return found, stage_warnings


def _cluster_conflicts(left: RunMetrics, right: RunMetrics, stage: str | None) -> list[str]:
    """A warning when items of ``stage`` are in different clusters in the two runs (the
    pairing then uses the left run's)."""
    lclusters, rclusters = left.clusters.get(stage), right.clusters.get(stage)
    if not lclusters or not rclusters or lclusters == rclusters:
        return []
    shared = lclusters.keys() & rclusters.keys()
    differ = sorted((i for i in shared if lclusters[i] != rclusters[i]), key=natural_key)
    if not differ:
        return []
    first = differ[0]
    return [
        f"stage {stage}: {len(differ)} item(s) are in different clusters in the two runs "
        f"(first: {first}, {lclusters[first]!r} left, {rclusters[first]!r} right): the left "
        "run's clusters are used"
    ]


def _alignment_warning(found: Alignment) -> str:
    parts = [
        f"{n} {what}"
        for n, what in (
            (found.only_left, "only in left"),
            (found.only_right, "only in right"),
            (found.duplicates_left + found.duplicates_right, "duplicated"),
            (found.attempts_differ, "with different attempt counts"),
        )
        if n
    ]
    return (
        f"{found.share:.1%} of the {found.items} items are misaligned ({', '.join(parts)}; "
        f"more than {found.threshold:.0%}): the paired statistics cover only the matched items"
    )


def compare_two(agg: Aggregate, lref: str, rref: str, options: CompareOptions) -> RunComparison:
    """Two runs compared (blocking: the bootstraps take CPU seconds on large runs)."""
    lsum, rsum = agg.summary(lref), agg.summary(rref)
    order = stage_order([lsum, rsum])
    lm, rm = agg.metrics(lref), agg.metrics(rref)
    warnings = _run_warnings([lsum, rsum], [lm, rm], agg.report)
    if lref == rref:
        warnings.insert(0, "both sides name the same run")
    if lsum.dataset_ref != rsum.dataset_ref:
        warnings.append(
            f"the runs used different datasets: {lsum.dataset_ref} (left) vs "
            f"{rsum.dataset_ref} (right)"
        )
    aligned, stage_warnings = _alignment(lm, rm, order_all(order, lm, rm), agg.reopened, lref, rref)
    warnings += stage_warnings
    if aligned.warn:
        warnings.append(_alignment_warning(aligned))
    elif aligned.duplicates_left or aligned.duplicates_right:
        warnings.append(
            f"{aligned.duplicates_left + aligned.duplicates_right} item(s) captured more than "
            "once without an epoch: one value each is used"
        )
    paired = paired_results(lm, rm, order, options)
    return RunComparison(
        left=lsum,
        right=rsum,
        metrics=_metric_deltas(lm, rm, order),
        paired=paired,
        artifacts=_artifact_changes(agg.artifacts.get(lref, []), agg.artifacts.get(rref, [])),
        warnings=warnings,
        notes=[
            _latest_note((lm, rm)),
            _INFERENCE_NOTES[options.adjustment],
            _pairing_note(options, (p.method for p in paired), bool(lm.attempts or rm.attempts)),
        ],
        read_report=agg.report,
        adjustment=options.adjustment,
        alignment=aligned,
    )


def _against_baseline(
    rows: Sequence[MultiRunRow],
    ordered: Sequence[RunMetrics],
    order: Sequence[str],
    adjustment: Adjustment,
) -> None:
    """Fill each sample-level row's p-values of every run against the first (paired as in
    ``compare``), adjusted across those runs per metric."""
    tests = [paired_p_values(ordered[0], other, order) for other in ordered[1:]]
    for row in rows:
        if row.scope != "sample" or not tests:
            continue
        found = [test.get((row.stage, row.key), (None, None)) for test in tests]
        row.p_values = [None, *(p for p, _ in found)]
        row.p_tests = [None, *(t for _, t in found)]
        row.p_adjusted = [None, *adjust_p_values([p for p, _ in found], adjustment)]


def compare_many(
    agg: Aggregate, refs: Sequence[str], options: CompareOptions
) -> MultiRunComparison:
    """Every metric of every run in one table, with the best run(s) per row, and for
    sample-level metrics each run's p-value against the first run (raw and adjusted)."""
    unique = list(dict.fromkeys(refs))
    summaries = [agg.summary(ref) for ref in unique]
    ordered = [agg.metrics(ref) for ref in unique]
    warnings = _run_warnings(summaries, ordered, agg.report)
    datasets = {s.dataset_ref for s in summaries}
    if len(datasets) > 1:
        warnings.append(
            "the runs used different datasets: "
            + ", ".join(f"{s.ref}={s.dataset_ref}" for s in summaries)
        )
    order = stage_order(summaries)
    adjustment = options.adjustment
    rows = _multi_rows(unique, ordered, order, options.directions)
    _against_baseline(rows, ordered, order, adjustment)
    notes = [_latest_note(ordered)]
    if len(unique) > 1:
        how = {"holm": "Holm", "bh": "Benjamini-Hochberg", "none": "not adjusted"}[adjustment]
        notes.append(
            f"sample-level metrics: p_values of each run against the baseline {unique[0]} "
            f"(paired by item as in compare), p_adjusted across the {len(unique) - 1} runs "
            f"per metric: {how}"
        )
    return MultiRunComparison(
        runs=summaries,
        rows=rows,
        warnings=warnings,
        notes=notes,
        read_report=agg.report,
        adjustment=adjustment,
    )


def best_run(
    comparison: MultiRunComparison, metric: str, direction: Direction | None, stage: str | None
) -> BestRun:
    """The best run(s) of a table by ``metric`` (see ``Workspace.best_run``)."""
    rows = [r for r in comparison.rows if r.key == metric and stage in (None, r.stage)]
    if not rows or all(v is None for row in rows for v in row.values):
        raise MetricNotFoundError(metric, stage)
    if len(rows) > 1:
        where = [
            f"{row.stage or '(run)'}/{row.scope}" + (f"/{row.batch}" if row.batch else "")
            for row in rows
        ]
        raise AmbiguousMetricError(metric, where)
    row = rows[0]
    chosen: Direction = direction or infer_direction(metric)
    refs = [s.ref for s in comparison.runs]
    ranking, winners, missing = _rank_runs(list(zip(refs, row.values, strict=True)), chosen)
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
