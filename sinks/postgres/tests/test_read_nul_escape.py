"""Reading from the store a clustered sample line that holds the JSON escape ``\\u0000`` (a field
of a newer writer, a hand edit: the shipper keeps such lines raw) answers as the folder does,
where jsonb refused the whole query ("unsupported Unicode escape sequence")."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pgtest import Database, ship_cli

from contexta_async import Contexta
from contexta_async._cli import run_cli


def _cli(where: str, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_cli(["--workspace", where, *argv], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    "edit",
    [
        b'"note":"a\\u0000b","cluster":"doc0"',  # beside the cluster
        b'"cluster":"doc\\u00000"',  # in the cluster itself
    ],
)
def test_compare_from_the_store_reads_a_sample_line_holding_a_nul_escape_as_the_folder(
    tmp_path: Path, db: Database, edit: bytes
) -> None:
    ws = tmp_path / "ws"
    ctx = Contexta(workspace=ws, config={"project_name": "p"})
    for run in ("a", "b"):
        with ctx.run(run) as r, r.stage("evaluate") as stage:
            for i in range(6):
                with stage.sample(f"q{i}", cluster=f"doc{i // 2}") as sample:
                    sample.metric("correct", float((i + len(run)) % 2))
    ctx.close()
    capture = ws / "cache" / "capture"
    data = (capture / "context.jsonl").read_bytes()
    assert data.count(b'"cluster":"doc0"') >= 2
    (capture / "context.jsonl").write_bytes(data.replace(b'"cluster":"doc0"', edit, 1))
    for index in capture.glob("*.index"):
        index.unlink()  # the folder reads the lines themselves, as the store does
    done = ship_cli(ws, db.url)
    assert done.returncode == 0, done.stderr
    assert "corrupt" not in done.stdout
    for argv in (("compare", "a", "b"), ("compare", "a", "b", "--samples")):
        folder = _cli(str(ws), *argv)
        store = _cli(db.url, *argv)
        assert folder[0] == 0, folder[2]
        assert store == folder
