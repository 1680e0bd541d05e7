"""record.index: written beside record.jsonl by the local sink, trusted only where it matches.

The readers must give the same answers with the index as without it, whatever happened to
either file; the index may only make reading faster.
"""

from __future__ import annotations

import io
import itertools
import os
import shutil
import struct
import tempfile
import zlib
from functools import partial
from pathlib import Path

import anyio
import anyio.to_thread
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from contexta_async import Contexta, ValidationError
from contexta_async._format.index import INDEX_MAGIC, MIN_INDEXED_LINES, Frame
from contexta_async._format.lines import ScanLine
from contexta_async.readers import Workspace
from contexta_async.readers._index import expand_entry, load_index, read_entry, read_frames
from contexta_async.sinks import LocalJsonlSink
from contexta_async.sinks import _jsonl as jsonl_sink

from .index_builders import columns_from_lines, encode_frame
from .test_readers_helpers import capture_llm_workspace


def parse_frames(data: bytes) -> tuple[list[Frame], int]:
    return read_frames(io.BytesIO(data))


def _capture(workspace: Path) -> Path:
    return workspace / "cache" / "capture"


@pytest.fixture(autouse=True)
def _small_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    # Frames of ~200 lines rather than 8,192: these workspaces hold many frames.
    monkeypatch.setattr(jsonl_sink, "FRAME_LINES", 200)


async def _eval_workspace(workspace: Path, *, runs: int = 2, samples: int = 300) -> Path:
    """Runs of one stage, in small batches (captured through the sync face in a worker
    thread: the tests' event loop runs in this one)."""
    await anyio.to_thread.run_sync(partial(_capture_eval, workspace, runs, samples))
    return workspace


def _capture_eval(workspace: Path, runs: int, samples: int) -> None:
    with Contexta(workspace=workspace, config={"project_name": "ix"}, max_batch_size=64) as ctx:
        for r in range(runs):
            with ctx.run(f"model-{r}") as run, run.stage("evaluate") as stage:
                for i in range(samples):
                    with stage.sample(f"case-{i}") as sample:
                        sample.metric("correct", float((i * (r + 3)) % 4 != 0))
                        sample.metric("latency.ms", 100.0 + (i * 7 + r) % 50)
                        sample.event("answer", message=f"case {i}")
                    if i % 100 == 99:
                        ctx.flush()  # more, smaller chunks
                stage.metric("pass.rate", 0.5 + r / 10)


async def _compare_both_ways(workspace: Path) -> tuple[object, object]:
    """compare() with the index as it is, then with record.index moved away."""
    indexed = await Workspace(workspace).compare("model-0", "model-1")
    index = _capture(workspace) / "record.index"
    shutil.move(index, index.with_suffix(".away"))
    try:
        plain = await Workspace(workspace).compare("model-0", "model-1")
    finally:
        shutil.move(index.with_suffix(".away"), index)
    return indexed, plain


def _framed_lines(workspace: Path) -> int:
    return sum(frame.lines for frame in load_index(str(_capture(workspace) / "record.jsonl"))[0])


def _same_answer(indexed: object, plain: object) -> None:
    for field in ("left", "right", "metrics", "paired", "artifacts", "warnings"):
        assert getattr(indexed, field) == getattr(plain, field), field


async def test_frames_describe_every_record_line_of_one_writer_in_order(tmp_path: Path) -> None:
    await _eval_workspace(tmp_path, samples=250)
    record = (_capture(tmp_path) / "record.jsonl").read_bytes()
    index_file = _capture(tmp_path) / "record.index"
    frames, damaged = parse_frames(index_file.read_bytes())
    assert damaged == 0
    assert len(frames) > 5
    decoder = msgspec.json.Decoder(ScanLine)
    position = 0
    fd = os.open(index_file, os.O_RDONLY)
    try:
        for frame in frames:
            # One writer: each frame starts where the one before ended (batches of 64 lines,
            # coalesced into frames of at least FRAME_LINES = 200).
            assert frame.start == position
            entry = read_entry(fd, frame)
            assert entry is not None
            lines = decoder.decode_lines(record[frame.start : frame.end])
            columns = expand_entry(entry)
            assert columns is not None
            assert frame.lines == entry.lines == len(lines)
            assert frame.lines >= 200 or frame is frames[-1]  # the last one, written at close
            assert columns.types == [line.payload_type for line in lines]
            assert columns.subjects == [line.payload.payload.subject_ref for line in lines]
            assert columns.keys == [line.payload.payload.metric_key for line in lines]
            metric_values = [v for k, v in zip(columns.keys, columns.values, strict=True) if k]
            assert metric_values == [
                line.payload.payload.value for line in lines if line.payload.payload.metric_key
            ]
            position = frame.end
    finally:
        os.close(fd)
    # The last frame was written at close: nothing is left undescribed.
    assert position == len(record)


