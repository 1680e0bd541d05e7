"""Schema version 2 (the run indexes): a new store has them, a version-1 store gets them from
the first shipper of this client (once, however many start at once), and readers read a
version-1 store as it is, without migrating it."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from contexta_async_postgres import SCHEMA_VERSION
from pgtest import Database, capture, ensure_schema_at_once, ship_cli, store_lines

from contexta_async._cli import run_cli

INDEXES = {"records_run", "context_lines_run", "artifacts_run"}


def _indexes(db: Database) -> set[str]:
    rows = db.query("SELECT indexname FROM pg_indexes WHERE schemaname = 'contexta'")
    return {str(name) for (name,) in rows} & INDEXES


def _version(db: Database) -> int:
    return int(str(db.query("SELECT version FROM contexta.schema_version")[0][0]))


def _to_version_1(db: Database) -> None:
    """The store as a version-1 client left it: version 1's tables and views, no indexes."""
    with db.cluster.admin(db.name) as conn:
        for name in sorted(INDEXES):
            conn.execute(f"DROP INDEX contexta.{name}")
        conn.execute("UPDATE contexta.schema_version SET version = 1")


def _ship(ws: Path, db: Database) -> None:
    done = ship_cli(ws, db.url)
    assert done.returncode == 0, done.stderr


def _cli(where: str, *args: str) -> Any:
    out, err = io.StringIO(), io.StringIO()
    assert run_cli(["--workspace", where, *args, "--json"], out=out, err=err) == 0, err.getvalue()
    return json.loads(out.getvalue())


def test_a_new_store_is_created_at_the_newest_version_with_the_run_indexes(
    tmp_path: Path, db: Database
) -> None:
    _ship(capture(tmp_path / "ws"), db)
    assert SCHEMA_VERSION == 2
    assert _version(db) == SCHEMA_VERSION
    assert _indexes(db) == INDEXES


def test_a_version_1_store_is_read_as_it_is_and_migrated_by_the_next_shipper(
    tmp_path: Path, db: Database
) -> None:
    ws = capture(tmp_path / "ws", run="first")
    _ship(ws, db)
    _to_version_1(db)
    assert _indexes(db) == set()
    # Readers read it (the same answers, scanning) and never migrate it.
    assert _cli(db.url, "compare", "first", "first")["left"]["ref"] == "run:proj.first"
    assert _version(db) == 1 and _indexes(db) == set()
    before = store_lines(db, ws)
    capture(ws, run="second")
    _ship(ws, db)
    assert _version(db) == SCHEMA_VERSION and _indexes(db) == INDEXES
    after = store_lines(db, ws)
    for file, lines in before.items():
        assert after[file][: len(lines)] == lines  # kept as they were, nothing twice
    assert {r["name"] for r in _cli(db.url, "runs")["runs"]} == {"first", "second"}


def test_concurrent_shippers_migrate_a_version_1_store_once(tmp_path: Path, db: Database) -> None:
    _ship(capture(tmp_path / "ws"), db)
    _to_version_1(db)
    assert ensure_schema_at_once(db, 4) == [SCHEMA_VERSION] * 4
    assert _version(db) == SCHEMA_VERSION and _indexes(db) == INDEXES
