"""Paired statistics, checked against scipy/numpy and hand computations (in the tests only)."""

from __future__ import annotations

import itertools
import math
import random
import warnings
from typing import Any

import numpy as np
import pytest
from scipy import stats

from contexta_async import ValidationError
from contexta_async.readers import SADDLEPOINT_MIN_PAIRS, mcnemar_exact, paired_bootstrap_ci
from contexta_async.stats._bootstrap import BootstrapMethod, paired_bootstrap_cis


@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [
        (0, 0, 1.0),
        (3, 3, 1.0),
        (0, 5, 2 / 32),  # 2 * P(X <= 0), X ~ Bin(5, 1/2)
        (1, 6, 2 * (1 + 7) / 128),  # 2 * (C(7,0) + C(7,1)) / 2^7
        (6, 1, 2 * (1 + 7) / 128),  # symmetric in b and c
        (2, 8, 2 * (1 + 10 + 45) / 1024),
    ],
)
def test_mcnemar_exact_matches_hand_computation(b: int, c: int, expected: float) -> None:
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("b", "c"),
    [(1, 0), (4, 9), (10, 25), (30, 31), (120, 80), (1000, 1100), (2500, 2600), (2900, 3300)],
)
def test_mcnemar_exact_matches_scipy_binomtest(b: int, c: int) -> None:
    # (2500, 2600) and beyond take the floating-point path (more than 4000 discordant pairs).
    expected = stats.binomtest(min(b, c), b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_mcnemar_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        mcnemar_exact(-1, 2)


def _expanded_tail(confidence: float, n: int) -> float:
    """Hesterberg's (2015) expanded percentile level, from scipy: the bootstrap intervals take
    their percentiles there."""
    z = math.sqrt(n / (n - 1)) * stats.t.ppf(0.5 + confidence / 2, n - 1)
    return float(stats.norm.sf(z))


def _exact_bootstrap_quantiles(diffs: list[float], qs: tuple[float, float]) -> list[float]:
    """Every one of the n^n equally likely resamples, enumerated (tiny n only)."""
    means = sorted(sum(pick) / len(diffs) for pick in itertools.product(diffs, repeat=len(diffs)))
    return [float(np.percentile(means, q * 100)) for q in qs]


def test_bootstrap_interval_matches_the_exact_bootstrap_distribution() -> None:
    diffs = [0.0, 1.0, -1.0, 1.0, 0.5, 1.0]
    tail = _expanded_tail(0.95, len(diffs))
    low, high = _exact_bootstrap_quantiles(diffs, (tail, 1.0 - tail))
    result = paired_bootstrap_ci(diffs, resamples=40_000, seed=5)
    assert result.method == "numpy"
    assert result.low == pytest.approx(low, abs=0.03)
    assert result.high == pytest.approx(high, abs=0.03)


def test_grouped_bootstrap_of_a_binary_metric_agrees_with_scipy() -> None:
    # 0/1 metric on 400 samples: differences take three values, so resamples are drawn as
    # multinomial counts; scipy resamples the 400 values one by one.
    rng = random.Random(2)
    left = [float(rng.random() < 0.6) for _ in range(400)]
    right = [float(rng.random() < 0.7) for _ in range(400)]
    diffs = [r - lft for lft, r in zip(left, right, strict=True)]
    ours = paired_bootstrap_ci(diffs, resamples=20_000, seed=1)
    theirs = stats.bootstrap(
        (np.array(diffs),),
        np.mean,
        n_resamples=20_000,
        method="percentile",
        random_state=np.random.default_rng(9),
    ).confidence_interval
    assert ours.low == pytest.approx(theirs.low, abs=0.006)
    assert ours.high == pytest.approx(theirs.high, abs=0.006)
    mean = sum(diffs) / len(diffs)
    assert ours.low < mean < ours.high


def test_bootstrap_of_a_continuous_metric_agrees_with_scipy() -> None:
    rng = random.Random(4)
    diffs = [rng.gauss(0.3, 2.0) for _ in range(150)]
    ours = paired_bootstrap_ci(diffs, resamples=10_000, seed=3)
    theirs = stats.bootstrap(
        (np.array(diffs),),
        np.mean,
        n_resamples=10_000,
        method="percentile",
        random_state=np.random.default_rng(8),
    ).confidence_interval
    width = theirs.high - theirs.low
    assert ours.low == pytest.approx(theirs.low, abs=0.05 * width)
    assert ours.high == pytest.approx(theirs.high, abs=0.05 * width)


def test_bootstrap_is_reproducible_for_a_seed() -> None:
    rng = random.Random(6)
    diffs = [rng.choice([-1.0, 0.0, 1.0, 0.5]) for _ in range(300)]
    first = paired_bootstrap_ci(diffs, resamples=500, seed=42)
    again = paired_bootstrap_ci(diffs, resamples=500, seed=42)
    other = paired_bootstrap_ci(diffs, resamples=500, seed=43)
    assert first == again
    assert (first.low, first.high) != (other.low, other.high)


def test_bootstrap_edge_cases() -> None:
    assert paired_bootstrap_ci([0.25] * 10) == (0.25, 0.25, "constant")
    assert paired_bootstrap_ci([2.0]) == (2.0, 2.0, "constant")
    with pytest.raises(ValueError, match="no differences"):
        paired_bootstrap_ci([])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap_ci([1.0, 2.0], confidence=1.0)
    with pytest.raises(ValueError, match="resamples"):
        paired_bootstrap_ci([1.0, 2.0], resamples=0)
    narrow = paired_bootstrap_ci([0.0, 1.0] * 50, confidence=0.5, seed=1)
    wide = paired_bootstrap_ci([0.0, 1.0] * 50, confidence=0.99, seed=1)
    assert wide.low < narrow.low < narrow.high < wide.high


def test_grouped_bootstrap_of_an_integer_metric_agrees_with_scipy() -> None:
    # Token-count-like differences: 41 distinct values over 4000 samples, so resamples are
    # multinomial count vectors (few distinct values); scipy resamples value by value.
    rng = random.Random(12)
    diffs = [float(rng.randint(-20, 20) + rng.randint(0, 1)) for _ in range(4000)]
    assert len(set(diffs)) * 32 <= len(diffs)
    ours = paired_bootstrap_ci(diffs, resamples=10_000, seed=4)
    theirs = stats.bootstrap(
        (np.array(diffs),),
        np.mean,
        n_resamples=10_000,
        method="percentile",
        random_state=np.random.default_rng(10),
    ).confidence_interval
    width = theirs.high - theirs.low
    assert ours.low == pytest.approx(theirs.low, abs=0.05 * width)
    assert ours.high == pytest.approx(theirs.high, abs=0.05 * width)


def test_bootstrap_of_several_metrics_gives_each_metrics_own_interval() -> None:
    rng = random.Random(13)
    # Three continuous metrics of 3000 samples share their index draws (same seed, same n;
    # two of them gathered as one complex array), one of 800 samples does not; a binary one
    # is drawn as multinomial counts.
    jobs = [
        [rng.gauss(0.1, 1.0) for _ in range(3000)],
        [float(rng.random() < 0.7) - float(rng.random() < 0.6) for _ in range(3000)],
        [0.5] * 10,
        [rng.lognormvariate(1.0, 0.5) for _ in range(800)],
        [rng.expovariate(2.0) for _ in range(3000)],
        [rng.uniform(-1.0, 1.0) for _ in range(3000)],
    ]
    # 300 resamples of 3000: several blocks of index draws, pipelined across two threads.
    alone = [paired_bootstrap_ci(diffs, resamples=300, seed=7) for diffs in jobs]
    together = paired_bootstrap_cis(jobs, resamples=300, seed=7, workers=2)
    assert together == alone
    assert paired_bootstrap_cis(jobs, resamples=300, seed=7, workers=1) == alone
    assert paired_bootstrap_cis([], resamples=300) == []
    with pytest.raises(ValueError, match="workers"):
        paired_bootstrap_cis(jobs, workers=0)


# ---- saddlepoint approximation of the bootstrap distribution ----------------------------------


def _exact_bootstrap_levels(diffs: list[float], qs: tuple[float, ...]) -> list[float]:
    """Quantiles of the exact bootstrap distribution of the mean: every multiset of n draws
    (the compositions of n into n counts) with its multinomial probability. n = 10: 92,378."""
    n = len(diffs)
    log_factorial = [math.lgamma(i + 1) for i in range(n + 1)]
    atoms = []
    for bars in itertools.combinations(range(2 * n - 1), n - 1):
        counts = [b - a - 1 for a, b in zip((-1, *bars), (*bars, 2 * n - 1), strict=True)]
        log_p = log_factorial[n] - sum(log_factorial[c] for c in counts) - n * math.log(n)
        atoms.append((sum(c * d for c, d in zip(counts, diffs, strict=True)) / n, math.exp(log_p)))
    atoms.sort()
    out = []
    for q in qs:
        total = 0.0
        for value, p in atoms:
            total += p
            if total >= q:
                out.append(value)
                break
    return out


@pytest.mark.parametrize("seed", [0, 2, 3])
def test_saddlepoint_interval_matches_the_exact_bootstrap_distribution_of_skewed_data(
    seed: int,
) -> None:
    # Ten exponential differences: a skewed bootstrap distribution, enumerated exactly.
    rng = random.Random(seed)
    diffs = [rng.expovariate(1.0) for _ in range(10)]
    tail = _expanded_tail(0.95, len(diffs))
    low, high = _exact_bootstrap_levels(diffs, (tail, 1.0 - tail))
    mean = sum(diffs) / len(diffs)
    se = float(np.std(diffs)) / math.sqrt(len(diffs))
    ours = paired_bootstrap_ci(diffs, method="saddlepoint")
    assert ours.method == "saddlepoint"
    assert abs(ours.low - low) < 0.02 * se
    assert abs(ours.high - high) < 0.02 * se
    # The skew matters at this precision: the normal interval misses the exact one.
    z = stats.norm.isf(tail)
    assert abs(mean - z * se - low) > 0.05 * se


def _shaped(shape: str, n: int, rng: np.random.Generator) -> list[float]:
    if shape == "normal":
        values = rng.normal(0.1, 1.0, n)
    elif shape == "skewed":
        values = rng.pareto(2.5, n)
    elif shape == "heavy-tailed":
        values = rng.standard_t(3, n)
    elif shape == "binary":
        values = (rng.random(n) < 0.7).astype(float) - (rng.random(n) < 0.6)
    elif shape == "integer":
        values = rng.integers(50, 400, n) - rng.integers(50, 420, n).astype(float)
    else:  # one difference carries about 40% of the spread
        values = rng.normal(0.0, 1.0, n)
        values[0] = 0.82 * math.sqrt(n)
    return [float(v) for v in values]


@pytest.mark.parametrize(
    "shape", ["normal", "skewed", "heavy-tailed", "binary", "integer", "one large difference"]
)
def test_saddlepoint_interval_agrees_with_scipy_bootstrap_on_ten_thousand_pairs(
    shape: str,
) -> None:
    n = SADDLEPOINT_MIN_PAIRS
    diffs = _shaped(shape, n, np.random.default_rng(21))
    ours = paired_bootstrap_ci(diffs)  # auto: approximated from 10,000 pairs on
    assert ours.method == "saddlepoint"
    theirs = stats.bootstrap(
        (np.array(diffs),),
        np.mean,
        n_resamples=10_000,
        batch=500,
        method="percentile",
        random_state=np.random.default_rng(22),
    ).confidence_interval
    # scipy's endpoints carry a Monte Carlo error of ~0.03 standard errors of the mean.
    se = float(np.std(diffs)) / math.sqrt(n)
    assert abs(ours.low - theirs.low) < 0.12 * se
    assert abs(ours.high - theirs.high) < 0.12 * se


@pytest.mark.parametrize("confidence", [0.001, 0.5, 0.99])
def test_saddlepoint_interval_at_any_confidence_agrees_with_many_resamples(
    confidence: float,
) -> None:
    # Near confidence 0 both ends lie on the same side of the mean (the distribution is
    # skewed): the approximation must still find them.
    rng = random.Random(8)
    diffs = [rng.expovariate(1.0) for _ in range(1000)]
    ours = paired_bootstrap_ci(diffs, confidence=confidence, method="saddlepoint")
    assert ours.method == "saddlepoint"
    resampled = paired_bootstrap_ci(
        diffs, confidence=confidence, method="resample", resamples=100_000, seed=3
    )
    se = float(np.std(diffs)) / math.sqrt(len(diffs))
    assert ours.low < ours.high
    assert abs(ours.low - resampled.low) < 0.05 * se
    assert abs(ours.high - resampled.high) < 0.05 * se


def test_auto_approximates_from_ten_thousand_pairs_and_resamples_below() -> None:
    rng = random.Random(15)
    diffs = [rng.gauss(0.2, 1.0) for _ in range(SADDLEPOINT_MIN_PAIRS)]
    approximated = paired_bootstrap_ci(diffs)
    assert approximated.method == "saddlepoint"
    # Deterministic: the seed and the resample count play no part.
    assert paired_bootstrap_ci(diffs, seed=9, resamples=10) == approximated
    assert paired_bootstrap_ci(diffs[:-1], resamples=200).method == "numpy"
    assert paired_bootstrap_ci(diffs, method="resample", resamples=200).method == "numpy"
    assert paired_bootstrap_ci(diffs[:50], method="saddlepoint").method == "saddlepoint"


def test_auto_resamples_when_one_difference_dominates() -> None:
    # One difference carries ~99% of the squared deviations: how often a resample draws it
    # (about Poisson(1)) splits the bootstrap distribution into lumps; auto resamples.
    rng = random.Random(16)
    diffs = [rng.gauss(0.0, 1.0) for _ in range(SADDLEPOINT_MIN_PAIRS)]
    diffs[0] = 1000.0
    assert paired_bootstrap_ci(diffs, resamples=200).method == "numpy"
    assert paired_bootstrap_ci(diffs, method="saddlepoint").method == "saddlepoint"


def test_a_saddlepoint_that_does_not_settle_is_resampled_and_says_so() -> None:
    # A single 1 among 999 zeros (the resample mean is k/1000, k ~ Binomial(1000, 1/1000)),
    # or two differences: no saddlepoint; resampled, whatever was asked.
    for diffs in ([0.0] * 999 + [1.0], [0.0, 1.0]):
        interval = paired_bootstrap_ci(diffs, method="saddlepoint", resamples=200)
        assert interval.method == "numpy"
    with pytest.raises(ValidationError, match="method: must be 'auto', 'resample' or"):
        paired_bootstrap_ci([0.0, 1.0], method="exact")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_non_finite_differences_are_rejected_naming_the_field(bad: float) -> None:
    for method in ("auto", "resample", "saddlepoint"):
        with pytest.raises(ValidationError, match="diffs: must all be finite numbers"):
            paired_bootstrap_ci([1.0, bad, 2.0], method=method)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="diffs: must all be finite"):
        paired_bootstrap_cis([[1.0, 2.0], [bad, 1.0]])


