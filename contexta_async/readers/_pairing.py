"""Paired per-sample analysis of two runs' sample-level metrics (analysis layer): matched
samples, wins and losses, the bootstrap interval, McNemar, SE, power and adjusted p-values.
The statistics themselves are in ``contexta_async.stats``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import compress
from typing import Any, Final, NamedTuple

import numpy as np
import numpy.typing as npt

from ..stats._bootstrap import Floats, mcnemar_exact, paired_bootstrap_cis
from ..stats._inference import (
    adjust_p_values,
    cluster_bootstrap_cis,
    clustered_error,
    minimum_detectable_effect,
    newcombe_paired_interval,
    pairing_gain,
    student_t_two_sided_p,
)
from ._aggregate import Place, RunMetrics, mean_of, natural_key
from ._direction import infer_direction
from ._model import CompareOptions, Direction, PairedResult, PairedSample

__all__ = ["direction_for", "paired_p_values", "paired_results", "places"]
_SCOPE_RANK: Final = {"run": 0, "stage": 1, "batch": 2, "sample": 3}


def places(metrics: Sequence[RunMetrics], stage_order: Sequence[str]) -> list[Place]:
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


def direction_for(key: str, directions: Mapping[str, Direction] | None) -> tuple[Direction, bool]:
    if directions and key in directions:
        return directions[key], False
    return infer_direction(key), True


class _Pair(NamedTuple):
    """One sample-level metric in both runs: the matched items, their values and differences
    (right - left), their clusters; ``usable``: some matched, and no difference overflowed."""

    stage: str | None
    key: str
    lmap: Mapping[str, float]
    rmap: Mapping[str, float]
    matched: list[str]
    lvals: Floats
    rvals: Floats
    diffs: Floats
    usable: bool
    clustering: _Clustering | None


def _pairs(left: RunMetrics, right: RunMetrics, stage_order: Sequence[str]) -> list[_Pair]:
    pairs = []
    cache: dict[str | None, tuple[list[str], _Clustering | None]] = {}
    for stage, scope, _batch, key in places((left, right), stage_order):
        if scope == "sample":
            lmap = left.samples.get((stage, key), {})
            rmap = right.samples.get((stage, key), {})
            matched, lvals, rvals = _paired_values(lmap, rmap)
            with np.errstate(all="ignore"):  # an overflow is found just below
                diffs = rvals - lvals
            # A difference can overflow (values near the float range, or a hand-edited file):
            # such a metric gets no interval rather than a meaningless one.
            usable = bool(len(diffs)) and bool(np.isfinite(diffs).all())
            clustering = _clustering(matched, left, right, stage, cache)
            pairs.append(
                _Pair(stage, key, lmap, rmap, matched, lvals, rvals, diffs, usable, clustering)
            )
    return pairs


def paired_results(
    left: RunMetrics, right: RunMetrics, stage_order: Sequence[str], options: CompareOptions
) -> list[PairedResult]:
    confidence = options.confidence
    pairs = _pairs(left, right, stage_order)
    intervals = _intervals(pairs, options)
    results = []
    for pair, (low, high, method) in zip(pairs, intervals, strict=True):
        stage, key, lmap, rmap, matched, lvals, rvals, diffs, usable, clustering = pair
        direction, inferred = direction_for(key, options.directions)
        n = len(matched)
        binary = n > 0 and _binary(lvals) and _binary(rvals)
        up, down = diffs > 0, diffs < 0
        rises, falls = int(np.count_nonzero(up)), int(np.count_nonzero(down))
        wins, losses = (rises, falls) if direction == "maximize" else (falls, rises)
        mean_diff = _mean(diffs) if n else None
        regressed: list[str] = []
        fixed: list[str] = []
        p_value = None
        if binary:
            worse, better = (down, up) if direction == "maximize" else (up, down)
            regressed = sorted(compress(matched, worse.tolist()), key=natural_key)
            fixed = sorted(compress(matched, better.tolist()), key=natural_key)
            p_value = mcnemar_exact(len(regressed), len(fixed))
        extra = _attempts_of(left, right, stage, key, matched)
        if usable and mean_diff is not None:
            extra.update(
                _inference_of(
                    lvals, rvals, mean_diff, p_value, rises, falls, confidence, clustering
                )
            )
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
                mean_left=_mean(lvals) if n else None,
                mean_right=_mean(rvals) if n else None,
                mean_diff=mean_diff,
                ci_low=low,
                ci_high=high,
                confidence=confidence,
                resamples=options.resamples,
                seed=options.seed,
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
                        for name, lv, rv, d in zip(
                            matched, lvals.tolist(), rvals.tolist(), diffs.tolist(), strict=True
                        )
                    ),
                    key=lambda s: natural_key(s.name),
                )
                if options.include_samples
                else None,
            )
        )
    adjusted = adjust_p_values([r.p_value for r in results], options.adjustment)
    for result, p_adjusted in zip(results, adjusted, strict=True):
        result.p_adjusted = p_adjusted
    return results


def _intervals(
    pairs: Sequence[_Pair], options: CompareOptions
) -> list[tuple[float | None, float | None, str]]:
    """Each metric's bootstrap interval and how it was found (``PairedResult.method``)."""
    confidence, resamples, seed = options.confidence, options.resamples, options.seed
    # Clustered metrics resample clusters; the others' bootstraps dominate the time and are
    # computed together (on several cores with numpy).
    plain = [p.usable and p.clustering is None for p in pairs]
    boots = iter(
        paired_bootstrap_cis(
            [p.diffs for p in compress(pairs, plain)],
            confidence=confidence,
            resamples=resamples,
            seed=seed,
            method=options.bootstrap,
        )
    )
    # Metrics over the same items and clusters share their cluster draws (one set per stage).
    shared: dict[int, list[int]] = {}
    for index, (*_, usable, clustering) in enumerate(pairs):
        if usable and clustering is not None and clustering.count >= 2:
            shared.setdefault(id(clustering), []).append(index)
    clustered: dict[int, tuple[float, float]] = {}
    for indices in shared.values():
        clustering = pairs[indices[0]].clustering
        assert clustering is not None
        cis = cluster_bootstrap_cis(
            [pairs[i].diffs for i in indices],
            clustering.codes,
            clustering.count,
            confidence=confidence,
            resamples=resamples,
            seed=seed,
        )
        clustered.update(zip(indices, cis, strict=True))
    found: list[tuple[float | None, float | None, str]] = []
    for index, (pair, is_plain) in enumerate(zip(pairs, plain, strict=True)):
        if is_plain:
            found.append(next(boots))
        elif index in clustered:
            found.append((*clustered[index], "cluster-bootstrap"))
        else:  # clustered in one cluster, a difference overflowed, or no matched item
            why = "one-cluster" if pair.usable else "non-finite" if pair.matched else "none"
            found.append((None, None, why))
    return found


