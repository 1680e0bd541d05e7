"""Clusters and repeated attempts (epochs) in the comparison, end to end: captured with
``stage.sample(name, cluster=, epoch=)``, compared, and checked against an independent
computation from the captured values (statsmodels' cluster-robust OLS, scipy, by hand)."""

from __future__ import annotations

import io
import json
import math
import random
import re
import statistics
from pathlib import Path

import anyio
import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.multitest import multipletests

from contexta_async import Contexta
from contexta_async._cli import run_cli
from contexta_async.readers import Workspace
from contexta_async.report import format_number, render_html_report

ITEMS = 30
UNCLUSTERED = {27, 28, 29}  # no cluster given: each is a cluster of its own


def _cluster(i: int) -> str | None:
    return None if i in UNCLUSTERED else f"passage-{i // 3}"


def _attempts(run: str, i: int) -> int:
    return 1 + i % 3


def capture_clustered(root: Path, *, epochs: bool = True) -> dict[str, dict[str, list[dict]]]:
    """Two runs, items q-0..q-29 in clusters of three (the last three unclustered), item i
    attempted 1 + i % 3 times (with ``epochs``); returns run -> metric -> item -> values."""
    rng = random.Random(14)
    captured: dict[str, dict[str, dict[str, list[float]]]] = {}
    ctx = Contexta(workspace=root, config={"project_name": "p"})
    for run_name, shift in (("base", 0.0), ("cand", 0.4)):
        mine = captured[run_name] = {"score": {}, "correct": {}}
        with ctx.run(run_name) as run, run.stage("evaluate") as stage:
            for i in range(ITEMS):
                passage = rng.gauss(0.0, 1.0)  # shared by the attempts: correlated within
                for k in range(1, (_attempts(run_name, i) if epochs else 1) + 1):
                    with stage.sample(
                        f"q-{i}", cluster=_cluster(i), epoch=k if epochs else None
                    ) as sample:
                        score = round(passage + shift + rng.gauss(0.0, 0.5) + (i // 3) * 0.2, 6)
                        correct = float(rng.random() < 0.4 + shift / 2)
                        sample.metric("score", score)
                        sample.metric("correct", correct)
                        mine["score"].setdefault(f"q-{i}", []).append(score)
                        mine["correct"].setdefault(f"q-{i}", []).append(correct)
    ctx.close()
    return captured  # type: ignore[return-value]


def _item_means(values: dict[str, list[float]]) -> dict[str, float]:
    return {item: sum(v) / len(v) for item, v in values.items()}


@pytest.mark.parametrize("epochs", [True, False])
async def test_clustered_se_equals_statsmodels_on_item_mean_differences(
    tmp_path: Path, epochs: bool
) -> None:
    captured = capture_clustered(tmp_path / "ws", epochs=epochs)
    result = await Workspace(tmp_path / "ws").compare("base", "cand")
    paired = {p.key: p for p in result.paired}
    items = [f"q-{i}" for i in range(ITEMS)]
    labels = [_cluster(i) or f"own-{i}" for i in range(ITEMS)]
    groups = np.unique(labels, return_inverse=True)[1]
    for key in ("score", "correct"):
        left = _item_means(captured["base"][key])
        right = _item_means(captured["cand"][key])
        diffs = np.array([right[item] - left[item] for item in items])
        p = paired[key]
        assert p.n_matched == ITEMS  # items, not attempts
        assert p.mean_diff == pytest.approx(float(np.mean(diffs)), abs=1e-12)
        fit = sm.OLS(diffs, np.ones(ITEMS)).fit(cov_type="cluster", cov_kwds={"groups": groups})
        assert p.se == pytest.approx(float(fit.bse[0]), rel=1e-9)
        assert p.clusters == 9 + len(UNCLUSTERED)  # passages 0..8, three alone
        naive = float(stats.sem(diffs))
        assert p.naive_se == pytest.approx(naive, rel=1e-9)
        assert p.design_effect == pytest.approx((p.se / naive) ** 2, rel=1e-9)
        # The p-value and the MDE use the clustered SE (Student t with C - 1 df).
        t = float(np.mean(diffs)) / float(fit.bse[0])
        expected_p = 2 * stats.t.sf(abs(t), p.clusters - 1)
        assert p.p_test == "clustered-t"
        assert p.p_value == pytest.approx(expected_p, rel=1e-7)
        assert p.mde == pytest.approx(
            (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * float(fit.bse[0]), rel=1e-9
        )
        assert p.method == "cluster-bootstrap"
        assert p.ci_low is not None and p.ci_high is not None
        assert p.ci_low < p.mean_diff < p.ci_high
        # What pairing bought compares like with like: the unpaired SE (as if the runs had
        # different items) is each run's mean with its clustered SE.
        sides = [
            sm.OLS(np.array([means[item] for item in items]), np.ones(ITEMS))
            .fit(cov_type="cluster", cov_kwds={"groups": groups})
            .bse[0]
            for means in (left, right)
        ]
        assert p.unpaired_se == pytest.approx(math.hypot(*sides), rel=1e-9)


async def test_epochs_are_averaged_per_item_before_pairing(tmp_path: Path) -> None:
    captured = capture_clustered(tmp_path / "ws")
    result = await Workspace(tmp_path / "ws").compare("base", "cand", include_samples=True)
    score = next(p for p in result.paired if p.key == "score")
    left, right = captured["base"]["score"], captured["cand"]["score"]
    assert score.samples is not None
    by_name = {s.name: s for s in score.samples}
    assert set(by_name) == {f"q-{i}" for i in range(ITEMS)}  # no "-epoch-k" names
    for item, attempts in left.items():
        assert by_name[item].left == pytest.approx(sum(attempts) / len(attempts), abs=1e-12)
        assert by_name[item].right == pytest.approx(sum(right[item]) / len(right[item]), abs=1e-12)
    assert score.mean_left == pytest.approx(
        statistics.fmean(sum(v) / len(v) for v in left.values()), abs=1e-12
    )
    # Attempts: 1, 2 or 3 per item (10 of each): 2 on average; variance over items with 2+.
    assert score.attempts_left == pytest.approx(2.0)
    assert score.attempts_right == pytest.approx(2.0)
    expected = statistics.fmean(statistics.variance(v) for v in left.values() if len(v) > 1)
    assert score.within_item_variance_left == pytest.approx(expected, rel=1e-9)
    expected = statistics.fmean(statistics.variance(v) for v in right.values() if len(v) > 1)
    assert score.within_item_variance_right == pytest.approx(expected, rel=1e-9)
    # The sample-level delta is a mean over items too.
    row = next(m for m in result.metrics if m.key == "score" and m.scope == "sample")
    assert row.left_count == ITEMS
    assert row.left == pytest.approx(score.mean_left, abs=1e-12)


async def test_without_clusters_or_epochs_nothing_new_is_reported(tmp_path: Path) -> None:
    ctx = Contexta(workspace=tmp_path / "ws", config={"project_name": "p"})
    for run_name in ("base", "cand"):
        with ctx.run(run_name) as run, run.stage("evaluate") as stage:
            for i in range(20):
                with stage.sample(f"q-{i}") as sample:
                    sample.metric("score", float(i % 7) + (run_name == "cand"))
    ctx.close()
    p = (await Workspace(tmp_path / "ws").compare("base", "cand")).paired[0]
    assert p.n_matched == 20
    assert (p.clusters, p.naive_se, p.design_effect) == (None, None, None)
    assert (p.attempts_left, p.within_item_variance_left) == (None, None)
    assert p.p_test == "paired-t"
    assert p.method != "cluster-bootstrap"
    assert p.se == 0.0  # every difference is 1: the plain paired SE


def capture_misaligned(root: Path) -> None:
    """left: q-0..q-19, q-5 captured twice without an epoch, q-7 attempted twice;
    right: q-1..q-20, q-7 attempted three times."""
    ctx = Contexta(workspace=root, config={"project_name": "p"})
    for run_name, names in (("base", range(20)), ("cand", range(1, 21))):
        with ctx.run(run_name) as run, run.stage("evaluate") as stage:
            for i in names:
                if i == 7:
                    for k in range(1, (2 if run_name == "base" else 3) + 1):
                        with stage.sample("q-7", epoch=k) as sample:
                            sample.metric("score", float(k))
                    continue
                with stage.sample(f"q-{i}") as sample:
                    sample.metric("score", float(i))
                if i == 5 and run_name == "base":
                    with stage.sample("q-5") as again:  # the same item again, no epoch
                        again.metric("score", 99.0)
    ctx.close()


async def test_the_alignment_report_counts_and_lists_misaligned_items(tmp_path: Path) -> None:
    capture_misaligned(tmp_path / "ws")
    result = await Workspace(tmp_path / "ws").compare("base", "cand", include_samples=True)
    found = result.alignment
    assert found is not None
    assert found.items == 21
    assert (found.only_left, found.only_left_names) == (1, ["evaluate.q-0"])
    assert (found.only_right, found.only_right_names) == (1, ["evaluate.q-20"])
    assert (found.duplicates_left, found.duplicate_left_names) == (1, ["evaluate.q-5"])
    assert (found.duplicates_right, found.duplicate_right_names) == (0, [])
    assert (found.attempts_differ, found.attempts_differ_names) == (1, ["evaluate.q-7"])
    assert found.share == pytest.approx(4 / 21)
    assert found.warn and found.threshold == 0.05
    assert any("19.0% of the 21 items are misaligned" in w for w in result.warnings)
    # The last capture of the duplicated item is the one used.
    score = result.paired[0]
    assert score.samples is not None
    assert {s.name: s.left for s in score.samples}["q-5"] == 99.0
    assert {s.name: (s.left, s.right) for s in score.samples}["q-7"] == (1.5, 2.0)


async def test_a_few_misaligned_items_are_listed_without_a_warning(tmp_path: Path) -> None:
    ctx = Contexta(workspace=tmp_path / "ws", config={"project_name": "p"})
    for run_name, names in (("base", range(40)), ("cand", range(1, 40))):
        with ctx.run(run_name) as run, run.stage("evaluate") as stage:
            for i in names:
                with stage.sample(f"q-{i}") as sample:
                    sample.metric("score", float(i))
    ctx.close()
    result = await Workspace(tmp_path / "ws").compare("base", "cand")
    assert result.alignment is not None
    assert result.alignment.only_left_names == ["evaluate.q-0"]
    assert result.alignment.share == pytest.approx(1 / 40) and not result.alignment.warn
    assert not any("misaligned" in w for w in result.warnings)


def test_the_alignment_report_is_in_the_cli_json_table_and_html(tmp_path: Path) -> None:
    capture_misaligned(tmp_path / "ws")
    out = io.StringIO()
    assert (
        run_cli(["--workspace", str(tmp_path / "ws"), "compare", "base", "cand", "--json"], out=out)
        == 0
    )
    found = json.loads(out.getvalue())["alignment"]
    assert found["only_right_names"] == ["evaluate.q-20"]
    assert found["attempts_differ"] == 1 and found["warn"] is True
    out = io.StringIO()
    assert run_cli(["--workspace", str(tmp_path / "ws"), "compare", "base", "cand"], out=out) == 0
    text = out.getvalue()
    assert "Alignment: 21 items; 1 only in left, 1 only in right, 1/0 duplicated" in text
    assert "different attempt counts: evaluate.q-7" in text
    assert "attempts per item" in text
    result = anyio.run(Workspace(tmp_path / "ws").compare, "base", "cand")
    page = render_html_report(result)
    assert "<h2 id=alignment>Alignment</h2>" in page
    assert "evaluate.q-5" in page


def _cli_out(*argv: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    assert run_cli(list(argv), out=out, err=err) == 0, err.getvalue()
    return out.getvalue()


def test_the_cli_says_items_not_samples_when_attempts_are_averaged(tmp_path: Path) -> None:
    capture_clustered(tmp_path / "ws")
    table = _cli_out("--workspace", str(tmp_path / "ws"), "compare", "base", "cand")
    assert (
        "\nPaired per-item (right - left; each item's attempts averaged, items matched by name; "
        "95% CI)\n" in table
    )
    assert "samples matched by name" not in table and "count = samples" not in table
    assert "  N: matched items;" in table
    assert "(count = items; a sample without an epoch is an item of one attempt)" in table
    assert "paired analysis: items (each the mean of its attempts) matched by name" in table
    assert re.search(r"\bevaluate\s+score\s+\S+ \(inferred\)\s+30\s", table)
    assert "ct = Student t on the clustered SE (C - 1 df)" in " ".join(table.split())


def test_the_cli_shows_the_clustered_se_table_and_mcnemar_beside_the_clustered_t(
    tmp_path: Path,
) -> None:
    capture_clustered(tmp_path / "ws", epochs=False)
    args = ("--workspace", str(tmp_path / "ws"), "compare", "base", "cand")
    paired = {p["key"]: p for p in json.loads(_cli_out(*args, "--json"))["paired"]}
    table = _cli_out(*args)
    assert "\nPaired per-sample (right - left; samples matched by name; 95% CI)\n" in table
    assert "count = samples" in table
    rows = table[table.index("\nStandard errors of the mean difference\n") :].splitlines()
    assert re.split(r"\s{2,}", rows[2]) == [
        *("STAGE", "KEY", "SE", "UNPAIRED SE", "CORRELATION", "CLUSTERS", "NAIVE SE"),
        "DESIGN EFFECT",
    ]
    for line in rows[3:5]:
        cells = re.split(r"\s{2,}", line)
        p = paired[cells[1]]
        assert cells[2:] == [
            format_number(p["se"]),
            format_number(p["unpaired_se"]),
            format_number(p["correlation"]),
            str(p["clusters"]),
            format_number(p["naive_se"]),
            format_number(p["design_effect"]),
        ]
    correct = paired["correct"]
    assert correct["p_test"] == "clustered-t" and correct["mcnemar_p"] is not None
    assert re.search(rf"\bcorrect\s.*\s{re.escape(format_number(correct['p_value']))} ct\s", table)
    assert (
        f"evaluate/correct: exact McNemar p {format_number(correct['mcnemar_p'])} (it treats the "
        "pairs as independent: P is the clustered t)" in table
    )


def capture_three_runs(root: Path) -> None:
    rng = random.Random(5)
    ctx = Contexta(workspace=root, config={"project_name": "p"})
    for run_name, shift in (("base", 0.0), ("same", 0.0), ("better", 0.8), ("best", 1.5)):
        with ctx.run(run_name) as run, run.stage("evaluate") as stage:
            for i in range(40):
                with stage.sample(f"q-{i}", cluster=f"c-{i // 4}") as sample:
                    sample.metric("score", round(i * 0.05 + shift + rng.gauss(0, 1), 6))
    ctx.close()


@pytest.mark.parametrize(("adjustment", "method"), [("holm", "holm"), ("bh", "fdr_bh")])
async def test_compare_many_adjusts_p_values_across_the_runs_against_the_baseline(
    tmp_path: Path, adjustment: str, method: str
) -> None:
    capture_three_runs(tmp_path / "ws")
    ws = Workspace(tmp_path / "ws")
    many = await ws.compare_many(
        ["base", "same", "better", "best"],
        adjustment=adjustment,  # type: ignore[arg-type]
    )
    row = next(r for r in many.rows if r.key == "score" and r.scope == "sample")
    assert row.p_values is not None and row.p_adjusted is not None
    assert row.p_values[0] is None and row.p_adjusted[0] is None
    # Each raw p is the one compare gives for that pair (clusters included).
    for i, other in enumerate(("same", "better", "best"), 1):
        pair = (await ws.compare("base", other)).paired[0]
        assert pair.p_test == "clustered-t"
        assert row.p_values[i] == pytest.approx(pair.p_value, rel=1e-12)
    expected = multipletests(row.p_values[1:], method=method)[1]
    assert row.p_adjusted[1:] == pytest.approx(list(expected), rel=1e-12)
    assert many.adjustment == adjustment
    assert any("against the baseline run:p.base" in n for n in many.notes)


def test_compare_many_p_values_are_in_the_cli_table_and_json(tmp_path: Path) -> None:
    capture_three_runs(tmp_path / "ws")
    args = ["--workspace", str(tmp_path / "ws"), "compare", "base", "same", "better"]
    out = io.StringIO()
    assert run_cli([*args, "--json", "--adjust", "bh"], out=out) == 0
    data = json.loads(out.getvalue())
    row = next(r for r in data["rows"] if r["key"] == "score" and r["scope"] == "sample")
    assert len(row["p_values"]) == 3 and row["p_values"][0] is None
    assert len(row["p_adjusted"]) == 3 and data["adjustment"] == "bh"
    out = io.StringIO()
    assert run_cli(args, out=out) == 0
    assert "Against the baseline [1], paired (p raw / p adjusted across runs, holm)" in (
        out.getvalue()
    )


async def test_the_how_sure_table_and_the_notebook_show_clusters_and_attempts(
    tmp_path: Path,
) -> None:
    capture_clustered(tmp_path / "ws")
    result = await Workspace(tmp_path / "ws").compare("base", "cand")
    page = render_html_report(result)
    how_sure = page[page.index("<h2 id=how-sure>") : page.index("<h2>Metrics</h2>")]
    for text in ("<th>clusters</th>", "<th>design effect</th>", "attempts per item", "clustered t"):
        assert text in how_sure
    notebook = result._repr_html_()
    assert "design effect" in notebook and "attempts L/R" in notebook
    assert ">12<" in notebook  # the cluster count


async def test_without_clusters_the_tables_keep_their_columns(tmp_path: Path) -> None:
    ctx = Contexta(workspace=tmp_path / "plain", config={"project_name": "p"})
    for run_name in ("base", "cand"):
        with ctx.run(run_name) as run, run.stage("evaluate") as stage:
            for i in range(5):
                with stage.sample(f"q-{i}") as sample:
                    sample.metric("score", float(i) + (run_name == "cand") * (i % 2))
    ctx.close()
    result = await Workspace(tmp_path / "plain").compare("base", "cand")
    assert "design effect" not in render_html_report(result)
    assert "attempts" not in result._repr_html_()


async def test_clusters_with_quotes_escapes_and_non_ascii_read_back_exactly(
    tmp_path: Path,
) -> None:
    odd = ['pas"sage \\ 7', "Ünïcode ∑", "tab\there", 'end"']
    ctx = Contexta(workspace=tmp_path / "ws", config={"project_name": "p"})
    with ctx.run("r") as run, run.stage("s") as stage, stage.batch("b") as batch:
        for i, cluster in enumerate(odd):
            with batch.sample(f"q-{i}", cluster=cluster, epoch=1) as sample:
                sample.metric("score", 1.0)
    ctx.close()
    rows = [row async for row in Workspace(tmp_path / "ws").records("r", kind="metric")]
    assert [(row.batch, row.cluster, row.epoch) for row in rows] == [("b", c, 1) for c in odd]


async def test_clusters_are_read_when_a_sample_line_without_an_end_is_not_an_opening(
    tmp_path: Path,
) -> None:
    # A line this library does not write (ended_at null, status not "open") beside the
    # openings: the clusters and epochs still go to the samples that were opened.
    capture_clustered(tmp_path / "ws")
    expected = await Workspace(tmp_path / "ws").compare("base", "cand", include_samples=True)
    path = next((tmp_path / "ws").rglob("context.jsonl"))
    lines = path.read_bytes().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if b'"cluster":"passage-0"' in line)
    odd = lines[at].replace(b'"status":"open"', b'"status":"paused"').replace(b"q-0", b"q-x")
    path.write_bytes(b"".join([*lines[:at], odd, *lines[at:]]))
    found = await Workspace(tmp_path / "ws").compare("base", "cand", include_samples=True)
    assert found.paired == expected.paired
    assert found.alignment == expected.alignment


async def test_items_in_different_clusters_in_the_two_runs_are_warned_about(
    tmp_path: Path,
) -> None:
    root = tmp_path / "ws"
    with Contexta(workspace=root, config={"project_name": "p"}) as ctx:
        for run_name in ("base", "cand"):
            with ctx.run(run_name) as run, run.stage("evaluate") as stage:
                for i in range(10):
                    moved = run_name == "cand" and i in (2, 7, 9)
                    with stage.sample(f"q-{i}", cluster="b" if moved else f"a{i // 2}") as s:
                        s.metric("score", float(i % 3) + (run_name == "cand"))
    result = await Workspace(root).compare("base", "cand")
    conflicts = [w for w in result.warnings if "different clusters" in w]
    assert conflicts == [
        "stage evaluate: 3 item(s) are in different clusters in the two runs "
        "(first: q-2, 'a1' left, 'b' right): the left run's clusters are used"
    ]
    assert result.paired[0].clusters == 5  # the left run's: a0..a4
    same = await Workspace(root).compare("base", "base")
    assert not [w for w in same.warnings if "different clusters" in w]


async def test_a_clustered_se_of_zero_with_varying_differences_gives_no_p_value(
    tmp_path: Path,
) -> None:
    # Each cluster holds differences m + a and m - a: every cluster's deviations from the
    # mean sum to 0, so the clustered SE is 0 while the differences vary.
    root = tmp_path / "ws"
    with Contexta(workspace=root, config={"project_name": "p"}) as ctx:
        for run_name in ("base", "cand"):
            with ctx.run(run_name) as run, run.stage("evaluate") as stage:
                for c in range(6):
                    for half, sign in (("a", 1), ("b", -1)):
                        with stage.sample(f"q-{c}-{half}", cluster=f"c{c}") as sample:
                            shift = 0.5 + sign * (c + 1) * 0.25 if run_name == "cand" else 0.0
                            sample.metric("score", 2.0 + shift)
    paired = (await Workspace(root).compare("base", "cand")).paired[0]
    assert paired.clusters == 6
    assert paired.naive_se is not None and paired.naive_se > 0
    assert paired.se == 0.0
    assert paired.p_value is None and paired.mde is None
