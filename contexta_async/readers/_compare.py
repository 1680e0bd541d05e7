"""From scanned values to answers: metric tables, paired analysis, artifacts, best run."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from itertools import compress, repeat
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np

from .._refs import split_ref
from ._inference import (
    Adjustment,
    adjust_p_values,
    minimum_detectable_effect,
    newcombe_paired_interval,
    pairing_gain,
    student_t_two_sided_p,
)
from ._model import (
    ArtifactChange,
    Direction,
    MetricDelta,
    MultiRunRow,
    PairedResult,
    PairedSample,
    RankedRun,
    Scope,
)
from ._stats import BootstrapMethod, mcnemar_exact, paired_bootstrap_cis

if TYPE_CHECKING:
    from ._files import ArtifactInfo

__all__ = [
    "MINIMIZE_WORDS",
    "RunMetrics",
    "artifact_changes",
    "collect_metrics",
    "differing_samples",
    "infer_direction",
    "mean_of",
    "metric_deltas",
    "multi_rows",
    "natural_key",
    "paired_results",
    "rank_runs",
]

# A metric whose key holds one of these words (as a dot- or dash-separated part) is better
# when lower. Contexta 1.0.0 always prefers the higher value, which is wrong for a loss.
MINIMIZE_WORDS: Final = frozenset(
    {
        "loss",
        "losses",
        "error",
        "errors",
        "err",
        "latency",
        "cost",
        "costs",
        "token",
        "tokens",
        "time",
        "duration",
        "perplexity",
        "mse",
        "mae",
        "rmse",
        "wer",
        "cer",
        "attempts",
        "retries",
        "failed",
        "failures",
        "timeouts",
    }
)
_SCOPE_RANK: Final = {"run": 0, "stage": 1, "batch": 2, "sample": 3}
_DIGITS = re.compile(r"(\d+)")
_TEXT_NUMBER = re.compile(r"(\D+)(\d+)")

Place = tuple[str | None, Scope, str | None, str]  # (stage, scope, batch, key)


def infer_direction(key: str) -> Direction:
    """``"minimize"`` when a part of ``key`` names a cost (loss, error, latency, cost, tokens,
    time, duration...), else ``"maximize"``."""
    parts = re.split(r"[.\-_]", key.lower())
    return "minimize" if any(part in MINIMIZE_WORDS for part in parts) else "maximize"


def natural_key(name: str) -> tuple[int | str, ...]:
    """Sort ``case-2`` before ``case-10``: the name's text and number parts in turn, each
    after a tag (0 text, 1 number) so that a text is never compared with a number, then the
    name itself after tag -1, so that names whose parts are equal ("case-01", "case-1") still
    sort in one order (and a name sorts before its extensions). A flat tuple: sorting by it
    takes half the time a list of (tag, part) pairs does."""
    # Fast path for the usual "<text><number>" names (the same key, built without a split).
    simple = _TEXT_NUMBER.fullmatch(name)
    if simple is not None:
        return (0, simple[1], 1, int(simple[2]), -1, name)
    key: list[int | str] = []
    for part in _DIGITS.split(name):
        if part:
            # isdecimal, not isdigit: "²" is a digit that \d does not match and int() rejects.
            key += (1, int(part)) if part.isdecimal() else (0, part)
    key += (-1, name)
    return tuple(key)


def mean_of(values: Collection[float]) -> float:
    """The mean, exactly rounded (``math.fsum``: independent of the order of the values);
    inf or nan as IEEE arithmetic gives them where the sum leaves the float range."""
    n = len(values)
    try:
        try:
            return math.fsum(values) / n
        except OverflowError:  # the sum is past the float range, the mean may not be
            return math.fsum(v / n for v in values)
    except ValueError:  # inf - inf (raised by either sum)
        return math.nan


class RunMetrics:
    """One run's metrics: the latest value per place, and per-sample values by sample name."""

    __slots__ = ("duplicates", "latest", "samples")

    def __init__(self) -> None:
        self.latest: dict[Place, float] = {}
        self.samples: dict[tuple[str | None, str], dict[str, float]] = {}
        self.duplicates: set[tuple[str | None, str]] = set()

    def sample_names(self, stage: str | None) -> list[str]:
        """The names of the samples with a metric in ``stage``, each once."""
        maps = [values for (st, _), values in self.samples.items() if st == stage]
        if not maps:
            return []
        first = list(maps[0])
        # Usually every metric holds the same samples in the same order (the same string
        # objects, so comparing the lists is cheap): no set to build.
        if all(len(values) == len(first) and list(values) == first for values in maps[1:]):
            return first
        names = set(first)
        for values in maps[1:]:
            names.update(values)
        return list(names)

    def value(self, place: Place) -> tuple[float | None, int]:
        stage, scope, _, key = place
        if scope == "sample":
            values = self.samples.get((stage, key))
            if not values:
                return None, 0
            return mean_of(values.values()), len(values)
        found = self.latest.get(place)
        return found, 0 if found is None else 1


