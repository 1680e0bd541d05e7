"""``context.index``: the sink describes its CONTEXT lines (sample openings with their
clusters and epochs, where the Run and StageExecution lines are), and readers use a frame only
while it still matches ``context.jsonl``; every answer is the one the JSON gives."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from structlog.testing import capture_logs

from contexta_async import Contexta
from contexta_async._format.index import ContextEntry
from contexta_async._format.lines import Item
from contexta_async.readers import Workspace
from contexta_async.readers._context import SampleScan
from contexta_async.readers._index import load_index, open_index, read_context_entry
from contexta_async.sinks import LocalJsonlSink, Sink
from contexta_async.sinks._base import Chunk

ITEMS = 40


def _capture(root: Path, runs: tuple[str, ...] = ("base", "cand")) -> None:
    """Runs of ITEMS items, two attempts each, in clusters of four; item 7 of each run is
    opened twice without an epoch (a duplicate)."""
    with Contexta(workspace=root, config={"project_name": "p"}) as ctx:
        for shift, name in enumerate(runs):
            with ctx.run(name) as run, run.stage("evaluate") as stage:
                for i in range(ITEMS):
                    for epoch in (1, 2):
                        with stage.sample(f"q-{i}", cluster=f"c-{i // 4}", epoch=epoch) as s:
                            s.metric("score", (i * 7 + epoch + shift) % 11 / 10)
                for _ in range(2):
                    with stage.sample("dup") as s:
                        s.metric("score", 0.5)


def _context(root: Path) -> Path:
    return root / "cache" / "capture" / "context.jsonl"


def _answers(root: Path, *, use_index: bool) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        workspace = Workspace(root, use_index=use_index)
        runs = await workspace.list_runs()
        comparison = await workspace.compare(runs[0].ref, runs[1].ref)
        found = msgspec.to_builtins(comparison)
        found.pop("read_report")
        return {"runs": msgspec.to_builtins(runs), "compare": found}

    return anyio.run(main)


def _count_feeds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record which SampleScan entry each piece of context.jsonl went through."""
    calls: list[str] = []
    feed, feed_opened = SampleScan.feed, SampleScan.feed_opened

    def from_json(self: SampleScan, block: Any) -> None:
        calls.append("json")
        feed(self, block)

    def from_index(self: SampleScan, *args: Any) -> None:
        calls.append("index")
        feed_opened(self, *args)

    monkeypatch.setattr(SampleScan, "feed", from_json)
    monkeypatch.setattr(SampleScan, "feed_opened", from_index)
    return calls


def test_capture_writes_context_index_listing_each_opening_with_cluster_and_epoch(
    tmp_path: Path,
) -> None:
    _capture(tmp_path, runs=("base",))
    loaded = load_index(str(_context(tmp_path)), ContextEntry)
    assert loaded.rejected == 0
    assert loaded.frames and loaded.frames[0].start == 0
    assert loaded.frames[-1].end == _context(tmp_path).stat().st_size
    with open_index(_context(tmp_path).with_suffix(".index")) as index:
        assert index is not None
        entries = [read_context_entry(index.fileno(), frame) for frame in loaded.frames]
    assert all(entry is not None for entry in entries)
    opened = [o for e in entries if e for o in zip(e.opened, e.clusters, e.epochs, strict=True)]
    expected = [
        (f"sample:p.base.evaluate.q-{i}-epoch-{k}", f"c-{i // 4}", k)
        for i in range(ITEMS)
        for k in (1, 2)
    ] + [("sample:p.base.evaluate.dup", None, None)] * 2
    assert opened == expected
    with open(_context(tmp_path), "rb") as f:
        data = f.read()
    kept = [
        data[at : at + length]
        for e in entries
        if e
        for at, length in zip(e.kept_starts, e.kept_lengths, strict=True)
    ]
    # The run's and the stage's lines, opened and closed, each a whole line.
    assert [line.count(b"\n") for line in kept] == [1, 1, 1, 1]
    assert [b'"payload_type":"Run"' in line for line in kept] == [True, False, False, True]


