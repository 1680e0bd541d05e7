"""Async readers: listing runs, streaming records, old-format, torn, corrupt and live files."""

from __future__ import annotations

import math
import os
from pathlib import Path

import anyio
import anyio.lowlevel
import msgspec
import pytest

from contexta_async import Contexta
from contexta_async.readers import (
    AmbiguousRunError,
    EmptyWorkspaceError,
    UnknownRunError,
    UnreadableFileError,
    Workspace,
    WorkspaceNotFoundError,
    _scan,
    resolve_run_ref,
)
from contexta_async.readers._local import scan_file
from contexta_async.readers._read import Issues

from .test_readers_helpers import capture_llm_workspace, copy_fixture_10


def _capture_statuses(workspace: Path) -> None:
    ctx = Contexta(workspace=workspace, config={"project_name": "alpha"})
    with ctx.run("ok-run", dataset_ref="dataset:x.one") as run:
        with run.stage("train") as stage:
            stage.metric("loss", 0.5)
        with run.stage("evaluate") as stage:
            stage.event("done", message="evaluated")
    with pytest.raises(RuntimeError), ctx.run("bad-run") as run, run.stage("train"):
        raise RuntimeError("diverged")
    ctx.close()
    other = Contexta(workspace=workspace, config={"project_name": "beta"})
    with other.run("ok-run") as run:
        run.metric("accuracy", 0.9)
    other.close()


async def test_list_runs_reports_status_dataset_stages_and_counts(tmp_path: Path) -> None:
    _capture_statuses(tmp_path / "ws")
    ws = Workspace(tmp_path / "ws")
    runs = {r.ref: r for r in await ws.list_runs()}
    assert set(runs) == {"run:alpha.ok-run", "run:alpha.bad-run", "run:beta.ok-run"}
    ok = runs["run:alpha.ok-run"]
    assert (ok.name, ok.project, ok.status, ok.dataset_ref) == (
        "ok-run",
        "alpha",
        "completed",
        "dataset:x.one",
    )
    assert ok.stages == ["train", "evaluate"]
    assert (ok.counts.metrics, ok.counts.events, ok.counts.artifacts) == (1, 1, 0)
    assert ok.started_at is not None and ok.ended_at is not None
    assert ok.started_at < ok.ended_at
    assert ok.source == "context"
    bad = runs["run:alpha.bad-run"]
    assert bad.status == "failed"
    assert bad.failure_reason is not None and "diverged" in bad.failure_reason
    assert [r.ref for r in await ws.list_runs(project="beta")] == ["run:beta.ok-run"]
    assert [r.ref for r in await ws.list_runs(status="failed")] == ["run:alpha.bad-run"]
    assert len(await ws.list_runs(status=["failed", "completed"])) == 3
    assert await ws.list_runs(project="alpha", status="open") == []


async def test_workspace_may_be_named_by_its_capture_folder(tmp_path: Path) -> None:
    capture_llm_workspace(tmp_path / "ws")
    by_root = await Workspace(tmp_path / "ws").list_runs()
    by_capture = await Workspace(tmp_path / "ws" / "cache" / "capture").list_runs()
    assert [r.ref for r in by_root] == [r.ref for r in by_capture]
    assert len(by_root) == 2


