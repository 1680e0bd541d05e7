"""The readers on every anyio backend, and never by forking.

Each reader entry point is run under asyncio and under trio explicitly (``anyio.run`` with
``backend=``), so these tests hold whatever backends the rest of the suite runs on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest

from contexta_async.readers import UnknownRunError, Workspace

from .test_readers_helpers import capture_llm_workspace, copy_fixture_10

BACKENDS = ("asyncio", "trio")


def _record_file(workspace: Path) -> Path:
    return workspace / "cache" / "capture" / "record.jsonl"


async def _every_answer(path: Path, use_index: bool) -> dict[str, Any]:
    """What every public async reader method answers on ``path``."""
    ws = Workspace(path, chunk_size=4096, use_index=use_index)
    out: dict[str, Any] = {}
    out["list_runs"] = await ws.list_runs()
    out["list_report"] = ws.last_report
    out["completed"] = await ws.list_runs(status="completed")
    out["resolve"] = await ws.resolve("grounded")
    out["get_run"] = await ws.get_run("helpful-only")
    out["records"] = [row async for row in ws.records("grounded")]
    out["metrics_of_a_sample"] = [
        row async for row in ws.records("grounded", kind="metric", sample="case-2")
    ]
    out["records_report"] = ws.last_report
    out["compare"] = await ws.compare("helpful-only", "grounded", include_samples=True)
    out["compare_saddlepoint"] = await ws.compare(
        "helpful-only", "grounded", bootstrap="saddlepoint"
    )
    out["compare_many"] = await ws.compare_many(["helpful-only", "grounded", "grounded"])
    out["best_run"] = await ws.best_run(["helpful-only", "grounded"], "pass.rate")
    try:
        await ws.resolve("no-such-run")
    except UnknownRunError as exc:
        out["unknown"] = str(exc)
    # Leaving a stream early must not leave anything running behind.
    async for row in ws.records("grounded"):
        out["first"] = row
        break
    return out


@pytest.mark.parametrize("use_index", [True, False])
def test_every_reader_gives_the_same_answers_on_asyncio_and_trio(
    tmp_path: Path, use_index: bool
) -> None:
    path = capture_llm_workspace(tmp_path / "ws")
    record = _record_file(path)
    lines = record.read_bytes().splitlines(keepends=True)
    # A corrupt line (its line number is found by reading the file again) and a torn tail.
    record.write_bytes(b"".join([*lines[:5], b"{not json\n", *lines[5:], b'{"torn": ']))
    answers = {
        backend: anyio.run(_every_answer, path, use_index, backend=backend) for backend in BACKENDS
    }
    assert answers["asyncio"]["list_report"].corrupt_lines == 1
    assert answers["asyncio"]["list_report"].problems[0].line == 6
    assert answers["asyncio"]["compare"].paired
    assert answers["trio"] == answers["asyncio"]


def test_a_contexta10_workspace_reads_the_same_on_asyncio_and_trio(tmp_path: Path) -> None:
    # No CONTEXT lines: run times come from the records, decoded in the scan.
    path = copy_fixture_10(tmp_path / "ws")

    async def read() -> tuple[Any, ...]:
        ws = Workspace(path)
        runs = await ws.list_runs()
        refs = [run.ref for run in runs]
        return runs, await ws.compare(refs[0], refs[-1]), await ws.compare_many(refs)

    assert anyio.run(read, backend="trio") == anyio.run(read, backend="asyncio")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cancelled_read_returns_at_once_on_every_backend(tmp_path: Path, backend: str) -> None:
    path = capture_llm_workspace(tmp_path / "ws")

    async def cancelled_then_whole() -> tuple[bool, int]:
        ws = Workspace(path)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await ws.compare("helpful-only", "grounded")
        whole = await ws.compare("helpful-only", "grounded")
        return scope.cancelled_caught, len(whole.paired)

    assert anyio.run(cancelled_then_whole, backend=backend) == (True, 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stream_left_early_lets_the_process_exit(tmp_path: Path, backend: str) -> None:
    # A records() iteration abandoned with break is closed while the event loop shuts down:
    # nothing it holds may need a worker thread then (one left waiting blocks the exit).
    path = capture_llm_workspace(tmp_path / "ws")
    script = textwrap.dedent(
        f"""
        import anyio
        from contexta_async.readers import Workspace

        async def main():
            async for row in Workspace({str(path)!r}).records("grounded"):
                print(row.kind)
                break

        anyio.run(main, backend={backend!r})
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,  # a guard against hanging the suite, not a measurement
    )
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "metric", "")


_forks: list[int] = []


def _count_fork() -> None:
    _forks.append(os.getpid())


os.register_at_fork(before=_count_fork)


@pytest.fixture
def large_workspace(tmp_path: Path) -> Path:
    """The LLM workspace with its record lines repeated to over 64 MiB (the size from which
    the readers used to fork range readers); the latest values are unchanged."""
    path = capture_llm_workspace(tmp_path / "ws")
    record = _record_file(path)
    data = record.read_bytes()
    with record.open("ab") as handle:
        for _ in range((64 << 20) // len(data) + 1):
            handle.write(data)
    assert record.stat().st_size > 64 << 20
    return path


@pytest.mark.parametrize("backend", BACKENDS)
def test_compare_never_forks(large_workspace: Path, backend: str) -> None:
    async def read() -> tuple[Any, ...]:
        ws = Workspace(large_workspace)
        return (
            await ws.compare("helpful-only", "grounded"),
            await ws.compare_many(["helpful-only", "grounded"]),
            await ws.best_run(["helpful-only", "grounded"], "pass.rate"),
            await ws.list_runs(),
        )

    before = len(_forks)
    comparison, *_ = anyio.run(read, backend=backend)
    assert len(_forks) == before
    assert comparison.left.counts.metrics > 1000
    assert {p.key: p.n_matched for p in comparison.paired} == {
        "completion.tokens": 6,
        "correct": 6,
    }
