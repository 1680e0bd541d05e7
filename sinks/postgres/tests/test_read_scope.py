"""A read from the store touches the runs it is about, not the others the store holds: the
same answer with or without a large unrelated run beside them, the rows the server reads
bounded by the runs read (``pg_stat_user_tables``), and a read that never decodes the
unrelated run's lines (made undecodable in the store: an unfiltered read fails on them)."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from _cluster import Cluster
from contexta_async_postgres import PostgresSource
from pgtest import PASSWORD, ship_cli

from contexta_async import Contexta
from contexta_async._cli import run_cli
from contexta_async.readers import Workspace
from contexta_async.readers._local import LocalSource
from contexta_async.readers._source import RowFilter

BIG = 3000  # samples of the unrelated run: far more lines than the runs read hold
ALL_KINDS = RowFilter(frozenset({"metric", "event", "span", "artifact"}))


def _capture_small(ws: Path, tmp: Path) -> Path:
    """Two runs of 20 samples with clusters and epochs, events and an artifact each."""
    model = tmp / "model.bin"
    model.write_bytes(b"weights")
    ctx = Contexta(workspace=ws, config={"project_name": "p"})
    for n, name in enumerate(("a", "b")):
        with ctx.run(name) as run, run.stage("evaluate") as stage:
            for i in range(10):
                for epoch in (1, 2):
                    with stage.sample(f"q-{i}", cluster=f"c{i // 3}", epoch=epoch) as sample:
                        sample.metric("x", float((i + n + epoch) % 2))
                        sample.event("answer", message=f"q {i}")
            run.register_artifact("model", model)
    ctx.close()
    return ws


def _capture_big(ws: Path, tmp: Path) -> Path:
    """One unrelated run: BIG clustered samples, an artifact per 10 samples."""
    blob = tmp / "blob.bin"
    blob.write_bytes(b"x")
    ctx = Contexta(workspace=ws, config={"project_name": "p"})
    with ctx.run("big") as run, run.stage("evaluate") as stage:
        for i in range(BIG):
            with stage.sample(f"q-{i}", cluster=f"c{i // 10}") as sample:
                sample.metric("x", 1.0)
            if i % 10 == 0:
                run.register_artifact("blob", blob)
    ctx.close()
    return ws


def _ship(ws: Path, url: str) -> None:
    done = ship_cli(ws, url)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def stores(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``alone``: the two small runs; ``beside``: the same and the unrelated run;
    ``poisoned``: as ``beside``, with every line of the unrelated run made undecodable."""
    tmp = tmp_path_factory.mktemp("scope")
    small = _capture_small(tmp / "small", tmp)
    big = _capture_big(tmp / "big", tmp)
    urls = {}
    for name in ("alone", "beside", "poisoned"):
        with cluster.admin() as conn:
            conn.execute(f"CREATE DATABASE scope_{name} OWNER shipper")
        urls[name] = cluster.url(f"scope_{name}", password=PASSWORD)
        _ship(small, urls[name])
        if name != "alone":
            _ship(big, urls[name])
    with cluster.admin("scope_poisoned") as conn:
        # Valid UTF-8 that is no longer JSON: casting it to jsonb, or decoding it, fails.
        for table in ("context_lines", "records", "artifacts"):
            n = conn.execute(
                f"UPDATE contexta.{table} SET raw = left(raw, -1) WHERE run_ref = 'run:p.big'"
            ).rowcount
            assert n > 0
    for name in ("beside", "poisoned"):
        with cluster.admin(f"scope_{name}") as conn:
            conn.execute("ANALYZE")  # as autovacuum would, later: plans from real statistics
    return {"folder": small, **urls}


def _cli(workspace: str, *args: str) -> Any:
    out, err = io.StringIO(), io.StringIO()
    code = run_cli(["--workspace", workspace, *args, "--json"], out=out, err=err)
    assert code == 0, err.getvalue()
    doc = json.loads(out.getvalue())
    if isinstance(doc, dict):
        doc.pop("read_report", None)  # the folder's reports index use, the store's cannot
    return doc


async def _blocks(source: Any, refs: list[str]) -> list[Any]:
    return [
        msgspec.to_builtins(row)
        async for block in source.record_blocks(refs, ALL_KINDS)
        for row in block
    ]


COMMANDS = [
    ("compare", "a", "b"),
    ("compare", "a", "b", "--samples"),
    ("best", "a", "b", "--metric", "x"),
    ("show", "a"),
    ("show", "b", "--records", "--limit", "1000"),
]