def test_a_path_without_capture_files_is_not_a_workspace(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceNotFoundError, match="no Contexta workspace"):
        Workspace(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(WorkspaceNotFoundError):
        Workspace(tmp_path / "plain")


async def test_an_empty_workspace_has_no_runs_and_naming_one_fails(tmp_path: Path) -> None:
    (tmp_path / "ws" / "cache" / "capture").mkdir(parents=True)
    ws = Workspace(tmp_path / "ws")
    assert await ws.list_runs() == []
    with pytest.raises(EmptyWorkspaceError):
        await ws.get_run("anything")


async def test_runs_are_named_by_full_ref_or_unique_suffix(tmp_path: Path) -> None:
    capture_llm_workspace(tmp_path / "ws")
    ws = Workspace(tmp_path / "ws")
    assert await ws.resolve("grounded") == "run:mock-openai-compare.grounded"
    assert await ws.resolve("mock-openai-compare.grounded") == "run:mock-openai-compare.grounded"
    assert (
        await ws.resolve("run:mock-openai-compare.helpful-only")
        == "run:mock-openai-compare.helpful-only"
    )
    with pytest.raises(UnknownRunError, match="'only'"):
        await ws.resolve("only")  # a suffix must be whole components
    with pytest.raises(AmbiguousRunError) as caught:
        resolve_run_ref("ok-run", ["run:alpha.ok-run", "run:beta.ok-run"])
    assert caught.value.matches == ["run:alpha.ok-run", "run:beta.ok-run"]


async def test_records_stream_in_capture_order_with_filters(tmp_path: Path) -> None:
    capture_llm_workspace(tmp_path / "ws")
    ws = Workspace(tmp_path / "ws")
    rows = [row async for row in ws.records("grounded")]
    kinds = [row.kind for row in rows]
    assert kinds.count("metric") == 2 + 6 * 2 + 1
    assert kinds.count("event") == 6
    assert kinds.count("artifact") == 2
    assert kinds[-2:] == ["artifact", "artifact"]  # artifacts follow the records
    stamps = [row.recorded_at for row in rows if row.kind != "artifact"]
    assert stamps == sorted(stamps)
    correct = [row async for row in ws.records("grounded", kind="metric", key="correct")]
    assert [(r.sample, r.value) for r in correct][:3] == [
        ("case-1", 1.0),
        ("case-2", 1.0),
        ("case-3", 0.0),
    ]
    one = [row async for row in ws.records("grounded", sample="case-3")]
    assert {(r.kind, r.key) for r in one} == {
        ("metric", "correct"),
        ("metric", "completion.tokens"),
        ("event", "answer"),
    }
    assert all(r.stage == "evaluate" and r.run_ref.endswith("grounded") for r in one)
    events = [row async for row in ws.records("helpful-only", kind="event", stage="evaluate")]
    assert next(e.message for e in events) == "answered case-1"
    models = [row async for row in ws.records("grounded", kind="artifact", key="model")]
    assert len(models) == 1
    assert models[0].hash_value is not None and models[0].size_bytes == len(b"weights")
    with pytest.raises(ValueError, match="kind"):
        [row async for row in ws.records("grounded", kind="metrics")]  # type: ignore[arg-type]


async def test_contexta10_workspace_runs_are_derived_from_record_refs(tmp_path: Path) -> None:
    ws = Workspace(copy_fixture_10(tmp_path / "old"))
    runs = {r.ref: r for r in await ws.list_runs()}
    assert set(runs) == {
        "run:iris-svm.linear-svm",
        "run:iris-svm.rbf-svm",
        "run:mock-openai-compare.helpful-only",
        "run:mock-openai-compare.grounded",
    }
    linear = runs["run:iris-svm.linear-svm"]
    assert (linear.status, linear.source, linear.project, linear.name) == (
        "unknown",
        "records",
        "iris-svm",
        "linear-svm",
    )
    assert linear.stages == ["evaluate", "train"]
    assert (linear.counts.metrics, linear.counts.spans, linear.counts.artifacts) == (3, 1, 1)
    assert linear.started_at == "2026-11-26T04:52:10.001274Z"
    assert linear.ended_at is not None and linear.ended_at > linear.started_at
    rates = [row async for row in ws.records("grounded", key="pass.rate")]
    assert [(r.value, r.recorded_at) for r in rates] == [(1.0, "2026-11-26T04:52:30Z")]
    assert [r.name for r in await ws.list_runs(project="iris-svm")] == ["linear-svm", "rbf-svm"]
    assert await ws.list_runs(status="completed") == []
    spans = [row async for row in ws.records("linear-svm", kind="span")]
    assert [(s.key, s.stage, s.status) for s in spans] == [("fit", "train", "ok")]


def _record_file(workspace: Path) -> Path:
    return workspace / "cache" / "capture" / "record.jsonl"


async def test_a_torn_last_line_is_left_out_silently_until_complete(tmp_path: Path) -> None:
    ws_path = capture_llm_workspace(tmp_path / "ws")
    record = _record_file(ws_path)
    lines = record.read_bytes().splitlines(keepends=True)
    last = lines[-1]
    record.write_bytes(b"".join(lines[:-1]) + last[: len(last) // 2])  # a writer mid-line
    ws = Workspace(ws_path)
    before = {r.name: r.counts.metrics for r in await ws.list_runs()}
    assert ws.last_report.corrupt_lines == 0
    assert ws.last_report.torn_tails == [str(record)]
    comparison = await ws.compare("helpful-only", "grounded")
    assert comparison.read_report.corrupt_lines == 0
    assert not any("corrupt" in w for w in comparison.warnings)
    with record.open("ab") as handle:  # the writer finishes the line
        handle.write(last[len(last) // 2 :])
    after = {r.name: r.counts.metrics for r in await ws.list_runs()}
    assert after["grounded"] == before["grounded"] + 1
    assert ws.last_report.torn_tails == []


async def test_corrupt_lines_in_the_middle_are_counted_and_located(tmp_path: Path) -> None:
    ws_path = capture_llm_workspace(tmp_path / "ws")
    record = _record_file(ws_path)
    clean = await Workspace(ws_path).compare("helpful-only", "grounded")
    lines = record.read_bytes().splitlines(keepends=True)
    torn = lines[5][:100] + b"\n"  # a crashed writer's fragment, ended by the next writer
    broken = [*lines[:3], b"not json at all\n", *lines[3:10], torn, *lines[10:]]
    record.write_bytes(b"".join(broken))
    ws = Workspace(ws_path)
    comparison = await ws.compare("helpful-only", "grounded")
    report = comparison.read_report
    assert report.corrupt_lines == 2
    assert [(p.file, p.line) for p in report.problems] == [(str(record), 4), (str(record), 12)]
    assert report.problems[0].offset == sum(len(line) for line in lines[:3])
    assert "2 corrupt line(s) were skipped" in " ".join(comparison.warnings)
    assert comparison.metrics == clean.metrics  # every valid line still counted
    assert comparison.paired == clean.paired


async def test_an_unreadable_capture_file_raises_a_typed_error(tmp_path: Path) -> None:
    ws_path = capture_llm_workspace(tmp_path / "ws")
    record = _record_file(ws_path)
    record.unlink()
    record.mkdir()  # reading a directory fails with an OSError, even as root
    with pytest.raises(UnreadableFileError, match=r"record\.jsonl"):
        await Workspace(ws_path).list_runs()


async def test_reader_lists_and_streams_while_another_task_captures(tmp_path: Path) -> None:
    ws_path = tmp_path / "live"
    rounds, per_round = 6, 10
    flushed_send, flushed_receive = anyio.create_memory_object_stream[int](1)
    read_send, read_receive = anyio.create_memory_object_stream[None](1)
    observed: list[tuple[str, int, int]] = []

    async def writer() -> None:
        ctx = Contexta(workspace=ws_path, config={"project_name": "live"})
        async with ctx, ctx.run("writer") as run, run.stage("evaluate") as stage:
            for r in range(rounds):
                for i in range(r * per_round, (r + 1) * per_round):
                    async with stage.sample(f"case-{i}") as sample:
                        await sample.metric("correct", float(i % 2))
                        await sample.metric("latency.ms", float(i))
                await ctx.aflush()
                await flushed_send.send((r + 1) * per_round * 2)
                # Keep capturing while the reader reads: the next samples go out now.
                async with stage.sample(f"extra-{r}") as sample:
                    await sample.metric("latency.ms", 1.0)
                await read_receive.receive()
        await flushed_send.aclose()

    async def reader() -> None:
        ws = None
        async for durable in flushed_receive:
            ws = ws or Workspace(ws_path)
            runs = await ws.list_runs()
            assert ws.last_report.corrupt_lines == 0
            streamed = [r async for r in ws.records("writer", kind="metric", key="correct")]
            assert ws.last_report.corrupt_lines == 0
            observed.append((runs[0].status, runs[0].counts.metrics, len(streamed)))
            assert runs[0].counts.metrics >= durable
            assert len(streamed) >= durable // 2
            await read_send.send(None)

    async with anyio.create_task_group() as group:
        group.start_soon(writer)
        group.start_soon(reader)
    assert len(observed) == rounds
    assert all(status == "open" for status, _, _ in observed)  # read while being written
    counts = [metrics for _, metrics, _ in observed]
    assert counts == sorted(counts) and counts[0] < counts[-1]
    final = await Workspace(ws_path).get_run("writer")
    assert final.status == "completed"
    assert final.counts.metrics == rounds * per_round * 2 + rounds
    comparison = await Workspace(ws_path).compare("writer", "writer")
    paired = {p.key: p for p in comparison.paired}
    assert paired["correct"].n_matched == rounds * per_round
    assert paired["correct"].mean_diff == 0.0


async def test_corrupt_lines_and_a_torn_tail_are_reported_whatever_the_block_size(
    tmp_path: Path,
) -> None:
    ws_path = capture_llm_workspace(tmp_path / "ws")
    record = _record_file(ws_path)
    lines = record.read_bytes().splitlines(keepends=True)
    broken = [*lines[:3], b"not json at all\n", *lines[3:], b'{"captured_at": "2026-']
    record.write_bytes(b"".join(broken))
    whole = await Workspace(ws_path).compare("helpful-only", "grounded")
    small = await Workspace(ws_path, chunk_size=4096).compare("helpful-only", "grounded")
    assert small.read_report == whole.read_report
    assert small.read_report.corrupt_lines == 1
    assert small.read_report.torn_tails == [str(record)]
    assert small.metrics == whole.metrics
    assert small.paired == whole.paired
    assert (small.left.counts, small.right.counts) == (whole.left.counts, whole.right.counts)


@pytest.mark.parametrize("piece", [200, 3000])
async def test_blocks_decoded_in_small_pieces_give_the_same_answer_and_problem_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, piece: int
) -> None:
    # 200 bytes: every line is longer than a piece; 3000: a few lines per piece.
    ws_path = capture_llm_workspace(tmp_path / "ws")
    record = _record_file(ws_path)
    lines = record.read_bytes().splitlines(keepends=True)
    record.write_bytes(b"".join([*lines[:7], b"{not json\n", *lines[7:]]))
    whole = await Workspace(ws_path).compare("helpful-only", "grounded")
    monkeypatch.setattr(_scan, "DECODE_SIZE", piece)
    pieces = await Workspace(ws_path, chunk_size=8192).compare("helpful-only", "grounded")
    assert pieces.read_report == whole.read_report
    assert [(p.line, p.offset) for p in pieces.read_report.problems] == [
        (8, sum(map(len, lines[:7])))
    ]
    assert pieces.metrics == whole.metrics
    assert pieces.paired == whole.paired
    assert pieces.left.counts == whole.left.counts


def test_a_scan_in_small_blocks_counts_every_line_once(tmp_path: Path) -> None:
    ws_path = capture_llm_workspace(tmp_path / "ws")
    record = _record_file(ws_path)
    whole, found = scan_file(str(record), None, False, 4096)
    assert (found.corrupt_lines, found.torn_tails) == (0, [])
    assert whole.records == len(record.read_bytes().splitlines())


async def test_issues_report_turns_offsets_into_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"a\nbb\n\nccc\n")
    issues = Issues()
    issues.corrupt(str(path), 5, "x")
    issues.corrupt(str(path), 0, "y")
    report = issues.report()
    assert [(p.line, p.offset) for p in report.problems] == [(3, 5), (1, 0)]
    assert msgspec.json.decode(msgspec.json.encode(report))["corrupt_lines"] == 2


def test_workspace_rejects_bad_options(tmp_path: Path) -> None:
    capture_llm_workspace(tmp_path / "ws")
    with pytest.raises(ValueError, match="chunk_size"):
        Workspace(tmp_path / "ws", chunk_size=10)
    assert os.fspath(Workspace(tmp_path / "ws").path) == str((tmp_path / "ws").absolute())


async def test_latest_value_per_sample_wins_in_regular_and_irregular_blocks(
    tmp_path: Path,
) -> None:
    # "regular": every sample captures a, b, an event, c, in that order (the O(n) sliced
    # grouping applies); "irregular": case-5 captures a twice and case-7 is captured again
    # later with new values, so only capture order decides which value is the latest.
    ctx = Contexta(workspace=tmp_path / "ws", config={"project_name": "p"})
    expected: dict[str, dict[str, float]] = {"regular": {}, "irregular": {}}
    for name in ("regular", "irregular"):
        with ctx.run(name) as run, run.stage("evaluate") as stage:
            for i in range(50):
                with stage.sample(f"case-{i}") as sample:
                    sample.metric("a", float(i))
                    if name == "irregular" and i == 5:
                        sample.metric("a", 500.0)
                    sample.metric("b", float(i % 3))
                    sample.event("seen", message="x")
                    sample.metric("c", i / 10)
                expected[name][f"case-{i}"] = 500.0 if name == "irregular" and i == 5 else i
            if name == "irregular":
                with stage.sample("case-7") as sample:
                    sample.metric("a", 700.0)
                expected[name]["case-7"] = 700.0
    ctx.close()
    big = await Workspace(tmp_path / "ws").compare("regular", "irregular", include_samples=True)
    small = await Workspace(tmp_path / "ws", chunk_size=4096).compare(
        "regular", "irregular", include_samples=True
    )
    assert big.paired == small.paired and big.metrics == small.metrics
    a = next(p for p in big.paired if p.key == "a")
    assert a.samples is not None and a.n_matched == 50
    assert {s.name: s.left for s in a.samples} == expected["regular"]
    assert {s.name: s.right for s in a.samples} == expected["irregular"]
    c = next(p for p in big.paired if p.key == "c")
    assert c.mean_diff == 0.0 and c.ties == 50


async def test_other_tasks_run_while_a_workspace_is_read(tmp_path: Path) -> None:
    ws_path = capture_llm_workspace(tmp_path / "ws")
    ws = Workspace(ws_path, chunk_size=4096)  # ~15 blocks: many awaits, one per block read
    blocks = _record_file(ws_path).stat().st_size // 4096
    beats = 0
    finished = False

    async def heartbeat() -> None:
        nonlocal beats
        while not finished:
            beats += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as group:
        group.start_soon(heartbeat)
        await ws.compare("helpful-only", "grounded")
        async for _ in ws.records("grounded"):
            pass
        finished = True
    assert blocks >= 10
    assert beats >= blocks  # the loop ran the heartbeat between blocks, never starved


async def test_a_fifo_in_the_capture_folder_is_reported_not_waited_on(tmp_path: Path) -> None:
    with Contexta(workspace=tmp_path, config={"project_name": "p"}) as ctx:
        with ctx.run("r") as run:
            run.metric("m", 1)
    capture = tmp_path / "cache" / "capture"
    (capture / "artifact.jsonl").unlink(missing_ok=True)
    os.mkfifo(capture / "artifact.jsonl")
    with anyio.fail_after(10), pytest.raises(UnreadableFileError) as caught:
        await Workspace(tmp_path).list_runs()
    assert "not a regular file" in str(caught.value)


def test_the_mean_of_values_past_the_float_range_and_infinities_is_nan() -> None:
    from contexta_async.readers._aggregate import mean_of

    assert math.isnan(mean_of([1.7e308, 1.7e308, math.inf, -math.inf]))
    assert mean_of([1.7e308, 1.7e308, 1.7e308]) == pytest.approx(1.7e308)


@pytest.mark.parametrize("family", ["record", "context", "artifact"])
async def test_a_line_nested_past_the_decoders_depth_is_a_corrupt_line(
    tmp_path: Path, family: str
) -> None:
    ws_path = capture_llm_workspace(tmp_path / "ws")
    clean = await Workspace(ws_path).compare("helpful-only", "grounded")
    deep = b"[" * 5000 + b"]" * 5000  # msgspec gives up on it with RecursionError
    with (ws_path / "cache" / "capture" / f"{family}.jsonl").open("ab") as handle:
        handle.write(b'{"payload":{"x":' + deep + b'},"payload_type":"Run"}\n')
    ws = Workspace(ws_path)
    runs = await ws.list_runs()
    assert {r.name for r in runs} == {"helpful-only", "grounded"}
    assert ws.last_report.corrupt_lines == 1
    comparison = await ws.compare("helpful-only", "grounded")
    assert comparison.read_report.corrupt_lines == 1
    assert comparison.paired == clean.paired
    rows = [row async for row in ws.records("grounded")]
    assert rows


def _open_capture_files(name: str) -> int:
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += os.readlink(f"/proc/self/fd/{fd}").endswith(name)
        except OSError:
            continue  # the directory's own descriptor, gone by now
    return found


async def test_closing_a_records_stream_closes_the_file_before_aclose_returns(
    tmp_path: Path,
) -> None:
    ctx = Contexta(workspace=tmp_path / "ws", config={"project_name": "p"})
    with ctx.run("a") as run, run.stage("s") as stage:
        for i in range(2_000):
            stage.metric("loss", i / 2_000)
    ctx.close()
    ws = Workspace(tmp_path / "ws", chunk_size=4096)  # many blocks: the stream stops mid-file
    stream = ws.records("a")
    async for _ in stream:
        assert _open_capture_files("record.jsonl") == 1
        break
    await stream.aclose()
    assert _open_capture_files("record.jsonl") == 0