def differing_samples(left: RunMetrics, right: RunMetrics, stage: str | None) -> tuple[int, int]:
    """How many sample names of ``stage`` only the left run has, and only the right."""
    left_names, right_names = left.sample_names(stage), right.sample_names(stage)
    if left_names == right_names:
        return 0, 0
    left_set, right_set = set(left_names), set(right_names)
    return len(left_set - right_set), len(right_set - left_set)


_Parsed = tuple[str, Scope, str | None, str | None, str | None]


def _parse_subject(subject: str) -> _Parsed | None:
    """``sample:p.r.s[.b].n`` -> (run ref, scope, stage, batch, sample name)."""
    kind, parts = split_ref(subject)
    if len(parts) < 2:
        return None
    run = f"run:{parts[0]}.{parts[1]}"
    if kind == "run" and len(parts) == 2:
        return run, "run", None, None, None
    if kind == "stage" and len(parts) == 3:
        return run, "stage", parts[2], None, None
    if kind == "batch" and len(parts) == 4:
        return run, "batch", parts[2], parts[3], None
    if kind == "sample" and len(parts) in (4, 5):
        return run, "sample", parts[2], parts[3] if len(parts) == 5 else None, parts[-1]
    return None


def collect_metrics(
    samples: Mapping[tuple[str, str], dict[str, float | None]],
    others: Mapping[tuple[str, str], float | None],
    runs: Iterable[str],
) -> dict[str, RunMetrics]:
    """Arrange scanned values by run: sample values per (stage, key) whatever their batch,
    and the latest run/stage/batch values per place. The dicts of ``samples`` are taken
    over, not copied (they are large)."""
    out = {run: RunMetrics() for run in runs}
    for (parent, key), values in samples.items():
        info = _parse_subject(parent)
        if info is None:
            continue
        metrics = out.get(info[0])
        if metrics is None:
            continue
        present: dict[str, float] = (
            {name: v for name, v in values.items() if v is not None}
            if None in values.values()
            else values  # type: ignore[assignment]
        )
        bucket = metrics.samples.get((info[2], key))
        if bucket is None:
            metrics.samples[(info[2], key)] = present
        else:  # a second batch of this stage: a name seen in both is a duplicate
            for name in bucket.keys() & present.keys():
                metrics.duplicates.add((info[2], name))
            bucket.update(present)
    for (subject, key), value in others.items():
        info = _parse_subject(subject)
        if info is None or value is None:
            continue
        metrics = out.get(info[0])
        if metrics is not None:
            metrics.latest[(info[2], info[1], info[3], key)] = value
    return out


def _places(metrics: Sequence[RunMetrics], stage_order: Sequence[str]) -> list[Place]:
    places: set[Place] = set()
    for m in metrics:
        places.update(m.latest)
        places.update((stage, "sample", None, key) for stage, key in m.samples)
    order = {name: i for i, name in enumerate(stage_order)}

    def sort_key(place: Place) -> tuple[int, str, int, str, str]:
        stage, scope, batch, key = place
        rank = -1 if stage is None else order.get(stage, len(order))
        return (rank, stage or "", _SCOPE_RANK[scope], batch or "", key)

    return sorted(places, key=sort_key)


