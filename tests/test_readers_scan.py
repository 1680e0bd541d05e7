"""The record scan (narrow decoding, per-block grouping) against a plain reference.

The scan groups each block with C-level passes and takes shortcuts (one parse per subject
ref, sliced columns when samples repeat the same keys, values appended and folded later). The
reference below reads the same lines with the standard library, one at a time, from the
envelope refs, and the two must agree on every count, stage and latest value, whatever the
order of the records and however the file is cut into blocks.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contexta_async._format.index import Frame, index_path_for
from contexta_async._format.lines import ScanLine
from contexta_async._format.refs import run_matches
from contexta_async.readers import Workspace, _scan
from contexta_async.readers._aggregate import RunMetrics, run_metrics
from contexta_async.readers._index import load_index
from contexta_async.readers._local import scan_file
from contexta_async.readers._read import CHUNK_SIZE, Issues, read_file

from .index_builders import columns_from_lines, encode_frame

_STAGES = ("s1", "s2")
_SAMPLES = tuple(f"c{i}" for i in range(6))
_KEYS = ("a", "b", "c")


def _line(
    run: str,
    stage: str | None,
    batch: str | None,
    sample: str | None,
    kind: str,
    key: str,
    value: float,
    odd_subject: bool = False,
) -> dict[str, Any]:
    run_ref = f"run:p.{run}"
    stage_ref = None if stage is None else f"stage:p.{run}.{stage}"
    batch_ref = None if batch is None or stage is None else f"batch:p.{run}.{stage}.{batch}"
    sample_ref = None
    if sample is not None and stage is not None:
        parent = f"{stage}.{batch}" if batch is not None else stage
        sample_ref = f"sample:p.{run}.{parent}.{sample}"
    subject = sample_ref or batch_ref or stage_ref or run_ref
    if odd_subject:
        subject = "sample:not-a-ref"  # the envelope's refs must be used instead
    envelope = {
        "batch_execution_ref": batch_ref,
        "record_ref": "record:p.x",
        "record_type": kind,
        "recorded_at": "2026-11-26T05:00:00.000000Z",
        "run_ref": run_ref,
        "sample_observation_ref": sample_ref,
        "stage_execution_ref": stage_ref,
    }
    body: dict[str, Any]
    if kind == "metric":
        body = {"metric_key": key, "subject_ref": subject, "tags": {}, "value": value}
        payload_type = "MetricRecord"
    elif kind == "event":
        body = {"event_key": key, "message": "m", "subject_ref": subject}
        payload_type = "StructuredEventRecord"
    else:  # a span names no subject: only its envelope says where it belongs
        body = {"span_name": key, "status": "ok"}
        payload_type = "TraceSpanRecord"
    return {
        "captured_at": "2026-11-26T05:00:00.000000Z",
        "family": "RECORD",
        "payload": {"envelope": envelope, "payload": body},
        "payload_ref": "record:p.x",
        "payload_type": payload_type,
        "sink_name": "local-jsonl",
    }


_values = st.one_of(st.integers(-5, 5), st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False))


@st.composite
def _scattered(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Records in any order, at every level, of two runs."""
    out = []
    for _ in range(draw(st.integers(0, 40))):
        level = draw(st.sampled_from(["run", "stage", "batch", "sample", "batch-sample"]))
        stage = None if level == "run" else draw(st.sampled_from(_STAGES))
        batch = draw(st.sampled_from(["b1", "b2"])) if "batch" in level else None
        sample = draw(st.sampled_from(_SAMPLES)) if "sample" in level else None
        kind = draw(st.sampled_from(["metric", "metric", "metric", "event", "span"]))
        out.append(
            _line(
                draw(st.sampled_from(["a", "b"])),
                stage,
                batch,
                sample,
                kind,
                draw(st.sampled_from(_KEYS)),
                draw(_values),
                odd_subject=draw(st.integers(0, 19)) == 0,
            )
        )
    return out