@pytest.mark.parametrize(
    "shape", ["4 equal outliers", "4 timeouts among latencies", "7 flips hidden in noise"]
)
def test_auto_resamples_a_few_equal_outliers_among_many_distinct_values(shape: str) -> None:
    # How many of the few outliers a resample draws (about Poisson(k)) splits the bootstrap
    # distribution into lumps; there the approximation was measured 0.1-0.2 standard errors
    # off (the largest single share is small, and most values are distinct).
    rng = np.random.default_rng(23)
    if shape == "4 equal outliers":
        values = rng.normal(0.0, 1.0, 10_000)
        values[:4] = 1e4
    elif shape == "4 timeouts among latencies":
        values = rng.normal(0.0, 20.0, 20_000)
        values[:4] = 30_000.0 + rng.normal(0.0, 20.0, 4)
    else:
        values = np.zeros(10_000)
        values[1000:2000] = rng.normal(0.0, 1e-6, 1000)
        values[:5], values[5:7] = 1.0, -1.0
    diffs = [float(v) for v in values]
    mean = sum(diffs) / len(diffs)
    squares = [(d - mean) ** 2 for d in diffs]
    assert max(squares) < 0.5 * sum(squares)  # past the single-difference check
    interval = paired_bootstrap_ci(diffs, resamples=200)
    assert interval.method == "numpy"


