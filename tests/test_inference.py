"""Paired inference: every number against an independent computation.

statsmodels and scipy where they have the method, exact enumeration for the small-sample
interval, and simulated coverage with a known true difference.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import anyio
import msgspec
import numpy as np
import pytest
import scipy.stats
import statsmodels.api as sm
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower

from contexta_async import Contexta, ValidationError
from contexta_async._cli import run_cli
from contexta_async.readers import (
    Workspace,
    items_needed,
    minimum_detectable_effect,
)
from contexta_async.report import format_number, render_html_report
from contexta_async.stats import paired_bootstrap_ci
from contexta_async.stats._inference import (
    adjust_p_values,
    cluster_bootstrap_ci,
    clustered_error,
    newcombe_paired_interval,
    pairing_gain,
    student_t_two_sided_p,
)
from contexta_async.stats._student import expanded_tail, student_t_quantile


def _clustered_data(
    rng: np.random.Generator, clusters: int, size: int, rho: float, shift: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Differences with intra-cluster correlation ``rho`` (unit variance), clusters of
    ``size`` items."""
    codes = np.repeat(np.arange(clusters), size)
    shared = rng.normal(0.0, math.sqrt(rho), clusters)[codes]
    own = rng.normal(0.0, math.sqrt(1.0 - rho), clusters * size)
    return shift + shared + own, codes


# ---- clustered standard error --------------------------------------------------------------


@pytest.mark.parametrize("sizes", ["equal", "unequal"])
def test_clustered_se_equals_statsmodels_cluster_robust_se_of_the_mean(sizes: str) -> None:
    rng = np.random.default_rng(7)
    if sizes == "equal":
        diffs, codes = _clustered_data(rng, clusters=40, size=5, rho=0.3)
    else:
        codes = rng.integers(0, 25, 300)
        codes = np.unique(codes, return_inverse=True)[1]
        diffs = rng.normal(0.2, 1.0, 300) + rng.normal(0, 0.7, 25)[codes]
    n_clusters = int(codes.max()) + 1
    got = clustered_error(diffs, codes, n_clusters)
    assert got is not None
    # statsmodels' cluster-robust covariance with its default small-sample correction
    # G/(G-1) * (N-1)/(N-K), which for a mean (K = 1) is the C/(C-1) applied here.
    fit = sm.OLS(diffs, np.ones(len(diffs))).fit(cov_type="cluster", cov_kwds={"groups": codes})
    assert got.se == pytest.approx(float(fit.bse[0]), rel=1e-10)
    assert got.naive_se == pytest.approx(float(scipy.stats.sem(diffs)), rel=1e-12)
    assert got.clusters == n_clusters
    assert got.design_effect == pytest.approx(got.se**2 / got.naive_se**2)


def test_one_item_per_cluster_gives_the_naive_se_and_a_design_effect_of_one() -> None:
    rng = np.random.default_rng(3)
    diffs = rng.normal(0.0, 2.0, 500)
    clustered = clustered_error(diffs, np.arange(500), 500)
    plain = clustered_error(diffs, None, 0)
    assert clustered is not None and plain is not None
    assert clustered.se == pytest.approx(plain.se, rel=1e-12)
    assert clustered.design_effect == pytest.approx(1.0, rel=1e-12)
    assert plain.clusters == 500


def test_the_design_effect_follows_cluster_size_and_intra_cluster_correlation() -> None:
    # Kish: deff = 1 + (m - 1) * rho for equal clusters of m items.
    rng = np.random.default_rng(11)
    diffs, codes = _clustered_data(rng, clusters=4000, size=5, rho=0.25)
    got = clustered_error(diffs, codes, 4000)
    assert got is not None and got.design_effect is not None
    assert got.design_effect == pytest.approx(1 + 4 * 0.25, abs=0.12)


def test_fewer_than_two_items_or_clusters_gives_no_standard_error() -> None:
    assert clustered_error(np.array([1.0]), None, 0) is None
    assert clustered_error(np.array([1.0, 2.0, 3.0]), np.zeros(3, dtype=np.intp), 1) is None


# ---- coverage by simulation (known true difference) ----------------------------------------


def test_clustered_normal_intervals_cover_the_true_difference_about_95_percent() -> None:
    rng = np.random.default_rng(2024)
    z = scipy.stats.norm.ppf(0.975)
    covered_clustered = covered_naive = 0
    datasets = 2000
    for _ in range(datasets):
        diffs, codes = _clustered_data(rng, clusters=60, size=8, rho=0.3, shift=0.5)
        err = clustered_error(diffs, codes, 60)
        assert err is not None
        mean = diffs.mean()
        covered_clustered += abs(mean - 0.5) <= z * err.se
        covered_naive += abs(mean - 0.5) <= z * err.naive_se
    assert 0.93 <= covered_clustered / datasets <= 0.97
    # Ignoring the clusters (deff ~ 3.1 here) covers far less: the check has teeth.
    assert covered_naive / datasets < 0.80


