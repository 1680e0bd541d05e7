"""Readers over the store: the same lines give the same answers from a folder and from the
store (``Workspace(url)`` and ``contexta-async --workspace URL``), shards merge, faults are one
line naming host:port/db and never the password."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Iterable
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import msgspec
import psycopg
import pytest
from _cluster import Cluster
from contexta_async_postgres import (
    PostgresSource,
    SchemaVersionError,
    StoreAuthenticationError,
    StoreConnectionError,
)
from pgtest import PASSWORD, Database, capture, capture_open, copy_workspace, ship_cli

from contexta_async import Contexta
from contexta_async._cli import run_cli
from contexta_async.readers import EmptyWorkspaceError, Workspace
from contexta_async.readers._source import RecordSource


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The async tests run on both of anyio's backends (the readers promise both)."""
    return str(request.param)


FIXTURES = Path(__file__).parents[3] / "tests" / "fixtures"
FAMILIES = ("context.jsonl", "record.jsonl", "artifact.jsonl", "degradation.jsonl")


def _capture_runs(ws: Path, tmp: Path) -> Path:
    """Two runs of one project with stages, a batch, samples, run/stage/batch metrics, a
    metric captured twice (the latest wins), events, tags and artifacts; and an empty run."""
    model = tmp / "model.bin"
    model.write_bytes(b"weights")
    ctx = Contexta(workspace=ws, config={"project_name": "llm"})
    for n, name in enumerate(("baseline", "candidate")):
        with ctx.run(name, dataset_ref="dataset:qa", tags={"model": name, "n": str(n)}) as run:
            run.metric("cost.usd", 1.5 + n)
            with run.stage("prepare") as prep:
                prep.metric("prompts", 12.0)
            with run.stage("evaluate") as stage:
                for i in range(12):
                    with stage.sample(f"case-{i}") as sample:
                        sample.metric("correct", float((i + n) % 3 != 0))
                        sample.metric("latency.ms", 100.0 + 7 * i - 20 * n)
                        if i % 4 == 0:  # captured again: the later value is the one
                            sample.metric("correct", float(n))
                        sample.event("answer", message=f"case {i}", attributes={"i": i})
                with stage.batch("hard") as batch:
                    batch.metric("batch.size", 3.0)
                    for i in range(3):
                        with batch.sample(f"hard-{i}") as sample:
                            sample.metric("correct", float(i < 1 + n))
                stage.metric("pass.rate", 0.5 + 0.1 * n, unit="ratio")
            run.register_artifact("model", model, attributes={"run": name})
    with ctx.run("nothing-captured"):
        pass
    ctx.close()
    return ws


def _shard(ws: Path, samples: Iterable[int], offset: float) -> Path:
    ctx = Contexta(workspace=ws, config={"project_name": "llm"})
    with ctx.run("sharded", dataset_ref="dataset:qa") as run, run.stage("evaluate") as stage:
        for i in samples:
            with stage.sample(f"case-{i}") as sample:
                sample.metric("correct", float(i % 2))
                sample.metric("score", i + offset)
        stage.metric("pass.rate", offset)  # in both shards: the later shard's is the one
    ctx.close()
    return ws


def _union(target: Path, *workspaces: Path) -> Path:
    """A folder holding the workspaces' lines, one workspace after the other (no index:
    concatenated indexes would not describe the concatenated file)."""
    capture_dir = target / "cache" / "capture"
    capture_dir.mkdir(parents=True)
    for family in FAMILIES:
        with open(capture_dir / family, "wb") as out:
            for ws in workspaces:
                path = ws / "cache" / "capture" / family
                if path.exists():
                    out.write(path.read_bytes())
    return target


def _ship(ws: Path, url: str) -> None:
    done = ship_cli(ws, url)
    assert done.returncode == 0, done.stderr


def _cli(workspace: str, *args: str) -> Any:
    out, err = io.StringIO(), io.StringIO()
    code = run_cli(["--workspace", workspace, *args, "--json"], out=out, err=err)
    assert code == 0, err.getvalue()
    return json.loads(out.getvalue())