def _outlier_mixture_quantile(rest: np.ndarray, outlier: float, k: int, q: float) -> float:
    """The q quantile of the bootstrap mean of ``rest`` plus k differences equal to
    ``outlier``: a resample draws K ~ Binomial(n, k/n) of them, and the mean of its other n - K
    draws is all but normal (mean and variance of ``rest``). Bisection on that mixture."""
    n = len(rest) + k
    counts = np.arange(0, 40)
    weights = stats.binom.pmf(counts, n, k / n)
    mu, sigma = float(rest.mean()), float(rest.std())

    def level(t: float) -> float:
        z = (n * t - counts * outlier - (n - counts) * mu) / (np.sqrt(n - counts) * sigma)
        return float(weights @ stats.norm.cdf(z))

    low, high = float(rest.min()), outlier
    for _ in range(200):
        mid = (low + high) / 2.0
        low, high = (mid, high) if level(mid) < q else (low, mid)
    return (low + high) / 2.0


def test_saddlepoint_settles_where_the_slope_of_the_level_misleads() -> None:
    # Two large differences among 10,000: far from its root the level is nearly flat, and
    # Newton steps alone jumped back and forth; the bracket makes them settle, on the root.
    rng = np.random.default_rng(24)
    rest = rng.normal(0.0, 1.0, 9_998)
    diffs = [float(v) for v in rest] + [1000.0, 1000.0]
    se = float(np.std(diffs)) / math.sqrt(len(diffs))
    low = _outlier_mixture_quantile(rest, 1000.0, 2, 0.025)
    high = _outlier_mixture_quantile(rest, 1000.0, 2, 0.975)
    interval = paired_bootstrap_ci(diffs, method="saddlepoint")
    assert interval.method == "saddlepoint"
    # Lumpy data (auto resamples them): measured 0.01 and 0.09 standard errors off.
    assert abs(interval.low - low) < 0.15 * se
    assert abs(interval.high - high) < 0.15 * se


