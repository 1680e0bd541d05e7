"""Workspaces captured by the project itself, shared by the reader, compare and CLI tests."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from contexta_async import Contexta

FIXTURE_10 = Path(__file__).parent / "fixtures" / "contexta10"

# (sample name, helpful-only correct, grounded correct, helpful tokens, grounded tokens)
CASES = [
    ("case-1", 1.0, 1.0, 12, 10),
    ("case-2", 0.0, 1.0, 15, 9),
    ("case-3", 1.0, 0.0, 11, 14),
    ("case-4", 0.0, 1.0, 16, 8),
    ("case-5", 0.0, 1.0, 13, 9),
    ("case-10", 1.0, 1.0, 12, 11),
]


def capture_llm_workspace(workspace: Path, *, extra_right_case: bool = True) -> Path:
    """Two runs of the seed's LLM example shape, with six paired samples.

    grounded fixes case-2, case-4, case-5 and regresses case-3; it has one sample more
    (case-99) and uses another dataset; both register a ``report`` artifact, grounded also a
    ``model``. The pass rate is captured twice per run; the second value is the latest.
    """
    ctx = Contexta(workspace=workspace, config={"project_name": "mock-openai-compare"})
    artifacts = workspace / "files"
    artifacts.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(["helpful-only", "grounded"]):
        dataset = "dataset:local.prompt-cases" if index == 0 else "dataset:local.prompt-cases-v2"
        with ctx.run(name, dataset_ref=dataset) as run:
            with run.stage("evaluate") as stage:
                stage.metric("pass.rate", 0.1, unit="ratio")  # superseded below
                passed = 0.0
                for case, left, right, ltok, rtok in CASES:
                    correct = left if index == 0 else right
                    passed += correct
                    with stage.sample(case) as sample:
                        sample.metric("correct", correct, unit="ratio")
                        sample.metric("completion.tokens", ltok if index == 0 else rtok)
                        sample.event("answer", message=f"answered {case}")
                if index == 1 and extra_right_case:
                    with stage.sample("case-99") as sample:
                        sample.metric("correct", 1.0)
                stage.metric("pass.rate", passed / len(CASES), unit="ratio")
            report = artifacts / f"{name}.txt"
            report.write_text(f"report of {name}\n")
            run.register_artifact("report", str(report))
            if index == 1:
                model = artifacts / "model.bin"
                model.write_bytes(b"weights")
                run.register_artifact("model", str(model))
    ctx.close()
    return workspace


def copy_fixture_10(target: Path) -> Path:
    shutil.copytree(FIXTURE_10, target)
    return target


@contextlib.contextmanager
def with_empty_runs(workspace: Path) -> Iterator[Path]:
    """The LLM workspace plus two runs without a single RECORD line: ``empty`` (finished, it
    captured nothing) and ``live`` (just opened, still open while the block runs)."""
    capture_llm_workspace(workspace)
    ctx = Contexta(workspace=workspace, config={"project_name": "mock-openai-compare"})
    try:
        with ctx.run("empty"):
            pass
        with ctx.run("live"):
            ctx.flush()  # the run's opening line is on disk; nothing else is
            yield workspace
    finally:
        ctx.close()
