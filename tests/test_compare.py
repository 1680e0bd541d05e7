"""Comparing runs: deltas, paired per-sample statistics, artifacts, N runs, best run."""

from __future__ import annotations

import math
import random
import re
import statistics
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import anyio
import pytest
from scipy import stats

from contexta_async import Contexta, ValidationError
from contexta_async.readers import (
    SADDLEPOINT_MIN_PAIRS,
    AmbiguousMetricError,
    MetricNotFoundError,
    Workspace,
    infer_direction,
    render_html_report,
)
from contexta_async.readers._aggregate import RunMetrics, natural_key
from contexta_async.readers._analysis import _alignment
from contexta_async.readers._pairing import _paired_values

from .test_readers_helpers import CASES, capture_llm_workspace, copy_fixture_10, with_empty_runs


async def test_compare_two_captured_runs(tmp_path: Path) -> None:
    ws = Workspace(capture_llm_workspace(tmp_path / "ws"))
    result = await ws.compare("helpful-only", "grounded")
    assert result.left.ref == "run:mock-openai-compare.helpful-only"
    assert result.right.ref == "run:mock-openai-compare.grounded"
    rows = {(m.stage, m.scope, m.key): m for m in result.metrics}
    rate = rows[("evaluate", "stage", "pass.rate")]
    left_rate = sum(c[1] for c in CASES) / len(CASES)
    right_rate = sum(c[2] for c in CASES) / len(CASES)
    assert rate.basis == "latest"  # 0.1 was captured first in both runs, then superseded
    assert (rate.left, rate.right) == (pytest.approx(left_rate), pytest.approx(right_rate))
    assert rate.delta == pytest.approx(right_rate - left_rate)
    assert rate.relative_change == pytest.approx((right_rate - left_rate) / left_rate)
    correct = rows[("evaluate", "sample", "correct")]
    assert correct.basis == "mean"
    assert (correct.left_count, correct.right_count) == (6, 7)  # grounded has case-99 too
    assert correct.left == pytest.approx(left_rate)
    assert correct.right == pytest.approx((right_rate * 6 + 1.0) / 7)
    tokens = rows[("evaluate", "sample", "completion.tokens")]
    assert tokens.left == pytest.approx(sum(c[3] for c in CASES) / 6)
    assert any("different datasets" in w for w in result.warnings)
    assert any("sample sets differ (0 only in left, 1 only in right)" in w for w in result.warnings)
    assert any("latest" in n for n in result.notes)
    changes = {(a.change, a.kind) for a in result.artifacts}
    assert changes == {("changed", "report"), ("added", "model")}
    report = next(a for a in result.artifacts if a.kind == "report")
    assert report.left_hash != report.right_hash
    assert report.left_location is not None and report.left_location.endswith("helpful-only.txt")


async def test_paired_analysis_matches_samples_by_name(tmp_path: Path) -> None:
    ws = Workspace(capture_llm_workspace(tmp_path / "ws"))
    result = await ws.compare("helpful-only", "grounded", seed=7, include_samples=True)
    paired = {p.key: p for p in result.paired}
    correct = paired["correct"]
    assert correct.n_matched == 6
    assert (correct.unmatched_left, correct.unmatched_right) == ([], ["case-99"])
    assert correct.binary and correct.direction == "maximize" and correct.direction_inferred
    assert correct.fixed == ["case-2", "case-4", "case-5"]
    assert correct.regressed == ["case-3"]
    assert (correct.wins, correct.losses, correct.ties) == (3, 1, 2)
    assert correct.mcnemar_p == pytest.approx(stats.binomtest(1, 4, 0.5).pvalue)
    diffs = [right - left for _, left, right, _, _ in CASES]
    assert correct.mean_diff == pytest.approx(sum(diffs) / 6)
    assert correct.ci_low is not None and correct.ci_high is not None
    assert correct.ci_low <= correct.mean_diff <= correct.ci_high
    assert correct.samples is not None
    assert [s.name for s in correct.samples] == [c[0] for c in CASES]  # natural order
    assert [s.diff for s in correct.samples] == diffs
    tokens = paired["completion.tokens"]
    assert tokens.direction == "minimize" and not tokens.binary and tokens.mcnemar_p is None
    token_diffs = [r - lft for _, _, _, lft, r in CASES]
    assert tokens.wins == sum(d < 0 for d in token_diffs)  # fewer tokens is better
    assert tokens.losses == sum(d > 0 for d in token_diffs)
    assert (tokens.regressed, tokens.fixed) == ([], [])
    again = await ws.compare("helpful-only", "grounded", seed=7)
    assert [(p.ci_low, p.ci_high) for p in again.paired] == [
        (p.ci_low, p.ci_high) for p in result.paired
    ]
    flipped = await ws.compare("helpful-only", "grounded", directions={"correct": "minimize"})
    flipped_correct = next(p for p in flipped.paired if p.key == "correct")
    assert not flipped_correct.direction_inferred
    assert flipped_correct.regressed == ["case-2", "case-4", "case-5"]
    assert (flipped_correct.wins, flipped_correct.losses) == (1, 3)


