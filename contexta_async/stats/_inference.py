"""Paired inference beyond the percentile bootstrap.

Clustered standard errors and the design effect, the cluster bootstrap, p-values (paired t,
clustered where clusters exist), power (minimum detectable effect, items needed), an interval
for a paired difference of proportions that holds its coverage at small n (Newcombe), Holm and
Benjamini-Hochberg adjustments, and what pairing bought (correlation, unpaired SE).

Every function takes numbers and returns numbers: the comparison decides what to feed them.
The formulas, with their references, are in docs/comparing.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from .._errors import ValidationError
from ._bootstrap import safe_exponent
from ._student import expanded_tail, student_t_two_sided_p
from ._sums import dot

__all__ = [
    "ADJUSTMENTS",
    "Adjustment",
    "ClusteredError",
    "PairingGain",
    "adjust_p_values",
    "check_effect",
    "cluster_bootstrap_ci",
    "cluster_bootstrap_cis",
    "clustered_error",
    "items_needed",
    "minimum_detectable_effect",
    "newcombe_paired_interval",
    "pairing_gain",
    "student_t_two_sided_p",
]

Adjustment = Literal["holm", "bh", "none"]
ADJUSTMENTS: tuple[Adjustment, ...] = ("holm", "bh", "none")
Floats = npt.NDArray[np.float64]
Codes = npt.NDArray[np.intp]

_NORMAL = NormalDist()


class ClusteredError(NamedTuple):
    """The standard error of a mean difference, naive and cluster-robust."""

    se: float
    """Cluster-robust SE (with the C/(C-1) small-sample factor); the naive SE without clusters."""
    naive_se: float
    """s / sqrt(n), the sample standard deviation taken with n - 1."""
    clusters: int
    """Number of clusters (n when every item is its own cluster)."""
    design_effect: float | None
    """se² / naive_se²; None when the naive SE is 0."""


def _centred(values: Floats) -> Floats:
    """``values`` minus their mean, by the corrected two-pass (the rounding error of the
    first mean taken out); exactly 0 everywhere when every value is equal, so that equal
    values have a variance of 0, not one of rounding noise (1e-34)."""
    if values.min() == values.max():
        return np.zeros_like(values)
    centred = values - float(np.mean(values))
    centred -= float(np.mean(centred))
    return centred


def clustered_error(diffs: Floats, codes: Codes | None, n_clusters: int) -> ClusteredError | None:
    """The SE of ``mean(diffs)``; clustered when ``codes`` (0..n_clusters-1 per item) is given.

    Liang-Zeger / Miller (2024, arXiv 2411.00640, eq. 4) for a mean: the variance is
    ``C/(C-1) * sum_c (sum_{i in c} (d_i - mean))^2 / n^2``. With one item per cluster this is
    exactly s²/n. None with fewer than two items, or fewer than two clusters.
    """
    n = len(diffs)
    if n < 2:
        return None
    # Values near the float range (or tiny ones) are scaled by a power of two first: neither
    # the mean nor the squares overflow (or underflow), and the SEs scale back exactly.
    exponent = safe_exponent(diffs)
    centred = _centred(np.ldexp(diffs, -exponent) if exponent else diffs)
    naive_var = dot(centred, centred) / (n - 1) / n
    naive_se = math.ldexp(math.sqrt(naive_var), exponent)
    if codes is None:
        return ClusteredError(naive_se, naive_se, n, 1.0 if naive_var > 0 else None)
    sums = np.bincount(codes, weights=centred, minlength=n_clusters)
    used = int(np.count_nonzero(np.bincount(codes, minlength=n_clusters)))
    if used < 2:
        return None
    var = used / (used - 1) * dot(sums, sums) / (n * n)
    design = var / naive_var if naive_var > 0 else None
    return ClusteredError(math.ldexp(math.sqrt(var), exponent), naive_se, used, design)


def cluster_bootstrap_ci(
    diffs: Floats,
    codes: Codes,
    n_clusters: int,
    *,
    confidence: float,
    resamples: int,
    seed: int,
) -> tuple[float, float]:
    """Expanded percentile interval (``expanded_tail`` with n = the clusters) of the mean
    difference, resampling whole clusters.

    Each resample draws ``n_clusters`` clusters with replacement and takes the mean over
    every item of the drawn clusters (a ratio: clusters differ in size).
    """
    return cluster_bootstrap_cis(
        [diffs], codes, n_clusters, confidence=confidence, resamples=resamples, seed=seed
    )[0]


def cluster_bootstrap_cis(
    diffs: Sequence[Floats],
    codes: Codes,
    n_clusters: int,
    *,
    confidence: float,
    resamples: int,
    seed: int,
) -> list[tuple[float, float]]:
    """``cluster_bootstrap_ci`` of several metrics over the same items and clusters, from the
    same draws: each resample's cluster counts are drawn once and applied to every metric
    with one matrix product (the draws cost more than the rest)."""
    sizes = np.bincount(codes, minlength=n_clusters).astype(np.float64)
    used = sizes > 0
    n_clusters = int(np.count_nonzero(used))  # clusters without items take no part in the draw
    if n_clusters < 2:
        raise ValidationError(
            "clusters", "a cluster bootstrap needs at least 2 clusters", n_clusters
        )
    metrics = len(diffs)
    # Per cluster: the sum of each metric's differences, and the cluster's size (last column).
    table = np.empty((n_clusters, metrics + 1))
    for column, values in enumerate(diffs):
        table[:, column] = np.bincount(codes, weights=values, minlength=len(used))[used]
    table[:, metrics] = sizes[used]
    rng = np.random.default_rng(seed)
    means = np.empty((resamples, metrics))
    block = max(1, min(resamples, 1_000_000 // n_clusters))  # ~8 MB of draws at a time
    for start in range(0, resamples, block):
        rows = min(resamples, start + block) - start
        # Multinomial counts of n_clusters uniform draws per resample: the draws of row r are
        # offset by r * n_clusters, so one bincount counts every row at once.
        drawn = rng.integers(0, n_clusters, size=(rows, n_clusters))
        drawn += np.arange(0, rows * n_clusters, n_clusters)[:, None]
        counts = np.bincount(drawn.ravel(), minlength=rows * n_clusters)
        totals = counts.reshape(rows, n_clusters).astype(np.float64) @ table
        means[start : start + rows] = totals[:, :metrics] / totals[:, metrics:]
    tail = expanded_tail(confidence, n_clusters)
    quantiles = np.quantile(means, [tail, 1.0 - tail], axis=0)
    return [(float(low), float(high)) for low, high in quantiles.T]


def _z(alpha: float, power: float) -> float:
    for name, value in (("alpha", alpha), ("power", power)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ValidationError(name, "must be a number between 0 and 1 (exclusive)", value)
    return _NORMAL.inv_cdf(1.0 - alpha / 2.0) + _NORMAL.inv_cdf(power)


def check_effect(effect: float) -> None:
    """Raise ValidationError unless ``effect`` is a finite, non-zero number."""
    if (
        isinstance(effect, bool)
        or not isinstance(effect, (int, float))
        or not math.isfinite(effect)
        or effect == 0
    ):
        raise ValidationError("effect", "must be a finite, non-zero number", effect)


def _check_se(se: float) -> None:
    # An SE of 0 is what identical runs (every paired difference equal) estimate: it says
    # nothing about the spread of the differences on other items, so any power figure from
    # it ("MDE 0", "1 item needed") would be false.
    if isinstance(se, bool) or not isinstance(se, (int, float)) or not math.isfinite(se) or se <= 0:
        raise ValidationError(
            "se",
            "must be a finite, positive standard error (an SE of 0, every paired difference "
            "equal, estimates no spread: power cannot be computed from it)",
            se,
        )


def minimum_detectable_effect(se: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference a two-sided test at ``alpha`` detects with ``power``.

    ``se`` is the standard error of the mean difference (``PairedResult.se``). The answer is
    ``(z_{1-alpha/2} + z_power) * se`` (normal approximation, ignoring the far tail): 2.80 SE
    at the defaults, which is ``PairedResult.mde``::

        minimum_detectable_effect(paired.se, power=0.9)

    Raises ValidationError naming ``se`` when it is not finite and positive (an SE of 0,
    from runs whose paired differences are all equal, estimates no spread: the power is not
    estimable, and ``PairedResult.mde`` is None), ``alpha`` or ``power`` for a level outside
    (0, 1).
    """
    _check_se(se)
    return _z(alpha, power) * se


