"""An async evaluation harness: several prompt strategies, one dataset, a paired comparison.

A starting point to copy. Every (strategy, case) pair is its own task; a shared
``anyio.CapacityLimiter`` bounds the model calls in flight (as a provider's rate limit would),
each call has a timeout (``anyio.fail_after``) and bounded retries with exponential backoff,
and each case is captured as a sample of its strategy's run with ``correct``, ``latency.ms``,
``tokens``, ``cost.usd`` and ``attempts``. A progress bar runs on stderr. At the end the runs
are read back from disk and compared with paired statistics: the same cases, so a difference
can be told from noise.

The model is a seeded mock that answers arithmetic questions, sometimes wrongly (harder cases
more often), sometimes slowly enough to time out, sometimes with a transient error. Replace
``MockModel`` with your client and ``load_cases`` with your data.

    .venv/bin/python examples/eval_harness.py --cases 200
    .venv/bin/python examples/eval_harness.py --dataset my_cases.jsonl --concurrency 16

A dataset file is JSON Lines: ``{"id": "case-1", "question": "...", "answer": "..."}``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from tqdm import tqdm

from contexta_async import AsyncSample, AsyncStage, Contexta
from contexta_async.readers import Direction, MultiRunRow, PairedResult, Workspace

PROJECT = "eval-harness"
MODEL = "mock-llm-1"
# Price per million tokens (input, output), USD: what cost.usd is computed from.
PRICE_PER_MTOK = (0.15, 0.60)


# ---- the dataset ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    question: str
    answer: str


def generate_cases(count: int, seed: int) -> list[Case]:
    """Arithmetic word problems with known answers, deterministic for a seed."""
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
        kind = i % 3
        if kind == 0:
            question, answer = f"A shelf holds {a} books and {b} more arrive. How many?", a + b
        elif kind == 1:
            question = f"{c} boxes hold {a} apples each; {b} apples are eaten. How many are left?"
            answer = c * a - b
        else:
            question, answer = f"What is {a} times {c}, minus {b}?", a * c - b
        cases.append(Case(f"case-{i:04d}", question, str(answer)))
    return cases


def load_cases(path: Path) -> list[Case]:
    """Read ``{"id", "question", "answer"}`` objects, one per line."""
    cases = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            cases.append(Case(str(item["id"]), str(item["question"]), str(item["answer"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"{path}:{number}: not a case ({exc})") from None
    if not cases:
        raise SystemExit(f"{path}: no cases")
    if len({case.id for case in cases}) != len(cases):
        raise SystemExit(f"{path}: case ids must be unique (samples are matched by them)")
    return cases


# ---- the strategies and the model --------------------------------------------------------


@dataclass(frozen=True)
class Strategy:
    name: str
    template: str
    skill: float  # the mock's accuracy knob: how hard a case it still gets right
    reasoning_tokens: int  # extra completion tokens the mock spends "thinking"


STRATEGIES = (
    Strategy("direct", "Answer with a number only.\nQ: {question}\nA:", 0.62, 0),
    Strategy(
        "few-shot",
        "Q: 3 pens and 4 more arrive. How many?\nA: 7\n"
        "Q: 2 bags hold 5 each; 3 are lost. How many are left?\nA: 7\n"
        "Q: {question}\nA:",
        0.72,
        0,
    ),
    Strategy(
        "chain-of-thought",
        "Think step by step, then give the final line as 'Answer: <number>'.\nQ: {question}",
        0.84,
        60,
    ),
)


class TransientModelError(Exception):
    """A retryable failure: rate limited, overloaded, connection reset."""


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class MockModel:
    """An async model client with realistic latency, errors and stalls, all seeded.

    Case difficulty is shared across strategies, so their outcomes are correlated, as with a
    real model: this is what makes a paired comparison more sensitive than comparing means.
    """

    seed: int = 0
    latency_ms: tuple[float, float] = (20.0, 120.0)
    error_rate: float = 0.04
    stall_rate: float = 0.03
    stall_seconds: float = 30.0
    calls: int = field(default=0, init=False)
    in_flight: int = field(default=0, init=False)
    peak_in_flight: int = field(default=0, init=False)  # what the limiter let through at once

    async def complete(self, prompt: str, *, case: Case, strategy: Strategy, attempt: int) -> str:
        self.calls += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._answer(case, strategy, attempt)
        finally:
            self.in_flight -= 1

    async def _answer(self, case: Case, strategy: Strategy, attempt: int) -> str:
        rng = random.Random(f"{self.seed}:{case.id}:{strategy.name}:{attempt}")
        roll = rng.random()
        if roll < self.stall_rate:
            await anyio.sleep(self.stall_seconds)  # a hung connection: only a timeout ends it
        latency = rng.uniform(*self.latency_ms) * (1 + strategy.reasoning_tokens / 100)
        await anyio.sleep(latency / 1000)
        if roll > 1 - self.error_rate:
            raise TransientModelError("429 rate limited")
        difficulty = random.Random(f"{self.seed}:{case.id}").random()
        noise = random.Random(f"{self.seed}:{case.id}:{strategy.name}").gauss(0, 0.08)
        answer = case.answer if difficulty + noise < strategy.skill else str(int(case.answer) + 1)
        if strategy.reasoning_tokens:
            return f"Let me work through it.\nThe steps give {answer}.\nAnswer: {answer}"
        return answer

    def count_tokens(self, text: str) -> int:
        return max(1, round(len(text) / 4))  # the usual ~4 characters per token


# ---- one case ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    timeout: float = 2.0  # seconds per attempt
    attempts: int = 4
    backoff: float = 0.05  # first retry delay, doubled per retry, with jitter


_NUMBER = re.compile(r"-?\d+")


def extract_answer(text: str) -> str | None:
    """The final number in the completion (after 'Answer:' when there is one)."""
    tail = text.rsplit("Answer:", 1)[-1]
    numbers = _NUMBER.findall(tail)
    return numbers[-1] if numbers else None


async def call_model(
    model: MockModel,
    limiter: anyio.CapacityLimiter,
    prompt: str,
    case: Case,
    strategy: Strategy,
    limits: Limits,
    sample: AsyncSample,
    timing: list[float],
) -> tuple[str, int]:
    """Call the model with a timeout per attempt and bounded retries; return (text, attempts).

    Appends each attempt's duration to ``timing``: the latency is the time spent in model
    calls, not the time spent waiting for a slot or backing off, which depend on the load.
    """
    rng = random.Random(f"backoff:{case.id}:{strategy.name}")
    for attempt in range(1, limits.attempts + 1):
        try:
            # The limiter bounds calls in flight; backoff sleeps happen outside it.
            async with limiter:
                started = time.perf_counter()
                try:
                    with anyio.fail_after(limits.timeout):
                        text = await model.complete(
                            prompt, case=case, strategy=strategy, attempt=attempt
                        )
                finally:
                    timing.append(time.perf_counter() - started)
            return text, attempt
        except (TimeoutError, TransientModelError) as exc:
            error = "timeout" if isinstance(exc, TimeoutError) else str(exc)
            if attempt == limits.attempts:
                raise
            delay = limits.backoff * 2 ** (attempt - 1) * rng.uniform(0.5, 1.5)
            await sample.event(
                "model.retry",
                message=f"attempt {attempt} failed ({error}); retrying in {delay * 1000:.0f} ms",
                level="warning",
                attributes={"attempt": attempt, "error": error},
            )
            await anyio.sleep(delay)
    raise AssertionError("unreachable")


@dataclass
class Tally:
    correct: int = 0
    failed: int = 0
    cost: float = 0.0
    predictions: list[dict[str, Any]] = field(default_factory=list)


async def evaluate_case(
    stage: AsyncStage,
    model: MockModel,
    limiter: anyio.CapacityLimiter,
    strategy: Strategy,
    case: Case,
    limits: Limits,
    tally: Tally,
    progress: tqdm[Any],
) -> None:
    prompt = strategy.template.format(question=case.question)
    timing: list[float] = []
    async with stage.sample(case.id) as sample:
        try:
            text, attempts = await call_model(
                model, limiter, prompt, case, strategy, limits, sample, timing
            )
        except (TimeoutError, TransientModelError) as exc:
            # Out of retries: the user would have got no answer, so it counts as wrong (and is
            # flagged), rather than vanishing from the comparison and flattering the strategy.
            text, attempts = "", limits.attempts
            tally.failed += 1
            await sample.event(
                "model.failed",
                message=f"no answer after {attempts} attempts: {exc or 'timeout'}",
                level="error",
                attributes={"attempts": attempts},
            )
        latency_ms = sum(timing) * 1000
        predicted = extract_answer(text)
        correct = predicted == case.answer
        prompt_tokens = model.count_tokens(prompt) * attempts
        completion_tokens = model.count_tokens(text) if text else 0
        tokens = prompt_tokens + completion_tokens
        cost = (prompt_tokens * PRICE_PER_MTOK[0] + completion_tokens * PRICE_PER_MTOK[1]) / 1e6
        await sample.metric("correct", float(correct), unit="ratio")
        await sample.metric("latency.ms", latency_ms, unit="ms")
        await sample.metric("tokens", tokens, unit="tokens")
        await sample.metric("cost.usd", cost, unit="usd")
        await sample.metric("attempts", attempts)
    tally.correct += correct
    tally.cost += cost
    tally.predictions.append(
        {"id": case.id, "expected": case.answer, "predicted": predicted, "correct": correct}
    )
    progress.update()


async def evaluate_strategy(
    ctx: Contexta,
    model: MockModel,
    limiter: anyio.CapacityLimiter,
    strategy: Strategy,
    cases: Sequence[Case],
    limits: Limits,
    run_name: str,
    dataset_ref: str,
    artifacts_dir: Path,
    progress: tqdm[Any],
) -> tuple[str, Tally]:
    tally = Tally()
    metadata = {"model": MODEL, "template": strategy.template, "timeout_s": limits.timeout}
    async with (
        ctx.run(
            run_name, dataset_ref=dataset_ref, tags={"strategy": strategy.name}, metadata=metadata
        ) as run,
        run.stage("evaluate") as stage,
    ):
        async with anyio.create_task_group() as tg:
            for case in cases:
                tg.start_soon(
                    evaluate_case, stage, model, limiter, strategy, case, limits, tally, progress
                )
        # Stage-level summaries, next to the per-sample metrics they summarise.
        await stage.metric(
            "accuracy", tally.correct / len(cases), unit="ratio", aggregation_scope="stage"
        )
        await stage.metric("cost.usd", tally.cost, unit="usd", aggregation_scope="stage")
        await stage.metric("failed.calls", tally.failed, aggregation_scope="stage")
        predictions = artifacts_dir / f"{run_name}.predictions.jsonl"
        lines = sorted(tally.predictions, key=lambda p: p["id"])
        await anyio.Path(predictions).write_text("".join(json.dumps(p) + "\n" for p in lines))
        await stage.register_artifact("predictions", predictions, attributes={"cases": len(cases)})
    return run.ref, tally


# ---- reading it back: the comparison -------------------------------------------------------

# The readers infer a direction from the key (latency, cost, tokens... are minimised, the rest
# maximised); say it outright for keys whose name does not tell.
DIRECTIONS: dict[str, Direction] = {"attempts": "minimize", "failed.calls": "minimize"}
PAIRED_KEYS = ("correct", "latency.ms", "tokens", "cost.usd")


def _display(path: Path) -> str:
    """Relative to the current directory when below it."""
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return path.as_posix()


def _short(ref: str) -> str:
    return ref.rsplit(".", 1)[-1]


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 0.01 and value else f"{value:,.3f}"


def _row_label(row: MultiRunRow) -> str:
    where = "per sample, mean" if row.scope == "sample" else row.scope
    return f"{row.key} ({where})"


def _paired_line(result: PairedResult) -> str:
    if result.mean_diff is None:
        return f"{result.key}: no matched samples"
    if (
        result.ci_low is not None
        and result.ci_high is not None
        and result.ci_low <= 0 <= result.ci_high
    ):
        sign = "no clear difference"  # the interval holds 0: the data cannot tell
    elif (result.mean_diff > 0) == (result.direction == "maximize"):
        sign = "better"
    else:
        sign = "worse"
    ci = "(no interval)"
    if result.ci_low is not None and result.ci_high is not None:
        ci = f"[{result.ci_low:+.4g}, {result.ci_high:+.4g}]"
    line = (
        f"{result.key:<11} {_fmt(result.mean_left)} -> {_fmt(result.mean_right)}  "
        f"diff {result.mean_diff:+.4g} {ci} ({sign}); "
        f"wins/losses/ties {result.wins}/{result.losses}/{result.ties}"
    )
    if result.binary and result.mcnemar_p is not None:
        line += f"; McNemar p = {result.mcnemar_p:.3g}"
    return line


async def report(workspace: Path, refs: Sequence[str]) -> None:
    """Read the captured runs back from disk and compare them: a table, then paired results."""
    ws = Workspace(workspace)
    table = await ws.compare_many(refs, directions=DIRECTIONS)
    names = [_short(ref) for ref in refs]
    width = max(len(_row_label(row)) for row in table.rows)
    column = max(10, *map(len, names))
    print(f"\nRuns read back from {_display(ws.capture_dir)}:")
    print(f"  {'metric':<{width}}  " + "  ".join(f"{n:>{column}}" for n in names) + "  best")
    for row in table.rows:
        values = "  ".join(f"{_fmt(v):>{column}}" for v in row.values)
        leaders = ", ".join(_short(ref) for ref in row.best)
        print(f"  {_row_label(row):<{width}}  {values}  {leaders} ({row.direction})")
    for warning in table.warnings:
        print(f"  warning: {warning}")

    baseline, others = refs[0], refs[1:]
    paired_p: dict[str, float | None] = {}
    for other in others:
        comparison = await ws.compare(baseline, other, directions=DIRECTIONS)
        results = {p.key: p for p in comparison.paired}
        correct = results["correct"]
        print(
            f"\nPaired: {_short(other)} vs {_short(baseline)} on {correct.n_matched} matched cases "
            f"({correct.confidence:.0%} bootstrap CI of the mean difference, right - left)"
        )
        for key in PAIRED_KEYS:
            if key in results:
                print(f"  {_paired_line(results[key])}")
        if correct.regressed:
            print(f"  regressed: {', '.join(correct.regressed[:10])}")
        paired_p[other] = correct.mcnemar_p
        for warning in comparison.warnings:
            print(f"  warning: {warning}")

    best = await ws.best_run(refs, "accuracy", stage="evaluate")
    how = "inferred" if best.direction_inferred else "given"
    print(f"\nBest by accuracy ({best.direction}, {how}): {', '.join(best.winners)}")
    winner = best.winners[0]
    if winner != baseline and not best.tie:
        p = paired_p.get(winner)
        verdict = "unlikely to be chance" if p is not None and p < 0.05 else "could still be chance"
        print(f"Versus the baseline {_short(baseline)}: McNemar p = {_fmt(p)}, {verdict}")
    print(f"Selected run: {winner}")


# ---- the whole evaluation ------------------------------------------------------------------


async def evaluate(
    workspace: Path,
    cases: Sequence[Case],
    strategies: Sequence[Strategy],
    *,
    label: str,
    dataset_ref: str,
    concurrency: int,
    limits: Limits,
    model: MockModel,
    show_progress: bool,
) -> dict[str, tuple[str, Tally]]:
    """Evaluate every strategy on every case at once; return {strategy: (run ref, tally)}."""
    limiter = anyio.CapacityLimiter(concurrency)  # shared: one rate limit for all strategies
    artifacts_dir = workspace / "artifacts" / label
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, tuple[str, Tally]] = {}
    progress = tqdm(
        total=len(cases) * len(strategies),
        desc="evaluating",
        unit="case",
        file=sys.stderr,
        disable=not show_progress,
    )

    async def one(strategy: Strategy) -> None:
        results[strategy.name] = await evaluate_strategy(
            ctx,
            model,
            limiter,
            strategy,
            cases,
            limits,
            f"{label}-{strategy.name}",
            dataset_ref,
            artifacts_dir,
            progress,
        )

    with progress:
        async with (
            Contexta(workspace=workspace, config={"project_name": PROJECT}) as ctx,
            anyio.create_task_group() as tg,
        ):
            for strategy in strategies:
                tg.start_soon(one, strategy)
        # Leaving `async with Contexta` drained and fsynced every line: the readers see it all.
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workspace", type=Path, default=Path(".contexta"))
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--cases", type=int, default=120, help="generated cases (default 120)")
    source.add_argument("--dataset", type=Path, help="a JSON Lines file of cases")
    parser.add_argument(
        "--strategies",
        default=",".join(s.name for s in STRATEGIES),
        help="comma-separated; the first is the baseline the others are compared to",
    )
    parser.add_argument("--concurrency", type=int, default=32, help="model calls in flight")
    parser.add_argument("--timeout", type=float, default=Limits.timeout, help="seconds per call")
    parser.add_argument("--attempts", type=int, default=Limits.attempts, help="tries per case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--label",
        default=None,
        help="prefix of the run names (default: the UTC start time), so reruns stay apart",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.attempts < 1 or args.cases < 1 or args.timeout <= 0:
        parser.error("--concurrency, --attempts, --cases and --timeout must be positive")
    known = {s.name: s for s in STRATEGIES}
    names = [name.strip() for name in args.strategies.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or len(names) < 2 or len(set(names)) != len(names):
        parser.error(f"--strategies: two or more distinct names out of {sorted(known)}")
    args.strategies = [known[name] for name in names]
    return args


async def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.dataset is not None:
        cases = load_cases(args.dataset)
        dataset_ref = "dataset:eval-harness." + re.sub(
            r"[^a-z0-9]+", "-", args.dataset.stem.lower()
        ).strip("-")
    else:
        cases = generate_cases(args.cases, args.seed)
        dataset_ref = f"dataset:eval-harness.arithmetic-{args.cases}-seed-{args.seed}"
    label = args.label or time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    model = MockModel(seed=args.seed)
    limits = Limits(timeout=args.timeout, attempts=args.attempts)
    started = time.perf_counter()
    results = await evaluate(
        args.workspace,
        cases,
        args.strategies,
        label=label,
        dataset_ref=dataset_ref,
        concurrency=args.concurrency,
        limits=limits,
        model=model,
        show_progress=not args.no_progress,
    )
    elapsed = time.perf_counter() - started
    print(
        f"Evaluated {len(args.strategies)} strategies x {len(cases)} cases in {elapsed:.1f} s "
        f"({model.calls} model calls, at most {model.peak_in_flight} in flight, "
        f"limit {args.concurrency}); "
        f"unanswered: {sum(tally.failed for _, tally in results.values())}"
    )
    refs = [results[strategy.name][0] for strategy in args.strategies]
    await report(args.workspace, refs)


if __name__ == "__main__":
    anyio.run(main)
