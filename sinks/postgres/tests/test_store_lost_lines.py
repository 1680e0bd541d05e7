"""A store that comes back without its last commits (restored from an older backup, a failover
to a replica that missed them, an operator's reset): a waiter is answered by the store, never
by what the shipper remembers, and the lost lines are shipped again, once."""

from __future__ import annotations

from pathlib import Path

from contexta_async_postgres import Shipper
from pgtest import Database, capture, store_lines, workspace_lines

from contexta_async import Contexta


def _capture(ctx: Contexta, run: str, samples: int) -> None:
    with ctx.run(run) as r, r.stage("evaluate") as stage:
        for i in range(samples):
            with stage.sample(f"case-{i}") as sample:
                sample.metric("correct", 1.0)


def _lose_everything(db: Database) -> None:
    """The shipper's session ends, and the store holds none of the workspace's lines."""
    with db.cluster.admin(db.name) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'contexta-async-ship'"
        )
        conn.execute(
            "TRUNCATE contexta.positions, contexta.context_lines, contexta.records, "
            "contexta.artifacts, contexta.degradations"
        )


def test_wait_committed_asks_the_store_and_ships_lines_it_lost_again_once(
    tmp_path: Path, db: Database
) -> None:
    ws = tmp_path / "ws"
    ctx = Contexta(workspace=ws, config={"project_name": "p"}, ship_to=db.url)
    try:
        _capture(ctx, "a", 5)
        ctx.shipper.wait_committed(timeout=60)
        assert store_lines(db, ws) == workspace_lines(ws)
        _lose_everything(db)
        ctx.shipper.wait_committed(timeout=60)
        # Every line again, each once (store_lines would show a second copy).
        assert store_lines(db, ws) == workspace_lines(ws)
    finally:
        ctx.close()
    assert ctx.shipper.lines_waiting == 0


def test_the_pass_after_a_reconnect_asks_the_store_for_every_file(
    tmp_path: Path, db: Database
) -> None:
    ws = capture(tmp_path / "ws")
    with Shipper(ws, db.url, backoff=0.01) as shipper:
        shipper.ship()
        _lose_everything(db)
        # Only record.jsonl grows: its batch finds the session gone and reconnects.
        record = ws / "cache" / "capture" / "record.jsonl"
        first = record.read_bytes().split(b"\n")[0]
        with open(record, "ab") as f:
            f.write(first + b"\n")
        # The periodic passes of a follower (or of the in-process helper): the one after the
        # reconnect asks the store about context.jsonl too, unchanged as it is.
        first_pass = shipper.ship(cached=True)
        assert first_pass.reconnects == 1
        shipper.ship(cached=True)
    assert store_lines(db, ws) == workspace_lines(ws)


def test_a_schema_dropped_under_the_shippers_session_is_made_again_and_filled(
    tmp_path: Path, db: Database
) -> None:
    ws = tmp_path / "ws"
    ctx = Contexta(workspace=ws, config={"project_name": "p"}, ship_to=db.url)
    try:
        _capture(ctx, "a", 5)
        ctx.shipper.wait_committed(timeout=60)
        with db.cluster.admin(db.name) as conn:  # the helper's session stays
            conn.execute("DROP SCHEMA contexta CASCADE")
        ctx.shipper.wait_committed(timeout=60)
        assert store_lines(db, ws) == workspace_lines(ws)
    finally:
        ctx.close()
