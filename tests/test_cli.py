"""The contexta-async command line, as a real program (python -m) and in-process."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from contexta_async import Contexta
from contexta_async.__main__ import main
from contexta_async._cli import run_cli

from .test_readers_helpers import capture_llm_workspace, copy_fixture_10, with_empty_runs


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m contexta_async`` with this interpreter; never raises on exit status."""
    return subprocess.run(
        [sys.executable, "-m", "contexta_async", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


def inproc(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_cli(list(args), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def llm_ws(tmp_path: Path) -> Path:
    return capture_llm_workspace(tmp_path / "ws")


def test_runs_lists_runs_as_a_table_from_the_default_workspace(llm_ws: Path) -> None:
    done = cli("runs", cwd=llm_ws.parent)  # no --workspace: ./.contexta does not exist
    assert done.returncode == 1 and "no Contexta workspace" in done.stderr
    (llm_ws.parent / ".contexta").symlink_to(llm_ws)
    done = cli("runs", cwd=llm_ws.parent)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:4] == ["RUN", "NAME", "PROJECT", "STATUS"]
    assert [line.split()[0] for line in lines[1:]] == [
        "run:mock-openai-compare.helpful-only",
        "run:mock-openai-compare.grounded",
    ]
    assert all(" completed " in line for line in lines[1:])


def test_compare_two_runs_as_json(llm_ws: Path) -> None:
    done = cli("--workspace", str(llm_ws), "compare", "helpful-only", "grounded", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["left"]["ref"] == "run:mock-openai-compare.helpful-only"
    correct = next(p for p in data["paired"] if p["key"] == "correct")
    assert correct["fixed"] == ["case-2", "case-4", "case-5"]
    assert correct["regressed"] == ["case-3"]
    assert correct["mcnemar_p"] == pytest.approx(0.625)
    assert data["read_report"]["corrupt_lines"] == 0


def test_compare_two_runs_as_a_table(llm_ws: Path) -> None:
    code, out, err = inproc("compare", "helpful-only", "grounded", "-w", str(llm_ws), "--samples")
    assert code == 0, err
    assert "Paired per-sample" in out
    row = next(line for line in out.splitlines() if line.startswith("evaluate  correct"))
    assert "maximize (inferred)" in row and "3/1/2" in row and "0.625" in row
    assert "fixed: case-2, case-4, case-5; regressed: case-3" in out
    assert "only in right: case-99" in out
    assert re.search(r"stage\s+pass\.rate\s+latest", out)
    assert "different datasets" in out


def _add_run(workspace: Path, project: str, name: str, pass_rate: float) -> None:
    ctx = Contexta(workspace=workspace, config={"project_name": project})
    with ctx.run(name) as run, run.stage("evaluate") as stage:
        stage.metric("pass.rate", pass_rate)
    ctx.close()


def test_compare_three_runs_prints_one_table(llm_ws: Path) -> None:
    _add_run(llm_ws, "mock-openai-compare", "third", 0.9)
    code, out, err = inproc("-w", str(llm_ws), "compare", "helpful-only", "grounded", "third")
    assert code == 0, err
    assert "[3] run:mock-openai-compare.third" in out
    assert re.search(r"pass\.rate\s+maximize \(inferred\)\s+0\.5\s+0\.833333\s+0\.9\*", out)
    assert re.search(r"correct\s+maximize \(inferred\)\s+0\.5\s+0\.857143\*\s+-", out)


def test_best_picks_the_winner_and_respects_the_direction(llm_ws: Path) -> None:
    done = cli("-w", str(llm_ws), "best", "--metric", "pass.rate", "helpful-only", "grounded")
    assert done.returncode == 0, done.stderr
    assert "maximize (inferred from the key)" in done.stdout
    assert "Winner: run:mock-openai-compare.grounded" in done.stdout
    code, out, _ = inproc(
        "-w", str(llm_ws), "best", "--metric", "pass.rate", "--minimize", "helpful-only", "grounded"
    )
    assert code == 0 and "minimize (given)" in out
    assert "Winner: run:mock-openai-compare.helpful-only" in out
    code, out, _ = inproc(
        "-w",
        str(llm_ws),
        "best",
        "--metric",
        "completion.tokens",
        "--json",
        "helpful-only",
        "grounded",
    )
    data = json.loads(out)
    assert data["direction"] == "minimize" and data["direction_inferred"] is True
    assert data["winners"] == ["run:mock-openai-compare.grounded"]


def test_show_prints_a_run_its_metrics_and_records(llm_ws: Path) -> None:
    code, out, err = inproc(
        "-w", str(llm_ws), "show", "grounded", "--kind", "event", "--limit", "2"
    )
    assert code == 0, err
    assert out.splitlines()[0] == "run:mock-openai-compare.grounded"
    assert "dataset  dataset:local.prompt-cases-v2" in out
    assert re.search(r"evaluate\s+sample\s+correct\s+0\.857143\s+7", out)
    assert "Records (first 2)" in out and "answered case-2" in out
    code, out, _ = inproc("-w", str(llm_ws), "--json", "show", "grounded")
    assert json.loads(out)["run"]["status"] == "completed"


def test_report_writes_a_self_contained_page(llm_ws: Path, tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    done = cli("-w", str(llm_ws), "report", "helpful-only", "grounded", "--output", str(target))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {target}")
    page = target.read_text(encoding="utf-8")
    assert "<svg" in page and "Paired per-sample results" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page


def test_errors_go_to_stderr_with_a_nonzero_status(llm_ws: Path, tmp_path: Path) -> None:
    done = cli("-w", str(llm_ws), "show", "nonexistent")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("contexta-async: error: unknown run 'nonexistent'")
    copy_fixture_10(tmp_path / "old")
    _add_run(tmp_path / "old", "other", "grounded", 0.7)  # now two runs end in .grounded
    code, _, err = inproc("-w", str(tmp_path / "old"), "compare", "grounded", "rbf-svm")
    assert code == 1 and "ambiguous" in err
    assert "run:mock-openai-compare.grounded, run:other.grounded" in err
    empty = tmp_path / "empty" / "cache" / "capture"
    empty.mkdir(parents=True)
    code, _, err = inproc("-w", str(empty.parents[1]), "runs")
    assert code == 1 and "holds no runs" in err
    code, _, err = inproc("-w", str(empty.parents[1]), "compare", "a", "b")
    assert code == 1 and "holds no runs" in err
    record = llm_ws / "cache" / "capture" / "record.jsonl"
    record.unlink()
    record.mkdir()
    done = cli("-w", str(llm_ws), "runs")
    assert done.returncode == 1 and "cannot read" in done.stderr and "record.jsonl" in done.stderr
    code, _, err = inproc("-w", str(tmp_path / "old"), "best", "--metric", "bleu", "rbf-svm")
    assert code == 1 and "no run holds metric 'bleu'" in err


def test_json_stays_parseable_when_corrupt_lines_are_skipped(llm_ws: Path) -> None:
    record = llm_ws / "cache" / "capture" / "record.jsonl"
    lines = record.read_bytes().splitlines(keepends=True)
    record.write_bytes(b"".join([*lines[:2], b"{broken\n", *lines[2:]]))
    done = cli("-w", str(llm_ws), "--json", "compare", "helpful-only", "grounded")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["read_report"]["corrupt_lines"] == 1
    assert data["read_report"]["problems"][0]["line"] == 3
    assert "corrupt lines skipped" in done.stderr  # the library's log line, on stderr
    done = cli("-w", str(llm_ws), "runs")
    assert "! 1 corrupt line(s) skipped" in done.stdout


def test_usage_errors_exit_with_status_two(llm_ws: Path) -> None:
    code, _, err = inproc("-w", str(llm_ws), "compare", "grounded")
    assert code == 2 and "at least two runs" in err
    code, _, err = inproc("best", "grounded")
    assert code == 2 and "--metric" in err
    assert main(["-w", str(llm_ws), "runs", "--status", "open"]) == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--seed", "-1"), "--seed: must be a non-negative integer (got -1)"),
        (("--resamples", "0"), "--resamples: must be at least 1 (got 0)"),
        (("--confidence", "1.5"), "--confidence: must be between 0 and 1 (got 1.5)"),
        (("--confidence", "nan"), "--confidence: must be between 0 and 1 (got nan)"),
        (
            ("--maximize", "loss", "--minimize", "loss", "--minimize", "cost"),
            "--maximize/--minimize: a key takes one direction (got both for ['loss'])",
        ),
    ],
)
@pytest.mark.parametrize("command", ["compare", "compare3", "report"])
def test_a_bad_statistics_option_is_a_usage_error_naming_the_option(
    tmp_path: Path, options: tuple[str, ...], message: str, command: str
) -> None:
    (tmp_path / "cache" / "capture").mkdir(parents=True)  # empty: a read would fail otherwise
    page = tmp_path / "page.html"
    argv = {
        "compare": ("compare", "a", "b"),
        "compare3": ("compare", "a", "b", "c"),
        "report": ("report", "a", "b", "-o", str(page)),
    }[command]
    code, out, err = inproc("-w", str(tmp_path), *argv, *options)
    assert (code, out) == (2, "")
    assert f"contexta-async: error: {message}\n" in err
    assert not page.exists()


def test_contexta10_workspace_through_the_cli(tmp_path: Path) -> None:
    ws = copy_fixture_10(tmp_path / "old")
    done = cli("-w", str(ws / "cache" / "capture"), "runs", "--project", "iris-svm")
    assert done.returncode == 0, done.stderr
    assert "run:iris-svm.linear-svm" in done.stdout and " unknown " in done.stdout
    assert "mock-openai-compare" not in done.stdout


def test_pick_best_run_example_checks_the_selected_run_from_disk(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "examples" / "pick_best_run.py"
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "Pass rate: 0.33 -> 1.00" in lines
    # Differences 1,1,1,1,0,0: a resample's mean is K/6, K ~ Binomial(6, 2/3), and the
    # expanded interval's tails at n = 6 are 0.24 %: P(K <= 0) = 0.14 % < 0.24 % < P(K <= 1),
    # so the interval starts at 1/6.
    assert "Paired correct: n=6, mean diff +0.67, 95% CI [+0.17, +1.00]" in lines
    assert "Wins/losses/ties: 4/0/2" in lines
    assert "McNemar p: 0.125" in lines  # 4 discordant pairs, all one way: 2 / 2^4
    assert lines[-1] == "Selected run: run:mock-openai-compare.grounded"
    code, out, _ = inproc(
        "-w", str(tmp_path / ".contexta"), "best", "--metric", "correct", "helpful-only", "grounded"
    )
    assert code == 0 and "Winner: run:mock-openai-compare.grounded" in out


def test_bootstrap_option_chooses_how_intervals_are_computed(llm_ws: Path) -> None:
    # Six pairs: with "saddlepoint" the continuous metric is approximated; the 0/1 metric's
    # few-valued bootstrap distribution does not settle at the expanded interval's far tail
    # (0.24 % at n = 6), so it is resampled, and says so.
    for option, method in (
        ("saddlepoint", {"completion.tokens": "saddlepoint", "correct": "numpy"}),
        ("resample", {"completion.tokens": "numpy", "correct": "numpy"}),
        ("auto", {"completion.tokens": "numpy", "correct": "numpy"}),
    ):
        code, out, err = inproc(
            "-w",
            str(llm_ws),
            "compare",
            "helpful-only",
            "grounded",
            "--json",
            "--bootstrap",
            option,
        )
        assert code == 0, err
        data = json.loads(out)
        assert {p["key"]: p["method"] for p in data["paired"]} == method
    code, _, err = inproc("-w", str(llm_ws), "compare", "a", "b", "--bootstrap", "exact")
    assert code == 2 and "--bootstrap" in err and "invalid choice" in err


def test_runs_without_records_are_shown_and_compared_with_no_metrics(tmp_path: Path) -> None:
    # "empty" finished having captured nothing; "live" is open with nothing captured yet.
    with with_empty_runs(tmp_path / "ws") as ws:
        for name, still in (("empty", ""), ("live", " yet: the run is still open")):
            ref = f"run:mock-openai-compare.{name}"
            code, out, err = inproc("-w", str(ws), "show", name)
            assert (code, err) == (0, "")
            assert out.startswith(f"{ref}\n")
            assert f"Metrics: none (the run holds no metric records{still})" in out
            code, out, err = inproc("-w", str(ws), "show", name, "--json")
            assert (code, err) == (0, "")
            shown = json.loads(out)
            assert shown["metrics"] == []
            assert (
                f"{ref} has no metrics (it holds no records): nothing of it to compare"
                in (shown["warnings"])
            )
            for pair in ((name, "grounded"), ("grounded", name)):
                code, out, err = inproc("-w", str(ws), "compare", *pair)
                assert (code, err) == (0, "")
                assert f"! {ref} has no metrics (it holds no records)" in out
                assert "pass.rate" in out  # the other run's metrics, with nothing beside them
            page = tmp_path / f"{name}.html"
            code, out, err = inproc("-w", str(ws), "report", name, "grounded", "-o", str(page))
            assert (code, err) == (0, "")
            assert f"{ref} has no metrics (it holds no records)" in page.read_text()
            code, out, err = inproc("-w", str(ws), "compare", name, "grounded", "--json")
            assert code == 0
            assert [p["n_matched"] for p in json.loads(out)["paired"]] == [0, 0]
        code, out, err = inproc("-w", str(ws), "compare", "empty", "live", "grounded")
        assert (code, err) == (0, "")
        assert out.count("has no metrics (it holds no records)") == 2
        code, out, err = inproc(
            "-w", str(ws), "best", "empty", "live", "grounded", "--metric", "pass.rate"
        )
        assert (code, err) == (0, "")
        assert "Winner: run:mock-openai-compare.grounded" in out
        assert (
            "Missing the metric: run:mock-openai-compare.empty, run:mock-openai-compare.live" in out
        )
        code, out, err = inproc("-w", str(ws), "best", "empty", "live", "--metric", "pass.rate")
        assert (code, out) == (1, "")
        assert err == "contexta-async: error: no run holds metric 'pass.rate'\n"
