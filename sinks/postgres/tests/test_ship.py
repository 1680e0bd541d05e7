"""Shipping a workspace: every whole line exactly once, typed columns, torn and corrupt lines,
shards merged, the schema's version."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime
from pathlib import Path

import pytest
import structlog
from contexta_async_postgres import (
    SCHEMA_VERSION,
    SchemaVersionError,
    Shipper,
    ShipPositionError,
    ShipProgress,
    ShipResult,
    StoreError,
)
from pgtest import (
    Database,
    capture,
    capture_open,
    ensure_schema_at_once,
    store_lines,
    workspace_lines,
)


def ship(workspace: Path, db: Database, batch_lines: int = 50_000) -> ShipResult:
    with Shipper(workspace, db.url, batch_lines=batch_lines) as shipper:
        return shipper.ship()


def test_every_whole_line_is_stored_exactly_once_and_a_second_ship_is_a_no_op(
    tmp_path: Path, db: Database
) -> None:
    ws = capture(tmp_path / "ws", samples=range(50))
    expected = workspace_lines(ws)
    total = sum(len(v) for v in expected.values())

    first = ship(ws, db, batch_lines=17)  # many batches per file
    assert first.lines_shipped == total
    assert store_lines(db, ws) == expected

    again = ship(ws, db)
    assert again.lines_shipped == 0 and again.batches == 0
    assert store_lines(db, ws) == expected
    positions = dict(db.query("SELECT file, byte_offset FROM contexta.positions"))
    for file in expected:
        assert positions[file] == (ws / "cache" / "capture" / file).stat().st_size


def test_lines_appended_later_are_shipped_from_the_remembered_position(
    tmp_path: Path, db: Database
) -> None:
    ws = capture(tmp_path / "ws", run="first")
    ship(ws, db)
    capture(ws, run="second")
    result = ship(ws, db)
    assert result.lines_shipped > 0
    assert store_lines(db, ws) == workspace_lines(ws)
    assert {r[0] for r in db.query("SELECT run_ref FROM contexta.runs")} == {
        "run:proj.first",
        "run:proj.second",
    }


def test_a_pass_ends_at_what_the_files_held_when_it_began_while_lines_keep_coming(
    tmp_path: Path, db: Database
) -> None:
    """A pass that chased the tail of a file capture appends to faster than it ships never
    ended, and so neither did a ``wait_committed()`` answered by it."""
    ws = capture(tmp_path / "ws", samples=range(20))
    before = workspace_lines(ws)
    record = ws / "cache" / "capture" / "record.jsonl"
    line = record.read_bytes().split(b"\n", 1)[0] + b"\n"  # a real line, appended again
    stop = threading.Event()
    batches = 0

    def append_more_than_a_batch(_: ShipProgress) -> None:
        nonlocal batches
        batches += 1
        with record.open("ab") as f:
            f.write(line * 10)
        if batches == 500:
            stop.set()  # before: the pass went on until stopped

    with Shipper(ws, db.url, batch_lines=5, progress=append_more_than_a_batch) as shipper:
        result = shipper.ship(stop)
        assert not stop.is_set()
        assert result.waiting_bytes == 0
        stored = store_lines(db, ws)
        now = workspace_lines(ws)
        for file, lines in before.items():
            assert stored[file] == now[file][: len(stored[file])]  # a prefix, in order
            assert len(stored[file]) >= len(lines)  # with all the pass began with
        # What came later is the next pass's.
        shipper.progress = None
        shipper.ship()
    assert store_lines(db, ws) == workspace_lines(ws)


def test_typed_columns_hold_the_payload_and_raw_holds_the_line(
    tmp_path: Path, db: Database
) -> None:
    ws = capture(tmp_path / "ws", samples=range(2))
    ship(ws, db)
    metric = db.query(
        "SELECT key, value, value_type, sample_ref, run_ref, recorded_at IS NOT NULL, raw "
        "FROM contexta.metric_records WHERE sample_ref LIKE '%case-1'"
    )
    assert metric[0][:6] == (
        "correct",
        1.0,
        "float",
        "sample:proj.eval.evaluate.case-1",
        "run:proj.eval",
        True,
    )
    assert json.loads(str(metric[0][6]))["payload"]["payload"]["metric_key"] == "correct"
    event = db.query("SELECT key, level, message FROM contexta.event_records ORDER BY 1 LIMIT 1")
    assert event == [("answer", "info", "answered\tcase 0 \\ \u00fc")]
    run = db.query("SELECT status, dataset_ref, started_at < ended_at, shards FROM contexta.runs")
    assert run == [("completed", "dataset:cases", True, 1)]
    samples = db.query("SELECT name, status FROM contexta.samples ORDER BY name")
    assert samples == [("case-0", "completed"), ("case-1", "completed")]


def test_a_torn_tail_waits_until_its_newline_arrives(tmp_path: Path, db: Database) -> None:
    ws = capture(tmp_path / "ws")
    record = ws / "cache" / "capture" / "record.jsonl"
    whole = record.read_bytes()
    last = whole[:-1].rsplit(b"\n", 1)[1] + b"\n"  # a real line, written again in two parts
    with record.open("ab") as f:
        f.write(last[:40])
    result = ship(ws, db)
    assert result.waiting_bytes == 40
    assert store_lines(db, ws)["record.jsonl"] == workspace_lines(ws)["record.jsonl"]
    assert len(store_lines(db, ws)["record.jsonl"]) == whole.count(b"\n")

    with record.open("ab") as f:
        f.write(last[40:])
    result = ship(ws, db)
    assert result.lines_shipped == 1 and result.waiting_bytes == 0
    assert store_lines(db, ws) == workspace_lines(ws)


def test_a_torn_tail_cut_off_by_the_next_writer_is_never_shipped(
    tmp_path: Path, db: Database
) -> None:
    ws = capture(tmp_path / "ws", run="first")
    record = ws / "cache" / "capture" / "record.jsonl"
    with record.open("ab") as f:
        f.write(b'{"captured_at":"2026-11-26T07:06:27.785890Z","family":"RECORD","pay')
    ship(ws, db)  # the fragment waits
    capture(ws, run="second")  # the next writer cuts the fragment off, then appends
    assert b'"pay{' not in record.read_bytes()
    result = ship(ws, db)
    assert result.lines_skipped == 0 and result.waiting_bytes == 0
    assert store_lines(db, ws) == workspace_lines(ws)


def test_a_corrupt_line_is_skipped_logged_counted_and_never_shipped(
    tmp_path: Path, db: Database
) -> None:
    ws = capture(tmp_path / "ws", run="before")
    record = ws / "cache" / "capture" / "record.jsonl"
    bad_at = record.stat().st_size
    with record.open("ab") as f:
        f.write(b'{"family":"RECORD","payload":{"envel\n')  # cut, glued: not JSON
        f.write(b'{"family":"SPAN","payload":{}}\n')  # not a family of this file
        f.write(b"[1, 2]\n")  # JSON, but not a line of the format
    capture(ws, run="after")
    with structlog.testing.capture_logs() as logs:
        result = ship(ws, db)
    assert result.lines_skipped == 3
    assert result.corrupt[0].byte_offset == bad_at
    assert "not valid JSON" in result.corrupt[0].reason
    assert "'SPAN' does not belong in record.jsonl" in result.corrupt[1].reason
    warned = [e for e in logs if e["event"] == "contexta_async.ship_corrupt_line"]
    assert [e["byte_offset"] for e in warned] == [c.byte_offset for c in result.corrupt]
    assert all(e["log_level"] == "warning" and e["file"] == "record.jsonl" for e in warned)

    expected = workspace_lines(ws)
    bad = {c.byte_offset for c in result.corrupt}
    expected["record.jsonl"] = [(o, line) for o, line in expected["record.jsonl"] if o not in bad]
    assert store_lines(db, ws) == expected
    skipped = db.query("SELECT lines_skipped FROM contexta.positions WHERE file = 'record.jsonl'")
    assert skipped == [(3,)]
    assert ship(ws, db).lines_skipped == 0  # the position moved past


def test_a_line_of_a_known_family_with_an_odd_field_is_shipped_raw(
    tmp_path: Path, db: Database
) -> None:
    ws = capture(tmp_path / "ws")
    odd_shape = (
        '{"captured_at":"2026-11-30T00:00:00.000000Z","family":"RECORD","payload":'
        '{"envelope":{"record_type":"metric"},"payload":{"value":true}},'
        '"payload_ref":null,"payload_type":"MetricRecord","sink_name":"x"}'
    )
    no_such_day = (
        '{"captured_at":"2026-02-30T00:00:00.000000Z","family":"RECORD","payload":'
        '{"envelope":{"record_type":"metric"},"payload":{"metric_key":"k","value":2}},'
        '"payload_ref":null,"payload_type":"MetricRecord","sink_name":"x"}'
    )
    with (ws / "cache" / "capture" / "record.jsonl").open("a") as f:
        f.write(odd_shape + "\n" + no_such_day + "\n")
    result = ship(ws, db)
    assert result.lines_skipped == 0
    assert store_lines(db, ws) == workspace_lines(ws)
    query = "SELECT captured_at, record_type, key, value FROM contexta.records WHERE raw = %s"
    assert db.query(query, (odd_shape,)) == [(None, None, None, None)]
    # The server refused the date; the batch was parsed again with a calendar check.
    assert db.query(query, (no_such_day,)) == [(None, "metric", "k", 2.0)]


def test_shards_of_one_run_merge_into_one_run(tmp_path: Path, db: Database) -> None:
    # Two workers capture the same run, each a slice of the samples.
    a = capture(tmp_path / "a", samples=range(0, 3))
    b = capture(tmp_path / "b", samples=range(3, 5))
    ship(a, db)
    ship(b, db)
    runs = db.query("SELECT run_ref, status, shards FROM contexta.runs")
    assert runs == [("run:proj.eval", "completed", 2)]
    started, ended = db.query("SELECT started_at, ended_at FROM contexta.runs")[0]
    shard_times = db.query(
        "SELECT min(started_at), max(ended_at) FROM contexta.scope_shards WHERE kind = 'run'"
    )[0]
    assert (started, ended) == shard_times
    names = [r[0] for r in db.query("SELECT name FROM contexta.samples ORDER BY name")]
    assert names == [f"case-{i}" for i in range(5)]
    assert db.query("SELECT count(*) FROM contexta.metric_records WHERE key = 'correct'") == [(5,)]

    # A third shard still running: the run is open, and has no end yet.
    c = capture_open(tmp_path / "c", samples=range(5, 6))
    ship(c, db)
    assert db.query("SELECT status, ended_at, shards FROM contexta.runs") == [("open", None, 3)]
    # A fourth that failed: the run failed, whatever the others say.
    d = capture(tmp_path / "d", samples=range(6, 7), fail=True)
    ship(d, db)
    status, reason = db.query("SELECT status, failure_reason FROM contexta.runs")[0]
    assert status == "failed" and "boom" in str(reason)
    assert db.query("SELECT count(*) FROM contexta.samples") == [(7,)]


def test_a_store_with_a_newer_schema_is_refused_before_anything_is_written(
    tmp_path: Path, db: Database
) -> None:
    ws = capture(tmp_path / "ws")
    ship(ws, db)
    before = store_lines(db, ws)
    db.query(f"UPDATE contexta.schema_version SET version = {SCHEMA_VERSION + 1} RETURNING 1")
    capture(ws, run="later")
    newer = rf"schema version {SCHEMA_VERSION + 1}, newer than this client's {SCHEMA_VERSION}"
    with pytest.raises(SchemaVersionError, match=newer):
        ship(ws, db)
    assert store_lines(db, ws) == before


def test_a_file_shorter_than_its_shipped_position_is_refused(tmp_path: Path, db: Database) -> None:
    ws = capture(tmp_path / "ws")
    ship(ws, db)
    record = ws / "cache" / "capture" / "record.jsonl"
    record.write_bytes(record.read_bytes()[:100])
    with pytest.raises(ShipPositionError, match=r"record.jsonl: is 100 bytes long"):
        ship(ws, db)


def test_concurrent_first_users_create_the_schema_once(db: Database) -> None:
    assert ensure_schema_at_once(db, 6) == [SCHEMA_VERSION] * 6
    assert db.query("SELECT version FROM contexta.schema_version") == [(SCHEMA_VERSION,)]


def test_a_waiting_torn_tail_is_still_reported_on_every_later_pass(
    tmp_path: Path, db: Database
) -> None:
    ws = capture(tmp_path / "ws")
    record = ws / "cache" / "capture" / "record.jsonl"
    with record.open("ab") as f:
        f.write(b'{"captured_at":"2026')  # a writer mid-line
    with Shipper(ws, db.url) as shipper:
        first = shipper.ship()
        again = shipper.ship()  # nothing appended: the shipper knows it is caught up
    assert first.waiting_bytes == again.waiting_bytes == len(b'{"captured_at":"2026')


@pytest.mark.parametrize("kind", ["symlink", "directory"])
def test_a_family_file_that_is_not_a_regular_file_is_a_one_line_error(
    tmp_path: Path, db: Database, kind: str
) -> None:
    ws = capture(tmp_path / "ws")
    record = ws / "cache" / "capture" / "record.jsonl"
    moved = tmp_path / "elsewhere.jsonl"
    record.rename(moved)
    if kind == "symlink":
        record.symlink_to(moved)
    else:
        record.mkdir()
    with pytest.raises(StoreError) as caught:
        ship(ws, db)
    assert "record.jsonl: cannot be read" in str(caught.value)


def test_lines_stored_past_a_position_reset_by_hand_are_not_stored_twice(
    tmp_path: Path, db: Database
) -> None:
    # The fast path COPYs straight into the table (lines past the locked position are new);
    # if the store holds them anyway, the primary key refuses and the batch is merged instead.
    ws = capture(tmp_path / "ws", samples=range(30))
    first = ship(ws, db)
    expected = workspace_lines(ws)
    db.query("UPDATE contexta.positions SET byte_offset = 0 RETURNING 1")
    capture(ws, run="later")
    with structlog.testing.capture_logs() as logs:
        again = ship(ws, db, batch_lines=1_000)
    assert again.lines_already_stored == first.lines_shipped
    assert again.lines_shipped == sum(len(v) for v in workspace_lines(ws).values()) - sum(
        len(v) for v in expected.values()
    )
    assert store_lines(db, ws) == workspace_lines(ws)
    assert any(e["event"] == "contexta_async.ship_lines_already_stored" for e in logs)


def test_timestamps_are_stored_as_the_instants_the_lines_name(tmp_path: Path, db: Database) -> None:
    ws = capture(tmp_path / "ws", samples=range(20))
    offsets = (
        "2026-11-26T07:06:27.000001Z",
        "1999-12-31T23:59:59.999999Z",  # before the binary format's epoch
        "2026-11-26T08:06:27.5+01:00",  # an offset, fewer digits
        "2026-11-26T07:06:27.12345²Z",  # a digit int() refuses: NULL, not a wrong instant
    )
    with (ws / "cache" / "capture" / "record.jsonl").open("a") as f:
        for ts in offsets:
            f.write(
                json.dumps(
                    {"captured_at": ts, "family": "RECORD", "payload": {}, "payload_type": "X"}
                )
                + "\n"
            )
    ship(ws, db)
    rows = db.query("SELECT raw, captured_at, recorded_at FROM contexta.records")
    assert len(rows) > 40
    for raw, captured, recorded in rows:
        line = json.loads(str(raw))
        want = line["captured_at"]
        if "²" in want:
            assert captured is None
            continue
        assert captured == datetime.fromisoformat(want), want
        envelope = line["payload"].get("envelope") if line["payload"] else None
        if envelope:
            assert recorded == datetime.fromisoformat(envelope["recorded_at"])


def test_the_batch_loop_gives_the_rows_of_the_careful_path_line_by_line(tmp_path: Path) -> None:
    """LineParser.write takes the common line by a shorter path than parse(); both must give
    the same rows, escapes, odd shapes and corrupt lines included."""
    from contexta_async_postgres._lines import LineParser

    ws = capture(tmp_path / "ws", samples=range(20))
    data = (ws / "cache" / "capture" / "record.jsonl").read_bytes()
    data += (
        b'{"family":"RECORD","captured_at":"2026-02-30T00:00:00.000000Z"}\n'
        b'{"family":"RECORD","payload":{"payload":{"metric_key":"a\\u0000b","value":1}}}\n'
        b'{"family":"RECORD","payload":{"payload":{"value":true}}}\n'
        b"not json\n"
        b'{"family":"CONTEXT"}\n'
    )
    lines = data.split(b"\n")[:-1]
    parser = LineParser(uuid.UUID(int=3), "record.jsonl", "RECORD")
    expected: list[object] = []
    offset = 0
    for line in lines:
        expected.append(parser.parse(line, offset))
        offset += len(line) + 1
    for escapes in (True, b"\\u" in data):
        rows: list[object] = []
        corrupt: list[object] = []
        written, end = parser.write(lines, 0, rows.append, corrupt, escapes)  # type: ignore[arg-type]
        assert (written, end) == (len(lines) - 2, len(data))
        assert rows == [e for e in expected if isinstance(e, tuple)]
        assert corrupt == [e for e in expected if not isinstance(e, tuple)]
        assert rows[-2][11] == "a\ufffdb"  # type: ignore[index]  # key, NUL cleaned


def test_a_line_nested_too_deep_to_decode_is_corrupt_not_a_crash() -> None:
    from contexta_async_postgres._lines import Corrupt, LineParser

    parser = LineParser(uuid.UUID(int=3), "record.jsonl", "RECORD")
    deep = b'{"family":"RECORD","payload":{"x":' + b"[" * 5000 + b"]" * 5000 + b"}}"
    found = parser.parse(deep, 7)
    assert found == Corrupt("record.jsonl", 7, "nested too deep to decode")
    rows: list[object] = []
    corrupt: list[object] = []
    assert parser.write([deep], 7, rows.append, corrupt, False) == (0, 7 + len(deep) + 1)  # type: ignore[arg-type]
    assert rows == [] and corrupt == [found]


def test_a_batch_read_in_many_chunks_stores_every_line_once(
    tmp_path: Path, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    from contexta_async_postgres import _shipper

    monkeypatch.setattr(_shipper, "_CHUNK", 700)  # about a line per read, some lines longer
    ws = capture(tmp_path / "ws", samples=range(30))
    result = ship(ws, db, batch_lines=40)
    expected = workspace_lines(ws)
    assert result.lines_shipped == sum(len(v) for v in expected.values())
    assert store_lines(db, ws) == expected
    assert result.batches == sum(-(-len(v) // 40) for v in expected.values())
    # The fallback (lines already stored past a position reset by hand) reads the chunks
    # again for its second COPY, into the staging table.
    db.query("UPDATE contexta.positions SET byte_offset = 0 RETURNING 1")
    capture(ws, run="later")
    again = ship(ws, db, batch_lines=1_000)
    assert again.lines_already_stored == result.lines_shipped
    assert store_lines(db, ws) == workspace_lines(ws)
