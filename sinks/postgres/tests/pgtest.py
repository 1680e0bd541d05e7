"""Helpers of the PostgreSQL store's tests: workspaces captured with the real capture API, the
store's and the workspace's lines, the shipper run as a child process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from _cluster import Cluster

from contexta_async import Contexta

PASSWORD = "s3cret-Pa55word!"


@dataclass
class Database:
    cluster: Cluster
    name: str

    @property
    def url(self) -> str:
        return self.cluster.url(self.name, password=PASSWORD)

    def query(self, text: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self.cluster.admin(self.name) as conn:
            return conn.execute(text, params or None).fetchall()  # type: ignore[arg-type]


def capture(
    workspace: Path,
    *,
    project: str = "proj",
    run: str = "eval",
    samples: range = range(3),
    metrics_per_sample: int = 1,
    fail: bool = False,
) -> Path:
    """A run with one stage, one sample per index, metrics and an event per sample."""
    ctx = Contexta(workspace=workspace, config={"project_name": project})
    scope = ctx.run(run, dataset_ref="dataset:cases")
    r = scope.__enter__()
    with r.stage("evaluate") as stage:
        for i in samples:
            with stage.sample(f"case-{i}") as sample:
                for m in range(metrics_per_sample):
                    sample.metric("correct" if m == 0 else f"m{m}", float(i % 2))
                sample.event("answer", message=f"answered\tcase {i} \\ \u00fc")
        stage.metric("pass.rate", 0.5, unit="ratio")
    if fail:
        scope.__exit__(ValueError, ValueError("boom"), None)
    else:
        scope.__exit__(None, None, None)
    ctx.close()
    return workspace


def capture_open(
    workspace: Path, *, project: str = "proj", run: str = "eval", samples: range
) -> Path:
    """A run still open in the files: a child captures, flushes and dies without closing."""
    code = f"""
import os
from contexta_async import Contexta
ctx = Contexta(workspace={str(workspace)!r}, config={{"project_name": {project!r}}})
r = ctx.run({run!r}, dataset_ref="dataset:cases").__enter__()
with r.stage("evaluate") as stage:
    for i in {samples!r}:
        with stage.sample(f"case-{{i}}") as sample:
            sample.metric("correct", float(i % 2))
ctx.flush()
os._exit(0)
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    return workspace


def copy_workspace(template: Path, target: Path) -> Path:
    shutil.copytree(template, target)
    return target


FILES = {
    "context.jsonl": "context_lines",
    "record.jsonl": "records",
    "artifact.jsonl": "artifacts",
    "degradation.jsonl": "degradations",
}


def workspace_lines(workspace: Path) -> dict[str, list[tuple[int, str]]]:
    """Every whole line of each family file with its byte offset (a torn tail left out)."""
    out: dict[str, list[tuple[int, str]]] = {}
    for file in FILES:
        path = workspace / "cache" / "capture" / file
        if not path.exists():
            continue
        data = path.read_bytes()
        offset = 0
        lines = []
        for piece in data.split(b"\n")[:-1]:
            lines.append((offset, piece.decode()))
            offset += len(piece) + 1
        out[file] = lines
    return out


def store_lines(db: Database, workspace: Path) -> dict[str, list[tuple[int, str]]]:
    """The raw lines the store holds for the workspace, per file, in file order."""
    ws_id = (workspace / "cache" / "workspace-id").read_text().strip()
    out: dict[str, list[tuple[int, str]]] = {}
    for file, table in FILES.items():
        rows = db.query(
            f"SELECT byte_offset, raw FROM contexta.{table} WHERE workspace_id = %s "
            "ORDER BY byte_offset",
            (ws_id,),
        )
        if rows:
            out[file] = [(int(str(o)), str(r)) for o, r in rows]
    return out


def ship_cli(
    workspace: Path,
    url: str,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """``contexta-async --workspace WS ship --to URL ...`` in a child process."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "contexta_async",
            "--workspace",
            str(workspace),
            "ship",
            "--to",
            url,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        check=False,
    )


def start_ship(workspace: Path, url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "contexta_async",
            "--workspace",
            str(workspace),
            "ship",
            "--to",
            url,
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def ensure_schema_at_once(db: Database, users: int) -> list[int]:
    """``users`` connections call ``ensure_schema`` at the same moment (a barrier); the
    versions they return. Any error is raised."""
    import threading

    import psycopg
    from contexta_async_postgres._schema import ensure_schema

    barrier = threading.Barrier(users)
    errors: list[BaseException] = []
    versions: list[int] = []

    def use() -> None:
        with psycopg.connect(db.url) as conn:
            barrier.wait()
            try:
                versions.append(ensure_schema(conn, "t"))
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=use) for _ in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return versions