def test_saddlepoint_interval_scales_with_the_data_and_ignores_their_order() -> None:
    rng = random.Random(19)
    diffs = [rng.lognormvariate(0.0, 1.0) - 1.5 for _ in range(SADDLEPOINT_MIN_PAIRS)]
    plain = paired_bootstrap_ci(diffs)
    assert plain.method == "saddlepoint"
    for factor in (1e150, 1e-160):  # squares and cubes would overflow / underflow unscaled
        scaled = paired_bootstrap_ci([d * factor for d in diffs])
        assert scaled.method == "saddlepoint"
        assert scaled.low == pytest.approx(plain.low * factor, rel=1e-9, abs=0)
        assert scaled.high == pytest.approx(plain.high * factor, rel=1e-9, abs=0)
    shuffled = diffs[:]
    rng.shuffle(shuffled)
    assert paired_bootstrap_ci(shuffled) == plain


@pytest.mark.parametrize(
    ("changes", "method"), [(10, "numpy"), (100, "numpy"), (3000, "saddlepoint")]
)
def test_auto_resamples_rare_changes_whose_bootstrap_distribution_is_lumpy(
    changes: int, method: str
) -> None:
    # k changes (1) among 10,000 ties (0): the resample mean is (Binomial count)/n, on a
    # lattice 1/sqrt(k) standard errors apart: 0.32 and 0.1 are lumps, 0.018 is smooth.
    diffs = [1.0] * changes + [0.0] * (SADDLEPOINT_MIN_PAIRS - changes)
    interval = paired_bootstrap_ci(diffs, resamples=20_000, seed=2)
    assert interval.method == method
    if method == "saddlepoint":
        resampled = paired_bootstrap_ci(diffs, method="resample", resamples=20_000, seed=2)
        se = float(np.std(diffs)) / math.sqrt(len(diffs))
        assert abs(interval.low - resampled.low) < 0.08 * se
        assert abs(interval.high - resampled.high) < 0.08 * se


