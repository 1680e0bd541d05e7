"""Compare two runs read from a PostgreSQL store, next to the same compare on the folder.

Generates the workspace with ``benchmarks/read.py``'s ``generate`` (two runs, six metrics and
two events per sample: 1,000,000 records by default), ships it once into a throwaway cluster
on loopback (needs the server binaries and ``pip install -e sinks/postgres``), then times
``Workspace(...).compare("baseline", "candidate")`` on the folder and on the store,
alternating, ``--repeat`` times each. Prints every run, the medians in records/s (the
records of both runs over the wall-clock seconds of one compare) and checks that both give
the same comparison. A benchmark, not a test.

    .venv/bin/python benchmarks/store_read.py                     # 1,000,000 records, 3 runs
    .venv/bin/python benchmarks/store_read.py --records 100000 --repeat 1   # smoke run

``--unrelated N`` measures something else: what a store's OTHER runs cost a read. Two runs
of 20 samples are shipped into one store alone and into another beside one unrelated run of
N clustered samples (from another workspace); ``compare a b`` is timed on both, alternating,
and must give the same answer. A read that touches only the runs it names costs the same in
both.

    .venv/bin/python benchmarks/store_read.py --unrelated 100000 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "sinks" / "postgres" / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _cluster import Cluster, find_bindir  # noqa: E402
from contexta_async_postgres import Shipper  # noqa: E402
from read import EVENTS_PER_SAMPLE, METRICS_PER_SAMPLE, RUNS, generate  # noqa: E402

from contexta_async import Contexta  # noqa: E402
from contexta_async.readers import RunComparison, Workspace  # noqa: E402

PASSWORD = "bench"


def compare_once(where: str) -> tuple[float, RunComparison]:
    started = time.perf_counter()
    result = anyio.run(Workspace(where).compare, *RUNS)
    return time.perf_counter() - started, result


def unrelated(cluster: Cluster, workdir: Path, samples: int, repeat: int) -> None:
    """``compare a b`` of two small runs, alone in a store and beside an unrelated large run."""
    small, big = workdir / "small", workdir / "big"
    ctx = Contexta(workspace=small, config={"project_name": "p"})
    for name in ("a", "b"):
        with ctx.run(name) as run, run.stage("evaluate") as stage:
            for i in range(20):
                with stage.sample(f"q-{i}", cluster=f"c{i // 5}") as sample:
                    sample.metric("x", float(i % 2))
    ctx.close()
    ctx = Contexta(workspace=big, config={"project_name": "p"})
    with ctx.run("big") as run, run.stage("evaluate") as stage:
        for i in range(samples):
            with stage.sample(f"q-{i}", cluster=f"c{i // 10}") as sample:
                sample.metric("x", 1.0)
    ctx.close()
    urls = {}
    for name, workspaces in (("alone", (small,)), ("beside", (small, big))):
        with cluster.admin() as conn:
            conn.execute(f"CREATE DATABASE {name} OWNER shipper")
        urls[name] = cluster.url(name, password=PASSWORD)
        for ws in workspaces:
            with Shipper(ws, urls[name]) as shipper:
                shipper.ship()
        with cluster.admin(name) as conn:
            conn.execute("VACUUM ANALYZE")  # as autovacuum would, later
    print(f"two runs of 20 samples; the unrelated run: {samples:,} clustered samples")
    times: dict[str, list[float]] = {"alone": [], "beside": []}
    answers: dict[str, RunComparison] = {}
    for url in urls.values():
        anyio.run(Workspace(url).compare, "a", "b")  # connect once, warm the caches
    for i in range(repeat):
        for name, url in urls.items():
            started = time.perf_counter()
            answers[name] = anyio.run(Workspace(url).compare, "a", "b")
            times[name].append(time.perf_counter() - started)
            print(f"  run {i + 1} {name:6}: {times[name][-1] * 1000:8.1f} ms")
    for name, got in times.items():
        print(f"median {name}: {statistics.median(got) * 1000:.1f} ms over {len(got)} run(s)")
    same = msgspec.to_builtins(answers["alone"].paired) == msgspec.to_builtins(
        answers["beside"].paired
    )
    print(f"same comparison from both: {same}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="where the workspace is generated")
    parser.add_argument(
        "--unrelated",
        type=int,
        default=None,
        metavar="N",
        help="time compare of two small runs beside an unrelated run of N samples instead",
    )
    args = parser.parse_args()
    bindir = find_bindir()
    if bindir is None:
        print("PostgreSQL server binaries not found (apt-get install postgresql)")
        return 1
    settings = {"max_wal_size": "4GB", "shared_buffers": "256MB", "work_mem": "64MB"}
    cluster = Cluster(bindir, settings=settings)
    try:
        cluster.start()
        with cluster.admin() as conn:
            conn.execute(f"CREATE ROLE shipper LOGIN CREATEDB PASSWORD '{PASSWORD}'")
            conn.execute("CREATE DATABASE bench OWNER shipper")
            version = conn.execute("SHOW server_version").fetchone()
        print(f"PostgreSQL {version[0] if version else '?'}, {settings}")
        print(f"cpus: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} (shared machine)")
        url = cluster.url("bench", password=PASSWORD)
        if args.unrelated is not None:
            with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
                unrelated(cluster, Path(tmp), args.unrelated, args.repeat)
            return 0
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            ws = Path(tmp) / "ws"
            per_sample = METRICS_PER_SAMPLE + EVENTS_PER_SAMPLE
            records = generate(ws, args.records // len(RUNS) // per_sample)
            started = time.perf_counter()
            with Shipper(ws, url) as shipper:
                shipper.ship()
            print(
                f"{records:,} records generated, shipped in {time.perf_counter() - started:.1f} s"
            )
            with cluster.admin("bench") as conn:
                conn.execute("VACUUM ANALYZE contexta.records")  # as autovacuum would, later
            rates: dict[str, list[float]] = {"folder": [], "store": []}
            answers: dict[str, RunComparison] = {}
            for i in range(args.repeat):
                for name, where in (("folder", str(ws)), ("store", url)):
                    seconds, answers[name] = compare_once(where)
                    rates[name].append(records / seconds)
                    print(
                        f"  run {i + 1} {name:6}: {seconds:6.2f} s "
                        f"{records / seconds:>12,.0f} records/s"
                    )
            for name, got in rates.items():
                print(
                    f"median {name}: {statistics.median(got):,.0f} records/s over {len(got)} run(s)"
                )
            same = {
                k: msgspec.to_builtins(getattr(answers["store"], k))
                == msgspec.to_builtins(getattr(answers["folder"], k))
                for k in ("metrics", "paired", "artifacts", "warnings")
            }
            print(f"same comparison from both: {same}")
    finally:
        cluster.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