async def test_samples_pair_across_batches_and_duplicate_names_are_warned(tmp_path: Path) -> None:
    ctx = Contexta(workspace=tmp_path / "ws", config={"project_name": "p"})
    with ctx.run("left") as run, run.stage("evaluate") as stage:
        with stage.batch("part-1") as batch:
            for name, value in [("a", 1.0), ("b", 0.0)]:
                with batch.sample(name) as sample:
                    sample.metric("correct", value)
        with stage.batch("part-2") as batch, batch.sample("a") as sample:
            sample.metric("correct", 0.0)  # a second sample named "a" in this stage
    with ctx.run("right") as run, run.stage("evaluate") as stage:
        for name in ("a", "b"):
            with stage.sample(name) as sample:
                sample.metric("correct", 1.0)
    ctx.close()
    result = await Workspace(tmp_path / "ws").compare("left", "right")
    correct = result.paired[0]
    assert correct.n_matched == 2
    assert correct.fixed == ["a", "b"]  # "a" keeps the value captured last (0.0)
    assert any("several samples named 'a'" in w for w in result.warnings)


async def test_compare_contexta10_fixture(tmp_path: Path) -> None:
    ws = Workspace(copy_fixture_10(tmp_path / "old"))
    result = await ws.compare("helpful-only", "grounded")
    rows = {(m.stage, m.scope, m.key): m for m in result.metrics}
    rate = rows[("evaluate", "stage", "pass.rate")]
    assert (rate.left, rate.right, rate.delta, rate.relative_change) == (0.5, 1.0, 0.5, 1.0)
    correct = next(p for p in result.paired if p.key == "correct")
    assert (correct.n_matched, correct.fixed, correct.regressed) == (
        2,
        ["unsupported-question"],
        [],
    )
    assert correct.mcnemar_p == 1.0
    assert not any("still open" in w for w in result.warnings)
    iris = await ws.compare("linear-svm", "rbf-svm")
    batch_rows = {(m.scope, m.batch, m.key): m for m in iris.metrics}
    accuracy = batch_rows[("batch", "holdout-split", "accuracy")]
    assert accuracy.delta == pytest.approx(0.9555555555555556 - 0.9777777777777777)
    assert [(a.change, a.kind) for a in iris.artifacts] == [("changed", "model")]
    assert iris.left.status == "unknown"


@pytest.mark.parametrize(
    ("key", "direction"),
    [
        ("loss", "minimize"),
        ("val.loss", "minimize"),
        ("error-rate", "minimize"),
        ("latency.ms", "minimize"),
        ("cost.usd", "minimize"),
        ("completion.tokens", "minimize"),
        ("time", "minimize"),
        ("step.duration", "minimize"),
        ("attempts", "minimize"),
        ("failed.calls", "minimize"),
        ("accuracy", "maximize"),
        ("macro.f1", "maximize"),
        ("pass.rate", "maximize"),
        ("correct", "maximize"),
        ("lossless-ratio", "maximize"),  # a part must be the word itself
    ],
)
def test_direction_is_inferred_from_the_key(key: str, direction: str) -> None:
    assert infer_direction(key) == direction