def test_a_producer_writing_one_line_at_a_time_still_gets_frames(tmp_path: Path) -> None:
    with Contexta(workspace=tmp_path) as ctx, ctx.run("r") as run:
        for i in range(450):
            run.metric("loss", 1 / (i + 1))
            ctx.flush()  # a chunk of one line each time
    frames, _ = parse_frames((_capture(tmp_path) / "record.index").read_bytes())
    assert [frame.lines for frame in frames] == [200, 200, 50]


def test_fewer_lines_than_a_frame_needs_get_no_frame(tmp_path: Path) -> None:
    with Contexta(workspace=tmp_path) as ctx, ctx.run("r") as run:
        for i in range(MIN_INDEXED_LINES - 1):
            run.metric("loss", 1 / (i + 1))
    assert not (_capture(tmp_path) / "record.index").exists()


def test_another_writers_lines_in_between_end_a_frame(tmp_path: Path) -> None:
    first = Contexta(workspace=tmp_path, config={"project_name": "a"})
    second = Contexta(workspace=tmp_path, config={"project_name": "b"})
    with first.run("r") as run_a, second.run("r") as run_b:
        for stretch in range(3):
            for run, ctx in ((run_a, first), (run_b, second)):
                for i in range(40):
                    run.metric("x", stretch * 100 + i)
                ctx.flush()
    first.close()
    second.close()
    frames, _ = parse_frames((_capture(tmp_path) / "record.index").read_bytes())
    frames.sort(key=lambda f: f.start)
    # Six stretches of 40 lines, alternating writers: each its own frame, end to end.
    assert [frame.lines for frame in frames] == [40] * 6
    assert all(a.end == b.start for a, b in itertools.pairwise(frames))
    assert frames[-1].end == (_capture(tmp_path) / "record.jsonl").stat().st_size


async def test_compare_through_the_index_gives_the_answer_the_json_gives(tmp_path: Path) -> None:
    await _eval_workspace(tmp_path)
    indexed, plain = await _compare_both_ways(tmp_path)
    _same_answer(indexed, plain)
    framed = _framed_lines(tmp_path)
    assert framed > 0.9 * 2 * (300 * 3 + 1)
    assert indexed.read_report.records_from_index == framed  # type: ignore[attr-defined]
    assert plain.read_report.records_from_index == 0  # type: ignore[attr-defined]


async def test_the_llm_example_workspace_reads_the_same_with_and_without_its_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its chunks are a few lines each: index them all the same.
    monkeypatch.setattr(jsonl_sink, "MIN_INDEXED_LINES", 1)
    ws = capture_llm_workspace(tmp_path / "ws")
    indexed = await Workspace(ws).compare("helpful-only", "grounded")
    runs = await Workspace(ws).list_runs()
    (_capture(ws) / "record.index").unlink()
    plain = await Workspace(ws).compare("helpful-only", "grounded")
    _same_answer(indexed, plain)
    records = sum(c.metrics + c.events for c in (plain.left.counts, plain.right.counts))
    assert indexed.read_report.records_from_index == records  # every record line
    assert await Workspace(ws).list_runs() == runs


