"""Ship one large workspace into a local PostgreSQL server: records/s, median of several runs.

Starts a throwaway cluster on loopback (needs the server binaries and
``pip install -e sinks/postgres``), captures the workspace once with the real capture API
(``--records`` RECORD lines: samples of ``--metrics-per-sample`` metrics, each sample also
writes its two CONTEXT lines), then ships it ``--repeat`` times, each time into a fresh
database, with ``Shipper(...).ship()`` (what ``contexta-async ship`` runs). Prints every run
and the median. A benchmark, not a test: it asserts only that every line arrived.

Then the cost of the in-process shipper to capture: ``--overhead-records`` records captured
(and flushed) with ``Contexta(...)`` and with ``Contexta(..., ship_to=URL)``, alternating,
``--repeat`` times each; capture throughput of each and the median cost. (The lines then are
committed in the store by ``wait_committed``, timed apart.) The shipping lag: the share of
the workspace's bytes the store held when capture had flushed (the helper yields to capture
while it writes, so under full-speed capture the store lags), and the seconds after that
until the store had every line (``wait_committed``: at full speed).

On one machine the server's own CPU competes with capture too; ``--server-nice 19`` runs it
(and its autogroup) at low priority, a stand-in for a store on another machine. Quote both.

    .venv/bin/python benchmarks/ship.py                    # 1,000,000 records, 3 runs
    .venv/bin/python benchmarks/ship.py --records 100000 --repeat 1   # smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "sinks" / "postgres" / "tests"))

from _cluster import Cluster, find_bindir  # noqa: E402
from contexta_async_postgres import Shipper, _lines  # noqa: E402
from contexta_async_postgres._identity import FAMILY_FILES  # noqa: E402
from contexta_async_postgres._lines import LineParser  # noqa: E402

from contexta_async import Contexta  # noqa: E402

PASSWORD = "bench"


def capture(workspace: Path, records: int, per_sample: int) -> None:
    with Contexta(workspace=workspace, config={"project_name": "bench"}) as ctx:
        _capture_into(ctx, records, per_sample)


def _capture_into(ctx: Contexta, records: int, per_sample: int) -> None:
    with ctx.run("ship") as run, run.stage("evaluate") as stage:
        for i in range(records // per_sample):
            with stage.sample(f"case-{i}") as sample:
                for m in range(per_sample):
                    sample.metric(f"m{m}", (i * 7 + m) % 13 / 13)


def capture_rate(
    workspace: Path, records: int, per_sample: int, ship_to: str | None
) -> tuple[float, float, float, float]:
    """Records/s of capture (until flushed); with ``ship_to`` the seconds after that until the
    store has every line; the capturing process's CPU per record (all its threads, until
    then: what competes with capture for the GIL; the shipper's helper process is not in it);
    and with ``ship_to`` the share of the workspace's bytes the store held when capture had
    flushed (the shipping lag; 1.0: none)."""
    ctx = Contexta(workspace=workspace, config={"project_name": "bench"}, ship_to=ship_to)
    try:
        cpu = time.process_time()
        started = time.perf_counter()
        _capture_into(ctx, records, per_sample)
        ctx.flush()
        captured = time.perf_counter()
        held = 1.0
        if ctx.shipper is not None:
            assert ship_to is not None
            held = _store_holds(workspace, ship_to)
            ctx.shipper.wait_committed()
        cpu_us = (time.process_time() - cpu) / records * 1e6
        return records / (captured - started), time.perf_counter() - captured, cpu_us, held
    finally:
        ctx.close()


def _store_holds(workspace: Path, url: str) -> float:
    """The share of the workspace's bytes (of its shipped files) that the store holds."""
    import psycopg
    from contexta_async_postgres import workspace_id

    size = sum(
        (workspace / "cache" / "capture" / file).stat().st_size
        for file in FAMILY_FILES
        if (workspace / "cache" / "capture" / file).exists()
    )
    try:
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT coalesce(sum(byte_offset), 0) FROM contexta.positions "
                "WHERE workspace_id = %s",
                (workspace_id(workspace),),
            ).fetchone()
    except psycopg.errors.UndefinedTable:  # nothing shipped yet: no schema
        return 0.0
    return int(row[0]) / size if row and size else 0.0


