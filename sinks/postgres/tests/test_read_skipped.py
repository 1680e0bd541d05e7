"""Lines the shipper skipped as corrupt are reported by a read from the store, as a folder's
reader reports the corrupt lines it skips: ``ReadReport.corrupt_lines`` (the result's
``read_report``, ``Workspace.last_report``), the "corrupt lines skipped" warning and the CLI's
note. The store keeps their count per workspace and file (no line numbers), so a read reports
those of the workspaces holding the runs it reads."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pgtest import Database, capture, ship_cli
from structlog.testing import capture_logs

from contexta_async import Contexta
from contexta_async._cli import run_cli
from contexta_async.readers import Workspace


def _torn_and_corrupt(ws: Path) -> Path:
    """Two runs; one whole RECORD line made corrupt, and a torn tail (as a crash leaves)."""
    ctx = Contexta(workspace=ws, config={"project_name": "p"})
    for n, name in enumerate(("left", "right")):
        with ctx.run(name) as run, run.stage("evaluate") as stage:
            for i in range(5):
                with stage.sample(f"q-{i}") as sample:
                    sample.metric("score", float(i + n))
    ctx.close()
    capture_dir = ws / "cache" / "capture"
    record = capture_dir / "record.jsonl"
    lines = record.read_bytes().split(b"\n")
    lines[3] = b'{"this is": not json'
    record.write_bytes(b"\n".join(lines[:-1]) + b"\n" + b'{"captured_at":"2026')
    for index in capture_dir.glob("record.index*"):
        index.unlink()  # describes the file as it was
    return ws


def _ship(ws: Path, db: Database) -> None:
    done = ship_cli(ws, db.url)
    assert done.returncode == 0, done.stderr


def _skipped_warnings(logs: list[dict[str, object]]) -> list[object]:
    return [e["corrupt_lines"] for e in logs if e["event"] == "corrupt lines skipped"]


@pytest.mark.anyio
async def test_a_read_reports_the_lines_the_shipper_skipped_in_the_runs_workspaces(
    tmp_path: Path, db: Database
) -> None:
    damaged = _torn_and_corrupt(tmp_path / "damaged")
    clean = capture(tmp_path / "clean", project="p", run="other")
    _ship(damaged, db)
    _ship(clean, db)
    assert db.query(
        "SELECT sum(lines_skipped) FROM contexta.positions WHERE file = 'record.jsonl'"
    ) == [(1,)]
    folder, store = Workspace(damaged), Workspace(db.url)

    expected = await folder.compare("left", "right")
    assert expected.read_report.corrupt_lines == 1
    with capture_logs() as logs:
        answer = await store.compare("left", "right")
    assert answer.read_report.corrupt_lines == 1
    assert store.last_report.corrupt_lines == 1
    assert store.last_report.problems == []  # the store keeps no line numbers
    assert _skipped_warnings(logs) == [1]
    assert answer.paired == expected.paired  # the corrupt line is missing from both

    # Listing reads every workspace; a read of the clean workspace's run reports nothing.
    await store.list_runs()
    assert store.last_report.corrupt_lines == 1
    with capture_logs() as logs:
        await store.compare("other", "other")
    assert store.last_report.corrupt_lines == 0 and _skipped_warnings(logs) == []

    # A records stream reports them too, as the folder's does.
    rows = [r async for r in store.records("left")]
    assert [r async for r in folder.records("left")] == rows
    assert folder.last_report.corrupt_lines == store.last_report.corrupt_lines == 1
    async for _ in store.records("other"):
        pass
    assert store.last_report.corrupt_lines == 0


def test_the_cli_notes_the_lines_the_shipper_skipped(tmp_path: Path, db: Database) -> None:
    _ship(_torn_and_corrupt(tmp_path / "damaged"), db)
    out, err = io.StringIO(), io.StringIO()
    assert run_cli(["--workspace", db.url, "runs"], out=out, err=err) == 0, err.getvalue()
    assert "! 1 corrupt line(s) skipped\n" in out.getvalue()