def _capture_three(workspace: Path) -> None:
    ctx = Contexta(workspace=workspace, config={"project_name": "train"})
    for name, loss, accuracy in [("a", 0.30, 0.80), ("b", 0.20, 0.90), ("c", 0.20, None)]:
        with ctx.run(name) as run:
            with run.stage("fit") as stage:
                stage.metric("loss", loss)
            with run.stage("evaluate") as stage:
                stage.metric("loss", loss + 0.1)
                if accuracy is not None:
                    stage.metric("accuracy", accuracy)
    ctx.close()


async def test_best_run_honours_direction_ties_and_missing_values(tmp_path: Path) -> None:
    _capture_three(tmp_path / "ws")
    ws = Workspace(tmp_path / "ws")
    lowest = await ws.best_run(["a", "b", "c"], "loss", stage="fit")
    assert (lowest.direction, lowest.direction_inferred) == ("minimize", True)
    assert lowest.winners == ["run:train.b", "run:train.c"] and lowest.tie
    assert [(r.run, r.rank) for r in lowest.ranking] == [
        ("run:train.b", 1),
        ("run:train.c", 1),
        ("run:train.a", 3),
    ]
    highest = await ws.best_run(["a", "b", "c"], "loss", stage="fit", direction="maximize")
    assert highest.winners == ["run:train.a"] and not highest.direction_inferred
    accuracy = await ws.best_run(["a", "b", "c"], "accuracy")
    assert accuracy.winners == ["run:train.b"] and not accuracy.tie
    assert accuracy.missing == ["run:train.c"]
    assert accuracy.ranking[-1].rank is None
    with pytest.raises(AmbiguousMetricError, match=re.escape("fit/stage, evaluate/stage")):
        await ws.best_run(["a", "b"], "loss")
    with pytest.raises(MetricNotFoundError):
        await ws.best_run(["a", "b"], "bleu")
    with pytest.raises(MetricNotFoundError):
        await ws.best_run(["c"], "accuracy")


async def test_compare_many_puts_every_run_in_one_table(tmp_path: Path) -> None:
    _capture_three(tmp_path / "ws")
    table = await Workspace(tmp_path / "ws").compare_many(["a", "b", "c"])
    assert [r.ref for r in table.runs] == ["run:train.a", "run:train.b", "run:train.c"]
    rows = {(r.stage, r.key): r for r in table.rows}
    assert [row for row in rows] == [
        ("fit", "loss"),
        ("evaluate", "accuracy"),
        ("evaluate", "loss"),
    ]
    assert rows[("evaluate", "accuracy")].values == [0.8, 0.9, None]
    assert rows[("evaluate", "accuracy")].best == ["run:train.b"]
    assert rows[("fit", "loss")].best == ["run:train.b", "run:train.c"]
    assert rows[("fit", "loss")].direction == "minimize"


