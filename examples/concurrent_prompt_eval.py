"""Compare two prompt strategies on 200 cases each, every case its own concurrent task.

The async counterpart of ``examples/seed/llm_compare_runs.py``: an OpenAI-shaped mock client
answers after a random (seeded) delay, all 400 cases are in flight at once, and each case is
captured as its own sample with ``correct``, ``latency.ms`` and ``completion.tokens``; each
strategy's stage gets its ``pass.rate``. Run it with ``python examples/concurrent_prompt_eval.py``
(optionally ``--workspace DIR``); it prints the pass rates and the selected run.
"""

from __future__ import annotations

import argparse
import os
import random
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from types import SimpleNamespace

import anyio

from contexta_async import AsyncStage, Contexta
from contexta_async.sinks import LocalJsonlSink

PROJECT = "concurrent-prompt-eval"
CASES_PER_STRATEGY = 200
PROMPTS = {
    "helpful-only": "Answer the user's question.",
    "grounded": "Answer from known context and refuse unsupported questions.",
}
# Simulated API latency, seconds: every case waits this long, all at once, so the whole
# evaluation takes about the longest single delay rather than the sum of them.
LATENCY_RANGE = (0.05, 0.8)


@dataclass(frozen=True)
class Case:
    name: str
    question: str
    expected: str


def make_cases(count: int) -> list[Case]:
    """Deterministic cases, cycling through four kinds of question.

    Two kinds name the workspace (answerable, and the mock knows the answer), one asks where
    records are kept (answerable, but the mock does not know it), and one asks what the
    context cannot tell (the right answer is a refusal).
    """
    templates = (
        ("workspace", "Where is the workspace for project {n}?", ".contexta"),
        ("workspace-dir", "Which directory holds the workspace of run {n}?", ".contexta"),
        ("records", "Where does Contexta keep the records of job {n}?", ".contexta"),
        ("unsupported", "Which GPU was used for run {n}?", "cannot answer"),
    )
    cases = []
    for index in range(count):
        kind, question, expected = templates[index % len(templates)]
        cases.append(Case(f"case-{index:03d}-{kind}", question.format(n=index), expected))
    return cases


class MockAsyncCompletions:
    """``await client.chat.completions.create(...)`` with a seeded random delay per request."""

    def __init__(self, seed: int) -> None:
        self._seed = seed

    async def create(self, *, model: str, messages: list[dict[str, str]]) -> SimpleNamespace:
        instruction = messages[0]["content"]
        question = messages[-1]["content"]
        # Seeded by the request itself, so the delay does not depend on scheduling order.
        rng = random.Random(f"{self._seed}:{model}:{instruction}:{question}")
        await anyio.sleep(rng.uniform(*LATENCY_RANGE))
        if "workspace" in question.lower():
            answer = "Contexta stores local evidence in a .contexta workspace."
        elif "refuse unsupported" in instruction.lower():
            answer = "I cannot answer from the provided context."
        else:
            answer = "A GPU was probably used."
        return SimpleNamespace(
            choices=[SimpleNamespace(message=SimpleNamespace(content=answer))],
            usage=SimpleNamespace(completion_tokens=len(answer.split())),
        )


class MockAsyncOpenAI:
    def __init__(self, seed: int = 7) -> None:
        self.chat = SimpleNamespace(completions=MockAsyncCompletions(seed))


async def evaluate_case(
    stage: AsyncStage,
    client: MockAsyncOpenAI,
    instruction: str,
    case: Case,
    outcomes: dict[str, bool],
) -> None:
    async with stage.sample(case.name) as sample:
        started = perf_counter()
        response = await client.chat.completions.create(
            model="gpt-4.1-mini-mock",
            messages=[
                {"role": "system", "content": instruction},
                {"role": "user", "content": case.question},
            ],
        )
        latency_ms = (perf_counter() - started) * 1000
        correct = case.expected in response.choices[0].message.content
        await sample.metric("correct", float(correct), unit="ratio")
        await sample.metric("latency.ms", latency_ms, unit="ms")
        await sample.metric("completion.tokens", response.usage.completion_tokens)
    outcomes[case.name] = correct


async def evaluate_strategy(
    ctx: Contexta,
    client: MockAsyncOpenAI,
    name: str,
    instruction: str,
    cases: list[Case],
    results: dict[str, tuple[str, float]],
) -> None:
    outcomes: dict[str, bool] = {}
    async with (
        ctx.run(name, dataset_ref="dataset:local.prompt-cases") as run,
        run.stage("evaluate") as stage,
    ):
        async with anyio.create_task_group() as cases_group:
            for case in cases:
                cases_group.start_soon(evaluate_case, stage, client, instruction, case, outcomes)
        pass_rate = sum(outcomes.values()) / len(cases)
        await stage.metric("pass.rate", pass_rate, unit="ratio")
    results[name] = (run.ref, pass_rate)


def display_path(path: Path) -> str:
    """Relative to the current directory when it lies below it, as the seed examples print."""
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return path.as_posix()


async def main(workspace: str, cases_per_strategy: int) -> None:
    cases = make_cases(cases_per_strategy)
    client = MockAsyncOpenAI()
    results: dict[str, tuple[str, float]] = {}
    async with Contexta(workspace=workspace, config={"project_name": PROJECT}) as ctx:
        local_sink = next(sink for sink in ctx.sinks if isinstance(sink, LocalJsonlSink))
        # Both strategies at once: two runs open together, 2 x 200 cases in flight.
        async with anyio.create_task_group() as strategies:
            for name, instruction in PROMPTS.items():
                strategies.start_soon(
                    evaluate_strategy, ctx, client, name, instruction, cases, results
                )
    # Leaving `async with Contexta` drained and fsynced every line before we report.
    best_name = max(results, key=lambda name: results[name][1])
    (helpful_ref, helpful_rate), (grounded_ref, grounded_rate) = (
        results["helpful-only"],
        results["grounded"],
    )
    print(f"Compared runs: {helpful_ref} vs {grounded_ref}")
    print(f"Cases: {len(cases)} per strategy, each its own concurrent sample")
    print(f"Pass rate: {helpful_rate:.2f} -> {grounded_rate:.2f}")
    print(f"Delta: {grounded_rate - helpful_rate:+.2f}")
    print(f"Selected run: {results[best_name][0]}")
    print(f"Records: {display_path(local_sink.file_path_for('RECORD'))}")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--workspace",
        default=".contexta",
        help="workspace directory (default: .contexta in the current directory)",
    )
    parser.add_argument(
        "--cases",
        type=positive_int,
        default=CASES_PER_STRATEGY,
        help=f"cases per strategy (default: {CASES_PER_STRATEGY})",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    anyio.run(main, os.fspath(args.workspace), args.cases)
