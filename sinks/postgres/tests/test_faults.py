"""Faults: a shipper killed mid-batch, the server crashing while shipping, two shippers at
once, connection refused, wrong credentials, libpq's password file."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from _cluster import Cluster
from pgtest import (
    PASSWORD,
    Database,
    copy_workspace,
    ship_cli,
    start_ship,
    store_lines,
    workspace_lines,
)

WAIT = 90.0  # generous bound for conditions polled below; never reached when things work


def _shipped_bytes(db: Database) -> int:
    if db.query("SELECT to_regclass('contexta.positions') IS NULL")[0][0]:
        return 0
    return int(str(db.query("SELECT coalesce(sum(byte_offset), 0) FROM contexta.positions")[0][0]))


def _in_transaction(db: Database) -> bool:
    rows = db.query(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'contexta-async-ship' "
        "AND datname = %s AND xact_start IS NOT NULL",
        (db.name,),
    )
    return int(str(rows[0][0])) > 0


def _stop_mid_ship(proc: subprocess.Popen[str], db: Database, *, in_transaction: bool) -> None:
    """Leave ``proc`` SIGSTOPped after at least one batch committed and before the last one
    (inside a transaction, if asked)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the shipper finished before the fault: {proc.stderr}"
        os.kill(proc.pid, signal.SIGSTOP)
        if _shipped_bytes(db) > 0 and (not in_transaction or _in_transaction(db)):
            return
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.005)
    raise AssertionError("the shipper never reached the middle of a batch")


def _assert_prefix(db: Database, ws: Path) -> int:
    """Every file in the store is a prefix of the workspace's lines; return how many."""
    stored, lines = store_lines(db, ws), workspace_lines(ws)
    for file, got in stored.items():
        assert got == lines[file][: len(got)]
    return sum(len(v) for v in stored.values())


def test_sigkill_mid_batch_then_a_rerun_stores_every_line_exactly_once(
    tmp_path: Path, db: Database, big_template: Path
) -> None:
    ws = copy_workspace(big_template, tmp_path / "ws")
    total = sum(len(v) for v in workspace_lines(ws).values())
    proc = start_ship(ws, db.url, "--batch-lines", "2000")
    _stop_mid_ship(proc, db, in_transaction=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=WAIT)
    assert proc.returncode == -signal.SIGKILL
    assert 0 < _assert_prefix(db, ws) < total  # the batch in flight left nothing

    done = ship_cli(ws, db.url, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["lines_already_stored"] == 0
    assert store_lines(db, ws) == workspace_lines(ws)


def test_server_crash_while_shipping_is_retried_and_the_ship_completes(
    tmp_path: Path, db: Database, cluster: Cluster, big_template: Path
) -> None:
    ws = copy_workspace(big_template, tmp_path / "ws")
    proc = start_ship(ws, db.url, "--batch-lines", "2000", "--retries", "30")
    try:
        _stop_mid_ship(proc, db, in_transaction=False)
        cluster.stop("immediate")  # no shutdown checkpoint, connections cut: a crash
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        # The shipper now finds the server gone and retries with backoff meanwhile.
        cluster.start()
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err
    assert "contexta_async.ship_retry" in err
    assert "reconnected" in out
    assert PASSWORD not in out + err
    assert store_lines(db, ws) == workspace_lines(ws)


def test_server_down_for_longer_than_the_retries_exits_non_zero_and_a_rerun_completes(
    tmp_path: Path, db: Database, cluster: Cluster, big_template: Path
) -> None:
    ws = copy_workspace(big_template, tmp_path / "ws")
    proc = start_ship(ws, db.url, "--batch-lines", "2000", "--retries", "2")
    try:
        _stop_mid_ship(proc, db, in_transaction=False)
        cluster.stop("immediate")
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        cluster.start()
    assert proc.returncode == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith(
        f"contexta-async: error: cannot reach PostgreSQL at 127.0.0.1:{cluster.port}/"
    )
    assert "after 3 attempts" in last
    assert PASSWORD not in out + err
    _assert_prefix(db, ws)
    done = ship_cli(ws, db.url)
    assert done.returncode == 0, done.stderr
    assert store_lines(db, ws) == workspace_lines(ws)


def test_two_shippers_of_one_workspace_at_once_ship_each_line_once(
    tmp_path: Path, db: Database, big_template: Path
) -> None:
    ws = copy_workspace(big_template, tmp_path / "ws")
    total = sum(len(v) for v in workspace_lines(ws).values())
    procs = [start_ship(ws, db.url, "--batch-lines", "3000", "--json") for _ in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    # Each line was shipped by exactly one of them: the position lock, not the conflict guard.
    assert sum(r["lines_shipped"] for r in results) == total
    assert [r["lines_already_stored"] for r in results] == [0, 0]
    assert store_lines(db, ws) == workspace_lines(ws)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connection_refused_is_one_line_naming_the_host_not_the_password(
    tmp_path: Path, big_template: Path
) -> None:
    ws = copy_workspace(big_template, tmp_path / "ws")
    port = _closed_port()
    url = f"postgresql://shipper:{PASSWORD}@127.0.0.1:{port}/db"
    done = ship_cli(ws, url)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        f"contexta-async: error: cannot reach PostgreSQL at 127.0.0.1:{port}/db: "
        "Connection refused\n"
    )
    # --follow retries the first connection too, then gives up the same way; its retry logs
    # never show the password either.
    follow = ship_cli(ws, url, "--follow", "--retries", "1")
    assert follow.returncode == 1
    assert "contexta_async.ship_retry" in follow.stderr
    assert f"127.0.0.1:{port}/db after 2 attempts: Connection refused" in follow.stderr
    assert PASSWORD not in follow.stderr + follow.stdout


def test_wrong_password_names_the_host_never_the_password_and_is_not_retried(
    tmp_path: Path, db: Database, cluster: Cluster, big_template: Path
) -> None:
    ws = copy_workspace(big_template, tmp_path / "ws")
    wrong = "Wr0ng-p@ss:word/x"
    url = cluster.url(
        db.name, password=wrong.replace("@", "%40").replace(":", "%3A").replace("/", "%2F")
    )
    done = ship_cli(ws, url, "--follow", "--retries", "5")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"contexta-async: error: PostgreSQL refused the credentials at 127.0.0.1:{cluster.port}/"
        f'{db.name}: password authentication failed for user "shipper"'
    ]
    assert "Wr0ng" not in done.stderr and "%40" not in done.stderr


