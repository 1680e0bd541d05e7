"""A line that is not valid UTF-8 in a field no typed column reads (a flipped bit, a damaged
sector) is corrupt: skipped, logged and counted, while every other line ships exactly once.
The store's text column refuses it, and with it the whole batch, on every pass."""

from __future__ import annotations

import uuid
from pathlib import Path

import structlog
from contexta_async_postgres import Shipper
from contexta_async_postgres._lines import Corrupt, LineParser
from pgtest import Database, capture, ship_cli, store_lines

from contexta_async import Contexta

_FIELD = b'"producer_ref":"sdk.python.local"'


def _damage(workspace: Path) -> int:
    """Set one byte of the first record line's producer_ref (a field the shipper's structs
    skip) to 0xFF, same length; return that line's byte offset."""
    record = workspace / "cache" / "capture" / "record.jsonl"
    data = bytearray(record.read_bytes())
    at = data.index(_FIELD) + len(b'"producer_ref":"sdk.python.')
    data[at] = 0xFF
    record.write_bytes(bytes(data))
    return data.rfind(b"\n", 0, at) + 1


def _lines(workspace: Path) -> dict[str, list[tuple[int, bytes]]]:
    out: dict[str, list[tuple[int, bytes]]] = {}
    for file in ("context.jsonl", "record.jsonl", "artifact.jsonl", "degradation.jsonl"):
        path = workspace / "cache" / "capture" / file
        if not path.exists():
            continue
        offset, lines = 0, []
        for piece in path.read_bytes().split(b"\n")[:-1]:
            lines.append((offset, piece))
            offset += len(piece) + 1
        out[file] = lines
    return out


def _expected(workspace: Path, bad: int) -> dict[str, list[tuple[int, str]]]:
    return {
        file: [(o, line.decode()) for o, line in lines if not (file == "record.jsonl" and o == bad)]
        for file, lines in _lines(workspace).items()
    }


def test_a_line_not_valid_utf8_is_skipped_as_corrupt_and_the_rest_ships_once(
    tmp_path: Path, db: Database
) -> None:
    ws = capture(tmp_path / "ws", run="before")
    bad = _damage(ws)
    capture(ws, run="after")  # lines after the bad one, in the same chunk and batch
    with structlog.testing.capture_logs() as logs, Shipper(ws, db.url) as shipper:
        result = shipper.ship()
    assert result.lines_skipped == 1
    [corrupt] = result.corrupt
    assert (corrupt.file, corrupt.byte_offset) == ("record.jsonl", bad)
    assert corrupt.reason.startswith("not valid UTF-8")
    warned = [e for e in logs if e["event"] == "contexta_async.ship_corrupt_line"]
    assert [(e["file"], e["byte_offset"]) for e in warned] == [("record.jsonl", bad)]
    assert store_lines(db, ws) == _expected(ws, bad)
    with Shipper(ws, db.url) as shipper:
        again = shipper.ship()
    assert (again.lines_shipped, again.lines_skipped) == (0, 0)  # the position moved past it


def test_ship_cli_skips_a_line_not_valid_utf8_and_exits_0(tmp_path: Path, db: Database) -> None:
    ws = capture(tmp_path / "ws", run="before")
    bad = _damage(ws)
    done = ship_cli(ws, db.url)
    assert done.returncode == 0, done.stderr
    assert "1 corrupt line(s) skipped" in done.stdout
    capture(ws, run="after")
    done = ship_cli(ws, db.url)
    assert done.returncode == 0, done.stderr
    assert store_lines(db, ws) == _expected(ws, bad)


def test_the_in_process_shipper_commits_past_a_line_not_valid_utf8(
    tmp_path: Path, db: Database
) -> None:
    ws = capture(tmp_path / "ws", run="before")
    bad = _damage(ws)
    ctx = Contexta(workspace=ws, config={"project_name": "proj"}, ship_to=db.url)
    try:
        with (
            ctx.run("after") as run,
            run.stage("evaluate") as stage,
            stage.sample("s") as sample,
        ):
            sample.metric("correct", 1.0)
        assert ctx.shipper is not None
        ctx.shipper.wait_committed(timeout=60)
    finally:
        ctx.close()
    assert store_lines(db, ws) == _expected(ws, bad)


def test_the_batch_loop_and_parse_agree_on_a_line_not_valid_utf8() -> None:
    parser = LineParser(uuid.UUID(int=3), "record.jsonl", "RECORD")
    good = b'{"family":"RECORD","payload":{"payload":{"metric_key":"k","value":1}}}'
    bad = b'{"family":"RECORD","tags":{"a":"\xff\xfe"},"payload":{}}'
    cut = b'{"family":"RECORD","message":"\xc3"}'  # a multi-byte character cut short
    lines = [good, bad, good, cut]
    found = parser.parse(bad, len(good) + 1)
    assert isinstance(found, Corrupt) and found.reason.startswith("not valid UTF-8")
    for escapes in (False, True):
        rows: list[object] = []
        corrupt: list[Corrupt] = []
        written, end = parser.write(lines, 0, rows.append, corrupt, escapes)
        assert (written, end) == (2, sum(len(line) + 1 for line in lines))
        assert [c.byte_offset for c in corrupt] == [
            len(good) + 1,
            2 * (len(good) + 1) + len(bad) + 1,
        ]
        assert corrupt[0] == found