def client_rate(files: list[Path], records: int) -> float:
    """Records/s of reading and parsing the files into binary COPY rows, formatted by
    psycopg's own formatter (what ``Copy.write_row`` runs), with no server."""
    # psycopg's formatter without a connection: private, but only a benchmark leans on it.
    from psycopg._copy_base import BinaryFormatter
    from psycopg.adapt import Transformer

    parsers = {
        file: LineParser(uuid.uuid4(), file, family) for file, family in FAMILY_FILES.items()
    }
    # UTF-8 is checked once over the bytes, as the shipper checks each chunk it reads, not
    # line by line (only a chunk that fails the check is; older copies have no check).
    is_utf8 = getattr(_lines, "is_utf8", None)
    started = time.perf_counter()
    for f in files:
        data = f.read_bytes()
        checked = {} if is_utf8 is None else {"utf8": is_utf8(data)}
        lines = data.split(b"\n")
        lines.pop()
        formatter = BinaryFormatter(Transformer(None))  # one per table, as one per COPY
        for at in range(0, len(lines), 50_000):
            parsers[f.name].write(lines[at : at + 50_000], 0, formatter.write_row, [], **checked)
    return records / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--metrics-per-sample", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-lines", type=int, default=50_000)
    parser.add_argument("--workdir", default=None, help="where the workspace is captured")
    parser.add_argument("--overhead-records", type=int, default=200_000)
    parser.add_argument(
        "--overhead-only", action="store_true", help="only the capture cost of the shipper"
    )
    parser.add_argument(
        "--server-nice",
        type=int,
        default=0,
        help="run the server at this nice value (and its autogroup's): a stand-in for a store "
        "on another machine, whose CPU does not compete with capture (default 0: it competes)",
    )
    args = parser.parse_args()

    bindir = find_bindir()
    if bindir is None:
        print("PostgreSQL server binaries not found (apt-get install postgresql)")
        return 1
    # The server as it ships, durable (fsync on, synchronous_commit on), with room for WAL so
    # that a 1 GB load is not dominated by forced checkpoints.
    settings = {"max_wal_size": "4GB", "shared_buffers": "256MB"}
    cluster = Cluster(bindir, settings=settings)
    try:
        cluster.start()
        if args.server_nice:
            renice_server(cluster, args.server_nice)
        with cluster.admin() as conn:
            conn.execute(f"CREATE ROLE shipper LOGIN CREATEDB PASSWORD '{PASSWORD}'")
            version = conn.execute("SHOW server_version").fetchone()
        print(
            f"PostgreSQL {version[0] if version else '?'} at 127.0.0.1:{cluster.port}, {settings}"
        )
        print(f"cpus: {os.cpu_count()} (shared machine: figures are noisy)")
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            if args.overhead_only:
                overhead(cluster, Path(tmp), args)
                return 0
            ws = Path(tmp) / "ws"
            started = time.perf_counter()
            capture(ws, args.records, args.metrics_per_sample)
            files = sorted((ws / "cache" / "capture").glob("*.jsonl"))
            lines = sum(f.read_bytes().count(b"\n") for f in files)
            size = sum(f.stat().st_size for f in files)
            print(
                f"workspace: {args.records:,} records, {lines:,} lines, {size / 2**20:,.0f} MiB "
                f"(captured in {time.perf_counter() - started:.1f} s)"
            )
            rates: list[float] = []
            for i in range(args.repeat):
                name = f"bench{i}"
                with cluster.admin() as conn:
                    conn.execute(f"CREATE DATABASE {name} OWNER shipper")
                # A fresh identity per run: the store is new, and so is the position.
                (ws / "cache" / "workspace-id").unlink(missing_ok=True)
                url = cluster.url(name, password=PASSWORD)
                started = time.perf_counter()
                with Shipper(ws, url, batch_lines=args.batch_lines) as shipper:
                    result = shipper.ship()
                seconds = time.perf_counter() - started
                assert result.lines_shipped == lines, (result.lines_shipped, lines)
                rate = args.records / seconds
                rates.append(rate)
                print(
                    f"  run {i + 1}: {seconds:6.2f} s  {rate:>10,.0f} records/s  "
                    f"{lines / seconds:>10,.0f} lines/s  {size / 2**20 / seconds:6.1f} MiB/s  "
                    f"({result.batches} batches)"
                )
                with cluster.admin() as conn:
                    conn.execute(f"DROP DATABASE {name}")
            print(f"median: {statistics.median(rates):,.0f} records/s over {len(rates)} run(s)")
            # The client's share alone (read + parse + format the binary COPY rows, no server):
            # what one shipper process can feed a server that runs on another machine.
            parse_rates = [client_rate(files, args.records) for _ in range(args.repeat)]
            print(
                f"client side alone (read, parse, format; no server): median "
                f"{statistics.median(parse_rates):,.0f} records/s over {len(parse_rates)} run(s)"
            )
            overhead(cluster, Path(tmp), args)
    finally:
        cluster.remove()
    return 0