def items_needed(
    effect: float, se: float, items: int, *, alpha: float = 0.05, power: float = 0.8
) -> int:
    """The number of items (paired samples) needed to detect a true difference of ``effect``
    with ``power`` by a two-sided test at ``alpha``.

    ``se`` is the standard error of the mean difference measured on ``items`` items, for
    example ``items_needed(0.02, paired.se, paired.n_matched)``. The SE is assumed to shrink as
    1/sqrt(items): ``ceil(((z_{1-alpha/2} + z_power) * se * sqrt(items) / |effect|) ** 2)``,
    at least 1.

    Raises ValidationError naming ``effect`` (not finite, 0, or so small that the count
    exceeds the float range), ``se`` (not finite and
    positive: an SE of 0, every paired difference equal, estimates no spread, so the items
    needed are not estimable), ``items`` (below 1), ``alpha`` or ``power`` (outside (0, 1)).
    """
    check_effect(effect)
    _check_se(se)
    if isinstance(items, bool) or not isinstance(items, int) or items < 1:
        raise ValidationError("items", "must be an integer of at least 1", items)
    spread = se * math.sqrt(items)
    try:
        needed = (_z(alpha, power) * spread / abs(effect)) ** 2
    except OverflowError:
        needed = math.inf
    if not math.isfinite(needed):  # e.g. effect 1e-300: no count of items is an answer
        raise ValidationError(
            "effect", "is too small for this se: the items needed exceed the float range", effect
        )
    return max(1, math.ceil(needed))


