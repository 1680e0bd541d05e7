"""A real PostgreSQL server for the whole session, a fresh database per test."""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _cluster import Cluster, find_bindir
from pgtest import PASSWORD, Database, capture

_names = itertools.count()

try:
    import contexta_async_postgres  # noqa: F401
except ImportError:  # pragma: no cover - the distribution is not installed
    if os.environ.get("CI"):
        raise  # .ci/run installs it: missing means the setup is broken
    # `pip install -e sinks/postgres` to run these tests.
    collect_ignore_glob = ["test_*.py"]


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


@pytest.fixture
def db(cluster: Cluster) -> Database:
    name = f"t{next(_names)}"
    with cluster.admin() as conn:
        conn.execute(f"CREATE DATABASE {name} OWNER shipper")
    return Database(cluster, name)


@pytest.fixture(scope="session")
def big_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~60,000 record lines, captured once; copy it with ``copy_workspace``."""
    ws = tmp_path_factory.mktemp("big") / "ws"
    capture(ws, samples=range(20_000), metrics_per_sample=2)
    return ws