@dataclass(frozen=True, slots=True, eq=False)
class _Clustering:
    """The cluster of each matched item, as codes 0..count-1 (an item without a cluster is
    a cluster of its own)."""

    codes: npt.NDArray[np.intp]
    count: int


def _clustering(
    matched: list[str],
    left: RunMetrics,
    right: RunMetrics,
    stage: str | None,
    cache: dict[str | None, tuple[list[str], _Clustering | None]],
) -> _Clustering | None:
    """The clusters of the matched items of ``stage``; None when no item has one. An item's
    cluster is the left run's, else the right run's (the same items should have the same)."""
    lclusters = left.clusters.get(stage)
    rclusters = right.clusters.get(stage)
    if not lclusters and not rclusters:
        return None
    cached = cache.get(stage)
    if cached is not None and cached[0] == matched:
        return cached[1]
    index: dict[object, int] = {}
    codes = []
    lget = (lclusters or {}).get
    rget = (rclusters or {}).get
    for item in matched:
        cluster = lget(item) or rget(item)
        label: object = (item,) if cluster is None else cluster  # a tuple: never a name
        codes.append(index.setdefault(label, len(index)))
    clustering = (
        _Clustering(np.asarray(codes, dtype=np.intp), len(index))
        if len(index) < len(matched)
        else None  # every item alone in its cluster: the unclustered analysis, exactly
    )
    cache[stage] = (matched, clustering)
    return clustering