async def test_lines_inserted_into_the_file_send_the_entries_after_them_to_the_json(
    tmp_path: Path,
) -> None:
    await _eval_workspace(tmp_path)
    path = _capture(tmp_path) / "record.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    # A hand edit in the middle: every entry after it has moved, so none of them matches.
    middle = len(lines) // 2
    path.write_bytes(b"".join([*lines[:middle], b"{not json\n", *lines[middle:]]))
    loaded = load_index(str(path))
    assert loaded.rejected > 0
    assert all(entry.end <= sum(map(len, lines[:middle])) for entry in loaded.frames)
    indexed, plain = await _compare_both_ways(tmp_path)
    _same_answer(indexed, plain)
    report = indexed.read_report  # type: ignore[attr-defined]
    assert report.corrupt_lines == 1
    assert 0 < report.records_from_index <= middle
    assert report.index_frames_rejected == loaded.rejected


async def test_a_damaged_frame_is_skipped_and_the_frames_after_it_are_still_used(
    tmp_path: Path,
) -> None:
    await _eval_workspace(tmp_path)
    index = _capture(tmp_path) / "record.index"
    data = bytearray(index.read_bytes())
    entries, _ = parse_frames(bytes(data))
    second = data.find(INDEX_MAGIC, 1)
    third = data.find(INDEX_MAGIC, second + 1)
    data[second + 40] ^= 0xFF  # a flipped byte inside the second frame's body
    index.write_bytes(bytes(data))
    found, damaged = parse_frames(bytes(data))
    assert damaged == 1
    assert len(found) == len(entries) - 1
    assert third > second
    indexed, plain = await _compare_both_ways(tmp_path)
    _same_answer(indexed, plain)
    report = indexed.read_report  # type: ignore[attr-defined]
    assert report.index_frames_rejected == 1
    assert report.records_from_index == sum(e.lines for e in entries) - entries[1].lines


async def test_a_frame_still_being_written_is_ignored_not_counted_as_damage(tmp_path: Path) -> None:
    await _eval_workspace(tmp_path, runs=1, samples=50)
    data = (_capture(tmp_path) / "record.index").read_bytes()
    entries, _ = parse_frames(data)
    last = data.rfind(INDEX_MAGIC)
    for cut in (last + 2, last + 7, last + 30, len(data) - 1):
        found, damaged = parse_frames(data[:cut])
        assert (len(found), damaged) == (len(entries) - 1, 0), cut


async def test_lines_written_after_the_last_frame_are_read_from_the_json(tmp_path: Path) -> None:
    await _eval_workspace(tmp_path)
    index = _capture(tmp_path) / "record.index"
    data = index.read_bytes()
    entries, _ = parse_frames(data)
    index.write_bytes(data[: data.rfind(INDEX_MAGIC)])  # as if the last frame were not yet
    indexed, plain = await _compare_both_ways(tmp_path)
    _same_answer(indexed, plain)
    report = indexed.read_report  # type: ignore[attr-defined]
    assert report.records_from_index == sum(e.lines for e in entries[:-1])
    assert report.index_frames_rejected == 0


async def test_a_truncated_record_file_uses_only_the_entries_it_still_holds(
    tmp_path: Path,
) -> None:
    await _eval_workspace(tmp_path)
    path = _capture(tmp_path) / "record.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])  # ends mid-line: a torn tail
    indexed, plain = await _compare_both_ways(tmp_path)
    _same_answer(indexed, plain)
    report = indexed.read_report  # type: ignore[attr-defined]
    assert report.torn_tails == [str(path)]
    assert report.records_from_index > 0


async def test_every_line_of_a_verified_frame_is_taken_from_the_index(tmp_path: Path) -> None:
    await _eval_workspace(tmp_path, samples=400)
    path = _capture(tmp_path) / "record.jsonl"
    loaded = load_index(str(path))
    indexed = await Workspace(tmp_path).compare("model-0", "model-1")
    parsed = await Workspace(tmp_path, use_index=False).compare("model-0", "model-1")
    _same_answer(indexed, parsed)
    assert indexed.read_report.records_from_index == sum(e.lines for e in loaded.frames)


