"""A line the parser lets through but the server refuses (SQLSTATE class 22, e.g. bytes the
database's encoding does not take) is found by halving the batch, skipped as corrupt, and
every other line of the batch ships exactly once: the file never stops at that line.

In a UTF-8 database the parser already refuses every such line it knows of (invalid UTF-8,
NUL, lone surrogates, out-of-range integers): to make the server see one, these tests turn
off the parser's UTF-8 check, so that a line with an invalid byte reaches the COPY."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog
from contexta_async_postgres import Shipper, _lines, _shipper
from pgtest import Database, capture, store_lines

_FIELD = b'"producer_ref":"sdk.python.local"'


@pytest.fixture
def no_utf8_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_shipper, "is_utf8", lambda data: True)
    monkeypatch.setattr(_lines, "is_utf8", lambda data: True)


def _damage(workspace: Path, which: list[int]) -> list[int]:
    """Set one byte of the producer_ref of the record lines numbered ``which`` to 0xFF;
    their byte offsets."""
    record = workspace / "cache" / "capture" / "record.jsonl"
    data = bytearray(record.read_bytes())
    offsets, start = [], 0
    for number, line in enumerate(bytes(data).split(b"\n")[:-1]):
        if number in which:
            at = start + line.index(_FIELD) + len(b'"producer_ref":"sdk.python.')
            data[at] = 0xFF
            offsets.append(start)
        start += len(line) + 1
    record.write_bytes(bytes(data))
    return offsets


def _expected(workspace: Path, bad: list[int]) -> dict[str, list[tuple[int, str]]]:
    out: dict[str, list[tuple[int, str]]] = {}
    for file in ("context.jsonl", "record.jsonl"):
        offset, lines = 0, []
        for piece in (workspace / "cache" / "capture" / file).read_bytes().split(b"\n")[:-1]:
            if not (file == "record.jsonl" and offset in bad):
                lines.append((offset, piece.decode()))
            offset += len(piece) + 1
        out[file] = lines
    return out


@pytest.mark.usefixtures("no_utf8_check")
@pytest.mark.parametrize("batch_lines", [50_000, 4])
def test_lines_the_server_refuses_are_isolated_skipped_and_the_rest_ships_once(
    tmp_path: Path, db: Database, batch_lines: int
) -> None:
    ws = capture(tmp_path / "ws", samples=range(10))
    bad = _damage(ws, [0, 7, 8])
    with (
        structlog.testing.capture_logs() as logs,
        Shipper(ws, db.url, batch_lines=batch_lines) as shipper,
    ):
        result = shipper.ship()
    assert [c.byte_offset for c in result.corrupt] == bad
    assert all(
        c.reason.startswith("refused by the store: invalid byte sequence") for c in result.corrupt
    )
    warned = [e["byte_offset"] for e in logs if e["event"] == "contexta_async.ship_corrupt_line"]
    assert warned == bad
    assert result.lines_skipped == 3
    assert store_lines(db, ws) == _expected(ws, bad)
    skipped = db.query("SELECT lines_skipped FROM contexta.positions WHERE file = 'record.jsonl'")
    assert skipped == [(3,)]
    with Shipper(ws, db.url) as shipper:
        again = shipper.ship()
    assert (again.lines_shipped, again.lines_skipped) == (0, 0)


@pytest.mark.usefixtures("no_utf8_check")
def test_a_refused_line_among_lines_already_stored_is_isolated_in_the_fallback_too(
    tmp_path: Path, db: Database
) -> None:
    """Lines past the position already in the store (a position reset by hand): the
    fallback's staging COPY meets the refused line, and isolates it the same way."""
    ws = capture(tmp_path / "ws", samples=range(5))
    with Shipper(ws, db.url) as shipper:
        shipper.ship()
    db.query("UPDATE contexta.positions SET byte_offset = 0 RETURNING 1")
    capture(ws, run="more", samples=range(5))
    record = ws / "cache" / "capture" / "record.jsonl"
    total = record.read_bytes().count(b"\n")
    bad = _damage(ws, [total - 2])  # a new line, not yet stored
    with Shipper(ws, db.url) as shipper:
        result = shipper.ship()
    assert [c.byte_offset for c in result.corrupt] == bad
    assert result.lines_already_stored > 0
    assert store_lines(db, ws) == _expected(ws, bad)