def _attempts_of(
    left: RunMetrics, right: RunMetrics, stage: str | None, key: str, matched: list[str]
) -> dict[str, Any]:
    """Mean attempts per matched item and the mean variance across attempts (items with two
    or more), per side, where a side has epochs."""
    found: dict[str, Any] = {}
    for side, metrics in (("left", left), ("right", right)):
        counts = metrics.attempts.get((stage, key))
        if not counts or not matched:
            continue
        found[f"attempts_{side}"] = sum(map(counts.__getitem__, matched)) / len(matched)
        variances = metrics.attempt_variance.get((stage, key), {})
        repeated = list(
            map(variances.__getitem__, compress(matched, map(variances.__contains__, matched)))
        )
        if repeated:
            found[f"within_item_variance_{side}"] = mean_of(repeated)
    return found


def paired_p_values(
    left: RunMetrics, right: RunMetrics, stage_order: Sequence[str]
) -> dict[tuple[str | None, str], tuple[float | None, str | None]]:
    """(stage, key) -> (p-value, test) of each sample-level metric, right vs left: the
    ``p_value`` and ``p_test`` ``paired_results`` gives (clusters and epochs included), without
    its bootstraps."""
    found: dict[tuple[str | None, str], tuple[float | None, str | None]] = {}
    pairs = _pairs(left, right, stage_order)
    for stage, key, _, _, matched, lvals, rvals, diffs, usable, clustering in pairs:
        if len(matched) < 2 or not usable:
            found[(stage, key)] = (None, None)
            continue
        rises, falls = int(np.count_nonzero(diffs > 0)), int(np.count_nonzero(diffs < 0))
        mcnemar_p = mcnemar_exact(rises, falls) if _binary(lvals) and _binary(rvals) else None
        inference = _inference_of(
            lvals, rvals, _mean(diffs), mcnemar_p, rises, falls, 0.95, clustering
        )
        found[(stage, key)] = (inference.get("p_value"), inference.get("p_test"))
    return found