@st.composite
def _regular(draw: st.DrawFn, most: int = 40) -> list[dict[str, Any]]:
    """Samples that each capture the same keys in the same order, as harnesses do: the
    sliced grouping applies. Sometimes a sample is captured twice, a key twice per sample
    (a first try and a final value), and the part starts inside a sample, as a block does."""
    run = draw(st.sampled_from(["a", "b"]))
    stage = draw(st.sampled_from(_STAGES))
    batch = draw(st.sampled_from([None, "b1", "b2"]))
    pattern = draw(
        st.sampled_from(
            [
                ("a", None, "b", "c"),
                ("a", "b"),
                ("a", "a", None),
                ("c", None, None, "a", "b"),
                ("a", "b", "a"),
            ]
        )
    )
    out = []
    for i in range(draw(st.integers(10, most))):
        name = f"r{draw(st.integers(0, 60)) if draw(st.integers(0, 9)) == 0 else i}"
        for key in pattern:
            kind = "event" if key is None else "metric"
            out.append(_line(run, stage, batch, name, kind, key or "seen", draw(_values)))
    return out[draw(st.integers(0, len(pattern) - 1)) :]


def _reference(
    lines: list[dict[str, Any]], wanted: frozenset[str] | None
) -> tuple[Counter[tuple[str, str]], set[str | None], dict[str, RunMetrics]]:
    """What the scan must find, read one line at a time from the envelope refs and arranged
    by run without the library's code: per (stage name, key), each sample's latest value
    (None values left out), and as duplicates the names that have a value under two parents
    (the stage itself, or batches) of one stage."""
    counts: Counter[tuple[str, str]] = Counter()
    stages: set[str | None] = set()
    # (run, stage name, key) -> sample name -> parent ref -> latest value under that parent
    by_parent: dict[tuple[str, str, str], dict[str, dict[str, float | None]]] = {}
    latest: dict[str, dict[tuple[str | None, str, str | None, str], float | None]] = {}
    for line in lines:
        envelope = line["payload"]["envelope"]
        body = line["payload"]["payload"]
        run = envelope["run_ref"]
        counts[(run, line["payload_type"])] += 1
        stages.add(envelope["stage_execution_ref"])
        key = body.get("metric_key")
        if key is None or (wanted is not None and not any(run_matches(run, w) for w in wanted)):
            continue
        stage_ref, batch_ref = envelope["stage_execution_ref"], envelope["batch_execution_ref"]
        stage = None if stage_ref is None else stage_ref.rsplit(".", 1)[1]
        batch = None if batch_ref is None else batch_ref.rsplit(".", 1)[1]
        sample = envelope["sample_observation_ref"]
        if sample is not None:
            assert stage is not None
            named = by_parent.setdefault((run, stage, key), {})
            parents = named.setdefault(sample.rsplit(".", 1)[1], {})
            parents[batch_ref or stage_ref] = body["value"]
        else:
            scope = "batch" if batch else "stage" if stage else "run"
            latest.setdefault(run, {})[(stage, scope, batch, key)] = body["value"]
    runs = {run for run, _ in counts}
    if wanted is not None:
        runs = {run for run in runs if any(run_matches(run, w) for w in wanted)}
    metrics = {run: RunMetrics() for run in runs}
    for (run, stage, key), named in by_parent.items():
        values = metrics[run].samples.setdefault((stage, key), {})
        for name, parents in named.items():
            present = [value for value in parents.values() if value is not None]
            if present:
                values[name] = present[-1]
            if len(present) > 1:
                metrics[run].duplicates.add((stage, name))
    for run, places in latest.items():
        metrics[run].latest = {place: v for place, v in places.items() if v is not None}
    for of_run in metrics.values():  # a (stage, key) whose values are all None is absent
        of_run.samples = {place: v for place, v in of_run.samples.items() if v}
    return counts, stages, metrics


def _write(path: Path, lines: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(msgspec.json.encode(line, order="sorted") + b"\n" for line in lines))


