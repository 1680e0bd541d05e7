"""Property-based: random interleavings of scopes, captures, flushes and cancellations.

Hypothesis draws a program per task (open a stage or sample, close it, capture a metric,
flush, yield, fail, cancel itself or another task) and a tiny queue, so producers park and
cancellations land while they wait. Each task keeps a simple model of what it did; the files
must equal that model.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from contexta_async import Contexta

from ._children.verify import capture_dir, parse_strict, read_bytes, read_family

# One op: ("stage",) ("sample",) ("close",) ("metric", count) ("flush",) ("yield",) ("fail",)
# ("cancel_self",) or ("cancel", task index).
OPS = st.one_of(
    st.sampled_from([("stage",), ("sample",), ("close",), ("flush",), ("yield",)]),
    st.tuples(st.just("metric"), st.integers(1, 8)),
    st.sampled_from([("fail",), ("cancel_self",)]),
    st.tuples(st.just("cancel"), st.integers(0, 2)),
)
PROGRAMS = st.lists(st.lists(OPS, max_size=20), min_size=1, max_size=3)
_SHM = "/dev/shm" if os.path.isdir("/dev/shm") else None  # fsync is cheap on tmpfs


class Boom(Exception):
    """The failure a "fail" op raises inside its scopes."""


@dataclass
class Model:
    captured: dict[int, str] = field(default_factory=dict)  # value -> subject ref
    uncertain: set[int] = field(default_factory=set)  # interrupted while waiting for room
    # Scopes interrupted while their opening line waited for room: either the line got in and
    # the scope closed with this status, or it was withdrawn and left no line at all.
    withdrawable: dict[str, str] = field(default_factory=dict)
    expected: dict[str, str] = field(default_factory=dict)  # ref -> final status
    next_value: int = 0
    flush_violations: list[str] = field(default_factory=list)


def _values_on_disk(workspace: Path) -> set[int]:
    """Values in record.jsonl now; the writer may be mid-append, so ignore a partial tail."""
    lines, _ = parse_strict(read_bytes(capture_dir(workspace) / "record.jsonl"))
    return {line["payload"]["payload"]["value"] for line in lines}


async def _task(
    ctx: Contexta,
    workspace: Path,
    index: int,
    program: list[tuple[Any, ...]],
    scopes: list[anyio.CancelScope],
    model: Model,
) -> None:
    stack: list[tuple[Any, Any, str]] = []  # (opening, face, ref), outermost first
    entering: str | None = None
    names = 0
    with scopes[index]:
        try:
            opening = ctx.run(f"t{index}")
            entering = opening.ref
            stack.append((opening, await opening.__aenter__(), opening.ref))
            entering = None
            for op in program:
                kind = op[0]
                face = stack[-1][1]
                if kind in ("stage", "sample"):
                    if (kind == "stage") != (len(stack) == 1) or len(stack) > 2:
                        continue  # a stage opens under the run, a sample under a stage
                    names += 1
                    child = getattr(face, kind)(f"{kind[:2]}{names}")
                    entering = child.ref
                    entered = await child.__aenter__()
                    stack.append((child, entered, child.ref))
                    entering = None
                elif kind == "close" and len(stack) > 1:
                    child, _, ref = stack.pop()
                    await child.__aexit__(None, None, None)
                    model.expected[ref] = "completed"
                elif kind == "metric":
                    for _ in range(op[1]):
                        value = model.next_value
                        model.next_value += 1
                        try:
                            await face.metric("m", value)
                        except BaseException:
                            model.uncertain.add(value)
                            raise
                        model.captured[value] = stack[-1][2]
                elif kind == "flush":
                    acknowledged = set(model.captured)  # captured before flush was called
                    await ctx.aflush()
                    missing = acknowledged - _values_on_disk(workspace)
                    if missing:
                        model.flush_violations.append(f"flush returned before {missing}")
                elif kind == "yield":
                    await anyio.lowlevel.checkpoint()
                elif kind == "fail":
                    raise Boom
                elif kind == "cancel_self":
                    scopes[index].cancel()
                    await anyio.lowlevel.checkpoint()
                elif kind == "cancel":
                    scopes[op[1] % len(scopes)].cancel()
            while stack:
                child, _, ref = stack.pop()
                await child.__aexit__(None, None, None)
                model.expected[ref] = "completed"
        except BaseException as exc:
            cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
            status = "cancelled" if cancelled else "failed"
            if entering is not None:
                model.withdrawable[entering] = status
            while stack:
                child, _, ref = stack.pop()
                await child.__aexit__(type(exc), exc, exc.__traceback__)
                model.expected[ref] = status
            if not isinstance(exc, Boom):
                raise


async def _scenario(
    workspace: Path, programs: list[list[tuple[Any, ...]]], queue_size: int, batch: int
) -> tuple[Model, Contexta]:
    model = Model()
    ctx = Contexta(
        workspace=workspace,
        config={"project_name": "p"},
        queue_size=queue_size,
        max_batch_size=batch,
    )
    async with ctx:
        scopes = [anyio.CancelScope() for _ in programs]
        async with anyio.create_task_group() as tg:
            for index, program in enumerate(programs):
                tg.start_soon(_task, ctx, workspace, index, program, scopes, model)
    return model, ctx


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,  # the same examples on every run: a failure is reproducible
)
@given(programs=PROGRAMS, queue_size=st.integers(1, 6), batch=st.integers(1, 6))
def test_the_files_equal_a_model_of_what_was_captured(
    backend: str, programs: list[list[tuple[Any, ...]]], queue_size: int, batch: int
) -> None:
    with tempfile.TemporaryDirectory(dir=_SHM) as directory:
        workspace = Path(directory)
        model, ctx = anyio.run(_scenario, workspace, programs, queue_size, batch, backend=backend)
        records = read_family(workspace, "RECORD")
        contexts = read_family(workspace, "CONTEXT")
        assert read_family(workspace, "DEGRADATION") == []
    stats = ctx.statistics()
    statuses = sorted(set(model.expected.values()))
    event(f"final statuses: {statuses}")
    event(f"captures interrupted while waiting: {bool(model.uncertain)}")
    event(f"producers parked: {stats.peak_queued >= queue_size}")
    assert stats.failed == 0 and stats.dropped == 0 and stats.written == stats.enqueued

    assert model.flush_violations == []
    seen: dict[int, str] = {}
    for line in records:
        value = line["payload"]["payload"]["value"]
        assert value not in seen, f"record {value} written twice"
        seen[value] = line["payload"]["payload"]["subject_ref"]
    # Every capture whose await returned is there, once, on the scope it was made in; a capture
    # interrupted while waiting for room is there at most once; nothing else is there.
    for value, subject in model.captured.items():
        assert seen.get(value) == subject, f"record {value} lost or misplaced"
    assert set(seen) <= set(model.captured) | model.uncertain

    # Every scope's first CONTEXT line opens it; the newest holds the status the model expects.
    first: dict[str, str] = {}
    newest: dict[str, str] = {}
    for line in contexts:
        first.setdefault(line["payload_ref"], line["payload"]["status"])
        newest[line["payload_ref"]] = line["payload"]["status"]
    assert set(first.values()) <= {"open"}, "a scope closed without its opening line"
    for ref, status in model.withdrawable.items():
        if ref in newest:  # its opening line got in before the interruption: closed with it
            assert newest.pop(ref) == status
    assert newest == model.expected
