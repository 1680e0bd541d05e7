"""``contexta-async ship``: one-shot, --follow until SIGTERM/SIGINT, a progress line on a
terminal only."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from pgtest import Database, capture, ship_cli, start_ship, store_lines, workspace_lines

from contexta_async.stores import StoreBackend, load_store_backend

WAIT = 60.0


def _wait_until_stored(db: Database, ws: Path) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            if store_lines(db, ws) == workspace_lines(ws):
                return
        except (FileNotFoundError, psycopg.errors.UndefinedTable):
            pass  # no identity or no schema yet
        time.sleep(0.05)
    raise AssertionError("the follower never caught up")


def test_the_entry_point_serves_both_schemes() -> None:
    for url in ("postgresql://h/db", "postgres://h/db", "POSTGRESQL://h/db"):
        assert isinstance(load_store_backend(url), StoreBackend)


def test_one_shot_ships_everything_and_exits_0(tmp_path: Path, db: Database) -> None:
    ws = capture(tmp_path / "ws")
    done = ship_cli(ws / "cache" / "capture", db.url)  # the capture folder works too
    assert done.returncode == 0, done.stderr
    total = sum(len(v) for v in workspace_lines(ws).values())
    assert done.stdout.startswith(f"shipped {total} line(s) in 2 batch(es) to postgresql://")
    assert "s3cret" not in done.stdout + done.stderr
    assert done.stderr == ""  # not a terminal: no progress line
    assert store_lines(db, ws) == workspace_lines(ws)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_follow_ships_new_lines_as_they_appear_until_a_signal(
    tmp_path: Path, db: Database, sig: signal.Signals
) -> None:
    ws = capture(tmp_path / "ws", run="first")
    proc = start_ship(ws, db.url, "--follow", "--poll-interval", "0.05")
    try:
        _wait_until_stored(db, ws)
        capture(ws, run="second")  # appended while the follower runs
        _wait_until_stored(db, ws)
    finally:
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err
    assert out.startswith("shipped ")
    runs = {r[0] for r in db.query("SELECT run_ref FROM contexta.runs")}
    assert runs == {"run:proj.first", "run:proj.second"}


def test_a_progress_line_is_drawn_only_on_a_terminal(tmp_path: Path, db: Database) -> None:
    ws = capture(tmp_path / "ws", samples=range(3000))
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "contexta_async",
                "--workspace",
                str(ws),
                "ship",
                "--to",
                db.url,
                "--batch-lines",
                "500",
            ],
            stdout=subprocess.PIPE,
            stderr=follower,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        out, _ = proc.communicate(timeout=WAIT)
        os.close(follower)
        follower = -1
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the other side is closed and drained
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert proc.returncode == 0
    assert b"\rshipping: " in seen and b" lines/s" in seen
    assert out.startswith("shipped ")


def test_a_folder_that_is_no_workspace_is_one_line_and_exit_1(tmp_path: Path, db: Database) -> None:
    done = ship_cli(tmp_path / "nope", db.url)
    assert done.returncode == 1
    assert done.stderr == (
        "contexta-async: error: workspace: must be a workspace directory holding cache/capture/ "
        f"(got {str(tmp_path / 'nope')!r})\n"
    )