def test_several_metrics_mix_approximated_and_resampled_intervals_as_alone() -> None:
    rng = random.Random(17)
    big = SADDLEPOINT_MIN_PAIRS
    dominated = [rng.gauss(0.0, 1.0) for _ in range(big)]
    dominated[5] = 2000.0
    jobs = [
        [rng.gauss(0.1, 1.0) for _ in range(big)],
        dominated,  # resampled: one difference dominates
        [float(rng.random() < 0.7) - float(rng.random() < 0.6) for _ in range(big)],
        [rng.expovariate(1.0) for _ in range(500)],  # resampled: fewer pairs
        [0.5] * 20,
    ]
    alone = [paired_bootstrap_ci(diffs, resamples=100, seed=4) for diffs in jobs]
    assert [interval.method for interval in alone] == [
        "saddlepoint",
        "numpy",
        "saddlepoint",
        "numpy",
        "constant",
    ]
    assert paired_bootstrap_cis(jobs, resamples=100, seed=4, workers=2) == alone
    resampled = paired_bootstrap_cis(jobs, resamples=100, seed=4, method="resample")
    assert [interval.method for interval in resampled] == ["numpy"] * 4 + ["constant"]


def test_resampled_interval_does_not_depend_on_the_order_of_the_differences() -> None:
    # Samples paired in capture order (which concurrency changes) give the same interval.
    rng = random.Random(18)
    diffs = [rng.gauss(0.2, 1.0) for _ in range(500)]
    shuffled = diffs[:]
    rng.shuffle(shuffled)
    first = paired_bootstrap_ci(diffs, resamples=300, seed=1)
    assert first.method == "numpy"
    assert paired_bootstrap_ci(shuffled, resamples=300, seed=1) == first
    assert (
        paired_bootstrap_cis([shuffled, diffs], resamples=300, seed=1)
        == [paired_bootstrap_ci(diffs, resamples=300, seed=1)] * 2
    )


