"""Export: metric records and events as Parquet, CSV, JSON Lines, Arrow, pandas and polars."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pandas
import polars
import pyarrow
import pyarrow.parquet as pq
import pytest

from contexta_async import Contexta, ValidationError
from contexta_async.export import (
    EVENT_COLUMNS,
    METRIC_COLUMNS,
    ExtraNotInstalledError,
    export_workspace,
    to_arrow,
)
from contexta_async.readers import EmptyWorkspaceError, RecordRow, Workspace

from .capture_files import count_opens
from .test_cli import cli
from .test_readers_helpers import capture_llm_workspace, copy_fixture_10

METRIC_NAMES = [name for name, _ in METRIC_COLUMNS]
EVENT_NAMES = [name for name, _ in EVENT_COLUMNS]


@pytest.fixture
def llm_ws(tmp_path: Path) -> Path:
    return capture_llm_workspace(tmp_path / "ws")


@pytest.fixture
def events_ws(tmp_path: Path) -> Path:
    """One run with events that carry attributes, one in a batch."""
    workspace = tmp_path / "events-ws"
    ctx = Contexta(workspace=workspace, config={"project_name": "ev"})
    with ctx.run("judge") as run:
        with run.stage("evaluate") as stage:
            stage.event("start", message="begin", attributes={"model": "m1", "shots": [1, 2]})
            with stage.batch("b0") as batch:
                with batch.sample("q1") as sample:
                    sample.event("refusal", message="said no", level="warning")
                    sample.metric("score", 3, unit="points")
    ctx.close()
    return workspace


async def _expected(ws: Workspace, kind: str) -> list[RecordRow]:
    rows = []
    for run in await ws.list_runs():
        rows += [row async for row in ws.records(run.ref, kind=kind)]  # type: ignore[arg-type]
    return rows


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


async def test_every_format_holds_one_row_per_metric_record_with_the_documented_columns(
    llm_ws: Path, tmp_path: Path
) -> None:
    ws = Workspace(llm_ws)
    expected = await _expected(ws, "metric")
    assert len(expected) == 29
    want = [
        {
            "run": r.run_ref,
            "stage": r.stage,
            "batch": r.batch,
            "sample": r.sample,
            "cluster": None,
            "epoch": None,
            "key": r.key,
            "value": r.value,
            "unit": r.unit,
            "captured_at": _time(r.recorded_at),
        }
        for r in expected
    ]
    for fmt in ("parquet", "csv", "jsonl"):
        result = await export_workspace(ws, tmp_path / f"out.{fmt}")
        assert (result.format, result.table, result.rows) == (fmt, "metrics", 29)
        assert result.runs == [r.ref for r in await ws.list_runs()]

    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.names == METRIC_NAMES
    assert str(table.schema.field("captured_at").type) == "timestamp[us, tz=UTC]"
    assert table.schema.field("epoch").type == pyarrow.int64()
    assert table.schema.field("value").type == pyarrow.float64()
    assert table.to_pylist() == want

    got_csv = _read_csv(tmp_path / "out.csv")
    assert list(got_csv[0]) == METRIC_NAMES
    assert [
        {
            **row,
            "value": float(row["value"]),
            "captured_at": _time(row["captured_at"]),
            **{k: row[k] or None for k in ("stage", "batch", "sample", "cluster", "epoch", "unit")},
        }
        for row in got_csv
    ] == want

    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    got_jsonl = [json.loads(line) for line in lines]
    assert all(list(row) == METRIC_NAMES for row in got_jsonl)
    assert [{**row, "captured_at": _time(row["captured_at"])} for row in got_jsonl] == want


async def test_parquet_is_written_one_row_group_per_batch(llm_ws: Path, tmp_path: Path) -> None:
    ws = Workspace(llm_ws)
    await export_workspace(ws, tmp_path / "out.parquet", batch_rows=5)
    meta = pq.ParquetFile(tmp_path / "out.parquet").metadata
    assert meta.num_rows == 29
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [5] * 5 + [4]


async def test_events_export_with_their_own_columns_and_attributes(
    events_ws: Path, tmp_path: Path
) -> None:
    ws = Workspace(events_ws)
    for fmt in ("parquet", "csv", "jsonl"):
        result = await ws.export(tmp_path / f"ev.{fmt}", events=True)
        assert (result.table, result.rows) == ("events", 2)
    table = pq.read_table(tmp_path / "ev.parquet")
    assert table.schema.names == EVENT_NAMES
    rows = table.to_pylist()
    assert [(r["key"], r["level"], r["message"], r["batch"], r["sample"]) for r in rows] == [
        ("start", "info", "begin", None, None),
        ("refusal", "warning", "said no", "b0", "q1"),
    ]
    # Parquet and CSV hold the attributes as JSON text, JSON Lines as an object
    assert json.loads(rows[0]["attributes"]) == {"model": "m1", "shots": [1, 2]}
    got_csv = _read_csv(tmp_path / "ev.csv")
    assert json.loads(got_csv[0]["attributes"]) == {"model": "m1", "shots": [1, 2]}
    first = json.loads((tmp_path / "ev.jsonl").read_text().splitlines()[0])
    assert list(first) == EVENT_NAMES
    assert first["attributes"] == {"model": "m1", "shots": [1, 2]}
    # and the metric table of the same workspace holds the one metric, in its batch
    metrics = (await ws.to_arrow()).to_pylist()
    assert [(r["key"], r["value"], r["batch"], r["unit"]) for r in metrics] == [
        ("score", 3.0, "b0", "points")
    ]


async def test_named_runs_only_once_each_their_rows_in_capture_order(
    llm_ws: Path, tmp_path: Path
) -> None:
    ws = Workspace(llm_ws)
    result = await export_workspace(
        ws, tmp_path / "g.jsonl", runs=["grounded", "run:mock-openai-compare.grounded"]
    )
    assert result.runs == ["run:mock-openai-compare.grounded"]
    runs = {json.loads(line)["run"] for line in (tmp_path / "g.jsonl").read_text().splitlines()}
    assert runs == {"run:mock-openai-compare.grounded"}
    assert result.rows == 15
    # The rows come in capture order (one pass over the records), whatever order the runs
    # are named in: helpful-only was captured first.
    table = await ws.to_arrow(["grounded", "helpful-only"])
    assert table.column("run").to_pylist() == (await ws.to_arrow()).column("run").to_pylist()
    assert table.column("run").to_pylist()[0] == "run:mock-openai-compare.helpful-only"
    assert table.column("run").to_pylist()[-1] == "run:mock-openai-compare.grounded"


def _capture_runs(workspace: Path, runs: int) -> Path:
    ctx = Contexta(workspace=workspace, config={"project_name": "many"})
    for r in range(runs):
        with ctx.run(f"r{r}") as run:
            with run.stage("evaluate") as stage:
                for s in range(3):
                    with stage.sample(f"s{s}") as sample:
                        sample.metric("score", r * 10 + s)
    ctx.close()
    return workspace


@pytest.mark.parametrize("named", [False, True])
async def test_exporting_many_runs_reads_record_jsonl_in_one_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, named: bool
) -> None:
    ws = Workspace(_capture_runs(tmp_path / "ws", 6))
    opened = count_opens(monkeypatch, "record.jsonl")
    runs = [f"r{r}" for r in range(6)] if named else None
    result = await export_workspace(ws, tmp_path / "m.jsonl", runs=runs)
    # One read resolves the names (or lists the runs), one pass streams every run's rows.
    assert len(opened) == 2, opened
    values = [json.loads(line)["value"] for line in (tmp_path / "m.jsonl").read_text().split()]
    assert result.rows == 18
    assert values == [float(r * 10 + s) for r in range(6) for s in range(3)]


async def test_to_arrow_pandas_and_polars_hold_what_the_parquet_file_holds(
    llm_ws: Path, tmp_path: Path
) -> None:
    ws = Workspace(llm_ws)
    await ws.export(tmp_path / "m.parquet")
    from_file = pq.read_table(tmp_path / "m.parquet")
    table = await ws.to_arrow()
    assert isinstance(table, pyarrow.Table)
    assert table.equals(from_file)
    frame = await ws.to_pandas()
    assert isinstance(frame, pandas.DataFrame)
    assert list(frame.columns) == METRIC_NAMES
    assert frame["value"].tolist() == table.column("value").to_pylist()
    assert str(frame["epoch"].dtype) == "Int64" and frame["epoch"].isna().all()
    assert str(frame["captured_at"].dtype) == "datetime64[us, UTC]"
    pl_frame = await ws.to_polars(events=True)
    assert isinstance(pl_frame, polars.DataFrame)
    assert pl_frame.columns == EVENT_NAMES
    assert pl_frame.height == 12
    empty = await to_arrow(ws, [], events=True)
    assert empty.num_rows == 0 and empty.schema.names == EVENT_NAMES


async def test_contexta10_workspace_exports_its_metrics(tmp_path: Path) -> None:
    ws = Workspace(copy_fixture_10(tmp_path / "c10"))
    table = await ws.to_arrow()
    expected = await _expected(ws, "metric")
    assert table.num_rows == len(expected) > 0
    assert table.column("captured_at").null_count == 0
    assert table.column("key").to_pylist() == [r.key for r in expected]


async def test_bad_arguments_are_refused_naming_the_field(llm_ws: Path, tmp_path: Path) -> None:
    ws = Workspace(llm_ws)
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"output": tmp_path / "x.parquet", "format": "xml"}, "format", "must be one of"),
        ({"output": tmp_path / "x.txt"}, "format", "suffix"),
        ({"output": tmp_path / "missing" / "x.csv"}, "output", "directory does not exist"),
        ({"output": tmp_path, "format": "csv"}, "output", "is a directory"),
        ({"output": tmp_path / "x.csv", "batch_rows": 0}, "batch_rows", "at least 1"),
        ({"output": tmp_path / "x.csv", "runs": "grounded"}, "runs", "not one string"),
        ({"output": tmp_path / "x.csv", "events": "yes"}, "events", "must be a bool"),
    ]
    for kwargs, field, rule in cases:
        with pytest.raises(ValidationError) as caught:
            await export_workspace(ws, **kwargs)
        assert caught.value.field == field and rule in caught.value.rule, kwargs
    assert _listing(tmp_path) == ["ws"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"runs": [1]}, "runs[0]"),
        ({"runs": ["grounded", None]}, "runs[1]"),
        ({"runs": 5}, "runs"),
        ({"runs": b"grounded"}, "runs"),
        ({"output": None}, "output"),
        ({"output": b"x.csv"}, "output"),
        ({"output": "x\0.csv"}, "output"),
    ],
)
async def test_bad_runs_or_output_are_validation_errors_at_the_call(
    llm_ws: Path, tmp_path: Path, kwargs: dict[str, Any], field: str
) -> None:
    ws = Workspace(llm_ws)
    arguments: dict[str, Any] = {"output": tmp_path / "x.csv", **kwargs}
    with pytest.raises(ValidationError) as caught:
        await export_workspace(ws, **arguments)
    assert caught.value.field == field
    if "runs" in kwargs:
        with pytest.raises(ValidationError) as caught:
            await to_arrow(ws, kwargs["runs"])
        assert caught.value.field == field
    assert _listing(tmp_path) == ["ws"]


async def test_exporting_a_workspace_without_runs_raises_empty_workspace_error(
    tmp_path: Path,
) -> None:
    capture = tmp_path / "empty" / "cache" / "capture"
    capture.mkdir(parents=True)
    (capture / "record.jsonl").touch()
    ws = Workspace(tmp_path / "empty")
    with pytest.raises(EmptyWorkspaceError):
        await export_workspace(ws, tmp_path / "e.csv")
    assert _listing(tmp_path) == ["empty"]
    # naming no run asks for the header alone; to_arrow() answers with an empty table
    assert (await export_workspace(ws, tmp_path / "e.csv", runs=[])).rows == 0
    assert (tmp_path / "e.csv").read_text().startswith("run,stage,")
    assert (await to_arrow(ws)).num_rows == 0

    done = cli("-w", str(tmp_path / "empty"), "export", "-o", str(tmp_path / "cli.csv"))
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith("contexta-async: error: the workspace at ")
    assert done.stderr.endswith(" holds no runs\n") and done.stderr.count("\n") == 1
    assert not (tmp_path / "cli.csv").exists()


async def test_existing_output_is_replaced_only_when_asked(llm_ws: Path, tmp_path: Path) -> None:
    ws = Workspace(llm_ws)
    target = tmp_path / "m.csv"
    target.write_text("keep me\n")
    with pytest.raises(ValidationError) as caught:
        await ws.export(target)
    assert caught.value.field == "output" and "already exists" in caught.value.rule
    assert target.read_text() == "keep me\n"
    result = await ws.export(target, overwrite=True)
    assert result.rows == 29 and target.read_text().startswith("run,stage,")
    # written under a temporary name and renamed: nothing else is left in the directory
    assert _listing(tmp_path) == ["m.csv", "ws"]


async def test_an_output_inside_the_capture_folder_is_refused_even_with_overwrite(
    llm_ws: Path, tmp_path: Path
) -> None:
    ws = Workspace(llm_ws)
    capture = ws.capture_dir
    before = {p.name: p.read_bytes() for p in capture.iterdir() if p.is_file()}
    link = tmp_path / "via-link"
    link.symlink_to(capture)
    for output in (capture / "record.jsonl", capture / "new.csv", link / "record.jsonl"):
        with pytest.raises(ValidationError) as caught:
            await ws.export(output, format="jsonl", overwrite=True)
        assert caught.value.field == "output" and "capture folder" in caught.value.rule
    # before: record.jsonl was replaced by the export, and the comparison read nothing
    assert {p.name: p.read_bytes() for p in capture.iterdir() if p.is_file()} == before


def test_cli_export_writes_parquet_and_refuses_bad_input_in_one_line(
    llm_ws: Path, tmp_path: Path
) -> None:
    out = tmp_path / "m.parquet"
    done = cli("--workspace", str(llm_ws), "export", "grounded", "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert "wrote 15 metric rows of 1 run(s)" in done.stdout
    assert pq.read_table(out).num_rows == 15

    done = cli("-w", str(llm_ws), "export", "--output", str(out))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "--force" in done.stderr
    done = cli("-w", str(llm_ws), "export", "--output", str(out), "--force", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == 29

    done = cli("-w", str(llm_ws), "export", "--events", "-o", str(tmp_path / "e.jsonl"))
    assert done.returncode == 0, done.stderr
    assert len((tmp_path / "e.jsonl").read_text().splitlines()) == 12

    done = cli("-w", str(llm_ws), "export", "--format", "xml", "-o", str(tmp_path / "x"))
    assert done.returncode == 2 and "invalid choice: 'xml'" in done.stderr
    done = cli("-w", str(llm_ws), "export", "-o", str(tmp_path / "no" / "x.csv"))
    assert done.returncode == 1
    assert done.stderr == (
        f"contexta-async: error: output: its directory does not exist "
        f"(got {str(tmp_path / 'no' / 'x.csv')!r})\n"
    )
    done = cli("-w", str(llm_ws), "export", "nope", "-o", str(tmp_path / "x.csv"))
    assert done.returncode == 1 and "unknown run 'nope'" in done.stderr
    assert not (tmp_path / "x.csv").exists()


_NO_PYARROW = "import sys; sys.modules['pyarrow'] = None; sys.modules['pyarrow.parquet'] = None; "


def _without_pyarrow(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _NO_PYARROW + code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_without_pyarrow_arrow_and_parquet_name_the_extra_and_csv_still_works(
    llm_ws: Path, tmp_path: Path
) -> None:
    code = (
        "import anyio\n"
        "from contexta_async.readers import Workspace\n"
        "from contexta_async.export import ExtraNotInstalledError\n"
        "async def main():\n"
        "    ws = Workspace(sys.argv[1])\n"
        "    for call in (ws.to_arrow, ws.to_pandas, ws.to_polars):\n"
        "        try:\n"
        "            await call()\n"
        "        except ExtraNotInstalledError as exc:\n"
        "            assert isinstance(exc, ImportError)\n"
        "            print(exc.module, '|', exc)\n"
        "anyio.run(main)\n"
    )
    done = _without_pyarrow(code, str(llm_ws))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3
    assert all(line.startswith("pyarrow | ") for line in lines)
    assert "to_arrow() needs pyarrow" in lines[0]
    assert all("pip install 'contexta-async[analysis]'" in line for line in lines)

    main = "from contexta_async.__main__ import main; sys.exit(main())"
    done = _without_pyarrow(main, "-w", str(llm_ws), "export", "-o", str(tmp_path / "m.parquet"))
    assert done.returncode == 1
    assert done.stderr == (
        "contexta-async: error: --format parquet needs pyarrow, which is not installed: "
        "pip install 'contexta-async[analysis]'\n"
    )
    assert _listing(tmp_path) == ["ws"]
    done = _without_pyarrow(main, "-w", str(llm_ws), "export", "-o", str(tmp_path / "m.csv"))
    assert done.returncode == 0, done.stderr
    assert len((tmp_path / "m.csv").read_text().splitlines()) == 30


def test_extra_not_installed_error_is_an_import_error_with_its_facts() -> None:
    exc = ExtraNotInstalledError("to_polars()", "polars", "pip install polars")
    assert isinstance(exc, ImportError)
    assert exc.code == "extra_not_installed"
    assert exc.details == {
        "feature": "to_polars()",
        "module": "polars",
        "install": "pip install polars",
    }


def test_cli_export_reports_corrupt_lines_in_text_and_keeps_json_parseable(
    llm_ws: Path, tmp_path: Path
) -> None:
    record = llm_ws / "cache" / "capture" / "record.jsonl"
    lines = record.read_bytes().splitlines(keepends=True)
    record.write_bytes(b"".join([*lines[:2], b"{broken\n", *lines[2:]]))
    out = tmp_path / "m.csv"
    done = cli("-w", str(llm_ws), "export", "-o", str(out), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == 29  # the broken line was added: none is lost
    done = cli("-w", str(llm_ws), "export", "-o", str(out), "--force")
    assert done.returncode == 0, done.stderr
    assert "! 1 corrupt line(s) skipped" in done.stdout


async def test_row_groups_larger_than_the_read_batches_keep_every_row_in_order(
    tmp_path: Path,
) -> None:
    workspace = tmp_path / "big"
    ctx = Contexta(workspace=workspace, config={"project_name": "big"})
    with ctx.run("r") as run:
        with run.stage("evaluate") as stage:
            for s in range(2_000):
                with stage.sample(f"s{s}") as sample:
                    for k in range(10):
                        sample.metric(f"m{k}", s * 10 + k)
    ctx.close()
    ws = Workspace(workspace)
    # the rows are read 8,192 at a time: a row group is made of several reads
    await export_workspace(ws, tmp_path / "big.parquet", batch_rows=9_000)
    meta = pq.ParquetFile(tmp_path / "big.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [9_000, 9_000, 2_000]
    values = pq.read_table(tmp_path / "big.parquet").column("value").to_pylist()
    assert values == [float(v) for v in range(20_000)]


class _FailingWorkspace(Workspace):
    """A workspace whose record stream breaks (or is cancelled) after ``after`` real rows."""

    def __init__(self, path: Path, after: int, fail: Callable[[], Awaitable[None]]) -> None:
        super().__init__(path)
        self._after = after
        self._fail = fail

    async def _record_blocks(self, refs: Any, rows: Any) -> AsyncGenerator[list[RecordRow], None]:
        seen = 0
        async with aclosing(super()._record_blocks(refs, rows)) as blocks:
            async for block in blocks:
                for row in block:
                    if seen == self._after:
                        await self._fail()
                    seen += 1
                    yield [row]


async def test_a_failed_or_cancelled_export_leaves_the_old_file_and_no_partial_one(
    llm_ws: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = out / "m.parquet"
    target.write_bytes(b"the previous export")

    async def broken_disk() -> None:
        raise OSError(5, "Input/output error")

    ws = _FailingWorkspace(llm_ws, 10, broken_disk)
    with pytest.raises(OSError, match="Input/output error"):
        await export_workspace(ws, target, overwrite=True, batch_rows=4)
    assert _listing(out) == ["m.parquet"]
    assert target.read_bytes() == b"the previous export"

    with anyio.CancelScope() as scope:

        async def cancel() -> None:
            scope.cancel()
            await anyio.lowlevel.checkpoint()

        ws = _FailingWorkspace(llm_ws, 10, cancel)
        await export_workspace(ws, target, overwrite=True, batch_rows=4)
    assert scope.cancelled_caught
    assert _listing(out) == ["m.parquet"]
    assert target.read_bytes() == b"the previous export"


async def test_cluster_and_epoch_columns_hold_what_the_samples_were_given(tmp_path: Path) -> None:
    ctx = Contexta(workspace=tmp_path / "ws", config={"project_name": "p"})
    with ctx.run("r") as run, run.stage("evaluate") as stage:
        for k in (1, 2):
            with stage.sample("q-1", cluster="passage-7", epoch=k) as sample:
                sample.metric("score", float(k))
                sample.event("answer", message=f"try {k}")
        with stage.sample("q-2") as plain:
            plain.metric("score", 5.0)
        stage.metric("pass.rate", 0.5)
    ctx.close()
    ws = Workspace(tmp_path / "ws")
    rows = [r async for r in ws.records("r", kind="metric")]
    assert [(r.sample, r.cluster, r.epoch) for r in rows] == [
        ("q-1-epoch-1", "passage-7", 1),
        ("q-1-epoch-2", "passage-7", 2),
        ("q-2", None, None),
        (None, None, None),
    ]
    await ws.export(tmp_path / "m.jsonl")
    got = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [(row["cluster"], row["epoch"]) for row in got] == [
        ("passage-7", 1),
        ("passage-7", 2),
        (None, None),
        (None, None),
    ]
    await ws.export(tmp_path / "e.parquet", events=True)
    events = pq.read_table(tmp_path / "e.parquet").to_pylist()
    assert [(e["cluster"], e["epoch"]) for e in events] == [("passage-7", 1), ("passage-7", 2)]