def metric_deltas(
    left: RunMetrics, right: RunMetrics, stage_order: Sequence[str]
) -> list[MetricDelta]:
    rows = []
    for place in _places((left, right), stage_order):
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


def _direction_for(key: str, directions: Mapping[str, Direction] | None) -> tuple[Direction, bool]:
    if directions and key in directions:
        return directions[key], False
    return infer_direction(key), True


def paired_results(
    left: RunMetrics,
    right: RunMetrics,
    stage_order: Sequence[str],
    *,
    directions: Mapping[str, Direction] | None = None,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    bootstrap: BootstrapMethod = "auto",
    include_samples: bool = False,
    adjustment: Adjustment = "holm",
) -> list[PairedResult]:
    pairs = []
    for stage, scope, _batch, key in _places((left, right), stage_order):
        if scope != "sample":
            continue
        lmap = left.samples.get((stage, key), {})
        rmap = right.samples.get((stage, key), {})
        pairs.append((stage, key, lmap, rmap, *_paired_values(lmap, rmap)))
    diffs_of = [list(map(operator.sub, rvals, lvals)) for *_, lvals, rvals in pairs]
    # A difference can overflow (values near the float range, or a hand-edited file):
    # such a metric gets no interval rather than a meaningless one.
    finite = [bool(diffs) and all(map(math.isfinite, diffs)) for diffs in diffs_of]
    # The bootstraps dominate the time: computed together (on several cores with numpy).
    intervals = iter(
        paired_bootstrap_cis(
            list(compress(diffs_of, finite)),
            confidence=confidence,
            resamples=resamples,
            seed=seed,
            method=bootstrap,
        )
    )
    results = []
    for (stage, key, lmap, rmap, matched, lvals, rvals), diffs, usable in zip(
        pairs, diffs_of, finite, strict=True
    ):
        direction, inferred = _direction_for(key, directions)
        n = len(matched)
        binary = n > 0 and all(
            values.count(0.0) + values.count(1.0) == n for values in (lvals, rvals)
        )
        # lt(0.0, d) is 0.0 < d: a positive difference.
        better = operator.lt if direction == "maximize" else operator.gt
        worse = operator.gt if direction == "maximize" else operator.lt
        rises = sum(map(operator.lt, repeat(0.0), diffs))
        falls = sum(map(operator.gt, repeat(0.0), diffs))
        wins, losses = (rises, falls) if direction == "maximize" else (falls, rises)
        mean_diff = mean_of(diffs) if n else None
        regressed: list[str] = []
        fixed: list[str] = []
        p_value = None
        if binary:
            regressed = sorted(compress(matched, map(worse, repeat(0.0), diffs)), key=natural_key)
            fixed = sorted(compress(matched, map(better, repeat(0.0), diffs)), key=natural_key)
            p_value = mcnemar_exact(len(regressed), len(fixed))
        low: float | None = None
        high: float | None = None
        method = "none"
        if usable:
            low, high, method = next(intervals)
        elif n:
            method = "non-finite"
        extra = {}
        if usable and mean_diff is not None:
            extra = _inference_of(lvals, rvals, mean_diff, p_value, rises, falls, confidence)
        results.append(
            PairedResult(
                **extra,
                stage=stage,
                key=key,
                direction=direction,
                direction_inferred=inferred,
                n_matched=n,
                unmatched_left=_unmatched(lmap, rmap, n),
                unmatched_right=_unmatched(rmap, lmap, n),
                mean_left=mean_of(lvals) if n else None,
                mean_right=mean_of(rvals) if n else None,
                mean_diff=mean_diff,
                ci_low=low,
                ci_high=high,
                confidence=confidence,
                resamples=resamples,
                seed=seed,
                method=method,
                binary=binary,
                wins=wins,
                losses=losses,
                ties=n - wins - losses,
                mcnemar_p=p_value,
                regressed=regressed,
                fixed=fixed,
                samples=sorted(
                    (
                        PairedSample(name=name, left=lv, right=rv, diff=d)
                        for name, lv, rv, d in zip(matched, lvals, rvals, diffs, strict=True)
                    ),
                    key=lambda s: natural_key(s.name),
                )
                if include_samples
                else None,
            )
        )
    adjusted = adjust_p_values([r.p_value for r in results], adjustment)
    for result, p_adjusted in zip(results, adjusted, strict=True):
        result.p_adjusted = p_adjusted
    return results