def test_compare_takes_context_from_the_index_with_the_answers_of_the_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _capture(tmp_path)
    from_json = _answers(tmp_path, use_index=False)
    calls = _count_feeds(monkeypatch)
    from_index = _answers(tmp_path, use_index=True)
    assert "index" in calls and "json" not in calls
    assert from_index == from_json
    paired = from_index["compare"]["paired"]
    assert paired and paired[0]["clusters"] == ITEMS // 4 + 1  # "dup" is a cluster of its own
    assert from_index["compare"]["alignment"]["duplicates_left"] == 1


def test_damaged_context_index_frame_is_read_from_the_json_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _capture(tmp_path)
    expected = _answers(tmp_path, use_index=False)
    index = _context(tmp_path).with_suffix(".index")
    data = bytearray(index.read_bytes())
    data[40] ^= 0xFF  # inside the first frame's body: its CRC fails
    index.write_bytes(bytes(data))
    calls = _count_feeds(monkeypatch)
    assert _answers(tmp_path, use_index=True) == expected
    assert "json" in calls

    async def report() -> int:
        workspace = Workspace(tmp_path)
        runs = await workspace.list_runs()
        comparison = await workspace.compare(runs[0].ref, runs[1].ref)
        return comparison.read_report.index_frames_rejected

    assert anyio.run(report) >= 1


def test_context_lines_without_frames_are_read_from_the_json_beside_indexed_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines a writer without the index appended after indexed ones (and a sample reopened
    there) count the same as if the whole file were parsed."""
    _capture(tmp_path, runs=("base",))
    with Contexta(
        workspace=tmp_path,
        config={"project_name": "p"},
        sinks=[LocalJsonlSink(tmp_path / "cache" / "capture", index=False)],
    ) as ctx:
        with ctx.run("cand") as run, run.stage("evaluate") as stage:
            for i in range(ITEMS):
                for epoch in (1, 2):
                    with stage.sample(f"q-{i}", cluster=f"c-{i // 4}", epoch=epoch) as s:
                        s.metric("score", (i * 3 + epoch) % 11 / 10)
            for _ in range(2):
                with stage.sample("dup") as s:
                    s.metric("score", 0.5)
    calls = _count_feeds(monkeypatch)
    expected = _answers(tmp_path, use_index=False)
    calls.clear()
    found = _answers(tmp_path, use_index=True)
    assert found == expected
    assert "index" in calls and "json" in calls
    assert found["compare"]["alignment"]["duplicates_right"] == 1


def test_context_frame_whose_lines_changed_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edit that moves the lines a frame describes (here its first line, made longer)
    rejects the frame: the JSON, edited, is what is read."""
    _capture(tmp_path)
    path = _context(tmp_path)
    data = path.read_bytes()
    first = data.index(b"\n")
    edited = data[:first].replace(b'"tags":{}', b'"tags":{"edited":"yes"}')
    assert edited != data[:first]
    path.write_bytes(edited + data[first:])
    calls = _count_feeds(monkeypatch)
    found = _answers(tmp_path, use_index=True)
    assert "json" in calls
    assert found == _answers(tmp_path, use_index=False)
    assert load_index(str(path), ContextEntry).rejected >= 1


def test_context_index_is_not_written_by_a_sink_without_index(tmp_path: Path) -> None:
    capture = tmp_path / "cache" / "capture"
    with Contexta(
        workspace=tmp_path,
        config={"project_name": "p"},
        sinks=[LocalJsonlSink(capture, index=False)],
    ) as ctx:
        with ctx.run("r") as run, run.stage("s") as stage:
            for i in range(50):
                with stage.sample(f"q-{i}", cluster="c") as s:
                    s.metric("m", 1.0)
    assert (capture / "context.jsonl").exists()
    assert not (capture / "context.index").exists()
    assert sorted(os.listdir(capture)) == ["context.jsonl", "record.jsonl"]


