"""The RecordSource seam: answers come from whatever source, records are read once."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Generator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from contexta_async._format.refs import run_matches
from contexta_async.readers import RecordRow, Workspace
from contexta_async.readers._local import LocalSource
from contexta_async.readers._source import RecordSource, RowFilter, SourceData

from .capture_files import count_opens
from .test_readers_helpers import capture_llm_workspace


class PerSampleSource:
    """A source that, like a store aggregating in SQL, hands over the latest value per sample
    (and per scope and key) computed on its own, here from the JSON line by line; runs,
    counts and artifacts come from the local files."""

    def __init__(self, capture: Path) -> None:
        self.local = LocalSource(capture)
        self.capture = capture
        self.last_report = self.local.last_report

    def describe(self) -> str:
        return "per-sample test source"

    async def read(self, runs: Collection[str] | None, *, values: bool) -> SourceData:
        data = await self.local.read(runs, values=False)
        scan = data.scan
        assert not scan.samples and not scan.others
        if values:
            scan.kept = {
                r for r in scan.run_refs() if runs is None or any(run_matches(r, n) for n in runs)
            }
            for text in (self.capture / "record.jsonl").read_text().splitlines():
                line = json.loads(text)
                envelope, body = line["payload"]["envelope"], line["payload"]["payload"]
                if "metric_key" not in body or envelope["run_ref"] not in scan.kept:
                    continue
                subject, key = body["subject_ref"], body["metric_key"]
                if subject.startswith("sample:"):
                    parent = envelope["batch_execution_ref"] or envelope["stage_execution_ref"]
                    sample = subject.rsplit(".", 1)[1]
                    scan.samples.setdefault((parent, key), {})[sample] = body["value"]
                else:
                    scan.others[(subject, key)] = body["value"]
        self.last_report = data.report
        return data

    def records(self, run: str, rows: RowFilter) -> AsyncGenerator[RecordRow, None]:
        return self.local.records(run, rows)


def _answers(value: Any) -> Any:
    return msgspec.to_builtins(value)


async def test_a_source_returning_per_sample_values_gives_the_same_answers(
    tmp_path: Path,
) -> None:
    path = capture_llm_workspace(tmp_path / "ws")
    source = PerSampleSource(path / "cache" / "capture")
    checked: RecordSource = source  # it implements the Protocol (checked by mypy)
    local, seam = Workspace(path), Workspace("a store", source=checked)
    for ws in (local, seam):
        assert ws.last_report == local.last_report
    pair = ("helpful-only", "grounded")
    for method, args, kwargs in [
        ("list_runs", (), {}),
        ("get_run", ("grounded",), {}),
        ("compare", pair, {"include_samples": True}),
        ("compare_many", (list(pair),), {}),
        ("best_run", (list(pair), "correct"), {}),
    ]:
        expected = await getattr(local, method)(*args, **kwargs)
        assert _answers(await getattr(seam, method)(*args, **kwargs)) == _answers(expected)
    rows = [row async for row in seam.records("grounded", kind="metric")]
    assert rows == [row async for row in local.records("grounded", kind="metric")]
    # A source without record_blocks exports run after run (here the capture order too).
    exported = await seam.to_arrow(["helpful-only", "grounded"])
    assert exported.equals(await local.to_arrow()) and exported.num_rows == 29


async def test_records_read_record_jsonl_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = capture_llm_workspace(tmp_path / "ws")
    opened = count_opens(monkeypatch, "record.jsonl")
    rows = [row async for row in Workspace(path).records("grounded", kind="metric")]
    assert len(rows) == 2 * 6 + 1 + 2 and len(opened) == 1  # 6 samples x 2, case-99, pass.rate x 2


async def test_records_of_several_runs_read_record_jsonl_once_in_capture_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = capture_llm_workspace(tmp_path / "ws")
    source = LocalSource(path / "cache" / "capture")
    refs = ["run:mock-openai-compare.grounded", "run:mock-openai-compare.helpful-only"]
    every = RowFilter(frozenset({"metric", "event", "span", "artifact"}))
    per_run = {ref: [row async for row in source.records(ref, every)] for ref in refs}
    opened = count_opens(monkeypatch, "record.jsonl")
    rows = [row async for block in source.record_blocks([*refs, refs[0]], every) for row in block]
    assert len(opened) == 1
    records = [row for row in rows if row.kind != "artifact"]
    artifacts = [row for row in rows if row.kind == "artifact"]
    assert rows == records + artifacts  # the artifacts last, run after run in the given order
    for ref in refs:  # each run's rows as records gives them, once
        assert [row for row in records if row.run_ref == ref] + [
            row for row in artifacts if row.run_ref == ref
        ] == per_run[ref]
    assert artifacts == [row for ref in refs for row in per_run[ref] if row.kind == "artifact"]
    assert records[0].run_ref == refs[1]  # capture order: helpful-only was captured first


async def test_records_of_a_run_known_only_from_its_records_are_found_in_the_one_pass(
    tmp_path: Path,
) -> None:
    path = capture_llm_workspace(tmp_path / "ws")
    (path / "cache" / "capture" / "context.jsonl").write_text("")  # as in Contexta 1.0.0
    (path / "cache" / "capture" / "artifact.jsonl").write_text("")
    ws = Workspace(path)
    rows = [row async for row in ws.records("grounded", kind="metric", key="correct")]
    assert [row.sample for row in rows] == [f"case-{n}" for n in (1, 2, 3, 4, 5, 10, 99)]


async def test_records_stream_in_bounded_memory_however_large_the_file(tmp_path: Path) -> None:
    import tracemalloc

    path = capture_llm_workspace(tmp_path / "ws")
    record = path / "cache" / "capture" / "record.jsonl"
    data = record.read_bytes()
    with record.open("ab") as handle:
        for _ in range((24 << 20) // len(data) + 1):
            handle.write(data)  # ~24 MiB: the same lines again and again
    ws = Workspace(path, chunk_size=256 << 10)
    rows = 0
    tracemalloc.start()
    try:
        async for _ in ws.records("grounded", kind="metric"):
            rows += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows > 5_000
    assert peak < 8 << 20, peak  # a block's rows at a time, not the file's


def test_a_bad_records_filter_is_refused_at_the_call(tmp_path: Path) -> None:
    from contexta_async import ValidationError

    ws = Workspace(capture_llm_workspace(tmp_path / "ws"))
    with pytest.raises(ValidationError, match="kind"):
        ws.records("grounded", kind="metrics")  # type: ignore[arg-type]


_BAD_CALLS = [
    ("chunk_size", lambda ws: Workspace(ws.path, chunk_size=8192.5).list_runs()),
    ("chunk_size", lambda ws: Workspace(ws.path, chunk_size="big").list_runs()),
    ("run", lambda ws: ws.get_run(5)),
    ("run", lambda ws: ws.resolve(None)),
    ("left", lambda ws: ws.compare(None, "grounded")),
    ("right", lambda ws: ws.compare("grounded", 7)),
    ("status", lambda ws: ws.list_runs(status=5)),
    ("status", lambda ws: ws.list_runs(status=["open", 5])),
    ("project", lambda ws: ws.list_runs(project=5)),
    ("runs", lambda ws: ws.compare_many("grounded")),  # one str: its letters are no runs
    ("runs[1]", lambda ws: ws.compare_many(["grounded", None])),
    ("runs", lambda ws: ws.best_run("ab", "score")),
    ("metric", lambda ws: ws.best_run(["grounded"], 5)),
    ("stage", lambda ws: ws.best_run(["grounded"], "score", stage=5)),
]


@pytest.mark.parametrize(("field", "call"), _BAD_CALLS)
async def test_a_bad_argument_is_a_validation_error_naming_it(
    tmp_path: Path, field: str, call: Callable[[Workspace], Awaitable[object]]
) -> None:
    from contexta_async import ValidationError

    ws = Workspace(capture_llm_workspace(tmp_path / "ws"))
    with pytest.raises(ValidationError) as raised:
        await call(ws)
    assert raised.value.field == field


@pytest.mark.parametrize(
    ("field", "filters"),
    [
        ("run", {"run": None}),
        ("key", {"key": 5}),
        ("stage", {"stage": ["evaluate"]}),
        ("sample", {"sample": 1}),
        ("kind", {"kind": ["metric", 5]}),
        ("kind", {"kind": 5}),
    ],
)
def test_a_bad_records_argument_is_refused_at_the_call_naming_it(
    tmp_path: Path, field: str, filters: dict[str, object]
) -> None:
    from contexta_async import ValidationError

    ws = Workspace(capture_llm_workspace(tmp_path / "ws"))
    arguments: dict[str, Any] = {"run": "grounded", **filters}
    with pytest.raises(ValidationError) as raised:
        ws.records(**arguments)
    assert raised.value.field == field


async def test_the_reopened_samples_are_counted_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Counter over every sample opening of the workspace: per-sample work, like the scan.
    import threading

    from contexta_async.readers._context import SampleScan

    counted_on: list[threading.Thread] = []
    reopened = SampleScan.reopened

    def spy(self: SampleScan) -> dict[str, int]:
        counted_on.append(threading.current_thread())
        return reopened(self)

    monkeypatch.setattr(SampleScan, "reopened", spy)
    ws = Workspace(capture_llm_workspace(tmp_path / "ws"))
    await ws.compare("helpful-only", "grounded")
    assert counted_on and threading.main_thread() not in counted_on


async def test_a_run_ref_spelt_with_a_json_escape_is_streamed_as_it_is_counted(
    tmp_path: Path,
) -> None:
    from contexta_async import Contexta

    root = tmp_path / "ws"
    ctx = Contexta(workspace=root, config={"project_name": "p"})
    for name in ("a", "b"):
        with ctx.run(name) as run:
            run.metric("score", 1.0)
    ctx.close()
    record = root / "cache" / "capture" / "record.jsonl"
    # Another writer's spelling of the same string: "run:p.a" with its last letter escaped.
    text = record.read_text().replace('"run_ref":"run:p.a"', '"run_ref":"run:p.\\u0061"')
    record.write_text(text)
    ws = Workspace(root, use_index=False)
    summary = await ws.get_run("a")
    rows = [row async for row in ws.records("a")]
    assert summary.counts.metrics == 1
    assert [(row.key, row.run_ref) for row in rows] == [("score", "run:p.a")]


def test_a_stream_cancelled_natively_while_a_thread_reads_says_cancelled() -> None:
    # asyncio.Runner cancels the main task natively on Ctrl-C, without waiting for the worker
    # thread that is reading the next block: closing the block generator then raised
    # "ValueError: generator already executing" instead of the cancellation.
    import asyncio
    import threading

    from contexta_async.readers._read import Issues

    entered, release = threading.Event(), threading.Event()

    def blocks() -> Generator[list[RecordRow], None, None]:
        yield []
        entered.set()
        release.wait(30)  # a slow read, still going when the task is cancelled
        yield []

    async def main() -> None:
        source = LocalSource(Path("unused"))

        async def consume() -> None:
            async for _ in source._drive(blocks(), Issues()):
                pass

        task = asyncio.create_task(consume())
        assert await asyncio.to_thread(entered.wait, 30)
        task.cancel()
        try:
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            release.set()

    asyncio.run(main())