def _wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    p = successes / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denominator = 1 + z * z / n
    return (centre - half) / denominator, (centre + half) / denominator


def newcombe_paired_interval(
    both: int, left_only: int, right_only: int, neither: int, *, confidence: float = 0.95
) -> tuple[float, float]:
    """Interval for ``p_right - p_left`` of paired 0/1 outcomes: Newcombe (1998), method 10.

    Counts: ``both`` items scored 1 in both runs, ``left_only`` 1 only in the left run,
    ``right_only`` 1 only in the right, ``neither`` 0 in both. Wilson score limits for each
    proportion, combined with the phi correlation of the pairs (Newcombe, Stat Med 17:2635,
    "Improved confidence intervals for the difference between binomial proportions based on
    paired data"). Holds its coverage near the nominal level down to a few dozen pairs, where
    the Wald interval is too narrow.
    """
    counts = (both, left_only, right_only, neither)
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts) or not any(
        counts
    ):
        raise ValidationError("counts", "must be non-negative integers, at least one pair", counts)
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)):
        raise ValidationError("confidence", "must be a number between 0 and 1", confidence)
    if not 0 < confidence < 1:
        raise ValidationError("confidence", "must be between 0 and 1 (exclusive)", confidence)
    n = both + left_only + right_only + neither
    z = _NORMAL.inv_cdf(1.0 - (1.0 - confidence) / 2.0)
    p_left = (both + left_only) / n
    p_right = (both + right_only) / n
    l_low, l_high = _wilson(both + left_only, n, z)
    r_low, r_high = _wilson(both + right_only, n, z)
    margins = (
        (both + left_only) * (right_only + neither) * (both + right_only) * (left_only + neither)
    )
    phi = 0.0
    if margins > 0:
        phi = (both * neither - left_only * right_only) / math.sqrt(margins)
    diff = p_right - p_left
    below = math.sqrt(
        max(
            0.0,
            (p_right - r_low) ** 2
            - 2 * phi * (p_right - r_low) * (l_high - p_left)
            + (l_high - p_left) ** 2,
        )
    )
    above = math.sqrt(
        max(
            0.0,
            (r_high - p_right) ** 2
            - 2 * phi * (r_high - p_right) * (p_left - l_low)
            + (p_left - l_low) ** 2,
        )
    )
    return max(-1.0, diff - below), min(1.0, diff + above)


def adjust_p_values(p_values: Sequence[float | None], method: Adjustment) -> list[float | None]:
    """Holm (family-wise error) or Benjamini-Hochberg (false discovery rate) adjusted p-values.

    None (a metric without a test) stays None and does not count towards the family size.
    """
    if method not in ADJUSTMENTS:
        raise ValidationError("adjustment", f"must be one of {list(ADJUSTMENTS)}", method)
    present = [(p, i) for i, p in enumerate(p_values) if p is not None and not math.isnan(p)]
    adjusted: list[float | None] = list(p_values)
    if method == "none" or not present:
        return adjusted
    present.sort()
    m = len(present)
    if method == "holm":
        running = 0.0
        for rank, (p, i) in enumerate(present):
            running = max(running, min(1.0, (m - rank) * p))
            adjusted[i] = running
    else:
        running = 1.0
        for rank in range(m - 1, -1, -1):
            p, i = present[rank]
            running = min(running, min(1.0, m * p / (rank + 1)))
            adjusted[i] = running
    return adjusted


class PairingGain(NamedTuple):
    """What pairing bought: the correlation of the runs' per-item values and both SEs."""

    correlation: float | None
    paired_se: float
    unpaired_se: float


def pairing_gain(left: Floats, right: Floats) -> PairingGain | None:
    """Pearson correlation of the paired values; SE of the mean difference paired and as if the
    runs had been measured on different items (sqrt(var_l/n + var_r/n)). None below 2 pairs.

    Values near the float range (or tiny ones) are scaled by a power of two first, as in
    ``clustered_error``: their variances neither overflow nor underflow.
    """
    n = len(left)
    if n < 2:
        return None
    exponent = safe_exponent(np.concatenate((left, right)))
    if exponent:
        left, right = np.ldexp(left, -exponent), np.ldexp(right, -exponent)
    lc, rc, dc = _centred(left), _centred(right), _centred(right - left)
    var_left, var_right, var_diff = (dot(c, c) / (n - 1) for c in (lc, rc, dc))
    correlation = None
    if var_left > 0 and var_right > 0:
        covariance = dot(lc, rc) / (n - 1)
        correlation = max(-1.0, min(1.0, covariance / math.sqrt(var_left * var_right)))
    return PairingGain(
        correlation,
        math.ldexp(math.sqrt(var_diff / n), exponent),
        math.ldexp(math.sqrt(var_left / n + var_right / n), exponent),
    )