def _write_index(path: Path, cuts: list[int], dropped: set[int]) -> int:
    """Index ``path`` in chunks of ``cuts`` lines (the last chunk takes the rest), leaving out
    the frames numbered in ``dropped``; return how many lines the reader may take from it
    (spans and lines with an odd subject ref send their whole chunk to the JSON)."""
    raw = path.read_bytes().splitlines(keepends=True)
    decoder = msgspec.json.Decoder(ScanLine)
    frames = []
    usable = 0
    start = 0
    end = 0
    for number, cut in enumerate([*cuts, len(raw)]):
        chunk = raw[start : start + max(1, cut)]
        start += len(chunk)
        if not chunk:
            break
        data = b"".join(chunk)
        end += len(data)
        decoded = decoder.decode_lines(data)
        bodies = [line.payload.payload for line in decoded]
        pending = columns_from_lines(
            [line.payload_type for line in decoded],
            [b.subject_ref for b in bodies],
            [b.metric_key for b in bodies],
            [b.value for b in bodies],
        )
        if pending is None or number in dropped:
            continue
        frames.append(encode_frame(pending, data, end))
        if all(b.subject_ref not in (None, "sample:not-a-ref") for b in bodies):
            usable += len(chunk)
    index_path_for(path).write_bytes(b"".join(frames))
    return usable


def _check_scan(
    lines: list[dict[str, Any]],
    wanted: frozenset[str] | None,
    piece: int,
    chunk: int,
    fold_at: int,
    index_cuts: list[int] | None = None,
    dropped: frozenset[int] = frozenset(),
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "record.jsonl"
        _write(path, lines)
        entries: list[Frame] = []
        usable = 0
        if index_cuts is not None:
            usable = _write_index(path, index_cuts, set(dropped))
            entries = load_index(str(path)).frames
        # Pieces decoded at once, and how many appended values are folded into the latest
        # values at a time: both change only how the work is cut, never the answer.
        saved = _scan.DECODE_SIZE, _scan._FOLD_AT
        _scan.DECODE_SIZE, _scan._FOLD_AT = piece, fold_at  # type: ignore[misc]
        try:
            scan, found = scan_file(str(path), wanted, True, chunk, frames=entries)
        finally:
            _scan.DECODE_SIZE, _scan._FOLD_AT = saved  # type: ignore[misc]
    assert (found.corrupt_lines, found.torn_tails) == (0, [])
    # Every line of an indexed chunk the reader can use came from the index, none twice.
    assert found.records_from_index == usable
    arranged = run_metrics(scan)
    counts, stages, metrics = _reference(lines, wanted)
    assert scan.records == len(lines)
    assert scan.counts == counts
    assert scan.stage_refs == stages
    assert arranged.keys() == metrics.keys()
    for run, expected in metrics.items():
        got = arranged[run]
        assert got.latest == expected.latest, run
        assert got.duplicates == expected.duplicates, run
        # A name in two batches of a stage is reported as a duplicate; which of its values
        # stands for it is not defined. Every other value is the one captured last.
        assert got.samples.keys() == expected.samples.keys(), run
        for place, values in expected.samples.items():
            assert got.samples[place].keys() == values.keys(), (run, place)
            for name, value in values.items():
                if (place[0], name) not in expected.duplicates:
                    assert got.samples[place][name] == value, (run, place, name)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=st.lists(st.one_of(_scattered(), _regular()), max_size=5),
    wanted=st.sampled_from([None, frozenset({"a"}), frozenset({"run:p.b"})]),
    piece=st.sampled_from([300, 5000, 512 << 10]),
    chunk=st.sampled_from([4096, CHUNK_SIZE]),
    fold_at=st.sampled_from([1, 7, 1 << 13]),
    index_cuts=st.one_of(st.none(), st.lists(st.integers(1, 30), max_size=8)),
    dropped=st.frozensets(st.integers(0, 8), max_size=3),
)
def test_scan_agrees_with_a_line_by_line_reference(
    parts: list[list[dict[str, Any]]],
    wanted: frozenset[str] | None,
    piece: int,
    chunk: int,
    fold_at: int,
    index_cuts: list[int] | None,
    dropped: frozenset[int],
) -> None:
    # With index_cuts, record.index describes the file in chunks of those many lines, some
    # frames left out: the parts read from the index and the parts read from the JSON must
    # give the same answer as the JSON alone.
    _check_scan(
        [line for part in parts for line in part],
        wanted,
        piece,
        chunk,
        fold_at,
        index_cuts,
        dropped,
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=st.lists(_regular(most=150), min_size=1, max_size=3),
    piece=st.sampled_from([60_000, 512 << 10]),
    index_cuts=st.one_of(st.none(), st.lists(st.integers(1, 400), max_size=4)),
)
def test_scan_of_long_regular_blocks_cut_anywhere_agrees_with_the_reference(
    parts: list[list[dict[str, Any]]], piece: int, index_cuts: list[int] | None
) -> None:
    # Blocks of hundreds of lines that repeat one pattern, cut by pieces and index
    # entries at any line: the sliced grouping runs on blocks that start inside a sample.
    lines = [line for part in parts for line in part]
    _check_scan(lines, None, piece, CHUNK_SIZE, 1 << 13, index_cuts)


