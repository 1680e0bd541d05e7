"""A workspace whose path is not valid UTF-8 (Linux paths are bytes) ships, from the command
and from the capturing process; the store records the path with its odd bytes as ``\\xNN``."""

from __future__ import annotations

import io
import os
from pathlib import Path

import msgspec
from pgtest import Database, capture, ship_cli, store_lines, workspace_lines

from contexta_async import Contexta


def _odd(tmp_path: Path) -> Path:
    return Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9-ws"))


def test_the_command_ships_a_workspace_whose_path_is_not_utf8(tmp_path: Path, db: Database) -> None:
    ws = capture(_odd(tmp_path))
    done = ship_cli(ws, db.url)
    assert done.returncode == 0, done.stderr
    assert store_lines(db, ws) == workspace_lines(ws)
    [(path,)] = db.query("SELECT path FROM contexta.workspaces")
    assert path == os.fsencode(tmp_path).decode() + "/caf\\xe9-ws"


def test_the_capturing_process_ships_a_workspace_whose_path_is_not_utf8(
    tmp_path: Path, db: Database
) -> None:
    ws = _odd(tmp_path)
    ctx = Contexta(workspace=ws, config={"project_name": "p"}, ship_to=db.url)
    try:
        with ctx.run("a") as r, r.stage("evaluate") as stage, stage.sample("s") as sample:
            sample.metric("correct", 1.0)
        ctx.shipper.wait_committed(timeout=30)
        assert store_lines(db, ws) == workspace_lines(ws)
    finally:
        ctx.close()


def test_a_helper_message_naming_a_non_utf8_path_reaches_the_caller(tmp_path: Path) -> None:
    from contexta_async_postgres._ship_process import _Channel

    out = io.BytesIO()
    channel = _Channel(io.BytesIO(), out)
    where = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9-ws")
    channel.send({"log": {"event": "contexta_async.ship_corrupt_line", "workspace": where}})
    assert not channel.stop.is_set()  # the helper goes on: its caller did not go away
    message = msgspec.json.decode(out.getvalue())
    assert message["log"]["workspace"] == os.fsencode(tmp_path).decode() + "/caf\\xe9-ws"