def test_cluster_bootstrap_intervals_cover_the_true_difference_about_95_percent() -> None:
    rng = np.random.default_rng(99)
    datasets = 1000
    covered = 0
    for seed in range(datasets):
        diffs, codes = _clustered_data(rng, clusters=80, size=6, rho=0.4, shift=-0.2)
        low, high = cluster_bootstrap_ci(
            diffs, codes, 80, confidence=0.95, resamples=1000, seed=seed
        )
        covered += low <= -0.2 <= high
    assert 0.93 <= covered / datasets <= 0.97


@pytest.mark.parametrize(("confidence", "df"), [(0.95, 1), (0.95, 7), (0.9, 29), (0.99, 400)])
def test_student_t_quantile_equals_scipy(confidence: float, df: int) -> None:
    expected = scipy.stats.t.ppf(0.5 + confidence / 2, df)
    assert student_t_quantile(confidence, df) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("n", [2, 8, 30, 5000])
def test_expanded_tail_is_hesterbergs_level(n: int) -> None:
    z = math.sqrt(n / (n - 1)) * scipy.stats.t.ppf(0.975, n - 1)
    assert expanded_tail(0.95, n) == pytest.approx(scipy.stats.norm.cdf(-z), rel=1e-8)


@pytest.mark.parametrize("clusters", [8, 20])
def test_cluster_bootstrap_covers_about_95_percent_with_few_clusters(clusters: int) -> None:
    # The plain percentile interval covered 0.875 at 8 clusters of 5 (0.91 at 15): too
    # narrow; the expanded one holds its level.
    rng = np.random.default_rng(8 + clusters)
    datasets = 2000
    covered = 0
    for seed in range(datasets):
        diffs, codes = _clustered_data(rng, clusters=clusters, size=5, rho=0.4, shift=0.3)
        low, high = cluster_bootstrap_ci(
            diffs, codes, clusters, confidence=0.95, resamples=1000, seed=seed
        )
        covered += low <= 0.3 <= high
    assert 0.93 <= covered / datasets <= 0.97


@pytest.mark.parametrize("n", [15, 30])
def test_paired_bootstrap_covers_about_95_percent_at_small_n(n: int) -> None:
    rng = np.random.default_rng(n)
    datasets = 2000
    covered = 0
    for seed in range(datasets):
        diffs = rng.normal(0.3, 1.0, n)
        interval = paired_bootstrap_ci(list(diffs), confidence=0.95, resamples=1000, seed=seed)
        covered += interval.low <= 0.3 <= interval.high
    assert 0.93 <= covered / datasets <= 0.97


def test_cluster_bootstrap_with_one_item_per_cluster_matches_the_plain_bootstrap() -> None:
    rng = np.random.default_rng(5)
    diffs = rng.exponential(1.0, 400) - 1.0
    low, high = cluster_bootstrap_ci(
        diffs, np.arange(400), 400, confidence=0.9, resamples=50_000, seed=1
    )
    reference = scipy.stats.bootstrap(
        (diffs,),
        np.mean,
        confidence_level=0.9,
        n_resamples=50_000,
        method="percentile",
        random_state=2,
    ).confidence_interval
    se = diffs.std(ddof=1) / math.sqrt(len(diffs))
    assert abs(low - reference.low) < 0.05 * se
    assert abs(high - reference.high) < 0.05 * se


# ---- p-values and power ---------------------------------------------------------------------


@pytest.mark.parametrize(("t", "df"), [(0.0, 5), (1.3, 3), (-2.7, 12), (4.1, 200), (0.2, 1)])
def test_student_t_p_value_equals_scipy(t: float, df: float) -> None:
    assert student_t_two_sided_p(t, df) == pytest.approx(
        2 * scipy.stats.t.sf(abs(t), df), rel=1e-9, abs=1e-15
    )