async def test_html_report_is_self_contained(tmp_path: Path) -> None:
    ws = Workspace(capture_llm_workspace(tmp_path / "ws"))
    result = await ws.compare("helpful-only", "grounded", include_samples=True)
    page = render_html_report(result)
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == len(result.paired) == 2
    assert "pass.rate" in page and "case-3" in page and "different datasets" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script" not in page and "@import" not in page and "url(" not in page
    hostile = await ws.compare("helpful-only", "grounded")
    hostile.warnings.append("<script>alert(1)</script>")
    assert "<script>" not in render_html_report(hostile)
    assert "No matched samples" not in page


async def test_the_report_of_differences_past_the_float_range_charts_the_finite_ones(
    tmp_path: Path,
) -> None:
    ctx = Contexta(workspace=tmp_path / "ws", config={"project_name": "p"})
    for name, value in (("left", -1e308), ("right", 1e308)):
        with ctx.run(name) as run, run.stage("s") as stage:
            for i in range(5):
                with stage.sample(f"q-{i}") as sample:
                    # q-0 differs by 1.0; the others by 2e308: past the float range.
                    sample.metric("score", (0.5 if name == "right" else -0.5) if i == 0 else value)
    ctx.close()
    result = await Workspace(tmp_path / "ws").compare("left", "right", include_samples=True)
    assert result.paired[0].method == "non-finite"
    page = render_html_report(result)
    assert not re.search(r"=\"-?(nan|inf)\"", page)  # no SVG coordinate is nan or inf
    assert "1 samples (4 not finite, left out)" in page
    assert "not tested (differences past the float range)" in page
    assert "fewer than 2 matched samples" not in page


def test_the_readers_hand_out_the_report_without_loading_it_to_read() -> None:
    code = (
        "import sys, contexta_async.readers as readers\n"
        "assert 'contexta_async.report' not in sys.modules\n"
        "import contexta_async.report as report\n"
        "assert readers.render_html_report is report.render_html_report\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_natural_order_sorts_numbers_by_value_whatever_the_name_shape() -> None:
    names = [
        "case-10",
        "case-2",
        "case-1",
        "b",
        "a10b2",
        "a10b10",
        "a9",
        "7",
        "case-٣",
        "v2.10",
        "²",
        "x²1",
        "case-01",
        "a",
    ]
    assert sorted(names, key=natural_key) == [
        "a",  # before its extensions
        "a9",
        "a10b2",
        "a10b10",
        "b",
        "case-01",  # equal parts: then by the name itself
        "case-1",
        "case-2",
        "case-٣",  # an Arabic-Indic three
        "case-10",
        "v2.10",
        "x²1",  # a superscript two is text, not a number
        "²",
        "7",  # text parts sort before number parts
    ]
    # "<text><number>" names take a fast path; it builds the same key as the general one.
    assert natural_key("case-0042") == (0, "case-", 1, 42, -1, "case-0042")
    assert natural_key("v2.10") == (0, "v", 1, 2, 0, ".", 1, 10, -1, "v2.10")
    assert natural_key("12") == (1, 12, -1, "12")


def _capture_large(workspace: Path) -> None:
    """Two runs of SADDLEPOINT_MIN_PAIRS samples each: a skewed latency and a 0/1 metric."""
    rng = random.Random(5)
    with Contexta(workspace=workspace, config={"project_name": "big"}) as ctx:
        for name, shift in (("base", 0.0), ("tuned", -4.0)):
            with ctx.run(name) as run, run.stage("evaluate") as stage:
                for i in range(SADDLEPOINT_MIN_PAIRS):
                    with stage.sample(f"case-{i}") as sample:
                        sample.metric("latency.ms", rng.lognormvariate(5.0, 0.5) + shift)
                        sample.metric("correct", float(rng.random() < 0.7))


async def test_large_runs_get_the_saddlepoint_interval_of_the_same_bootstrap(
    tmp_path: Path,
) -> None:
    await anyio.to_thread.run_sync(_capture_large, tmp_path)
    ws = Workspace(tmp_path)
    auto = await ws.compare("base", "tuned", include_samples=True)
    paired = {p.key: p for p in auto.paired}
    assert paired["latency.ms"].n_matched == SADDLEPOINT_MIN_PAIRS
    assert [paired[key].method for key in ("correct", "latency.ms")] == ["saddlepoint"] * 2
    assert "bootstrap distribution by saddlepoint approximation (no resampling)" in auto.notes[-1]
    assert "resamples" not in auto.notes[-1]
    resampled = await ws.compare("base", "tuned", bootstrap="resample", resamples=4000, seed=1)
    assert "4000 resamples, seed 1" in resampled.notes[-1]
    assert "saddlepoint" not in resampled.notes[-1]
    for again in resampled.paired:
        assert again.method == "numpy"
        approximated = paired[again.key]
        samples = approximated.samples or []
        se = statistics.pstdev(s.diff for s in samples) / math.sqrt(len(samples))
        # 4000 resamples put each endpoint within ~0.04 standard errors of the bootstrap's.
        assert approximated.ci_low is not None and again.ci_low is not None
        assert approximated.ci_high is not None and again.ci_high is not None
        assert abs(approximated.ci_low - again.ci_low) < 0.2 * se
        assert abs(approximated.ci_high - again.ci_high) < 0.2 * se


async def test_compare_rejects_a_bad_bootstrap_option_before_reading(tmp_path: Path) -> None:
    (tmp_path / "cache" / "capture").mkdir(parents=True)
    ws = Workspace(tmp_path)  # empty: reading it would raise EmptyWorkspaceError
    with pytest.raises(ValidationError, match="bootstrap: must be 'auto', 'resample' or"):
        await ws.compare("a", "b", bootstrap="exact")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="confidence: must be between 0 and 1"):
        await ws.compare("a", "b", confidence=1.5)
    with pytest.raises(ValidationError, match="resamples: must be at least 1"):
        await ws.compare("a", "b", resamples=0)


@pytest.mark.parametrize(
    ("options", "field", "rule"),
    [
        ({"directions": {"loss": "up"}}, "directions['loss']", "must be 'maximize' or 'minimize'"),
        (
            {"directions": {"loss": "maximise"}},
            "directions['loss']",
            "must be 'maximize' or 'minimize'",
        ),
        ({"directions": ["loss"]}, "directions", "must be a mapping of metric key to direction"),
        ({"directions": {1: "maximize"}}, "directions", "keys must be metric keys (str)"),
        ({"seed": -1}, "seed", "must be a non-negative integer"),
        ({"seed": 1.5}, "seed", "must be an integer"),
        ({"seed": "x"}, "seed", "must be an integer"),
        ({"seed": True}, "seed", "must be an integer"),
        ({"resamples": 2.5}, "resamples", "must be an integer"),
        ({"resamples": True}, "resamples", "must be an integer"),
        ({"resamples": 0}, "resamples", "must be at least 1"),
        ({"confidence": "0.9"}, "confidence", "must be a number between 0 and 1"),
        ({"confidence": math.nan}, "confidence", "must be between 0 and 1"),
        ({"confidence": True}, "confidence", "must be a number between 0 and 1"),
        ({"include_samples": "no"}, "include_samples", "must be True or False"),
        ({"include_samples": 1}, "include_samples", "must be True or False"),
        ({"adjustment": ["holm"]}, "adjustment", "must be one of ['holm', 'bh', 'none']"),
    ],
)
async def test_every_compare_option_is_checked_by_name_before_reading(
    tmp_path: Path, options: dict[str, object], field: str, rule: str
) -> None:
    (tmp_path / "cache" / "capture").mkdir(parents=True)
    ws = Workspace(tmp_path)  # empty: reading it would raise EmptyWorkspaceError
    with pytest.raises(ValidationError) as caught:
        await ws.compare("a", "b", **options)  # type: ignore[arg-type]
    assert (caught.value.field, caught.value.rule) == (field, rule)


async def test_compare_many_checks_its_directions_by_name_before_reading(tmp_path: Path) -> None:
    (tmp_path / "cache" / "capture").mkdir(parents=True)
    ws = Workspace(tmp_path)
    with pytest.raises(ValidationError) as caught:
        await ws.compare_many(["a", "b"], directions={"loss": "up"})  # type: ignore[dict-item]
    assert caught.value.field == "directions['loss']"
    with pytest.raises(ValidationError) as caught:
        await ws.best_run(["a", "b"], "loss", direction="up")  # type: ignore[arg-type]
    assert caught.value.field == "direction"


async def test_numpy_integers_and_floats_are_accepted_as_compare_options(tmp_path: Path) -> None:
    import numpy as np

    ws = Workspace(capture_llm_workspace(tmp_path / "ws"))
    result = await ws.compare(
        "helpful-only",
        "grounded",
        seed=np.int64(3),  # type: ignore[arg-type]
        resamples=np.int32(500),  # type: ignore[arg-type]
        confidence=np.float64(0.9),
    )
    paired = result.paired[0]
    assert (type(paired.seed), type(paired.resamples), type(paired.confidence)) == (
        int,
        int,
        float,
    )
    assert (paired.seed, paired.resamples, paired.confidence) == (3, 500, 0.9)


async def test_samples_captured_in_another_order_are_paired_by_name(tmp_path: Path) -> None:
    def capture() -> None:
        with Contexta(workspace=tmp_path, config={"project_name": "order"}) as ctx:
            for name, order in (("forward", range(40)), ("backward", range(39, -1, -1))):
                with ctx.run(name) as run, run.stage("evaluate") as stage:
                    for i in order:
                        if name == "backward" and i == 7:
                            continue  # one sample missing on the right
                        with stage.sample(f"case-{i}") as sample:
                            # right - left is 1 for every sample, paired by name
                            sample.metric("score", float(i) + (name == "backward"))

    await anyio.to_thread.run_sync(capture)
    result = await Workspace(tmp_path).compare("forward", "backward", include_samples=True)
    (score,) = result.paired
    assert score.n_matched == 39 and score.unmatched_left == ["case-7"]
    assert score.mean_diff == 1.0 and (score.ci_low, score.ci_high) == (1.0, 1.0)
    assert [s.name for s in score.samples or []][:3] == ["case-0", "case-1", "case-2"]
    assert all(s.diff == 1.0 and s.left == int(s.name[5:]) for s in score.samples or [])


def test_pairing_matches_names_whatever_their_order_in_each_run() -> None:
    left = {"a": 1.0, "b": 2.0, "c": 3.0}
    same_order = {"a": 11.0, "b": 12.0, "c": 13.0}
    other_order = {"c": 13.0, "a": 11.0, "b": 12.0}
    fewer = {"c": 13.0, "a": 11.0, "z": 0.0}

    def paired(lmap: dict[str, float], rmap: dict[str, float]) -> tuple[Any, ...]:
        names, lvals, rvals = _paired_values(lmap, rmap)
        return names, lvals.tolist(), rvals.tolist()

    for right in (same_order, other_order):
        names, lvals, rvals = paired(left, right)
        assert dict(zip(names, zip(lvals, rvals, strict=True), strict=True)) == {
            "a": (1.0, 11.0),
            "b": (2.0, 12.0),
            "c": (3.0, 13.0),
        }
    assert paired(left, fewer) == (["a", "c"], [1.0, 3.0], [11.0, 13.0])
    assert paired(fewer, left) == (["c", "a"], [13.0, 11.0], [3.0, 1.0])


def test_sample_set_warning_counts_names_over_all_metrics_of_the_stage() -> None:
    left, right = RunMetrics(), RunMetrics()

    def warnings(stage: str) -> list[str]:
        return _alignment(left, right, [stage], {}, "run:x.l", "run:x.r")[1]

    left.samples[("evaluate", "correct")] = {"a": 1.0, "b": 0.0, "c": 1.0}
    left.samples[("evaluate", "latency.ms")] = {"a": 1.0, "b": 2.0, "c": 3.0}
    right.samples[("evaluate", "correct")] = {"c": 1.0, "b": 1.0, "a": 0.0}  # another order
    right.samples[("evaluate", "latency.ms")] = {"a": 1.0, "b": 2.0, "c": 3.0}
    assert warnings("evaluate") == []
    # "d" has only a latency on the left, "e" and "f" only a score on the right.
    left.samples[("evaluate", "latency.ms")]["d"] = 4.0
    right.samples[("evaluate", "score")] = {"e": 1.0, "f": 1.0}
    assert warnings("evaluate") == [
        "stage evaluate: the sample sets differ (1 only in left, 2 only in right)"
    ]
    assert warnings("other-stage") == []
    assert sorted(left.sample_names("evaluate")) == ["a", "b", "c", "d"]


async def test_differences_past_the_float_range_get_no_interval_and_no_error(
    tmp_path: Path,
) -> None:
    def capture() -> None:
        with Contexta(workspace=tmp_path, config={"project_name": "huge"}) as ctx:
            for name, sign in (("left", 1.0), ("right", -1.0)):
                with ctx.run(name) as run, run.stage("evaluate") as stage:
                    for i in range(3):
                        with stage.sample(f"case-{i}") as sample:
                            sample.metric("score", sign * 1.7e308)  # right - left overflows
                            sample.metric("correct", float(i % 2))

    await anyio.to_thread.run_sync(capture)
    result = await Workspace(tmp_path).compare("left", "right")
    paired = {p.key: p for p in result.paired}
    score = paired["score"]
    assert score.method == "non-finite" and (score.ci_low, score.ci_high) == (None, None)
    assert score.mean_left == 1.7e308 and score.mean_right == -1.7e308
    assert score.mean_diff == -math.inf and score.wins + score.losses == 3
    assert paired["correct"].method == "constant"  # the other metrics are unaffected
    row = next(m for m in result.metrics if m.key == "score")
    assert row.left == 1.7e308  # the mean of three values near the float range


def test_runs_without_records_are_compared_as_having_no_metrics_and_said_so(
    tmp_path: Path,
) -> None:
    # "empty" finished having captured nothing; "live" is open with nothing captured yet.
    refs = {name: f"run:mock-openai-compare.{name}" for name in ("empty", "live", "grounded")}

    async def read() -> None:
        ws = Workspace(tmp_path / "ws")
        for name in ("empty", "live"):
            ref = refs[name]
            said = f"{ref} has no metrics (it holds no records): nothing of it to compare"
            for left, right in ((name, "grounded"), ("grounded", name)):
                result = await ws.compare(left, right)
                # The other run's per-sample metrics, with no sample to pair them with.
                assert result.paired and all(p.n_matched == 0 for p in result.paired)
                assert all(p.mean_diff is None and p.ci_low is None for p in result.paired)
                assert result.metrics and all(
                    (m.left if left == name else m.right) is None for m in result.metrics
                )
                assert all(m.delta is None for m in result.metrics)
                assert said in result.warnings
            alone = await ws.compare(name, name)
            assert (alone.metrics, alone.paired) == ([], [])
            assert said in alone.warnings
        live = await ws.compare("live", "grounded")
        assert f"{refs['live']} is still open: its data may be incomplete" in live.warnings
        table = await ws.compare_many(["empty", "live", "grounded"])
        assert table.rows and all(row.values[:2] == [None, None] for row in table.rows)
        assert all(row.best == [refs["grounded"]] for row in table.rows)
        assert sum("has no metrics" in w for w in table.warnings) == 2
        best = await ws.best_run(["empty", "live", "grounded"], "pass.rate")
        assert (best.winners, best.missing) == ([refs["grounded"]], [refs["empty"], refs["live"]])
        with pytest.raises(MetricNotFoundError, match=r"'pass\.rate'"):
            await ws.best_run(["empty", "live"], "pass.rate")
        assert (await ws.get_run("empty")).counts.total == 0

    with with_empty_runs(tmp_path / "ws"):
        anyio.run(read)


def test_compare_over_values_near_the_float_range_warns_of_nothing(tmp_path: Path) -> None:
    ctx = Contexta(workspace=tmp_path / "ws", config={"project_name": "p"})
    for name, sign in (("low", -1.0), ("high", 1.0)):
        with ctx.run(name) as run, run.stage("evaluate") as stage:
            for i in range(40):
                with stage.sample(f"case-{i}") as sample:
                    sample.metric("score", sign * (0.85e308 if i % 3 else 0.5e308))
    ctx.close()

    async def compare() -> object:
        return await Workspace(tmp_path / "ws").compare("low", "high")

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow RuntimeWarning, in any thread
        result = anyio.run(compare)
    (paired,) = result.paired  # type: ignore[attr-defined]
    assert paired.n_matched == 40
    assert paired.ci_low is not None and paired.ci_high is not None
    assert math.isfinite(paired.ci_low) and math.isfinite(paired.ci_high)
    assert paired.ci_low <= paired.mean_diff <= paired.ci_high