async def _rows(ws: Workspace, run: str) -> list[Any]:
    return [msgspec.to_builtins(row) async for row in ws.records(run)]


@pytest.fixture(scope="module")
def stores(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One store holding several workspaces (two of them shards of one run), and the folder
    holding the same lines; a second store holding the Contexta 1.0.0 fixture."""
    tmp = tmp_path_factory.mktemp("read")
    with cluster.admin() as conn:
        conn.execute("CREATE DATABASE readers OWNER shipper")
        conn.execute("CREATE DATABASE readers10 OWNER shipper")
    url = cluster.url("readers", password=PASSWORD)
    main = _capture_runs(tmp / "main", tmp)
    failed = capture(tmp / "failed", project="llm", run="broken", samples=range(4), fail=True)
    still_open = capture_open(tmp / "open", project="llm", run="in-flight", samples=range(5))
    first = _shard(tmp / "shard-1", range(0, 20, 2), 0.25)
    # case-0 in both shards (it should not be): the later shard's values are the latest.
    second = _shard(tmp / "shard-2", [*range(1, 20, 2), 0], 0.75)
    workspaces = (main, failed, still_open, first, second)
    for ws in workspaces:
        _ship(ws, url)
    old = shutil.copytree(FIXTURES / "contexta10", tmp / "contexta10")
    url10 = cluster.url("readers10", password=PASSWORD)
    _ship(old, url10)
    return {
        "url": url,
        "folder": _union(tmp / "union", *workspaces),
        "shards": (first, second),
        "url10": url10,
        "folder10": FIXTURES / "contexta10",
    }


SHARDED = "run:llm.sharded"


def _merged(shards: tuple[Path, Path]) -> dict[str, Any]:
    """What the merge rule says of the sharded run, from each shard read alone."""
    runs = [_cli(str(ws), "runs")["runs"][0] for ws in shards]
    return {
        "started_at": min(r["started_at"] for r in runs),
        "ended_at": max(r["ended_at"] for r in runs),
        "status": "completed",
    }


def _normalised(doc: Any, merged: dict[str, Any]) -> Any:
    """The folder's answer with the sharded run's merged fields wherever its summary appears
    (the folder holding both shards' lines says what the later shard's last Run line says;
    the store merges the shards): the only fields normalised."""
    if isinstance(doc, dict):
        if doc.get("ref") == SHARDED and "started_at" in doc:
            doc.update(merged)
        for value in doc.values():
            _normalised(value, merged)
    elif isinstance(doc, list):
        for value in doc:
            _normalised(value, merged)
    return doc


def test_the_store_gives_the_folders_answers_for_the_same_lines(stores: dict[str, Any]) -> None:
    url, folder = stores["url"], str(stores["folder"])
    merged = _merged(stores["shards"])
    store_runs = _cli(url, "runs")
    assert _normalised(_cli(folder, "runs"), merged) == store_runs
    by_ref = {r["ref"]: r for r in store_runs["runs"]}
    assert by_ref[SHARDED]["started_at"] == merged["started_at"]
    assert {r: by_ref[r]["status"] for r in ("run:llm.broken", "run:llm.in-flight")} == {
        "run:llm.broken": "failed",
        "run:llm.in-flight": "open",
    }
    assert by_ref["run:llm.nothing-captured"]["counts"]["metrics"] == 0
    for args in [
        ("compare", "baseline", "candidate"),
        ("compare", "baseline", "candidate", "--samples"),
        ("compare", "baseline", "candidate", "sharded"),
        ("compare", "broken", "in-flight"),
        ("compare", "sharded", "baseline"),
        ("compare", "nothing-captured", "baseline"),
        ("best", "baseline", "candidate", "sharded", "--metric", "correct", "--stage", "evaluate"),
        ("show", "candidate", "--records", "--limit", "1000"),
        ("show", "candidate"),
        ("show", "sharded"),
        ("show", "broken"),
    ]:
        expected = _normalised(_cli(folder, *args), merged)
        assert _cli(url, *args) == expected, args


@pytest.mark.anyio
async def test_records_stream_the_same_rows_from_the_folder_and_the_store(
    stores: dict[str, Any],
) -> None:
    folder, store = Workspace(stores["folder"]), Workspace(stores["url"])
    for run in ("baseline", "candidate", "sharded", "broken", "in-flight", "nothing-captured"):
        expected = await _rows(folder, run)
        assert await _rows(store, run) == expected, run
    shard_rows = await _rows(store, "sharded")
    assert len({r["sample"] for r in shard_rows if r["sample"]}) == 20  # the union
    table = await store.compare_many(["sharded"])
    found = {row.key: (row.values, row.counts) for row in table.rows}
    # The later shard's values are the latest: case-0 scores 0 + 0.75, not 0 + 0.25, and
    # the stage's pass.rate (captured by both shards) is the later shard's 0.75.
    odd, even = range(1, 20, 2), range(2, 20, 2)
    score = (sum(i + 0.75 for i in odd) + 0.75 + sum(i + 0.25 for i in even)) / 20
    assert found["score"] == ([pytest.approx(score)], [20])
    assert found["pass.rate"] == ([0.75], [1])
    filtered = [
        msgspec.to_builtins(r)
        async for r in store.records("candidate", kind="metric", key="correct", sample="case-4")
    ]
    assert [r["value"] for r in filtered] == [1.0, 1.0]  # captured twice, in capture order


def test_a_contexta_1_0_workspace_reads_the_same_from_the_store(stores: dict[str, Any]) -> None:
    url, folder = stores["url10"], str(stores["folder10"])
    assert _cli(url, "runs") == _cli(folder, "runs")
    for args in [
        ("compare", "helpful-only", "grounded"),
        ("compare", "linear-svm", "rbf-svm"),
        ("show", "grounded"),
    ]:
        assert _cli(url, *args) == _cli(folder, *args), args
    for run in ("grounded", "linear-svm"):
        expected = anyio.run(_rows, Workspace(folder), run)
        assert anyio.run(_rows, Workspace(url), run, backend="trio") == expected


@pytest.mark.anyio
async def test_the_api_opens_a_store_by_url_and_never_shows_its_password(
    stores: dict[str, Any],
) -> None:
    url = stores["url"]
    ws = Workspace(url)
    source: RecordSource = ws.source
    assert isinstance(source, PostgresSource)
    for text in (repr(ws), str(ws.path), source.describe(), repr(source)):
        assert PASSWORD not in text and "127.0.0.1" in text
    result = await ws.compare("baseline", "candidate")
    folder = await Workspace(stores["folder"]).compare("baseline", "candidate")
    assert msgspec.to_builtins(result) == msgspec.to_builtins(folder)
    got = await Workspace(url.replace("postgresql", "postgres", 1)).list_runs()
    assert [r.ref for r in got] == [r.ref for r in await ws.list_runs()]


# ---- faults -----------------------------------------------------------------------------


def _fails(url: str, *args: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    assert run_cli(["--workspace", url, *args], out=out, err=err) == 1
    assert out.getvalue() == ""
    return err.getvalue()


def test_a_wrong_password_is_one_line_naming_the_store_never_the_password(
    db: Database,
) -> None:
    wrong = db.url.replace(PASSWORD, "not-the-Pa55word")
    err = _fails(wrong, "runs")
    assert err.count("\n") == 1 and "PostgreSQL refused the credentials" in err
    assert f"127.0.0.1:{db.cluster.port}/{db.name}" in err
    assert "not-the-Pa55word" not in err and PASSWORD not in err
    with pytest.raises(StoreAuthenticationError):
        anyio.run(Workspace(wrong).list_runs)


def test_an_unreachable_store_is_one_line_naming_host_and_port(db: Database) -> None:
    port = db.cluster.port + 1 if db.cluster.port < 65535 else 1
    url = f"postgresql://shipper:{PASSWORD}@127.0.0.1:{port}/nowhere"
    err = _fails(url, "compare", "a", "b")
    assert err.count("\n") == 1 and f"cannot reach PostgreSQL at 127.0.0.1:{port}/nowhere" in err
    assert PASSWORD not in err
    with pytest.raises(StoreConnectionError):
        anyio.run(Workspace(url).list_runs)


def test_an_empty_store_reads_like_an_empty_workspace(db: Database, tmp_path: Path) -> None:
    (tmp_path / "empty" / "cache" / "capture").mkdir(parents=True)
    for where in (db.url, str(tmp_path / "empty")):
        assert "holds no runs" in _fails(where, "runs")
        with pytest.raises(EmptyWorkspaceError):
            anyio.run(Workspace(where).compare, "a", "b")
        assert anyio.run(Workspace(where).list_runs) == []
        with pytest.raises(EmptyWorkspaceError):
            anyio.run(_rows, Workspace(where), "a")


def test_a_store_with_a_newer_schema_is_refused_naming_both_versions(
    db: Database, tmp_path: Path
) -> None:
    _ship(capture(tmp_path / "ws"), db.url)
    db.query("UPDATE contexta.schema_version SET version = 99 RETURNING version")
    with pytest.raises(SchemaVersionError) as caught:
        anyio.run(Workspace(db.url).list_runs)
    assert caught.value.store_version == 99 and "nothing was read" in str(caught.value)
    assert "schema version 99" in _fails(db.url, "runs")


def test_view_on_a_store_is_refused_in_one_line(db: Database) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert run_cli(["--workspace", db.url, "view"], out=out, err=err) == 1
    text = err.getvalue()
    assert text.count("\n") == 1 and "view" in text and PASSWORD not in text


def test_reading_never_writes_to_the_store(db: Database) -> None:
    with pytest.raises(psycopg.errors.UndefinedTable):
        db.query("SELECT 1 FROM contexta.runs")
    anyio.run(Workspace(db.url).list_runs)  # an empty store stays empty: no schema created
    with pytest.raises(psycopg.errors.UndefinedTable):
        db.query("SELECT 1 FROM contexta.runs")


def test_export_and_report_read_the_store_like_the_folder(
    stores: dict[str, Any], tmp_path: Path
) -> None:
    for name, where in (("folder", str(stores["folder"])), ("store", stores["url"])):
        out, err = io.StringIO(), io.StringIO()
        for args in (
            ["export", "--output", str(tmp_path / f"{name}.csv")],
            ["export", "--events", "--output", str(tmp_path / f"{name}-events.jsonl")],
            ["report", "baseline", "candidate", "--output", str(tmp_path / f"{name}.html")],
        ):
            assert run_cli(["--workspace", where, *args], out=out, err=err) == 0, err.getvalue()
    for file in ("{}.csv", "{}-events.jsonl"):
        folder = (tmp_path / file.format("folder")).read_bytes()
        assert (tmp_path / file.format("store")).read_bytes() == folder
        assert len(folder.splitlines()) > 20
    page = (tmp_path / "store.html").read_text()
    assert "run:llm.candidate" in page and PASSWORD not in page


def test_records_stream_from_the_store_in_bounded_memory(
    db: Database, big_template: Path, tmp_path: Path
) -> None:
    import tracemalloc

    ws = copy_workspace(big_template, tmp_path / "ws")
    _ship(ws, db.url)
    store = Workspace(db.url)

    async def stream() -> tuple[int, int, list[tuple[object, ...]]]:
        rows = 0
        seen: list[tuple[object, ...]] = []
        tracemalloc.start()
        try:
            async for _ in store.records("eval", kind="event"):
                rows += 1
                if rows == 1:  # what the reader's session runs: fetches from a cursor
                    seen = db.query(
                        "SELECT query FROM pg_stat_activity "
                        "WHERE application_name = 'contexta-async-read'"
                    )
            return rows, tracemalloc.get_traced_memory()[1], seen
        finally:
            tracemalloc.stop()

    rows, peak, seen = anyio.run(stream)
    assert rows == 20_000
    # The server keeps the result (a server-side cursor): libpq's buffers, which tracemalloc
    # does not see, hold one fetch at a time too.
    assert len(seen) == 1 and str(seen[0][0]).startswith("FETCH FORWARD 2000"), seen
    assert peak < 8 << 20, peak  # a fetch of rows at a time, not the run's


@pytest.mark.anyio
async def test_a_stream_left_early_closes_its_cursor_and_connection(
    stores: dict[str, Any], cluster: Cluster
) -> None:
    def readers() -> list[tuple[object, ...]]:
        with cluster.admin() as conn:
            return conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'contexta-async-read'"
            ).fetchall()

    async with aclosing(Workspace(stores["url"]).records("baseline")) as rows:
        async for _ in rows:
            assert len(readers()) == 1
            break
    assert readers() == []


def test_clusters_epochs_and_duplicates_read_the_same_from_the_store(
    db: Database, tmp_path: Path
) -> None:
    """Clusters and epochs (issue 14) come from the samples' opening lines in the store as in
    the folder: the same clustered SE, attempts, alignment report and export columns."""
    ws = tmp_path / "ws"
    ctx = Contexta(workspace=ws, config={"project_name": "qa"})
    for n, name in enumerate(("left", "right")):
        with ctx.run(name) as run, run.stage("evaluate") as stage:
            for item in range(12):
                for epoch in (1, 2):
                    with stage.sample(
                        f"q-{item}", cluster=f"passage-{item // 3}", epoch=epoch
                    ) as sample:
                        sample.metric("score", float((item * epoch + n) % 4))
            with stage.sample("again") as sample:  # opened twice: a duplicate
                sample.metric("score", 1.0)
            with stage.sample("again") as sample:
                sample.metric("score", 2.0 + n)
    ctx.close()
    _ship(ws, db.url)
    folder, url = str(ws), db.url
    expected = _cli(folder, "compare", "left", "right")
    paired = expected["paired"][0]
    assert paired["clusters"] == 5 and paired["attempts_left"] > 1  # the shape is what it says
    assert (
        expected["alignment"]["duplicates_left"] == expected["alignment"]["duplicates_right"] == 1
    )
    # Only the read report differs: the folder takes most records from record.index.
    expected.pop("read_report")
    answer = _cli(url, "compare", "left", "right")
    assert answer.pop("read_report")["records_from_index"] == 0
    assert answer == expected
    for name, where in (("folder", folder), ("store", url)):
        out, err = io.StringIO(), io.StringIO()
        argv = ["--workspace", where, "export", "--output", str(tmp_path / f"{name}.csv")]
        assert run_cli(argv, out=out, err=err) == 0, err.getvalue()
    exported = (tmp_path / "folder.csv").read_text()
    assert "passage-3" in exported
    assert (tmp_path / "store.csv").read_text() == exported


def test_runs_captured_at_the_same_time_export_from_the_store_as_from_the_folder(
    db: Database, tmp_path: Path
) -> None:
    """The store streams every run's rows in one pass, in capture order, as the folder does:
    two runs captured at the same time come interleaved, from both."""
    ws = tmp_path / "ws"
    ctx = Contexta(workspace=ws, config={"project_name": "both"})
    with ctx.run("a") as left, ctx.run("b") as right:
        for n in range(5):
            left.metric("score", float(n))
            right.metric("score", float(10 + n))
    ctx.close()
    _ship(ws, db.url)
    for name, where in (("folder", str(ws)), ("store", db.url)):
        out, err = io.StringIO(), io.StringIO()
        argv = ["--workspace", where, "export", "a", "b", "--output", str(tmp_path / f"{name}.csv")]
        assert run_cli(argv, out=out, err=err) == 0, err.getvalue()
    with open(tmp_path / "folder.csv", newline="") as f:
        values = [row["value"] for row in csv.DictReader(f)]
    assert [float(v) for v in values] == [v for n in range(5) for v in (float(n), 10.0 + n)]
    assert (tmp_path / "store.csv").read_bytes() == (tmp_path / "folder.csv").read_bytes()
