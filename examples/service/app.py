"""An LLM-judge web service that records every request as a sample of one long-lived run.

``POST /judge`` with ``{"question": ..., "answer": ..., "reference": ...}`` asks a (mock) judge
model whether the answer matches the reference and returns its verdict. Each request becomes a
sample of the run opened when the app starts; its metrics (``score``, ``correct``,
``latency.ms``, ``tokens``) are captured without blocking the event loop, and shutting the app
down closes the run as completed and drains and fsyncs everything captured.

Run it::

    .venv/bin/pip install -e '.[service]'
    .venv/bin/python -m uvicorn app:app --app-dir examples/service --port 8000

Settings (environment variables):

- ``CONTEXTA_SERVICE_WORKSPACE``: the workspace directory (default ``.contexta``).
- ``CONTEXTA_SERVICE_CAPTURE``: ``0`` turns capture off (to measure its overhead).
- ``CONTEXTA_SERVICE_PROJECT``: the project name (default ``judge-service``).
- ``CONTEXTA_SERVICE_RUN``: the run name (default ``judge-service-<UTC start time>``).
- ``CONTEXTA_SERVICE_LATENCY_MS``: the mock model's latency range, ``low,high`` (default ``5,30``).
- ``CONTEXTA_SERVICE_SEED``: seeds the mock model (default ``0``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from contexta_async import AsyncStage, Contexta

__all__ = ["Judgement", "MockJudge", "Settings", "app", "create_app"]

_WORD = re.compile(r"[a-z0-9]+")
_PROMPT_TEMPLATE_TOKENS = 48  # the judge prompt's fixed instructions, in "tokens"


@dataclass(frozen=True)
class Settings:
    """What the service needs to know; ``from_env()`` reads it from the environment."""

    workspace: str = ".contexta"
    capture: bool = True
    project: str = "judge-service"
    run_name: str = field(
        default_factory=lambda: "judge-service-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    )
    latency_ms: tuple[float, float] = (5.0, 30.0)
    seed: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()
        low, _, high = env.get("CONTEXTA_SERVICE_LATENCY_MS", "5,30").partition(",")
        return cls(
            workspace=env.get("CONTEXTA_SERVICE_WORKSPACE", defaults.workspace),
            capture=env.get("CONTEXTA_SERVICE_CAPTURE", "1").lower() not in {"0", "false", "no"},
            project=env.get("CONTEXTA_SERVICE_PROJECT", defaults.project),
            run_name=env.get("CONTEXTA_SERVICE_RUN", defaults.run_name),
            latency_ms=(float(low), float(high or low)),
            seed=int(env.get("CONTEXTA_SERVICE_SEED", "0")),
        )


@dataclass(frozen=True)
class Judgement:
    score: float
    correct: bool
    verdict: str
    prompt_tokens: int
    completion_tokens: int


class MockJudge:
    """Stands in for an LLM judge: token-overlap F1 against the reference, plus seeded noise.

    The latency is a seeded uniform draw in ``latency_ms``, slept with ``anyio.sleep`` as a
    network call would; the same request always gets the same verdict and latency.
    """

    def __init__(self, *, latency_ms: tuple[float, float] = (5.0, 30.0), seed: int = 0) -> None:
        self.latency_ms = latency_ms
        self.seed = seed

    async def judge(self, question: str, answer: str, reference: str) -> Judgement:
        rng = random.Random(f"{self.seed}\x00{question}\x00{answer}\x00{reference}")
        await anyio.sleep(rng.uniform(*self.latency_ms) / 1000)
        got, want = _WORD.findall(answer.lower()), _WORD.findall(reference.lower())
        common = sum(min(got.count(w), want.count(w)) for w in set(got))
        f1 = 2 * common / (len(got) + len(want)) if got and want else 0.0
        score = min(1.0, max(0.0, f1 + rng.uniform(-0.05, 0.05)))
        correct = score >= 0.5
        verdict = "CORRECT" if correct else "INCORRECT"
        prompt_tokens = _PROMPT_TEMPLATE_TOKENS + len(
            _WORD.findall(f"{question} {answer} {reference}".lower())
        )
        return Judgement(score, correct, verdict, prompt_tokens, completion_tokens=3)


class _BadRequest(Exception):
    pass


def _parse(body: Any) -> tuple[str, str, str, str | None]:
    if not isinstance(body, dict):
        raise _BadRequest("the body must be a JSON object")
    values = []
    for key in ("question", "answer", "reference"):
        value = body.get(key)
        if not isinstance(value, str) or not value.strip():
            raise _BadRequest(f"{key!r} must be a non-blank string")
        values.append(value)
    case_id = body.get("case_id")
    if case_id is not None and (not isinstance(case_id, str) or not case_id.strip()):
        raise _BadRequest("'case_id' must be a non-blank string when given")
    return values[0], values[1], values[2], case_id


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the app; the capture context lives exactly as long as the app's lifespan."""
    settings = settings or Settings.from_env()
    judge = MockJudge(latency_ms=settings.latency_ms, seed=settings.seed)
    # Sample names must be unique within the stage; a counter is, a client's case id is not.
    request_numbers = itertools.count(1)
    state: dict[str, Any] = {"ctx": None, "stage": None, "run_ref": None}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not settings.capture:
            yield
            return
        # The context (and its writer thread) lives as long as the app; leaving these blocks
        # at shutdown closes the stage and the run as completed, then drains and fsyncs.
        capture = Contexta(workspace=settings.workspace, config={"project_name": settings.project})
        async with (
            capture as ctx,
            ctx.run(
                settings.run_name,
                dataset_ref="dataset:judge-service.live-traffic",
                metadata={"judge": "mock", "latency_ms": list(settings.latency_ms)},
            ) as run,
            run.stage("judge") as stage,
        ):
            state.update(ctx=ctx, stage=stage, run_ref=run.ref)
            try:
                yield
            finally:
                state.update(stage=None)

    async def judge_endpoint(request: Request) -> JSONResponse:
        entered = time.perf_counter()
        response, model_seconds = await _judge(request)
        # Server-Timing: the whole handler and the model call, so that what the handler adds
        # around the model (parsing, capture) can be measured from outside.
        timing = f"app;dur={(time.perf_counter() - entered) * 1000:.3f}"
        if model_seconds is not None:
            timing += f", model;dur={model_seconds * 1000:.3f}"
        response.headers["server-timing"] = timing
        return response

    async def _judge(request: Request) -> tuple[JSONResponse, float | None]:
        try:
            question, answer, reference, case_id = _parse(await request.json())
        except ValueError:
            return JSONResponse({"error": "the body is not valid JSON"}, status_code=422), None
        except _BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=422), None
        stage: AsyncStage | None = state["stage"]
        if stage is None:
            started = time.perf_counter()
            result = await judge.judge(question, answer, reference)
            elapsed = time.perf_counter() - started
            return _json(result, elapsed, None), elapsed
        async with stage.sample(f"req-{next(request_numbers):07d}") as sample:
            started = time.perf_counter()
            result = await judge.judge(question, answer, reference)
            elapsed = time.perf_counter() - started
            tags = {"case_id": case_id} if case_id else None
            # Each await returns at once while the queue has room; it waits only under
            # back-pressure (the writer behind by queue_size lines), never on the disk itself.
            await sample.metric("score", result.score, unit="ratio", tags=tags)
            await sample.metric("correct", float(result.correct), unit="ratio", tags=tags)
            await sample.metric("latency.ms", elapsed * 1000, unit="ms", tags=tags)
            await sample.metric(
                "tokens", result.prompt_tokens + result.completion_tokens, unit="tokens", tags=tags
            )
            return _json(result, elapsed, sample.ref), elapsed

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "capture": settings.capture, "run": state["run_ref"]})

    async def stats(request: Request) -> JSONResponse:
        ctx: Contexta | None = state["ctx"]
        if ctx is None:
            return JSONResponse({"capture": False})
        s = ctx.statistics()
        return JSONResponse(
            {
                "capture": True,
                "enqueued": s.enqueued,
                "written": s.written,
                "batches": s.batches,
                "largest_batch": s.largest_batch,
                "fsyncs": s.fsyncs,
                "dropped": s.dropped,
                "failed": s.failed,
            }
        )

    return Starlette(
        routes=[
            Route("/judge", judge_endpoint, methods=["POST"]),
            Route("/healthz", health),
            Route("/stats", stats),
        ],
        lifespan=lifespan,
    )


def _json(result: Judgement, elapsed: float, sample_ref: str | None) -> JSONResponse:
    body = {
        "score": result.score,
        "correct": result.correct,
        "verdict": result.verdict,
        "tokens": result.prompt_tokens + result.completion_tokens,
        "latency_ms": elapsed * 1000,
        "sample_ref": sample_ref,
    }
    return JSONResponse(body)


# ``uvicorn app:app --app-dir examples/service`` serves this, configured from the environment.
app = create_app()


if __name__ == "__main__":
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port)