def test_libpq_password_file_and_environment_supply_what_the_url_leaves_out(
    tmp_path: Path, db: Database, cluster: Cluster, big_template: Path
) -> None:
    ws = copy_workspace(big_template, tmp_path / "ws")
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{cluster.port}:{db.name}:shipper:{PASSWORD}\n")
    passfile.chmod(0o600)
    url = f"postgresql:///{db.name}"  # host, port and user from PG* variables
    env = {"PGHOST": "127.0.0.1", "PGPORT": str(cluster.port), "PGUSER": "shipper"}

    missing = ship_cli(ws, url, env={**env, "PGPASSFILE": str(tmp_path / "none")})
    assert missing.returncode == 1
    assert f"at 127.0.0.1:{cluster.port}/{db.name}: fe_sendauth: no password supplied" in (
        missing.stderr
    )

    done = ship_cli(ws, url, env={**env, "PGPASSFILE": str(passfile)})
    assert done.returncode == 0, done.stderr
    assert store_lines(db, ws) == workspace_lines(ws)


def test_a_user_who_may_not_create_the_schema_gets_one_line_not_a_traceback(
    tmp_path: Path, cluster: Cluster, big_template: Path
) -> None:
    ws = copy_workspace(big_template, tmp_path / "ws")
    with cluster.admin() as conn:
        conn.execute("DROP ROLE IF EXISTS reader")
        conn.execute(f"CREATE ROLE reader LOGIN PASSWORD '{PASSWORD}'")
        conn.execute("DROP DATABASE IF EXISTS notmine")
        conn.execute("CREATE DATABASE notmine")  # owned by postgres: reader may not CREATE
    done = ship_cli(ws, cluster.url("notmine", user="reader", password=PASSWORD))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"contexta-async: error: the store at 127.0.0.1:{cluster.port}/notmine refused to set "
        "up the shipper's session: permission denied for database notmine"
    ]
