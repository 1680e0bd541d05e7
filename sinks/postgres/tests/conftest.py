"""A real PostgreSQL server for the whole session, a fresh database per test, and workspaces
captured with the real capture API."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _cluster import Cluster, find_bindir

from contexta_async import Contexta

PASSWORD = "s3cret-Pa55word!"
_names = itertools.count()


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    bindir = find_bindir()
    if bindir is None:
        message = "PostgreSQL server binaries not found (install Debian's postgresql package)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs them: missing means the setup is broken
        pytest.skip(message)
    # fsync off: the tests crash the server (-m immediate), not the machine.
    server = Cluster(bindir, settings={"fsync": "off", "max_connections": "50"})
    try:
        server.start()
        with server.admin() as conn:
            conn.execute(f"CREATE ROLE shipper LOGIN CREATEDB PASSWORD '{PASSWORD}'")
        yield server
    finally:
        server.remove()


@dataclass
class Database:
    cluster: Cluster
    name: str

    @property
    def url(self) -> str:
        return self.cluster.url(self.name, password=PASSWORD)

    def query(self, text: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self.cluster.admin(self.name) as conn:
            return conn.execute(text, params).fetchall()  # type: ignore[arg-type]


@pytest.fixture
def db(cluster: Cluster) -> Database:
    name = f"t{next(_names)}"
    with cluster.admin() as conn:
        conn.execute(f"CREATE DATABASE {name} OWNER shipper")
    return Database(cluster, name)


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


@pytest.fixture(scope="session")
def big_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~60,000 record lines, captured once; copy it with ``copy_workspace``."""
    ws = tmp_path_factory.mktemp("big") / "ws"
    capture(ws, samples=range(20_000), metrics_per_sample=2)
    return ws


def copy_workspace(template: Path, target: Path) -> Path:
    shutil.copytree(template, target)
    return target