@pytest.mark.parametrize(("alpha", "power"), [(0.05, 0.8), (0.01, 0.9), (0.1, 0.5)])
def test_minimum_detectable_effect_and_items_needed_agree_with_statsmodels(
    alpha: float, power: float
) -> None:
    se, items = 0.012, 400
    sd = se * math.sqrt(items)  # the SD of one item's difference
    mde = minimum_detectable_effect(se, alpha=alpha, power=power)
    effect = 0.01
    needed = items_needed(effect, se, items, alpha=alpha, power=power)
    # The formula counts the tail on the effect's side only: statsmodels' one-sided normal
    # power at alpha/2 is exactly that.
    one_tail = NormalIndPower()
    solved = one_tail.solve_power(
        effect_size=mde / sd, alpha=alpha / 2, power=power, ratio=0, alternative="larger"
    )
    assert solved == pytest.approx(items, rel=1e-7)  # the solver's own tolerance
    exact = one_tail.solve_power(
        effect_size=effect / sd, alpha=alpha / 2, power=power, ratio=0, alternative="larger"
    )
    assert needed == math.ceil(exact - 1e-6)
    # The far tail it ignores is negligible at the usual 0.05 / 0.8: two-sided agrees.
    if (alpha, power) == (0.05, 0.8):
        two_sided = one_tail.solve_power(
            effect_size=mde / sd, alpha=alpha, power=power, ratio=0, alternative="two-sided"
        )
        assert two_sided == pytest.approx(items, rel=1e-5)
        assert mde == pytest.approx(2.8016 * se, rel=1e-4)