async def test_a_failing_index_write_loses_no_record_and_is_logged(tmp_path: Path) -> None:
    capture = _capture(tmp_path)
    capture.mkdir(parents=True)
    (capture / "record.index").mkdir()  # opening it for writing fails: EISDIR
    with capture_logs() as logs:
        await _eval_workspace(tmp_path, samples=120)
    failures = [e for e in logs if e["event"] == "contexta_async.index_write_failed"]
    # Logged once: the sink stops indexing until it is closed.
    assert [f["target"] for f in failures] == [str(capture / "record.index")]
    # Every record was written and acknowledged, and reads the same as with an index.
    compared = await Workspace(tmp_path).compare("model-0", "model-1")
    assert compared.read_report.records_from_index == 0
    assert compared.left.counts.metrics == 2 * 120 + 1
    assert compared.right.counts.events == 120


async def test_a_bug_in_the_index_code_never_fails_a_durable_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(items: object) -> None:
        raise TypeError("a bug in the index code")

    monkeypatch.setattr(jsonl_sink, "columns_from_items", broken)
    with capture_logs() as logs:
        # flush() (every 100 samples, and at close) would raise DeliveryError if the lines
        # were reported lost: they are durable, only their frame is missing.
        await _eval_workspace(tmp_path, samples=120)
    failures = [e for e in logs if e["event"] == "contexta_async.index_write_failed"]
    assert len(failures) == 1 and "a bug in the index code" in failures[0]["error"]
    assert not (_capture(tmp_path) / "degradation.jsonl").exists()
    assert not (_capture(tmp_path) / "record.index").exists()
    compared = await Workspace(tmp_path).compare("model-0", "model-1")
    assert compared.left.counts.metrics == 2 * 120 + 1


@pytest.mark.parametrize("kind", ["symlink to /dev/zero", "fifo", "directory"])
async def test_an_index_that_is_not_a_regular_file_is_not_read(tmp_path: Path, kind: str) -> None:
    await _eval_workspace(tmp_path, samples=60)
    index = _capture(tmp_path) / "record.index"
    index.unlink()
    if kind == "fifo":
        os.mkfifo(index)  # opening it must not wait for a writer
    elif kind == "directory":
        index.mkdir()
    else:
        index.symlink_to("/dev/zero")  # endless: must never be followed
    with capture_logs() as logs:
        compared = await Workspace(tmp_path).compare("model-0", "model-1")
    assert compared.read_report.records_from_index == 0
    assert compared.left.counts.metrics == 2 * 60 + 1
    assert any(e["event"] == "contexta_async.index_unreadable" for e in logs)


async def test_frames_that_no_longer_match_are_counted_even_when_none_is_left(
    tmp_path: Path,
) -> None:
    await _eval_workspace(tmp_path, samples=100)
    path = _capture(tmp_path) / "record.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"\n") + 1] + data)  # the first line twice: all moved
    frames, _ = parse_frames((_capture(tmp_path) / "record.index").read_bytes())
    compared = await Workspace(tmp_path).compare("model-0", "model-1")
    assert compared.read_report.records_from_index == 0
    assert compared.read_report.index_frames_rejected == len(frames) > 1


