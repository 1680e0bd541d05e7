"""The examples, run as real programs in a fresh directory, print and capture what they promise.

The seed examples (``examples/seed/``) are the seed document's programs with only their imports
changed: they never call ``close()``, so their files being complete after the process exits
shows the library flushes sync programs at interpreter exit.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from .capture_files import read_lines

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SEED = EXAMPLES / "seed"


def run_example(script: Path, cwd: Path, *args: str) -> list[str]:
    """Run one example with this interpreter in ``cwd``; return its stdout lines."""
    # The timeout only catches a hang (e.g. a writer that never lets the process exit).
    done = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{script.name} exited {done.returncode}:\n{done.stderr}"
    return done.stdout.splitlines()


def record_metrics(workspace: Path) -> list[dict[str, Any]]:
    """RECORD lines, asserting every one is a MetricRecord (the examples capture no events)."""
    lines = read_lines(workspace, "RECORD")
    assert {line["payload_type"] for line in lines} <= {"MetricRecord"}
    assert all(line["family"] == "RECORD" for line in lines)
    return lines


Row = tuple[str, str | None, str | None, str | None, str]


def metric_rows(workspace: Path) -> list[Row]:
    """(run, stage, batch, sample, metric key) per metric line, in file order."""
    rows: list[Row] = []
    for line in record_metrics(workspace):
        envelope = line["payload"]["envelope"]
        rows.append(
            (
                envelope["run_ref"],
                envelope["stage_execution_ref"],
                envelope["batch_execution_ref"],
                envelope["sample_observation_ref"],
                line["payload"]["payload"]["metric_key"],
            )
        )
    return rows


def metric_value(workspace: Path, subject_ref: str, key: str) -> float:
    [value] = [
        line["payload"]["payload"]["value"]
        for line in record_metrics(workspace)
        if line["payload"]["payload"]["subject_ref"] == subject_ref
        and line["payload"]["payload"]["metric_key"] == key
    ]
    return float(value)


def assert_lifecycles_completed(workspace: Path, expected: dict[str, str]) -> None:
    """Every expected scope (ref -> payload_type) has exactly an open line, then a completed one."""
    lines = read_lines(workspace, "CONTEXT")
    assert all(line["family"] == "CONTEXT" for line in lines)
    statuses: dict[str, list[str]] = defaultdict(list)
    for line in lines:
        assert line["payload_type"] == expected.get(line["payload_ref"]), line["payload_ref"]
        statuses[line["payload_ref"]].append(line["payload"]["status"])
    assert dict(statuses) == {ref: ["open", "completed"] for ref in expected}
    assert len(lines) == 2 * len(expected)


def assert_no_degradation(workspace: Path) -> None:
    assert read_lines(workspace, "DEGRADATION") == []


def assert_artifacts(workspace: Path, kind: str, files: dict[str, Path]) -> None:
    """One BOUND artifact per run (run ref -> file), hashed with SHA-256 of the real file."""
    lines = read_lines(workspace, "ARTIFACT")
    assert len(lines) == len(files)
    by_run = {line["payload"]["manifest"]["run_ref"]: line for line in lines}
    assert set(by_run) == set(files)
    for run_ref, path in files.items():
        line = by_run[run_ref]
        assert line["family"] == "ARTIFACT"
        assert line["payload"]["binding_status"] == "BOUND"
        manifest = line["payload"]["manifest"]
        assert manifest["artifact_kind"] == kind
        assert manifest["location_ref"] == f"path:{path.resolve()}"
        assert manifest["hash_value"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert manifest["attributes"] == {"candidate": path.stem}


# ---- the machine-learning seed example ------------------------------------------------------


def test_ml_seed_example_prints_the_seed_documents_lines_and_captures_both_runs(
    tmp_path: Path,
) -> None:
    printed = run_example(SEED / "ml_compare_runs.py", tmp_path)
    assert printed == [
        "Compared runs: run:iris-svm.linear-svm vs run:iris-svm.rbf-svm",
        "Accuracy: 0.978 -> 0.956",
        "Delta: -0.022",
        "Selected run: run:iris-svm.linear-svm",
        "Records: .contexta/cache/capture/record.jsonl",
        "Artifacts: .contexta/cache/capture/artifact.jsonl",
    ]
    workspace = tmp_path / ".contexta"
    expected_rows: list[Row] = []
    expected_scopes: dict[str, str] = {}
    for name in ("linear-svm", "rbf-svm"):
        run = f"run:iris-svm.{name}"
        stage = f"stage:iris-svm.{name}.evaluate"
        batch = f"batch:iris-svm.{name}.evaluate.holdout-split"
        sample = f"sample:iris-svm.{name}.evaluate.holdout-split.first-prediction"
        # per run: 2 batch metrics + 1 sample metric
        expected_rows += [
            (run, stage, batch, None, "accuracy"),
            (run, stage, batch, None, "macro.f1"),
            (run, stage, batch, sample, "correct"),
        ]
        expected_scopes |= {
            run: "Run",
            f"stage:iris-svm.{name}.train": "StageExecution",
            stage: "StageExecution",
            batch: "BatchExecution",
            sample: "SampleObservation",
        }
    assert metric_rows(workspace) == expected_rows
    # the printed scores are the captured ones (the seed document shows 0.9777... and 0.9555...)
    assert metric_value(
        workspace, "batch:iris-svm.linear-svm.evaluate.holdout-split", "accuracy"
    ) == pytest.approx(44 / 45)
    assert metric_value(
        workspace, "batch:iris-svm.rbf-svm.evaluate.holdout-split", "accuracy"
    ) == pytest.approx(43 / 45)
    assert_lifecycles_completed(workspace, expected_scopes)
    assert_artifacts(
        workspace,
        "model",
        {
            f"run:iris-svm.{name}": workspace / "models" / f"{name}.pkl"
            for name in ("linear-svm", "rbf-svm")
        },
    )
    assert_no_degradation(workspace)


# ---- the LLM seed example -------------------------------------------------------------------


def test_llm_seed_example_prints_pass_rates_and_captures_every_sample(tmp_path: Path) -> None:
    printed = run_example(SEED / "llm_compare_runs.py", tmp_path)
    assert printed == [
        "Compared runs: run:mock-openai-compare.helpful-only vs run:mock-openai-compare.grounded",
        "Pass rate: 0.50 -> 1.00",
        "Delta: +0.50",
        "Selected run: run:mock-openai-compare.grounded",
        "Records: .contexta/cache/capture/record.jsonl",
    ]
    workspace = tmp_path / ".contexta"
    expected_rows: list[Row] = []
    expected_scopes: dict[str, str] = {}
    for name in ("helpful-only", "grounded"):
        run = f"run:mock-openai-compare.{name}"
        stage = f"stage:mock-openai-compare.{name}.evaluate"
        expected_scopes |= {run: "Run", stage: "StageExecution"}
        for case in ("workspace-question", "unsupported-question"):
            sample = f"sample:mock-openai-compare.{name}.evaluate.{case}"
            expected_scopes[sample] = "SampleObservation"
            expected_rows += [
                (run, stage, None, sample, key)
                for key in ("correct", "latency.ms", "completion.tokens")
            ]
        expected_rows.append((run, stage, None, None, "pass.rate"))
    assert metric_rows(workspace) == expected_rows
    for name, correct, rate in (("helpful-only", (1.0, 0.0), 0.5), ("grounded", (1.0, 1.0), 1.0)):
        stage = f"stage:mock-openai-compare.{name}.evaluate"
        assert metric_value(workspace, stage, "pass.rate") == rate
        for case, value in zip(
            ("workspace-question", "unsupported-question"), correct, strict=True
        ):
            assert (
                metric_value(workspace, f"{stage.replace('stage:', 'sample:')}.{case}", "correct")
                == value
            )
    assert_lifecycles_completed(workspace, expected_scopes)
    assert not (workspace / "cache" / "capture" / "artifact.jsonl").exists()
    assert_no_degradation(workspace)


# ---- the deep-learning seed example ---------------------------------------------------------


def test_dl_seed_example_selects_the_run_with_the_higher_captured_accuracy(
    tmp_path: Path,
) -> None:
    pytest.importorskip("torch")
    printed = run_example(SEED / "dl_compare_runs.py", tmp_path)
    workspace = tmp_path / ".contexta"
    fast = metric_value(workspace, "stage:digits-cnn-compare.cnn-fast.evaluate", "accuracy")
    steady = metric_value(workspace, "stage:digits-cnn-compare.cnn-steady.evaluate", "accuracy")
    # Training results may differ across CPUs and torch builds; what the program prints must be
    # what it captured, whichever run wins.
    best = "cnn-fast" if fast >= steady else "cnn-steady"
    assert printed == [
        "Compared runs: run:digits-cnn-compare.cnn-fast vs run:digits-cnn-compare.cnn-steady",
        f"Validation accuracy: {fast:.3f} -> {steady:.3f}",
        f"Delta: {steady - fast:+.3f}",
        f"Selected run: run:digits-cnn-compare.{best}",
        "Records: .contexta/cache/capture/record.jsonl",
        "Artifacts: .contexta/cache/capture/artifact.jsonl",
    ]
    expected_rows: list[Row] = []
    expected_scopes: dict[str, str] = {}
    for name in ("cnn-fast", "cnn-steady"):
        run = f"run:digits-cnn-compare.{name}"
        train = f"stage:digits-cnn-compare.{name}.train"
        evaluate = f"stage:digits-cnn-compare.{name}.evaluate"
        epochs = [f"batch:digits-cnn-compare.{name}.train.epoch-{n}" for n in (1, 2)]
        # per run: one loss per epoch batch, one accuracy on the evaluate stage
        expected_rows += [(run, train, batch, None, "loss") for batch in epochs]
        expected_rows.append((run, evaluate, None, None, "accuracy"))
        expected_scopes |= {run: "Run", train: "StageExecution", evaluate: "StageExecution"}
        expected_scopes |= dict.fromkeys(epochs, "BatchExecution")
    assert metric_rows(workspace) == expected_rows
    assert_lifecycles_completed(workspace, expected_scopes)
    assert_artifacts(
        workspace,
        "checkpoint",
        {
            f"run:digits-cnn-compare.{name}": workspace / "models" / f"{name}.pt"
            for name in ("cnn-fast", "cnn-steady")
        },
    )
    assert_no_degradation(workspace)


# ---- the async example ----------------------------------------------------------------------

KINDS = ("workspace", "workspace-dir", "records", "unsupported")
SAMPLE_KEYS = ["completion.tokens", "correct", "latency.ms"]


def test_concurrent_prompt_eval_captures_400_concurrent_samples_exactly_once(
    tmp_path: Path,
) -> None:
    printed = run_example(
        EXAMPLES / "concurrent_prompt_eval.py", tmp_path, "--workspace", "capture-ws"
    )
    # Of every 4 cases the mock answers 2 right for both strategies; the third (records) is
    # wrong for both; the fourth (unsupported) is right only when refusing: 100 vs 150 of 200.
    assert printed == [
        "Compared runs: run:concurrent-prompt-eval.helpful-only"
        " vs run:concurrent-prompt-eval.grounded",
        "Cases: 200 per strategy, each its own concurrent sample",
        "Pass rate: 0.50 -> 0.75",
        "Delta: +0.25",
        "Selected run: run:concurrent-prompt-eval.grounded",
        "Records: capture-ws/cache/capture/record.jsonl",
    ]
    workspace = tmp_path / "capture-ws"
    assert not (tmp_path / ".contexta").exists()

    expected_scopes: dict[str, str] = {}
    expected_samples: dict[str, str] = {}  # sample ref -> its run
    for name in ("helpful-only", "grounded"):
        run = f"run:concurrent-prompt-eval.{name}"
        stage = f"stage:concurrent-prompt-eval.{name}.evaluate"
        expected_scopes |= {run: "Run", stage: "StageExecution"}
        for index in range(200):
            sample = (
                f"sample:concurrent-prompt-eval.{name}.evaluate.case-{index:03d}-{KINDS[index % 4]}"
            )
            expected_scopes[sample] = "SampleObservation"
            expected_samples[sample] = run
    assert_lifecycles_completed(workspace, expected_scopes)

    lines = record_metrics(workspace)
    assert len(lines) == 400 * 3 + 2
    keys_per_sample: dict[str, list[str]] = defaultdict(list)
    correct_per_run: Counter[str] = Counter()
    pass_rates = {}
    for line in lines:
        envelope, payload = line["payload"]["envelope"], line["payload"]["payload"]
        sample = envelope["sample_observation_ref"]
        if sample is None:
            assert payload["metric_key"] == "pass.rate"
            pass_rates[envelope["run_ref"]] = payload["value"]
            continue
        assert envelope["run_ref"] == expected_samples[sample]
        assert payload["subject_ref"] == sample
        keys_per_sample[sample].append(payload["metric_key"])
        if payload["metric_key"] == "correct":
            correct_per_run[envelope["run_ref"]] += int(payload["value"])
    assert {ref: sorted(keys) for ref, keys in keys_per_sample.items()} == dict.fromkeys(
        expected_samples, SAMPLE_KEYS
    )
    # the stage's pass.rate agrees with its samples
    assert correct_per_run == {
        "run:concurrent-prompt-eval.helpful-only": 100,
        "run:concurrent-prompt-eval.grounded": 150,
    }
    assert pass_rates == {
        "run:concurrent-prompt-eval.helpful-only": 0.5,
        "run:concurrent-prompt-eval.grounded": 0.75,
    }
    assert_no_degradation(workspace)


def test_concurrent_prompt_eval_keeps_many_samples_open_at_once(tmp_path: Path) -> None:
    run_example(EXAMPLES / "concurrent_prompt_eval.py", tmp_path, "--cases", "40")
    # CONTEXT lines are in capture order: count samples open at each point.
    open_now = most_open = 0
    for line in read_lines(tmp_path / ".contexta", "CONTEXT"):
        if line["payload_type"] != "SampleObservation":
            continue
        open_now += 1 if line["payload"]["status"] == "open" else -1
        most_open = max(most_open, open_now)
    assert open_now == 0
    # cases overlap: samples open concurrently rather than one after another
    assert most_open > 1


# ---- the sharded evaluation, shipped to PostgreSQL ------------------------------------------


def test_sharded_eval_merges_the_shards_in_the_store_and_reads_the_comparison_from_it(
    tmp_path: Path,
) -> None:
    if importlib.util.find_spec("contexta_async_postgres") is None:
        if os.environ.get("CI"):
            pytest.fail("contexta-async-postgres is not installed (.ci/run installs it)")
        pytest.skip("needs pip install -e sinks/postgres")
    sys.path.insert(0, str(EXAMPLES.parent / "sinks" / "postgres" / "tests"))
    from _cluster import Cluster, find_bindir  # the postgres tests' throwaway cluster

    bindir = find_bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries not found (.ci/run installs them)")
        pytest.skip("PostgreSQL server binaries not found")
    cluster = Cluster(bindir, settings={"fsync": "off"})
    try:
        cluster.start()
        with cluster.admin() as conn:
            conn.execute("CREATE ROLE evals LOGIN PASSWORD 'example-pw'")
            conn.execute("CREATE DATABASE evals OWNER evals")
        url = cluster.url("evals", user="evals", password="example-pw")
        printed = run_example(EXAMPLES / "sharded_eval.py", tmp_path, "--store", url)
    finally:
        cluster.remove()
    # 40 cases over 4 workers: every fifth (8) is wrong for both, and the other multiples of
    # three (11) for plain: 21 vs 32 of 40, counted over the union of the four shards.
    assert printed[:2] == [
        "run:sharded-eval.plain: completed, 21 of 40 correct",
        "run:sharded-eval.step-by-step: completed, 32 of 40 correct",
    ]
    # Read from the store by the readers: 11 cases fixed (the multiples of three that are not
    # multiples of five), none regressed.
    assert printed[2].startswith("correct: +0.275 (step-by-step - plain), 11 fixed, 0 regressed")
    assert len(printed) == 3, printed
    workspaces = sorted(p.name for p in (tmp_path / "sharded-ws").iterdir())
    assert workspaces == [f"worker-{n}" for n in range(4)]
    for name in workspaces:  # each worker captured only its shard, locally
        samples = {
            line["payload"]["envelope"]["sample_observation_ref"]
            for line in record_metrics(tmp_path / "sharded-ws" / name)
        }
        n = int(name[-1])
        assert len(samples) == 20 and all(int(s[-3:]) % 4 == n for s in samples)