def test_a_failing_context_index_write_loses_no_line_and_is_logged(tmp_path: Path) -> None:
    capture = tmp_path / "cache" / "capture"
    capture.mkdir(parents=True)
    (capture / "context.index").mkdir()  # opening it for writing fails: EISDIR
    with capture_logs() as logs:
        _capture(tmp_path)
    failures = [e for e in logs if e["event"] == "contexta_async.index_write_failed"]
    # Logged once (the sink stops that index until it is closed); record.index is written.
    assert [f["target"] for f in failures] == [str(capture / "context.index")]
    assert load_index(str(capture / "record.jsonl")).frames
    assert _answers(tmp_path, use_index=True) == _answers(tmp_path, use_index=False)


@pytest.mark.parametrize("kind", ["symlink to /dev/zero", "fifo"])
def test_a_context_index_that_is_not_a_regular_file_is_not_read(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _capture(tmp_path)
    expected = _answers(tmp_path, use_index=False)
    index = _context(tmp_path).with_suffix(".index")
    index.unlink()
    if kind == "fifo":
        os.mkfifo(index)  # opening it must not wait for a writer
    else:
        index.symlink_to("/dev/zero")  # endless: must never be followed
    calls = _count_feeds(monkeypatch)
    with capture_logs() as logs:
        assert _answers(tmp_path, use_index=True) == expected
    assert "index" not in calls
    assert any(e["event"] == "contexta_async.index_unreadable" for e in logs)


def test_a_frame_without_sample_openings_reads_like_the_json(tmp_path: Path) -> None:
    """Runs that open many stages and no sample: their frames list Run and Stage lines only."""
    with Contexta(workspace=tmp_path, config={"project_name": "p"}) as ctx:
        for shift, name in enumerate(("base", "cand")):
            with ctx.run(name) as run:
                for stage_index in range(20):
                    with run.stage(f"stage-{stage_index}") as stage:
                        stage.metric("acc", (stage_index + shift) / 40)
    loaded = load_index(str(_context(tmp_path)), ContextEntry)
    with open_index(_context(tmp_path).with_suffix(".index")) as index:
        assert index is not None
        entries = [read_context_entry(index.fileno(), frame) for frame in loaded.frames]
    assert entries and all(e is not None and not e.opened and e.kept_starts for e in entries)
    assert _answers(tmp_path, use_index=True) == _answers(tmp_path, use_index=False)


class _BuiltinPayloads(Sink):
    """Hands the local sink payloads as plain dicts (the same JSON bytes): sample lines
    whose openings the sink cannot read from a SampleObservation."""

    name = "local-jsonl"

    def __init__(self, root: Path) -> None:
        self.inner = LocalJsonlSink(root, fsync=False)

    def prepare(self, items: Sequence[Item], captured_at: str) -> list[Chunk]:
        plain = [msgspec.structs.replace(i, payload=msgspec.to_builtins(i.payload)) for i in items]
        return self.inner.prepare(plain, captured_at)

    def write(self, chunk: Chunk) -> None:
        self.inner.write(chunk)

    def close(self) -> None:
        self.inner.close()


def test_sample_lines_the_sink_cannot_describe_get_no_frame(tmp_path: Path) -> None:
    sink = _BuiltinPayloads(tmp_path / "cache" / "capture")
    with Contexta(workspace=tmp_path, config={"project_name": "p"}, sinks=[sink]) as ctx:
        for shift, name in enumerate(("base", "cand")):
            with ctx.run(name) as run, run.stage("evaluate") as stage:
                for i in range(40):
                    with stage.sample(f"q-{i}", cluster=f"c-{i // 4}") as s:
                        s.metric("score", (i * 7 + shift) % 11 / 10)
    opened = _context(tmp_path).read_bytes().count(b'"status":"open"},"payload_ref":"sample:')
    assert opened == 80
    # No sample chunk is described (what they open is read from the JSON), and the Run and
    # Stage chunks between them are too short for a frame of their own.
    assert not load_index(str(_context(tmp_path)), ContextEntry).frames
    assert not _context(tmp_path).with_suffix(".index").exists()
    found = _answers(tmp_path, use_index=True)
    assert found == _answers(tmp_path, use_index=False)
    assert found["compare"]["paired"][0]["clusters"] == 10