def renice_server(cluster: Cluster, nice: int) -> None:
    """The postmaster and every process it has started at ``nice`` (backends it starts later
    inherit it), and the autogroup they run in: with autogroups on (Linux's default for
    desktops and many VMs) a process's nice counts only against its own session."""
    postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:  # the parent pid
            pids.append(int(stat.parent.name))
    for pid in pids:
        os.setpriority(os.PRIO_PROCESS, pid, nice)
    autogroup = Path(f"/proc/{postmaster}/autogroup")
    if autogroup.exists():
        autogroup.write_text(f"{nice}\n")
    print(f"server at nice {nice} ({len(pids)} processes; autogroup: {autogroup.exists()})")


def overhead(cluster: Cluster, tmp: Path, args: argparse.Namespace) -> None:
    """Capture throughput without and with the in-process shipper, alternating."""
    with cluster.admin() as conn:
        conn.execute("CREATE DATABASE overhead OWNER shipper")
    url = cluster.url("overhead", password=PASSWORD)
    plain: list[float] = []
    shipping: list[float] = []
    plain_cpu: list[float] = []
    shipping_cpu: list[float] = []
    n, per_sample = args.overhead_records, args.metrics_per_sample
    drains: list[float] = []
    held: list[float] = []
    for i in range(args.repeat):
        rate, _, cpu, _ = capture_rate(tmp / f"plain{i}", n, per_sample, None)
        plain.append(rate)
        plain_cpu.append(cpu)
        rate, drain, cpu, share = capture_rate(tmp / f"ship{i}", n, per_sample, url)
        shipping.append(rate)
        shipping_cpu.append(cpu)
        drains.append(drain)
        held.append(share)
        print(
            f"  capture run {i + 1}: {plain[-1]:>10,.0f} records/s alone "
            f"({plain_cpu[-1]:.1f} us CPU/record), {rate:>10,.0f} with the shipper "
            f"({cpu:.1f} us CPU/record; the store held {100 * share:.0f} % of the bytes when "
            f"capture had flushed, then {drain:.2f} s until committed)"
        )
    a, b = statistics.median(plain), statistics.median(shipping)
    ca, cb = statistics.median(plain_cpu), statistics.median(shipping_cpu)
    print(
        f"capture of {n:,} records: median {a:,.0f} records/s alone, {b:,.0f} with "
        f"Contexta(ship_to=...): cost {100 * (a - b) / a:.1f} %; CPU of the capturing "
        f"process per record: {ca:.1f} us alone, {cb:.1f} us with the shipper "
        f"(+{100 * (cb - ca) / ca:.1f} %)"
    )
    print(
        f"shipping lag: median {100 * statistics.median(held):.0f} % of the bytes in the store "
        f"when capture had flushed, then {statistics.median(drains):.2f} s until committed "
        f"(wait_committed: the helper drains at full speed)"
    )


if __name__ == "__main__":
    sys.exit(main())