def _inference_of(
    lvals: Floats,
    rvals: Floats,
    mean_diff: float,
    mcnemar_p: float | None,
    rises: int,
    falls: int,
    confidence: float,
    clustering: _Clustering | None = None,
) -> dict[str, Any]:
    """SE, what pairing bought, power, the p-value and (0/1 metrics, which have ``mcnemar_p``)
    Newcombe's interval. ``rises``/``falls``: pairs higher/lower in the right run. With
    clusters the SE is cluster-robust, and the p-value and MDE use it."""
    n = len(lvals)
    if n < 2:
        return {}
    with np.errstate(all="ignore"):
        gain = pairing_gain(lvals, rvals)
    if gain is None or not math.isfinite(gain.paired_se):
        return {}
    se = gain.paired_se
    found: dict[str, Any] = {
        "se": se,
        "unpaired_se": gain.unpaired_se if math.isfinite(gain.unpaired_se) else None,
        "correlation": gain.correlation,
        "mde": minimum_detectable_effect(se) if se > 0 else None,  # se 0: not estimable
    }
    if clustering is not None:
        diffs = np.subtract(rvals, lvals)
        clustered = clustered_error(diffs, clustering.codes, clustering.count)
        found.update(clusters=clustering.count, naive_se=se)
        if clustered is None or not math.isfinite(clustered.se):
            found.update(se=None, mde=None)  # one cluster: no SE of the mean
            return found
        se = clustered.se
        found.update(
            se=se,
            design_effect=clustered.design_effect,
            mde=minimum_detectable_effect(se) if se > 0 else None,
        )
        # As if the runs had different items: each run's mean with its own clustered SE, so
        # that next to the paired SE it shows what pairing bought, not what clusters cost.
        sides = [
            clustered_error(np.asarray(values), clustering.codes, clustering.count)
            for values in (lvals, rvals)
        ]
        unpaired = [side.se for side in sides if side is not None]
        found["unpaired_se"] = (
            math.hypot(*unpaired)
            if len(unpaired) == 2 and all(map(math.isfinite, unpaired))
            else None
        )
        # Student t with C - 1 df on the clustered SE; McNemar (mcnemar_p) assumes
        # independent pairs, so it is not the p-value here, and neither is Newcombe given.
        df = clustered.clusters - 1
        if se > 0:
            found.update(p_value=student_t_two_sided_p(mean_diff / se, df), p_test="clustered-t")
        elif clustered.naive_se > 0:
            # The differences vary but every cluster's deviations sum to 0: the clustered
            # variance estimate degenerates, which is no evidence of a certain difference.
            found.update(p_test="clustered-t")
        else:
            found.update(p_value=1.0 if mean_diff == 0 else 0.0, p_test="clustered-t")
        return found
    if mcnemar_p is not None:
        # 0/1 values: a fall is 1 -> 0 (left only), a rise 0 -> 1 (right only).
        both = int(np.count_nonzero(lvals == 1.0)) - falls
        low, high = newcombe_paired_interval(
            both, falls, rises, n - both - falls - rises, confidence=confidence
        )
        found.update(p_value=mcnemar_p, p_test="mcnemar-exact", small_n_low=low, small_n_high=high)
    elif se > 0:
        found.update(p_value=student_t_two_sided_p(mean_diff / se, n - 1), p_test="paired-t")
    else:
        found.update(p_value=1.0 if mean_diff == 0 else 0.0, p_test="paired-t")
    return found


def _paired_values(
    lmap: Mapping[str, float], rmap: Mapping[str, float]
) -> tuple[list[str], Floats, Floats]:
    """The names in both maps and their values on each side, in the left map's order (the
    order of capture). The order means nothing: every statistic of the pairs is independent
    of it (sums are exact, the bootstrap resamples the sorted differences) and the lists
    shown to people are sorted by name. When both runs hold the same samples in the same
    order (a sequential eval), the stored values are taken as they are: a dict lookup per
    sample and metric would cost more than all the rest of the pairing. Arrays, not lists:
    the work per metric is a few numpy passes, and numpy arrays are not containers the
    garbage collector walks."""
    names = list(lmap)
    if len(names) == len(rmap) and names == list(rmap):
        n = len(names)
        return names, np.fromiter(lmap.values(), float, n), np.fromiter(rmap.values(), float, n)
    matched = [name for name in names if name in rmap]
    n = len(matched)
    if n == len(names):
        lvals = np.fromiter(lmap.values(), float, n)
    else:
        lvals = np.fromiter(map(lmap.__getitem__, matched), float, n)
    return matched, lvals, np.fromiter(map(rmap.__getitem__, matched), float, n)


def _binary(values: Floats) -> bool:
    """Whether every value is 0 or 1."""
    return bool(np.logical_or(values == 0.0, values == 1.0).all())


def _mean(values: Floats) -> float:
    return mean_of(values.tolist())  # math.fsum on floats, not on numpy scalars


def _unmatched(mine: Mapping[str, float], theirs: Mapping[str, float], matched: int) -> list[str]:
    if len(mine) == matched:
        return []  # every name matched (the usual case): no set difference to build
    return sorted(mine.keys() - theirs.keys(), key=natural_key)
