"""The evaluation harness example, run as a subprocess: what it prints agrees with its files."""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "examples" / "eval_harness.py"
STRATEGIES = ("direct", "few-shot", "chain-of-thought")


def run_harness(workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(HARNESS), "--workspace", str(workspace), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)


def lines(workspace: Path, family: str) -> list[dict[str, Any]]:
    path = workspace / "cache" / "capture" / f"{family}.jsonl"
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def final_states(workspace: Path) -> dict[str, dict[str, Any]]:
    state: dict[str, dict[str, Any]] = {}
    for line in lines(workspace, "context"):
        state[line["payload_ref"]] = line["payload"]
    return state


def sample_metrics(workspace: Path) -> dict[str, dict[str, dict[str, float]]]:
    """{run ref: {sample name: {metric key: value}}}"""
    out: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for line in lines(workspace, "record"):
        envelope, payload = line["payload"]["envelope"], line["payload"]["payload"]
        sample = envelope["sample_observation_ref"]
        if line["payload_type"] == "MetricRecord" and sample is not None:
            out[envelope["run_ref"]][sample.rsplit(".", 1)[1]][payload["metric_key"]] = payload[
                "value"
            ]
    return out


def sample_events(workspace: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """(sample ref, event key, attributes) for every event."""
    return [
        (
            line["payload"]["envelope"]["sample_observation_ref"],
            line["payload"]["payload"]["event_key"],
            line["payload"]["payload"]["attributes"],
        )
        for line in lines(workspace, "record")
        if line["payload_type"] == "StructuredEventRecord"
    ]


def mcnemar_exact(b: int, c: int) -> float:
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def test_harness_captures_every_case_and_its_comparison_matches_the_files(tmp_path: Path) -> None:
    result = run_harness(
        tmp_path,
        "--cases",
        "30",
        "--label",
        "t",
        "--seed",
        "3",
        "--timeout",
        "0.5",
        "--concurrency",
        "5",
    )
    assert result.returncode == 0, result.stderr
    assert "evaluating" in result.stderr and "90/90" in result.stderr  # the progress bar
    # 90 tasks start at once; the capacity limiter lets exactly --concurrency calls through.
    assert "at most 5 in flight, limit 5" in result.stdout
    refs = {name: f"run:eval-harness.t-{name}" for name in STRATEGIES}

    state = final_states(tmp_path)
    metrics = sample_metrics(tmp_path)
    for ref in refs.values():
        assert state[ref]["status"] == "completed"
        assert state[ref]["dataset_ref"] == "dataset:eval-harness.arithmetic-30-seed-3"
        samples = {
            key: value
            for key, value in state.items()
            if key.startswith(f"sample:{ref[4:]}.evaluate.")
        }
        assert len(samples) == 30
        assert {s["status"] for s in samples.values()} == {"completed"}
        assert len(metrics[ref]) == 30
        for values in metrics[ref].values():
            assert set(values) == {"correct", "latency.ms", "tokens", "cost.usd", "attempts"}
            assert values["correct"] in (0.0, 1.0)

    # Every retry is an event on its sample: attempts - 1 of them when the case got an answer.
    retries: Counter[str] = Counter()
    for sample, key, _ in sample_events(tmp_path):
        if key == "model.retry":
            retries[sample] += 1
    for ref in refs.values():
        for name, values in metrics[ref].items():
            assert retries[f"sample:{ref[4:]}.evaluate.{name}"] == values["attempts"] - 1

    # The stage accuracy is the mean of the per-sample 'correct'.
    accuracy = {
        line["payload"]["envelope"]["run_ref"]: line["payload"]["payload"]["value"]
        for line in lines(tmp_path, "record")
        if line["payload"]["payload"].get("metric_key") == "accuracy"
    }
    for ref in refs.values():
        correct = [v["correct"] for v in metrics[ref].values()]
        assert math.isclose(accuracy[ref], sum(correct) / len(correct))

    # The paired results printed were computed from these files.
    base = metrics[refs["direct"]]
    for name in ("few-shot", "chain-of-thought"):
        other = metrics[refs[name]]
        wins = sum(1 for c in base if base[c]["correct"] < other[c]["correct"])
        losses = sum(1 for c in base if base[c]["correct"] > other[c]["correct"])
        block = result.stdout.split(f"Paired: t-{name} vs t-direct on 30 matched cases")[1]
        correct_line = next(line for line in block.splitlines() if "correct" in line)
        assert f"wins/losses/ties {wins}/{losses}/{30 - wins - losses}" in correct_line
        printed_p = float(re.search(r"McNemar p = ([0-9.e-]+)", correct_line).group(1))  # type: ignore[union-attr]
        assert math.isclose(printed_p, mcnemar_exact(wins, losses), rel_tol=1e-2)

    best = max(refs.values(), key=lambda ref: accuracy[ref])
    assert result.stdout.rstrip().endswith(f"Selected run: {best}")

    # The predictions artifact is registered with the hash of the file it names.
    artifacts = [line["payload"] for line in lines(tmp_path, "artifact")]
    assert len(artifacts) == 3
    for artifact in artifacts:
        path = Path(artifact["manifest"]["location_ref"].removeprefix("path:"))
        assert hashlib.sha256(path.read_bytes()).hexdigest() == artifact["manifest"]["hash_value"]
        run_metrics = metrics[artifact["manifest"]["run_ref"]]
        for prediction in map(json.loads, path.read_text().splitlines()):
            assert float(prediction["correct"]) == run_metrics[prediction["id"]]["correct"]


def test_calls_that_run_out_of_retries_count_as_wrong_and_are_flagged(tmp_path: Path) -> None:
    # One attempt only: every injected stall (timeout) and transient error ends the case.
    result = run_harness(
        tmp_path,
        "--cases",
        "40",
        "--label",
        "once",
        "--attempts",
        "1",
        "--timeout",
        "0.5",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # --no-progress: nothing on stderr
    metrics = sample_metrics(tmp_path)
    failed = [
        (sample, attrs) for sample, key, attrs in sample_events(tmp_path) if key == "model.failed"
    ]
    assert failed, "the seeded mock injects stalls and errors into some of the 120 calls"
    for sample, attrs in failed:
        run_ref = "run:" + ".".join(sample.removeprefix("sample:").split(".")[:2])
        values = metrics[run_ref][sample.rsplit(".", 1)[1]]
        assert values["correct"] == 0.0 and values["attempts"] == 1 and attrs["attempts"] == 1
    failed_calls = sum(
        line["payload"]["payload"]["value"]
        for line in lines(tmp_path, "record")
        if line["payload"]["payload"].get("metric_key") == "failed.calls"
    )
    assert failed_calls == len(failed)
    assert f"unanswered: {len(failed)}" in result.stdout


def test_harness_evaluates_a_dataset_file(tmp_path: Path) -> None:
    dataset = tmp_path / "My Cases.jsonl"
    cases = [
        {"id": f"q{i}", "question": f"What is {i} plus {i}?", "answer": str(2 * i)}
        for i in range(6)
    ]
    dataset.write_text("".join(json.dumps(c) + "\n" for c in cases))
    workspace = tmp_path / "ws"
    result = run_harness(
        workspace,
        "--dataset",
        str(dataset),
        "--strategies",
        "direct,chain-of-thought",
        "--label",
        "file",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    state = final_states(workspace)
    runs = {ref: s for ref, s in state.items() if ref.startswith("run:")}
    assert set(runs) == {"run:eval-harness.file-direct", "run:eval-harness.file-chain-of-thought"}
    assert {s["dataset_ref"] for s in runs.values()} == {"dataset:eval-harness.my-cases"}
    assert set(sample_metrics(workspace)["run:eval-harness.file-direct"]) == {
        c["id"] for c in cases
    }
    assert "Paired: file-chain-of-thought vs file-direct on 6 matched cases" in result.stdout


def test_harness_refuses_bad_input_before_capturing(tmp_path: Path) -> None:
    dataset = tmp_path / "dup.jsonl"
    dataset.write_text('{"id": "a", "question": "q", "answer": "1"}\n' * 2)
    duplicate = run_harness(tmp_path / "ws", "--dataset", str(dataset), "--no-progress")
    assert duplicate.returncode != 0 and "case ids must be unique" in duplicate.stderr
    unknown = run_harness(tmp_path / "ws", "--strategies", "direct,telepathy", "--no-progress")
    assert unknown.returncode == 2 and "--strategies" in unknown.stderr
    assert not (tmp_path / "ws").exists()