@pytest.mark.parametrize("store", ["beside", "poisoned"])
def test_a_run_beside_an_unrelated_large_run_reads_as_it_does_alone(
    stores: dict[str, Any], store: str
) -> None:
    folder, url = str(stores["folder"]), stores[store]
    for args in COMMANDS:
        expected = _cli(folder, *args)
        assert _cli(stores["alone"], *args) == expected, args
        assert _cli(url, *args) == expected, args
    # Listing still lists every run, the unrelated one too.
    listed = {r["ref"]: r for r in _cli(url, "runs")["runs"]}
    assert set(listed) == {"run:p.a", "run:p.b", "run:p.big"}
    assert listed["run:p.big"]["counts"]["metrics"] == BIG
    assert listed["run:p.a"] == {r["ref"]: r for r in _cli(folder, "runs")["runs"]}["run:p.a"]


@pytest.mark.anyio
@pytest.mark.parametrize("store", ["beside", "poisoned"])
async def test_records_of_several_runs_hold_only_their_samples(
    stores: dict[str, Any], store: str
) -> None:
    """The multi-run stream (export's) keeps the clusters and epochs of the streamed runs'
    samples only: the unrelated run's sample lines are never read (poisoned: they cannot)."""
    refs = ["run:p.a", "run:p.b"]
    expected = await _blocks(LocalSource(stores["folder"] / "cache" / "capture"), refs)
    assert {r["cluster"] for r in expected} >= {"c0", "c3"}  # the rows carry clusters
    assert await _blocks(PostgresSource(stores[store]), refs) == expected
    one = [msgspec.to_builtins(r) async for r in Workspace(stores[store]).records("a")]
    assert one == [r for r in expected if r["run_ref"] == "run:p.a"]


def _wait_for_readers_to_leave(cluster: Cluster, database: str) -> None:
    """Until no other session is connected to ``database``: a backend flushes its table
    statistics before it leaves ``pg_stat_activity`` (PostgreSQL 15 and later)."""
    deadline = time.monotonic() + 60
    while True:
        with cluster.admin(database) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
            ).fetchone()
        if row is not None and row[0] == 0:
            return
        assert time.monotonic() < deadline, "the readers' sessions never ended"
        time.sleep(0.05)


def _rows_read(cluster: Cluster, database: str) -> dict[str, int]:
    """Rows each line table has had read, by sequential and by index scans."""
    _wait_for_readers_to_leave(cluster, database)
    with cluster.admin(database) as conn:
        found = conn.execute(
            "SELECT relname, coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) "
            "FROM pg_stat_user_tables WHERE schemaname = 'contexta' "
            "AND relname IN ('records', 'context_lines', 'artifacts')"
        ).fetchall()
    return {str(name): int(n) for name, n in found}


@pytest.mark.anyio
async def test_a_read_of_some_runs_reads_only_their_rows(
    stores: dict[str, Any], cluster: Cluster
) -> None:
    """The server reads the rows of the runs asked for (and every run's metadata), not the
    unrelated run's thousands: what ``pg_stat_user_tables`` counts, before and after."""
    url = stores["beside"]
    database = "scope_beside"
    ws = Workspace(url)
    with cluster.admin(database) as conn:
        sizes = dict(
            conn.execute(
                "SELECT 'records', count(*) FROM contexta.records UNION ALL "
                "SELECT 'context_lines', count(*) FROM contexta.context_lines UNION ALL "
                "SELECT 'artifacts', count(*) FROM contexta.artifacts"
            ).fetchall()
        )
        small = dict(
            conn.execute(
                "SELECT 'records', count(*) FROM contexta.records WHERE run_ref <> 'run:p.big' "
                "UNION ALL SELECT 'context_lines', count(*) FROM contexta.context_lines "
                "WHERE run_ref <> 'run:p.big' UNION ALL SELECT 'artifacts', count(*) "
                "FROM contexta.artifacts WHERE run_ref <> 'run:p.big'"
            ).fetchall()
        )
    assert sizes["records"] >= BIG and sizes["context_lines"] >= 2 * BIG
    assert sizes["artifacts"] >= BIG // 10
    reads = {
        "compare": lambda: ws.compare("a", "b"),
        "compare_many": lambda: ws.compare_many(["a", "b"]),
        "get_run": lambda: ws.get_run("a"),
        "records": lambda: _blocks(PostgresSource(url), ["run:p.a", "run:p.b"]),
    }
    for name, read in reads.items():
        before = _rows_read(cluster, database)
        await read()
        after = _rows_read(cluster, database)
        for table, size in sizes.items():
            # Each of a few queries may read the runs' rows once; none reads the big run's.
            read_rows = after[table] - before[table]
            assert read_rows <= 4 * small[table] + 50, (name, table, read_rows, size)