def test_power_inputs_are_checked_by_name() -> None:
    with pytest.raises(ValidationError) as caught:
        minimum_detectable_effect(0.1, power=1.2)
    assert caught.value.field == "power"
    with pytest.raises(ValidationError) as caught:
        items_needed(0.0, 0.1, 100)
    assert caught.value.field == "effect"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((math.inf, 0.1, 100), "effect"),
        ((0.1, -0.1, 100), "se"),
        ((0.1, math.nan, 100), "se"),
        ((0.1, 0.0, 100), "se"),
        ((1e-300, 1.0, 10**6), "effect"),  # the count would overflow the float range
        ((0.1, 0.1, 0), "items"),
        ((0.1, 0.1, 2.5), "items"),
    ],
)
def test_items_needed_names_the_argument_that_breaks_its_rule(
    args: tuple[float, float, int], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        items_needed(*args)
    assert caught.value.field == field


@pytest.mark.parametrize("se", [0.0, -0.1, math.nan, math.inf])
def test_minimum_detectable_effect_refuses_an_se_that_is_not_positive_by_name(se: float) -> None:
    with pytest.raises(ValidationError) as caught:
        minimum_detectable_effect(se)
    assert caught.value.field == "se"
    assert caught.value.rule.startswith("must be a finite, positive standard error")


# ---- small samples: paired difference of proportions ----------------------------------------


def _exact_coverage(
    n: int, probabilities: tuple[float, float, float, float], interval: object
) -> float:
    """Exact coverage: every multinomial outcome of n pairs, weighted by its probability."""
    p_both, p_left, p_right, _ = probabilities
    true_diff = (p_both + p_right) - (p_both + p_left)
    covered = 0.0
    for both in range(n + 1):
        for left in range(n + 1 - both):
            for right in range(n + 1 - both - left):
                neither = n - both - left - right
                weight = math.exp(
                    math.lgamma(n + 1)
                    - sum(math.lgamma(k + 1) for k in (both, left, right, neither))
                    + sum(
                        k * math.log(p) if k else 0.0
                        for k, p in zip((both, left, right, neither), probabilities, strict=True)
                    )
                )
                low, high = interval(both, left, right, neither)  # type: ignore[operator]
                if low - 1e-12 <= true_diff <= high + 1e-12:
                    covered += weight
    return covered


def _wald(both: int, left: int, right: int, neither: int) -> tuple[float, float]:
    n = both + left + right + neither
    diff = (right - left) / n
    se = math.sqrt(max(0.0, (left + right) / n - diff * diff) / n)
    return diff - 1.96 * se, diff + 1.96 * se


SETTINGS = [
    (20, (0.6, 0.1, 0.2, 0.1)),
    (30, (0.7, 0.05, 0.15, 0.1)),
    (40, (0.35, 0.15, 0.15, 0.35)),
    (50, (0.8, 0.02, 0.08, 0.1)),
]


@pytest.mark.parametrize(("n", "probabilities"), SETTINGS)
def test_newcombe_interval_holds_its_coverage_at_small_n(
    n: int, probabilities: tuple[float, float, float, float]
) -> None:
    coverage = _exact_coverage(n, probabilities, newcombe_paired_interval)
    assert 0.93 <= coverage <= 0.985


def test_the_wald_interval_is_too_narrow_where_newcombe_is_not() -> None:
    n, probabilities = 25, (0.85, 0.02, 0.06, 0.07)
    assert _exact_coverage(n, probabilities, _wald) < 0.90  # 0.78
    assert _exact_coverage(n, probabilities, newcombe_paired_interval) >= 0.93


def test_newcombe_interval_contains_the_estimate_and_stays_in_bounds() -> None:
    for both, left, right, neither in itertools.product(range(4), repeat=4):
        if both + left + right + neither == 0:
            continue
        low, high = newcombe_paired_interval(both, left, right, neither)
        n = both + left + right + neither
        assert -1.0 <= low <= (right - left) / n <= high <= 1.0


# ---- many comparisons ------------------------------------------------------------------------


@pytest.mark.parametrize(("ours", "theirs"), [("holm", "holm"), ("bh", "fdr_bh")])
def test_adjusted_p_values_equal_statsmodels_multipletests(ours: str, theirs: str) -> None:
    rng = np.random.default_rng(1)
    p_values = list(np.concatenate([rng.uniform(0, 0.02, 4), rng.uniform(0, 1, 11)]))
    expected = multipletests(p_values, method=theirs)[1]
    got = adjust_p_values([*p_values[:7], None, *p_values[7:]], ours)  # type: ignore[arg-type]
    assert got[7] is None  # a metric without a test is left out of the family
    assert [g for g in got if g is not None] == pytest.approx(list(expected), rel=1e-12)


def test_an_unknown_adjustment_is_refused_by_name() -> None:
    with pytest.raises(ValidationError) as caught:
        adjust_p_values([0.1], "bonferroni")  # type: ignore[arg-type]
    assert caught.value.field == "adjustment"


# ---- what pairing bought ---------------------------------------------------------------------


def test_pairing_gain_reports_the_correlation_and_both_standard_errors() -> None:
    rng = np.random.default_rng(8)
    ability = rng.normal(0, 1, 300)
    left = ability + rng.normal(0, 0.5, 300)
    right = ability + 0.1 + rng.normal(0, 0.5, 300)
    gain = pairing_gain(left, right)
    assert gain is not None and gain.correlation is not None
    assert gain.correlation == pytest.approx(scipy.stats.pearsonr(left, right)[0], rel=1e-12)
    assert gain.paired_se == pytest.approx(scipy.stats.sem(right - left), rel=1e-12)
    unpaired = math.sqrt(left.var(ddof=1) / 300 + right.var(ddof=1) / 300)
    assert gain.unpaired_se == pytest.approx(unpaired, rel=1e-12)
    assert gain.paired_se < gain.unpaired_se / 2  # strongly correlated items: pairing pays


@pytest.mark.parametrize("shift", [0.1, 0.7, 1 / 3, 0.9, 2.2])
@pytest.mark.parametrize("n", [3, 7, 100, 1000])
def test_equal_paired_differences_have_a_standard_error_of_exactly_zero(
    shift: float, n: int
) -> None:
    # A constant shift: a plain two-pass variance gives rounding noise (~1e-34: an SE of
    # ~1e-17 and an MDE of ~3e-17 beside method "constant") in 16 of these 20 cases.
    left = np.zeros(n)
    gain = pairing_gain(left, left + shift)
    assert gain is not None
    assert gain.paired_se == 0.0
    assert gain.correlation is None  # the left run is constant
    clustered = clustered_error(np.full(n, shift), None, 1)
    assert clustered is not None and clustered.se == 0.0


async def test_a_constant_shift_has_no_minimum_detectable_effect(tmp_path: Path) -> None:
    ctx = Contexta(workspace=tmp_path / "ws", config={"project_name": "p"})
    for name, value in (("a", 0.0), ("b", 0.1)):
        with ctx.run(name) as run, run.stage("s") as stage:
            for i in range(3):
                with stage.sample(f"q-{i}") as sample:
                    sample.metric("score", value)
    ctx.close()
    paired = (await Workspace(tmp_path / "ws").compare("a", "b")).paired[0]
    assert paired.method == "constant"
    assert (paired.se, paired.mde) == (0.0, None)


def test_cluster_bootstrap_weights_clusters_by_their_size() -> None:
    # Unequal clusters: the resampled statistic is the mean over every drawn item (a ratio),
    # not the mean of cluster means. A brute-force resampling of the same design agrees.
    rng = np.random.default_rng(21)
    sizes = np.arange(1, 41)  # larger clusters sit higher: weighting matters
    codes = np.repeat(np.arange(40), sizes)
    diffs = rng.normal(0, 1, len(codes)) + np.repeat(np.linspace(-2, 2, 40), sizes)
    low, high = cluster_bootstrap_ci(diffs, codes, 40, confidence=0.9, resamples=20_000, seed=4)
    members = [diffs[codes == c] for c in range(40)]
    brute = np.empty(20_000)
    draw = np.random.default_rng(5)
    for i in range(20_000):
        drawn = draw.integers(0, 40, 40)
        brute[i] = np.concatenate([members[c] for c in drawn]).mean()
    ref_low, ref_high = np.quantile(brute, [0.05, 0.95])
    spread = ref_high - ref_low
    assert abs(low - ref_low) < 0.03 * spread
    assert abs(high - ref_high) < 0.03 * spread
    cluster_means = np.array([m.mean() for m in members])
    # The unweighted mean of cluster means is a different statistic, visibly so here.
    assert abs(np.mean(cluster_means) - diffs.mean()) > 0.1 * spread


def test_a_cluster_bootstrap_needs_two_clusters_with_items() -> None:
    diffs = np.array([0.5, 1.0, 1.5])
    with pytest.raises(ValidationError) as caught:
        cluster_bootstrap_ci(
            diffs, np.zeros(3, dtype=np.intp), 3, confidence=0.95, resamples=100, seed=0
        )
    assert caught.value.field == "clusters"


def test_standard_errors_near_the_float_range_stay_finite_and_scale_exactly() -> None:
    rng = np.random.default_rng(2)
    base = rng.normal(0, 1, 200)
    codes = np.repeat(np.arange(20), 10)
    small = clustered_error(base, codes, 20)
    huge = clustered_error(base * 1e300, codes, 20)
    assert small is not None and huge is not None
    assert huge.se == pytest.approx(small.se * 1e300, rel=1e-12)
    assert huge.naive_se == pytest.approx(small.naive_se * 1e300, rel=1e-12)
    # ... and tiny ones, whose squares would fall into the subnormals unscaled.
    tiny = clustered_error(base * 1e-300, codes, 20)
    assert tiny is not None
    assert tiny.se == pytest.approx(small.se * 1e-300, rel=1e-12, abs=0)
    assert tiny.naive_se == pytest.approx(small.naive_se * 1e-300, rel=1e-12, abs=0)
    equal = clustered_error(np.full(10, 1.7e308), None, 0)
    assert equal is not None and equal.se == 0.0


@pytest.mark.parametrize("df", [1e8, 1e12, 1e15, math.inf])
def test_student_t_p_value_at_huge_degrees_of_freedom_is_the_normal_one(df: float) -> None:
    assert student_t_two_sided_p(1.7, df) == pytest.approx(2 * scipy.stats.norm.sf(1.7), rel=1e-7)


def test_newcombe_refuses_bad_counts_and_confidence_by_name() -> None:
    with pytest.raises(ValidationError) as caught:
        newcombe_paired_interval(3.5, 1, 1, 1)  # type: ignore[arg-type]
    assert caught.value.field == "counts"
    with pytest.raises(ValidationError) as caught:
        newcombe_paired_interval(3, 1, 1, 1, confidence=1.5)
    assert caught.value.field == "confidence"


# ---- in the comparison ----------------------------------------------------------------------


def _capture_paired(workspace: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two runs of 40 samples: a 0/1 metric and a continuous one, correlated across runs."""
    rng = np.random.default_rng(17)
    ability = rng.normal(0, 1, 40)
    left_score = ability + rng.normal(0, 0.4, 40)
    right_score = ability + 0.3 + rng.normal(0, 0.4, 40)
    left_ok = (rng.uniform(0, 1, 40) < 0.6).astype(float)
    right_ok = np.where(rng.uniform(0, 1, 40) < 0.3, 1.0 - left_ok, left_ok)
    with Contexta(workspace=workspace, config={"project_name": "p"}) as ctx:
        for name, scores, oks in (("left", left_score, left_ok), ("right", right_score, right_ok)):
            with ctx.run(name) as run, run.stage("eval") as stage:
                for i in range(40):
                    with stage.sample(f"case-{i}") as sample:
                        sample.metric("score", float(scores[i]))
                        sample.metric("correct", float(oks[i]))
    return left_score, right_score, left_ok, right_ok


async def test_compare_reports_se_correlation_power_and_adjusted_p_values(tmp_path: Path) -> None:
    left, right, left_ok, right_ok = _capture_paired(tmp_path)
    result = await Workspace(tmp_path).compare("left", "right")
    by_key = {p.key: p for p in result.paired}
    score, correct = by_key["score"], by_key["correct"]

    diffs = right - left
    assert score.se == pytest.approx(scipy.stats.sem(diffs), rel=1e-9)
    unpaired = math.sqrt(left.var(ddof=1) / 40 + right.var(ddof=1) / 40)
    assert score.unpaired_se == pytest.approx(unpaired, rel=1e-9)
    assert score.correlation == pytest.approx(scipy.stats.pearsonr(left, right)[0], rel=1e-9)
    assert score.mde == pytest.approx(
        (scipy.stats.norm.ppf(0.975) + scipy.stats.norm.ppf(0.8)) * score.se, rel=1e-9
    )
    assert score.p_test == "paired-t"
    assert score.p_value == pytest.approx(scipy.stats.ttest_rel(right, left).pvalue, rel=1e-7)

    assert correct.p_test == "mcnemar-exact" and correct.p_value == correct.mcnemar_p
    changed = right_ok - left_ok
    exact = scipy.stats.binomtest(int((changed > 0).sum()), int((changed != 0).sum()), 0.5).pvalue
    assert correct.p_value == pytest.approx(exact, rel=1e-9)
    assert correct.small_n_low is not None and correct.small_n_high is not None
    assert correct.small_n_low <= correct.mean_diff <= correct.small_n_high

    raw = [p.p_value for p in result.paired]
    assert result.adjustment == "holm"
    holm = multipletests(raw, method="holm")[1]
    assert [p.p_adjusted for p in result.paired] == pytest.approx(list(holm), rel=1e-12)
    bh = await Workspace(tmp_path).compare("left", "right", adjustment="bh")
    assert [p.p_adjusted for p in bh.paired] == pytest.approx(
        list(multipletests(raw, method="fdr_bh")[1]), rel=1e-12
    )


async def test_an_unknown_adjustment_is_refused_before_the_workspace_is_read(
    tmp_path: Path,
) -> None:
    (tmp_path / "cache" / "capture").mkdir(parents=True)  # empty: reading it would fail
    with pytest.raises(ValidationError) as caught:
        await Workspace(tmp_path).compare("a", "b", adjustment="sidak")  # type: ignore[arg-type]
    assert caught.value.field == "adjustment"


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run_cli(list(argv), out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def test_compare_target_effect_gives_the_items_needed_per_metric_as_statsmodels_does(
    tmp_path: Path,
) -> None:
    _capture_paired(tmp_path)
    status, out, err = _cli(
        "--workspace", str(tmp_path), "compare", "left", "right", "--json", "--target-effect", "0.1"
    )
    assert status == 0, err
    answer = json.loads(out)
    power = answer["power"]
    assert (power["target_effect"], power["alpha"], power["power"]) == (0.1, 0.05, 0.8)
    by_key = {p["key"]: p for p in answer["paired"]}
    assert sorted(row["key"] for row in power["metrics"]) == sorted(by_key)
    for row in power["metrics"]:
        paired = by_key[row["key"]]
        assert (row["se"], row["n_matched"]) == (paired["se"], paired["n_matched"])
        sd = paired["se"] * math.sqrt(paired["n_matched"])
        # Two-sided at alpha 0.05, the far tail ignored: statsmodels' one-sided power at 0.025.
        exact = NormalIndPower().solve_power(
            effect_size=0.1 / sd, alpha=0.025, power=0.8, ratio=0, alternative="larger"
        )
        assert row["items_needed"] == math.ceil(exact - 1e-6)
    status, table, err = _cli(
        "--workspace", str(tmp_path), "compare", "left", "right", "--target-effect", "0.1"
    )
    assert status == 0, err
    assert "Items needed to detect a difference of 0.1 (80% power, two-sided alpha 0.05)" in table
    for row in power["metrics"]:
        assert re.search(rf"\beval\s+{row['key']}\s+40\s+\S+\s+{row['items_needed']}\n", table)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("left", "right", "--target-effect", "0"), "--target-effect: must be a finite, non-zero"),
        (("left", "right", "--target-effect", "nan"), "--target-effect: must be a finite"),
        (("left", "right", "left", "--target-effect", "0.1"), "--target-effect needs two runs"),
        (("left", "right", "--target-effect", "1e-300"), "--target-effect: is too small for this"),
    ],
)
def test_compare_target_effect_is_refused_as_a_usage_error(
    tmp_path: Path, argv: tuple[str, ...], message: str
) -> None:
    _capture_paired(tmp_path)
    status, out, err = _cli("--workspace", str(tmp_path), "compare", *argv)
    assert (status, out) == (2, "")
    assert message in err


def _capture_identical(workspace: Path) -> None:
    """Two runs with the same values on every sample: every paired difference is 0."""
    with Contexta(workspace=workspace, config={"project_name": "p"}) as ctx:
        for name in ("base", "cand"):
            with ctx.run(name) as run, run.stage("evaluate") as stage:
                for i in range(5):
                    with stage.sample(f"q-{i}") as sample:
                        sample.metric("correct", float(i % 2))
                        sample.metric("loss", float(i))


def test_identical_runs_have_no_power_figures_anywhere(tmp_path: Path) -> None:
    _capture_identical(tmp_path)
    result = anyio.run(Workspace(tmp_path).compare, "base", "cand")
    assert [(p.key, p.se, p.mde) for p in result.paired] == [
        ("correct", 0.0, None),
        ("loss", 0.0, None),
    ]
    status, out, err = _cli(
        "--workspace", str(tmp_path), "compare", "base", "cand", "--json", "--target-effect", "0.01"
    )
    assert status == 0, err
    answer = json.loads(out)
    assert [p["mde"] for p in answer["paired"]] == [None, None]
    assert [row["items_needed"] for row in answer["power"]["metrics"]] == [None, None]
    status, table, err = _cli(
        "--workspace", str(tmp_path), "compare", "base", "cand", "--target-effect", "0.01"
    )
    assert status == 0, err
    power = table[table.index("Items needed") :]
    assert re.search(r"\bevaluate\s+correct\s+5\s+0\s+-\n", power)
    assert "-: not estimable: an SE of 0 (every paired difference equal)" in power
    paired = table[table.index("Paired per") : table.index("Items needed")]
    assert re.search(r"\bevaluate\s+correct\s.*\s-\n", paired)  # the MDE column
    assert "MDE 80% 0\n" not in table.replace("  ", " ")
    cells = _Cells()
    cells.feed(render_html_report(result))
    for metric in ("evaluate / correct", "evaluate / loss"):
        row = cells.rows[metric]
        assert row[1] == "no clear difference (SE 0: every difference equal, power not estimable)"
        assert row[7] == "-"  # MDE (80% power)


def _section(text: str, heading: str) -> list[list[str]]:
    """The rows of the CLI table under the line starting with ``heading`` (header first),
    cells split on runs of two spaces, up to the first indented or empty line."""
    lines = text[text.index("\n" + heading) + 1 :].splitlines()[1:]
    rows = []
    for line in lines:
        if not line or line.startswith(" "):
            break
        rows.append(re.split(r"\s{2,}", line))
    return rows


def test_compare_table_shows_raw_p_with_its_test_se_and_the_small_n_interval(
    tmp_path: Path,
) -> None:
    _capture_paired(tmp_path)
    status, out, err = _cli("--workspace", str(tmp_path), "compare", "left", "right", "--json")
    assert status == 0, err
    paired = {p["key"]: p for p in json.loads(out)["paired"]}
    status, table, err = _cli("--workspace", str(tmp_path), "compare", "left", "right")
    assert status == 0, err
    main = _section(table, "Paired per-sample (right - left; samples matched by name; 95% CI)")
    columns = ["STAGE", "KEY", "DIRECTION", "N", "MEAN DIFF", "95% CI", "W/L/T", "P"]
    assert main[0] == [*columns, "P (HOLM)", "MDE 80%"]
    tags = {"mcnemar-exact": "m", "paired-t": "t"}
    for row in main[1:]:
        p = paired[row[1]]
        assert row[7] == f"{format_number(p['p_value'])} {tags[p['p_test']]}"
        assert (row[8], row[9]) == (format_number(p["p_adjusted"]), format_number(p["mde"]))
    assert "  N: matched samples; P: raw two-sided p of no difference, by the test its tag" in table
    assert "m = exact McNemar test (0/1 metrics), t = paired t-test (n - 1 df)" in " ".join(
        table.split()
    )
    spread = _section(table, "Standard errors of the mean difference and small-n intervals")
    assert spread[0] == ["STAGE", "KEY", "SE", "UNPAIRED SE", "CORRELATION", "SMALL-N 95% CI"]
    assert sorted(row[1] for row in spread[1:]) == sorted(paired)
    for row in spread[1:]:
        p = paired[row[1]]
        assert row[2:5] == [format_number(p[k]) for k in ("se", "unpaired_se", "correlation")]
        if p["small_n_low"] is None:
            assert row[5] == "-"
        else:
            low, high = (format_number(p[k], signed=True) for k in ("small_n_low", "small_n_high"))
            assert row[5] == f"[{low}, {high}]"
    assert paired["correct"]["small_n_low"] is not None  # the 0/1 metric has its interval
    assert "SMALL-N CI: Newcombe's interval for a paired difference of proportions" in table
    assert "MCNEMAR P" not in table


class _Cells(HTMLParser):
    """The rows of the report's "How sure are we" table: data-metric -> cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[str]] = {}
        self._row: list[str] | None = None
        self._in_cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "tr" and "data-metric" in found:
            self._row = self.rows.setdefault(found["data-metric"] or "", [])
        elif tag == "td" and self._row is not None:
            self._row.append("")
            self._in_cell = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._in_cell = False
        elif tag == "tr":
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._row is not None and self._in_cell:
            self._row[-1] += data


def test_report_how_sure_section_shows_the_numbers_of_compare_json(tmp_path: Path) -> None:
    _capture_paired(tmp_path)
    status, out, err = _cli("--workspace", str(tmp_path), "compare", "left", "right", "--json")
    assert status == 0, err
    paired = json.loads(out)["paired"]
    page = tmp_path / "report.html"
    status, _, err = _cli(
        "--workspace", str(tmp_path), "report", "left", "right", "--output", str(page)
    )
    assert status == 0, err
    html = page.read_text(encoding="utf-8")
    assert "<h2 id=how-sure>How sure are we</h2>" in html
    assert "<th>small-n 95% CI (Newcombe)</th>" in html
    cells = _Cells()
    cells.feed(html)
    assert sorted(cells.rows) == sorted(f"eval / {p['key']}" for p in paired)
    for p in paired:
        row = cells.rows[f"eval / {p['key']}"]
        metric, reading, n, mean_diff, ci, p_raw, p_adjusted, mde, se, unpaired, corr = row[:11]
        if p["small_n_low"] is None:  # the small-n column: the 0/1 metric has the interval
            assert row[11] == "-"
        else:
            low, high = (format_number(p[k], signed=True) for k in ("small_n_low", "small_n_high"))
            assert row[11] == f"[{low}, {high}]"
        assert (metric, n) == (f"eval / {p['key']}", str(p["n_matched"]))
        assert mean_diff == format_number(p["mean_diff"], signed=True)
        low, high = (format_number(p[k], signed=True) for k in ("ci_low", "ci_high"))
        assert ci == f"[{low}, {high}]"
        test = {"mcnemar-exact": "exact McNemar", "paired-t": "paired t"}[p["p_test"]]
        assert p_raw == f"{format_number(p['p_value'])} ({test})"
        assert p_adjusted == format_number(p["p_adjusted"])
        assert (mde, se, unpaired) == tuple(
            format_number(p[k]) for k in ("mde", "se", "unpaired_se")
        )
        assert corr == format_number(p["correlation"])
        clear = p["p_adjusted"] < 0.05
        assert reading.startswith("right is better" if clear else "no clear difference")


async def test_report_how_sure_section_escapes_every_user_string(tmp_path: Path) -> None:
    _capture_paired(tmp_path)
    result = await Workspace(tmp_path).compare("left", "right")
    hostile = "<img src=x onerror=alert(1)>'\""
    result.paired = [
        msgspec.structs.replace(p, stage=hostile, key=hostile + p.key) for p in result.paired
    ]
    html = render_html_report(result)
    section = html[html.index("id=how-sure") : html.index("<h2>Metrics</h2>")]
    assert "<img" not in section and hostile not in section
    assert "&lt;img src=x onerror=alert(1)&gt;&#x27;&quot;" in section


async def test_values_near_the_float_range_get_their_standard_errors_and_p_value(
    tmp_path: Path,
) -> None:
    # Their variances pass the float range, though their spread does not: scaled by a power
    # of two first, they get the SE, p and MDE of the same values scaled down.
    rng = np.random.default_rng(5)
    left = rng.uniform(-0.4e308, 0.4e308, 30)
    right = left * 0.5 + rng.uniform(-0.4e308, 0.4e308, 30)
    with Contexta(workspace=tmp_path, config={"project_name": "p"}) as ctx:
        for name, values in (("left", left), ("right", right)):
            with ctx.run(name) as run, run.stage("eval") as stage:
                for i in range(30):
                    with stage.sample(f"case-{i}") as sample:
                        sample.metric("score", float(values[i]))
    (score,) = (await Workspace(tmp_path).compare("left", "right")).paired
    small_left, small_right = left / 2.0**1000, right / 2.0**1000
    assert score.se == pytest.approx(
        scipy.stats.sem(small_right - small_left) * 2.0**1000, rel=1e-9
    )
    unpaired = math.sqrt(small_left.var(ddof=1) / 30 + small_right.var(ddof=1) / 30)
    assert score.unpaired_se == pytest.approx(unpaired * 2.0**1000, rel=1e-9)
    assert score.correlation == pytest.approx(
        scipy.stats.pearsonr(small_left, small_right)[0], rel=1e-9
    )
    assert score.p_value == pytest.approx(
        scipy.stats.ttest_rel(small_right, small_left).pvalue, rel=1e-7
    )
    assert score.se is not None
    assert score.mde == pytest.approx(minimum_detectable_effect(score.se), rel=1e-12)
