"""A copy of a shipped workspace keeps its identity (``cache/workspace-id``): whichever of the
two ships second finds lines at the stored position that are not the ones the store holds, and
is refused loudly, never shipped past silently."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from contexta_async_postgres import Shipper, ShipPositionError
from pgtest import Database, capture, ship_cli, store_lines, workspace_lines


def test_a_copy_of_a_shipped_workspace_is_refused_naming_the_workspace(
    tmp_path: Path, db: Database
) -> None:
    original, copy = tmp_path / "original", tmp_path / "copy"
    capture(original, run="seed", samples=range(2))
    assert ship_cli(original, db.url).returncode == 0
    shutil.copytree(original, copy)  # e.g. a seeded workspace copied to each worker
    # Runs of lines of the same shape: the byte before each stored position is a newline in
    # both copies, so only the lines' content tells them apart.
    capture(original, run="one", samples=range(3))
    capture(copy, run="two", samples=range(3))
    capture(copy, run="six", samples=range(4))
    assert ship_cli(original, db.url).returncode == 0
    done = ship_cli(copy, db.url)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr  # one line, no traceback
    assert "contexta-async: error: context.jsonl: " in done.stderr
    assert str(copy) in done.stderr  # the workspace that is refused
    assert "cache/workspace-id" in done.stderr  # what to do
    # Nothing of the copy was stored: the original's lines are intact.
    assert store_lines(db, original) == workspace_lines(original)
    # Given an identity of its own, the copy ships as a workspace of its own.
    (copy / "cache" / "workspace-id").unlink()
    assert ship_cli(copy, db.url).returncode == 0
    assert store_lines(db, copy) == workspace_lines(copy)
    assert store_lines(db, original) == workspace_lines(original)


def test_a_file_replaced_by_lines_of_the_same_length_is_refused(
    tmp_path: Path, db: Database
) -> None:
    ws = capture(tmp_path / "ws", samples=range(3))
    with Shipper(ws, db.url) as shipper:
        shipper.ship()
    record = ws / "cache" / "capture" / "record.jsonl"
    data = record.read_bytes()
    # The last line's content changes, its length and newline stay: a replaced file.
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    changed = data[:last] + data[last:].replace(b"local-jsonl", b"LOCAL-jsonl")
    assert len(changed) == len(data) and changed != data
    record.write_bytes(changed + data[:last])  # and more lines after it
    with Shipper(ws, db.url) as shipper, pytest.raises(ShipPositionError) as caught:
        shipper.ship()
    assert caught.value.file == "record.jsonl"
    assert caught.value.position == len(data)


def test_a_workspace_moved_elsewhere_ships_on_from_its_position(
    tmp_path: Path, db: Database
) -> None:
    ws = capture(tmp_path / "ws", run="first")
    with Shipper(ws, db.url) as shipper:
        shipper.ship()
    moved = tmp_path / "moved"
    ws.rename(moved)
    capture(moved, run="second")
    with Shipper(moved, db.url) as shipper:
        result = shipper.ship()
    assert result.lines_already_stored == 0
    assert store_lines(db, moved) == workspace_lines(moved)


def test_corrupt_lines_after_the_last_stored_one_do_not_refuse_the_file(
    tmp_path: Path, db: Database
) -> None:
    ws = capture(tmp_path / "ws", run="first")
    record = ws / "cache" / "capture" / "record.jsonl"
    with open(record, "ab") as f:
        f.write(b"not json\n{}\n")  # skipped: the store's position is past them
    with Shipper(ws, db.url) as shipper:
        assert shipper.ship().lines_skipped == 2
    capture(ws, run="second")
    with Shipper(ws, db.url) as shipper:  # a new shipper checks the stored positions
        result = shipper.ship()
    assert result.lines_skipped == 0 and result.lines_shipped > 0
    stored = store_lines(db, ws)
    assert sum(map(len, stored.values())) == sum(map(len, workspace_lines(ws).values())) - 2