async def test_a_cancelled_indexed_read_returns_at_once_and_its_thread_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from contexta_async.readers import _local

    await _eval_workspace(tmp_path, samples=300)
    entered, release, finished = threading.Event(), threading.Event(), threading.Event()
    calls = []
    real_read_entry, real_scan_file = _local.read_entry, _local.scan_file

    def read_entry(fd: int, frame: object) -> object:
        calls.append(frame)
        if len(calls) == 2:  # hold the scan inside its second frame
            entered.set()
            release.wait(10)
        return real_read_entry(fd, frame)  # type: ignore[arg-type]

    def scan_file(*args: object, **kwargs: object) -> object:
        try:
            return real_scan_file(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            finished.set()

    monkeypatch.setattr(_local, "read_entry", read_entry)
    monkeypatch.setattr(_local, "scan_file", scan_file)
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as group:

            async def cancel_when_inside() -> None:
                await anyio.to_thread.run_sync(entered.wait, 10)
                scope.cancel()

            group.start_soon(cancel_when_inside)
            await Workspace(tmp_path).compare("model-0", "model-1")
    # compare() returned (cancelled) while its scan thread was still held in a frame...
    assert scope.cancelled_caught and not finished.is_set()
    release.set()
    # ...and the thread then stopped at the next frame instead of reading the rest.
    assert await anyio.to_thread.run_sync(finished.wait, 10)
    assert len(calls) == 2
    assert len(load_index(str(_capture(tmp_path) / "record.jsonl")).frames) > 2


def test_a_long_stretch_of_garbage_in_the_index_is_never_held_whole() -> None:
    import tracemalloc

    garbage = b"\0" * (24 << 20)  # e.g. a file extended with zeros by a crash
    data = _tiny_frame(0, 0) + garbage + _tiny_frame(1, 100)
    handle = io.BytesIO(data)
    tracemalloc.start()
    try:
        frames, damaged = read_frames(handle, block_size=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [frame.start for frame in frames] == [0, 100] and damaged == 1
    assert peak < 8 << 20  # a few blocks, not the 24 MiB stretch


def test_a_frame_nesting_arrays_deep_is_damage_not_a_crash() -> None:
    ints = b"".join(msgspec.msgpack.encode(v) for v in [0, 100, 1, 100, 0, 100, 0])
    body = b"\x9e" + ints + b"\x91" * 200_000 + b"\xc0" * 7  # a 14-field array, CRC valid
    frame = INDEX_MAGIC + struct.pack("<II", len(body), zlib.crc32(body)) + body
    frames, damaged = read_frames(io.BytesIO(frame + _tiny_frame(1, 100)))
    assert [f.start for f in frames] == [100] and damaged == 1  # no RecursionError


def test_crafted_false_starts_cost_bounded_work(monkeypatch: pytest.MonkeyPatch) -> None:
    # Headers every 13 bytes claiming 64 KiB bodies that start like a real one: each would be
    # checksummed over its claimed length, then the search resumes a byte further on (~5 GB
    # of CRC for this 1 MiB file). The budget (here 1 MiB + twice the file) stops it.
    import contexta_async.readers._index as record_index

    monkeypatch.setattr(record_index, "_WASTE_FLOOR", 1 << 20)
    lie = INDEX_MAGIC + struct.pack("<II", 64 << 10, 0) + b"\x9e"
    data = lie * ((1 << 20) // len(lie))
    checked = 0
    real_crc32 = zlib.crc32

    def crc32(data: bytes | memoryview, value: int = 0) -> int:
        nonlocal checked
        checked += len(data)
        return real_crc32(data, value)

    monkeypatch.setattr(record_index.zlib, "crc32", crc32)
    frames, damaged = read_frames(io.BytesIO(data), limit=len(data))
    assert frames == [] and damaged >= 1
    assert checked <= (1 << 20) + 2 * len(data) + (64 << 10)


def test_a_fifo_in_place_of_record_jsonl_never_blocks_loading_the_index(tmp_path: Path) -> None:
    import threading

    record = tmp_path / "record.jsonl"
    os.mkfifo(record)
    (tmp_path / "record.index").write_bytes(_tiny_frame(0, 0))
    found: list[object] = []
    loader = threading.Thread(target=lambda: found.append(load_index(str(record))), daemon=True)
    loader.start()
    loader.join(10)  # a guard against hanging the suite, not a measurement
    if loader.is_alive():  # unblock it: opening the FIFO's other end releases the reader
        os.close(os.open(record, os.O_WRONLY | os.O_NONBLOCK))
    assert found == [load_index(str(tmp_path / "none.jsonl"))]


def test_a_fifo_in_place_of_record_index_never_stalls_the_writer(tmp_path: Path) -> None:
    capture = _capture(tmp_path)
    capture.mkdir(parents=True)
    os.mkfifo(capture / "record.index")
    with capture_logs() as logs:
        with Contexta(workspace=tmp_path, shutdown_timeout=30) as ctx, ctx.run("r") as run:
            for i in range(5000):
                run.metric("x", i)
            ctx.flush()
    assert any(e["event"] == "contexta_async.index_write_failed" for e in logs)
    lines = (capture / "record.jsonl").read_bytes().count(b"\n")
    assert lines == 5000


def test_a_sink_with_index_off_writes_no_index(tmp_path: Path) -> None:
    sink = LocalJsonlSink(_capture(tmp_path), index=False)
    with Contexta(workspace=tmp_path, sinks=[sink]) as ctx, ctx.run("r") as run:
        run.metric("loss", 0.5)
    assert sorted(os.listdir(_capture(tmp_path))) == ["context.jsonl", "record.jsonl"]
    assert "index=False" in repr(sink)


async def test_use_index_false_parses_every_line_and_gives_the_same_answer(
    tmp_path: Path,
) -> None:
    await _eval_workspace(tmp_path, samples=100)
    indexed = await Workspace(tmp_path).compare("model-0", "model-1")
    parsed = await Workspace(tmp_path, use_index=False).compare("model-0", "model-1")
    _same_answer(indexed, parsed)
    assert indexed.read_report.records_from_index == _framed_lines(tmp_path) > 0
    assert parsed.read_report.records_from_index == 0
    with pytest.raises(ValidationError) as caught:
        Workspace(tmp_path, use_index="no")  # type: ignore[arg-type]
    assert caught.value.field == "use_index"


def _tiny_frame(number: int, start: int) -> bytes:
    """A real frame for a made-up chunk of three lines at ``start``."""
    lines = [f'{{"n":{number},"i":{i}}}\n'.encode() for i in range(3)]
    data = b"".join(lines)
    pending = columns_from_lines(
        ["MetricRecord"] * 3, [f"run:p.r{number}"] * 3, ["k"] * 3, [float(number)] * 3
    )
    assert pending is not None
    return encode_frame(pending, data, start + len(data))


@settings(max_examples=150, deadline=None)
@given(
    parts=st.lists(
        st.one_of(
            st.none(),  # a frame
            st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"C", b"D")),  # garbage
        ),
        max_size=10,
    ),
    cut=st.integers(0, 30),
    block=st.sampled_from([7, 64, 1 << 20]),
)
def test_frames_are_found_and_damage_counted_whatever_the_read_size(
    parts: list[bytes | None], cut: int, block: int
) -> None:
    # Garbage between frames (no "C", so never a magic) is one damaged stretch each; the
    # last frame cut short is a frame still being written: neither found nor counted.
    data = b""
    expected: list[int] = []
    damaged = 0
    previous_garbage = False
    for number, part in enumerate(parts):
        if part is None:
            expected.append(number)
            data += _tiny_frame(number, 100 * number)
            previous_garbage = False
        else:
            damaged += not previous_garbage
            data += part
            previous_garbage = True
    if cut and parts and parts[-1] is None:
        data = data[:-cut]
        expected.pop()
    frames, found_damaged = read_frames(io.BytesIO(data), block)
    assert [frame.start // 100 for frame in frames] == expected
    assert found_damaged == damaged
    with tempfile.NamedTemporaryFile() as index:
        index.write(data)
        index.flush()
        for frame in frames:
            entry = read_entry(index.fileno(), frame)
            assert entry is not None and entry.subjects == [f"run:p.r{frame.start // 100}"]


@pytest.mark.parametrize("where", ["checking frames", "reading a frame"])
async def test_an_io_error_on_the_index_falls_back_to_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    import errno

    await _eval_workspace(tmp_path, samples=100)
    expected = await Workspace(tmp_path, use_index=False).compare("model-0", "model-1")
    real_pread = os.pread
    # Checking frames preads record.jsonl around each frame; reading a frame preads the index.
    failing = "record.jsonl" if where == "checking frames" else "record.index"

    def pread(fd: int, length: int, offset: int) -> bytes:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(failing):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_pread(fd, length, offset)

    monkeypatch.setattr(os, "pread", pread)
    try:
        with capture_logs() as logs:
            got = await Workspace(tmp_path).compare("model-0", "model-1")
    finally:
        monkeypatch.setattr(os, "pread", real_pread)
    _same_answer(got, expected)
    assert got.read_report.records_from_index == 0
    if where == "checking frames":
        assert any(e["event"] == "contexta_async.index_unreadable" for e in logs)
    else:
        assert got.read_report.index_frames_rejected == len(
            load_index(str(_capture(tmp_path) / "record.jsonl")).frames
        )
