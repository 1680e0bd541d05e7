"""Attempts (epochs) of one item wherever they sit in a stage: in one batch, spread over
batches, one batch per epoch, or a single attempt. Pairing is over items either way,
checked against item means computed here and statsmodels' cluster-robust OLS."""

from __future__ import annotations

import random
import statistics
from pathlib import Path

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats

from contexta_async import Contexta
from contexta_async.readers import Workspace

Values = dict[str, dict[str, list[float]]]  # run -> item -> attempts' values


def _expected_clustered(captured: Values, cluster_of: dict[str, str]) -> tuple[int, float, float]:
    """n items, the clustered SE (C/(C-1)) and the clustered-t p of the item-mean differences."""
    items = sorted(captured["base"])
    diffs = np.array(
        [
            statistics.fmean(captured["cand"][item]) - statistics.fmean(captured["base"][item])
            for item in items
        ]
    )
    groups = np.unique([cluster_of[item] for item in items], return_inverse=True)[1]
    fit = sm.OLS(diffs, np.ones(len(diffs))).fit(cov_type="cluster", cov_kwds={"groups": groups})
    se = float(fit.bse[0])
    clusters = len(set(cluster_of.values()))
    p = float(2 * stats.t.sf(abs(diffs.mean() / se), clusters - 1))
    return len(items), se, p


def capture_one_batch_per_epoch(root: Path, epochs: int) -> tuple[Values, dict[str, str]]:
    """Batch ``epoch-k`` holds attempt k of all 20 items (5 clusters of 4)."""
    rng = random.Random(5)
    captured: Values = {}
    cluster_of = {}
    with Contexta(workspace=root, config={"project_name": "p"}) as ctx:
        for run_name, shift in (("base", 0.0), ("cand", 0.2)):
            effects = [rng.gauss(0, 1) for _ in range(5)]
            with ctx.run(run_name) as run, run.stage("evaluate") as stage:
                for k in range(1, epochs + 1):
                    with stage.batch(f"epoch-{k}") as batch:
                        for c in range(5):
                            for q in range(4):
                                item = f"q-{c}-{q}"
                                cluster_of[item] = f"c{c}"
                                with batch.sample(item, cluster=f"c{c}", epoch=k) as sample:
                                    value = shift * effects[c] + rng.gauss(0, 0.2)
                                    sample.metric("score", value)
                                    captured.setdefault(run_name, {}).setdefault(item, []).append(
                                        value
                                    )
    return captured, cluster_of


@pytest.mark.parametrize("epochs", [2, 1])
async def test_attempts_in_one_batch_per_epoch_pair_by_item_with_their_clusters(
    tmp_path: Path, epochs: int
) -> None:
    # Two attempts are averaged per item; a single epoch=1 attempt pairs by the item's name.
    captured, cluster_of = capture_one_batch_per_epoch(tmp_path / "ws", epochs=epochs)
    result = await Workspace(tmp_path / "ws").compare("base", "cand", include_samples=True)
    paired = result.paired[0]
    n, se, p = _expected_clustered(captured, cluster_of)
    assert paired.n_matched == n == 20
    assert paired.clusters == 5
    assert paired.attempts_left == paired.attempts_right == float(epochs)
    assert paired.se is not None and abs(paired.se - se) <= 1e-12 * se
    assert paired.p_test == "clustered-t"
    assert paired.p_value is not None and abs(paired.p_value - p) <= 1e-6
    assert paired.samples is not None
    assert {s.name for s in paired.samples} == set(captured["base"])
    assert all("epoch" not in s.name for s in paired.samples)


async def test_one_attempt_against_several_attempts_matches_every_item(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    with Contexta(workspace=root, config={"project_name": "p"}) as ctx:
        for run_name, attempts in (("base", 1), ("cand", 3)):
            with ctx.run(run_name) as run, run.stage("evaluate") as stage:
                for i in range(10):
                    for k in range(1, attempts + 1):
                        with stage.sample(f"q-{i}", epoch=k) as sample:
                            sample.metric("score", float(i + k))
    result = await Workspace(root).compare("base", "cand")
    paired = result.paired[0]
    assert paired.n_matched == 10
    assert paired.unmatched_left == paired.unmatched_right == []
    # item i: base i + 1, cand mean of i+1, i+2, i+3 = i + 2
    assert paired.mean_diff == 1.0
    assert paired.attempts_left == 1.0 and paired.attempts_right == 3.0


async def test_attempts_spread_over_batches_and_plain_samples_in_one_stage_compare(
    tmp_path: Path,
) -> None:
    values = {
        "base": {"a": [0, 1], "b": [1, 1], "c": [0, 0], "d": [1, 0], "e": [1]},
        "cand": {"a": [1, 1], "b": [1, 0], "c": [1, 1], "d": [1, 1], "e": [0]},
    }
    root = tmp_path / "ws"
    with Contexta(workspace=root, config={"project_name": "p"}) as ctx:
        for run_name, items in values.items():
            with ctx.run(run_name) as run, run.stage("evaluate") as stage:
                for batch_name, names in (("b1", "ab"), ("b2", "cd")):
                    with stage.batch(batch_name) as batch:
                        for item in names:
                            for k, v in enumerate(items[item], 1):
                                with batch.sample(item, epoch=k) as sample:
                                    sample.metric("score", float(v))
                with stage.sample("e") as sample:  # no epoch, no batch
                    sample.metric("score", float(items["e"][0]))
    result = await Workspace(root).compare("base", "cand", include_samples=True)
    paired = result.paired[0]
    expected = statistics.fmean(
        statistics.fmean(values["cand"][i]) - statistics.fmean(values["base"][i]) for i in "abcde"
    )
    assert paired.n_matched == 5
    assert paired.mean_diff is not None and abs(paired.mean_diff - expected) < 1e-12
    assert paired.samples is not None
    assert sorted(s.name for s in paired.samples) == list("abcde")
    # four items attempted twice, one once
    assert paired.attempts_left == paired.attempts_right == 9 / 5


async def test_attempts_near_the_float_range_average_without_overflow(tmp_path: Path) -> None:
    ctx = Contexta(workspace=tmp_path / "ws", config={"project_name": "p"})
    for name, value in (("a", 1.5e308), ("b", 1.0e308)):
        with ctx.run(name) as run, run.stage("s") as stage:
            for i in range(3):
                for epoch in (1, 2):
                    with stage.sample(f"q-{i}", epoch=epoch) as sample:
                        sample.metric("v", value * (1 if epoch == 1 else 0.5))
    ctx.close()
    comparison = await Workspace(tmp_path / "ws").compare("a", "b")
    delta, paired = comparison.metrics[0], comparison.paired[0]
    assert delta.left == pytest.approx(1.125e308, rel=1e-15)  # the mean of 1.5e308 and 0.75e308
    assert delta.right == pytest.approx(0.75e308, rel=1e-15)
    assert paired.mean_diff == pytest.approx(-0.375e308, rel=1e-15)
    assert paired.method == "constant"
    # Each item's attempts vary by 2 x (0.375e308)^2: past the float range, so inf.
    assert paired.within_item_variance_left == float("inf")
