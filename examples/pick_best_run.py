"""Capture two prompt strategies, then pick the winner from disk with the paired result.

The seed's LLM example decides "Selected run" from numbers it kept in memory. Here the two
runs are captured to a workspace, and the choice is made by reading that workspace back:
the pass rate per run, and for the per-sample ``correct`` metric the paired difference with
its 95% bootstrap interval, wins/losses/ties and the exact McNemar p-value.
"""

from __future__ import annotations

from pathlib import Path
from time import perf_counter
from types import SimpleNamespace

import anyio

from contexta_async import Contexta
from contexta_async.readers import Workspace


class MockCompletions:
    """An OpenAI-shaped local mock: answers depend on the instruction, no network."""

    def create(self, *, model: str, messages: list[dict[str, str]]) -> SimpleNamespace:
        instruction = messages[0]["content"].lower()
        question = messages[-1]["content"].lower()
        if "workspace" in question:
            answer = "Contexta stores local evidence in a .contexta workspace."
        elif "capital" in question:
            answer = "Paris is the capital of France."
        elif "refuse unsupported" in instruction:
            answer = "I cannot answer from the provided context."
        else:
            answer = "A GPU was probably used."
        return SimpleNamespace(
            choices=[SimpleNamespace(message=SimpleNamespace(content=answer))],
            usage=SimpleNamespace(completion_tokens=len(answer.split())),
        )


class MockOpenAI:
    def __init__(self) -> None:
        self.chat = SimpleNamespace(completions=MockCompletions())


cases = [
    ("workspace-question", "Where is the workspace?", ".contexta"),
    ("capital-question", "What is the capital of France?", "Paris"),
    ("unsupported-gpu", "Which GPU was used?", "cannot answer"),
    ("unsupported-budget", "What was the training budget?", "cannot answer"),
    ("unsupported-author", "Who wrote the evaluation set?", "cannot answer"),
    ("unsupported-date", "When was the model released?", "cannot answer"),
]
prompts = {
    "helpful-only": "Answer the user's question.",
    "grounded": "Answer from known context and refuse unsupported questions.",
}

workspace = Path(".contexta")
ctx = Contexta(workspace=workspace, config={"project_name": "mock-openai-compare"})
client = MockOpenAI()
for name, instruction in prompts.items():
    with (
        ctx.run(name, dataset_ref="dataset:local.prompt-cases") as run,
        run.stage("evaluate") as stage,
    ):
        passed = 0
        for case_name, question, expected in cases:
            started = perf_counter()
            response = client.chat.completions.create(
                model="gpt-4.1-mini-mock",
                messages=[
                    {"role": "system", "content": instruction},
                    {"role": "user", "content": question},
                ],
            )
            answer = response.choices[0].message.content
            correct = expected in answer
            passed += int(correct)
            with stage.sample(case_name) as sample:
                sample.metric("correct", float(correct), unit="ratio")
                sample.metric("latency.ms", (perf_counter() - started) * 1000, unit="ms")
                sample.metric("completion.tokens", response.usage.completion_tokens)
        stage.metric("pass.rate", passed / len(cases), unit="ratio")
ctx.close()  # everything captured is on disk from here on


async def pick() -> None:
    reader = Workspace(workspace)
    best = await reader.best_run(list(prompts), "pass.rate")
    comparison = await reader.compare("helpful-only", "grounded", seed=0)
    rates = {r.run: r.value for r in best.ranking}
    left, right = comparison.left.ref, comparison.right.ref
    print(f"Compared runs: {left} vs {right}")
    print(f"Pass rate: {rates[left]:.2f} -> {rates[right]:.2f}")
    how = "inferred" if best.direction_inferred else "given"
    print(f"Direction: {best.direction} ({how})")
    correct = next(p for p in comparison.paired if p.key == "correct")
    print(
        f"Paired correct: n={correct.n_matched}, mean diff {correct.mean_diff:+.2f}, "
        f"95% CI [{correct.ci_low:+.2f}, {correct.ci_high:+.2f}]"
    )
    print(f"Wins/losses/ties: {correct.wins}/{correct.losses}/{correct.ties}")
    print(f"McNemar p: {correct.mcnemar_p:.3f}")
    print(f"Fixed: {', '.join(correct.fixed) or 'none'}")
    print(f"Regressed: {', '.join(correct.regressed) or 'none'}")
    if best.tie:
        print(f"Selected run: tie between {', '.join(best.winners)}")
    else:
        print(f"Selected run: {best.winners[0]}")
    for warning in comparison.warnings:
        print(f"Warning: {warning}")


anyio.run(pick)