@pytest.mark.parametrize("method", ["resample", "saddlepoint", "auto"])
@pytest.mark.parametrize("n", [12, 400, SADDLEPOINT_MIN_PAIRS])
def test_differences_near_the_float_range_give_a_finite_interval_and_no_warning(
    method: BootstrapMethod, n: int
) -> None:
    # Their sums pass the float range (1.8e308), their means never do: the interval is that of
    # the same differences scaled down, scaled back up, and numpy warns of nothing.
    rng = random.Random(n)
    huge = [rng.choice([1.7e308, -1.7e308, 1.0e308, 0.0]) + 0.0 for _ in range(n)]
    small = [d / 2.0**600 for d in huge]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning, in any thread, fails the call
        (got,) = paired_bootstrap_cis([huge], resamples=300, method=method)
        expected = paired_bootstrap_ci(small, resamples=300, method=method)
    assert math.isfinite(got.low) and math.isfinite(got.high)
    assert got.low <= math.fsum(d / n for d in huge) <= got.high
    assert (got.low / 2.0**600, got.high / 2.0**600, got.method) == expected


@pytest.mark.parametrize(
    ("field", "options"),
    [
        ("confidence", {"confidence": "x"}),
        ("confidence", {"confidence": True}),
        ("resamples", {"resamples": 2.5}),
        ("resamples", {"resamples": True}),
        ("seed", {"seed": -1}),
        ("seed", {"seed": 1.0}),
        ("method", {"method": 3}),
    ],
)
def test_a_bad_bootstrap_option_is_a_validation_error_naming_it(
    field: str, options: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError) as raised:
        paired_bootstrap_ci([1.0, 2.0, 4.0], **options)
    assert raised.value.field == field


@pytest.mark.parametrize(("b", "c"), [(1.5, 2), (True, 5), ("3", 1)])
def test_mcnemar_rejects_counts_that_are_not_integers(b: Any, c: Any) -> None:
    with pytest.raises(ValidationError, match="non-negative integers"):
        mcnemar_exact(b, c)