async def test_a_record_line_that_names_no_scope_is_counted_as_corrupt(tmp_path: Path) -> None:
    capture = tmp_path / "ws" / "cache" / "capture"
    capture.mkdir(parents=True)
    good = _line("a", "s1", None, "c0", "metric", "a", 1.0)
    lost = _line("a", "s1", None, None, "span", "x", 0.0)
    del lost["payload"]["envelope"]["run_ref"]  # no subject_ref and no run: belongs nowhere
    encoded = [msgspec.json.encode(line, order="sorted") + b"\n" for line in (good, lost)]
    # An undecodable line in the same piece too: each bad line is counted once.
    good_line, lost_line = encoded
    (capture / "record.jsonl").write_bytes(
        b"".join([good_line, b'{"not json\n', lost_line, good_line])
    )
    ws = Workspace(tmp_path / "ws")
    runs = await ws.list_runs()
    assert [(r.ref, r.counts.metrics, r.counts.spans) for r in runs] == [("run:p.a", 2, 0)]
    assert ws.last_report.corrupt_lines == 2
    assert [(p.line, "no subject_ref" in p.reason) for p in ws.last_report.problems] == [
        (2, False),
        (3, True),
    ]


def test_a_run_whose_ref_does_not_parse_is_counted_and_can_be_asked_for(tmp_path: Path) -> None:
    # A hand-written line of run "run:legacy" (one component: no project) beside a line of
    # another run in the same block; the scan asks for the odd run's values only.
    other = _line("b", "s1", None, "c0", "metric", "acc", 1.0)
    legacy = _line("a", None, None, None, "metric", "loss", 0.5)
    legacy["payload"]["envelope"]["run_ref"] = "run:legacy"
    legacy["payload"]["payload"]["subject_ref"] = "run:legacy"
    path = tmp_path / "record.jsonl"
    _write(path, [other, legacy])
    for wanted in (None, frozenset({"legacy"})):
        scan, found = scan_file(str(path), wanted, True, CHUNK_SIZE)
        arranged = run_metrics(scan)
        assert found.corrupt_lines == 0
        assert scan.counts == {("run:p.b", "MetricRecord"): 1, ("run:legacy", "MetricRecord"): 1}
        # Its values name no place a comparison can show: kept out, the run still listed.
        assert arranged["run:legacy"].latest == {}


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"x")), max_size=40),
    torn=st.binary(max_size=50).map(lambda b: b.replace(b"\n", b"x")),
    chunk=st.integers(1, 700),
)
def test_read_file_yields_every_complete_line_once_at_its_offset(
    lines: list[bytes], torn: bytes, chunk: int
) -> None:
    whole = b"".join(line + b"\n" for line in lines)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.jsonl"
        path.write_bytes(whole + torn)
        issues = Issues()
        blocks = list(read_file(path, issues, chunk_size=chunk))
    assert b"".join(bytes(block.view()) for block in blocks) == whole
    for block in blocks:
        assert whole[block.offset : block.offset + block.end - block.start] == bytes(block.view())
        assert block.end > block.start and block.buffer[block.end - 1 : block.end] == b"\n"
    assert issues.torn_tails == ([str(path)] if torn.strip() else [])