def _inference_of(
    lvals: list[float],
    rvals: list[float],
    mean_diff: float,
    mcnemar_p: float | None,
    rises: int,
    falls: int,
    confidence: float,
) -> dict[str, Any]:
    """SE, what pairing bought, power, the p-value and (0/1 metrics, which have ``mcnemar_p``)
    Newcombe's interval. ``rises``/``falls``: pairs higher/lower in the right run."""
    n = len(lvals)
    if n < 2:
        return {}
    with np.errstate(all="ignore"):
        gain = pairing_gain(np.asarray(lvals), np.asarray(rvals))
    if gain is None or not math.isfinite(gain.paired_se):
        return {}
    se = gain.paired_se
    found: dict[str, Any] = {
        "se": se,
        "unpaired_se": gain.unpaired_se if math.isfinite(gain.unpaired_se) else None,
        "correlation": gain.correlation,
        "mde": minimum_detectable_effect(se),
    }
    if mcnemar_p is not None:
        # 0/1 values: a fall is 1 -> 0 (left only), a rise 0 -> 1 (right only).
        both = lvals.count(1.0) - falls
        low, high = newcombe_paired_interval(
            both, falls, rises, n - both - falls - rises, confidence=confidence
        )
        found.update(
            p_value=mcnemar_p,
            p_test="mcnemar-exact",
            small_n_low=low,
            small_n_high=high,
        )
    elif se > 0:
        found.update(p_value=student_t_two_sided_p(mean_diff / se, n - 1), p_test="paired-t")
    else:
        found.update(p_value=1.0 if mean_diff == 0 else 0.0, p_test="paired-t")
    return found


def _paired_values(
    lmap: Mapping[str, float], rmap: Mapping[str, float]
) -> tuple[list[str], list[float], list[float]]:
    """The names in both maps and their values on each side, in the left map's order (the
    order of capture). The order means nothing: every statistic of the pairs is independent
    of it (sums are exact, the bootstrap resamples the sorted differences) and the lists
    shown to people are sorted by name. When both runs hold the same samples in the same
    order (a sequential eval), the stored values are taken as they are: a dict lookup per
    sample and metric would cost more than all the rest of the pairing."""
    names = list(lmap)
    if len(names) == len(rmap) and names == list(rmap):
        return names, list(lmap.values()), list(rmap.values())
    matched = [name for name in names if name in rmap]
    if len(matched) == len(names):
        lvals = list(lmap.values())
    else:
        lvals = list(map(lmap.__getitem__, matched))
    return matched, lvals, list(map(rmap.__getitem__, matched))


def _unmatched(mine: Mapping[str, float], theirs: Mapping[str, float], matched: int) -> list[str]:
    if len(mine) == matched:
        return []  # every name matched (the usual case): no set difference to build
    return sorted(mine.keys() - theirs.keys(), key=natural_key)


def artifact_changes(
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


def rank_runs(
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


def multi_rows(
    refs: Sequence[str],
    metrics: Sequence[RunMetrics],
    stage_order: Sequence[str],
    directions: Mapping[str, Direction] | None = None,
) -> list[MultiRunRow]:
    rows = []
    for place in _places(metrics, stage_order):
        stage, scope, batch, key = place
        pairs = [m.value(place) for m in metrics]
        direction, inferred = _direction_for(key, directions)
        _, winners, _ = rank_runs(
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
