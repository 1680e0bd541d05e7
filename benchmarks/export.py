#!/usr/bin/env python3
"""Export benchmark: 1,000,000 metric records to Parquet, next to DuckDB doing the same.

A benchmark, not a test: it asserts nothing. The workspace is benchmarks/read.py's
(``generate``: two runs, one ``evaluate`` stage, six metrics and two events per sample),
sized so that it holds --records metric records (default 1,000,000; plus half as many
events, which the export skips). Scenarios, each in a fresh subprocess (its peak RSS is its
own), interleaved across --repeat rounds (default 3), medians reported:

  contexta-parquet   Workspace.export(out, format="parquet"): every metric record of both
                     runs, read in one pass over record.jsonl (the source's
                     record_blocks), 65,536 rows per row group
  contexta-csv/jsonl the same to CSV or JSON Lines (--formats)
  duckdb-Nthread     DuckDB reading the same record.jsonl into Parquet with the same columns:
                     COPY (SELECT ... FROM read_json(...) WHERE payload_type='MetricRecord')
                     TO 'x.parquet' (1 and 2 threads; needs duckdb: the bench extra)

Peak RSS is ru_maxrss of the child. With --rss-check, the Parquet export is also run once on
a workspace a quarter the size: a streaming export's peak RSS should not follow the file.
The machine may be shared: the load average is printed at the start and the end.

Usage:
  .venv/bin/python benchmarks/export.py               # 1,000,000 records, 3 rounds
  .venv/bin/python benchmarks/export.py --quick       # 100,000 records, one round
  .venv/bin/python benchmarks/export.py --formats parquet,csv,jsonl --rss-check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from read import EVENTS_PER_SAMPLE, METRICS_PER_SAMPLE, RUNS, generate

import contexta_async

# The same columns as the export: names are the last component of each ref.
_DUCKDB_QUERY = """
COPY (
  SELECT payload.envelope.run_ref AS run,
         regexp_extract(payload.envelope.stage_execution_ref, '[^.]*$') AS stage,
         regexp_extract(payload.envelope.batch_execution_ref, '[^.]*$') AS batch,
         regexp_extract(payload.envelope.sample_observation_ref, '[^.]*$') AS sample,
         NULL::VARCHAR AS cluster, NULL::BIGINT AS epoch,
         payload.payload.metric_key AS key, payload.payload.value AS value,
         payload.payload.unit AS unit,
         payload.envelope.recorded_at::TIMESTAMPTZ AS captured_at
  FROM read_json('{path}', format='newline_delimited', columns={{
    payload_type: 'VARCHAR',
    payload: 'STRUCT(envelope STRUCT(run_ref VARCHAR, stage_execution_ref VARCHAR,
      batch_execution_ref VARCHAR, sample_observation_ref VARCHAR, recorded_at VARCHAR),
      payload STRUCT(metric_key VARCHAR, value DOUBLE, unit VARCHAR))'}})
  WHERE payload_type = 'MetricRecord'
) TO '{out}' (FORMAT parquet, COMPRESSION zstd)
"""


def _child(scenario: str, workspace: str, out: str) -> dict[str, Any]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    cpu_started = own.ru_utime + own.ru_stime
    if scenario.startswith("duckdb"):
        import duckdb

        threads = int(scenario.removeprefix("duckdb-").removesuffix("thread"))
        con = duckdb.connect()
        con.execute(f"SET threads={threads}")
        con.execute("SET enable_progress_bar=false")
        con.execute("SET TimeZone='UTC'")
        record_file = Path(workspace) / "cache" / "capture" / "record.jsonl"
        started = time.perf_counter()
        con.execute(_DUCKDB_QUERY.format(path=record_file, out=out))
        elapsed = time.perf_counter() - started
        rows = con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()[0]  # type: ignore[index]
        version = duckdb.__version__
    else:
        import anyio

        from contexta_async.readers import Workspace

        fmt = scenario.removeprefix("contexta-")

        async def main() -> int:
            result = await Workspace(workspace).export(out, format=fmt)  # type: ignore[arg-type]
            return result.rows

        started = time.perf_counter()
        rows = anyio.run(main)
        elapsed = time.perf_counter() - started
        version = contexta_async.__version__ if hasattr(contexta_async, "__version__") else ""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "scenario": scenario,
        "rows": rows,
        "seconds": elapsed,
        "cpu_s": own.ru_utime + own.ru_stime - cpu_started,
        "peak_rss_mib": round(own.ru_maxrss / 1024, 1),
        "output_mib": round(os.path.getsize(out) / 2**20, 1),
        "version": version,
    }


def _run_child(scenario: str, workspace: Path, out: Path) -> dict[str, Any]:
    out.unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, __file__, "--child", scenario, str(workspace), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"{scenario} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    out.unlink(missing_ok=True)
    return result


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--records", type=int, default=1_000_000, help="metric records")
    parser.add_argument("--quick", action="store_true", help="100,000 records, one round")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--formats", default="parquet", help="comma-separated: parquet,csv,jsonl")
    parser.add_argument("--no-duckdb", action="store_true", help="skip DuckDB")
    parser.add_argument("--rss-check", action="store_true", help="also export a 1/4 workspace")
    parser.add_argument(
        "--dir", help="a directory for the workspace, kept; a later run with it reuses it"
    )
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(*args.child)))
        return
    total = 100_000 if args.quick else args.records
    repeat = 1 if args.quick else args.repeat
    samples = -(-total // (len(RUNS) * METRICS_PER_SAMPLE))
    scenarios = [f"contexta-{fmt}" for fmt in args.formats.split(",")]
    if not args.no_duckdb:
        scenarios += ["duckdb-1thread", "duckdb-2thread"]
    base = Path(args.dir or tempfile.mkdtemp(prefix="contexta-export-bench-"))
    print(f"package {os.path.dirname(contexta_async.__file__)}")
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load average at start {_load()}"
    )
    results: list[dict[str, Any]] = []
    try:
        ws = base / f"ws-{samples}"
        started = time.perf_counter()
        reused = (ws / "cache" / "capture").is_dir()
        if reused:
            lines = samples * len(RUNS) * (METRICS_PER_SAMPLE + EVENTS_PER_SAMPLE)
        else:
            lines = generate(ws, samples)
        size = (ws / "cache" / "capture" / "record.jsonl").stat().st_size
        metrics = samples * len(RUNS) * METRICS_PER_SAMPLE
        print(
            f"{'reused' if reused else 'generated'} {lines:,} record lines ({metrics:,} metrics, "
            f"{samples * len(RUNS) * EVENTS_PER_SAMPLE:,} events), {size / 2**20:,.0f} MiB "
            f"record.jsonl, in {time.perf_counter() - started:.1f}s ({ws})"
        )
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in scenarios}
        for _ in range(repeat):  # interleaved: a burst of load spreads over every scenario
            for scenario in scenarios:
                suffix = scenario.removeprefix("contexta-") if "contexta" in scenario else "pq"
                runs[scenario].append(_run_child(scenario, ws, base / f"out.{suffix}"))
        print(
            f"{'scenario':<18} {'rows':>10} {'median s':>9} {'rows/s':>11} {'cpu s':>6} "
            f"{'rss MiB':>8} {'out MiB':>8}"
        )
        for scenario, measured in runs.items():
            median = statistics.median(r["seconds"] for r in measured)
            rows = measured[0]["rows"]
            summary = {
                "scenario": scenario,
                "rows": rows,
                "median_s": median,
                "rows_per_s": rows / median,
                "median_cpu_s": statistics.median(r["cpu_s"] for r in measured),
                "peak_rss_mib": max(r["peak_rss_mib"] for r in measured),
                "output_mib": measured[0]["output_mib"],
                "runs": measured,
            }
            results.append(summary)
            print(
                f"{scenario:<18} {rows:>10,} {median:>9.2f} {rows / median:>11,.0f} "
                f"{summary['median_cpu_s']:>6.2f} {summary['peak_rss_mib']:>8} "
                f"{summary['output_mib']:>8}   runs: "
                + ", ".join(f"{r['seconds']:.2f}" for r in measured)
            )
        if args.rss_check:
            small = base / f"ws-{max(1, samples // 4)}"
            if not (small / "cache" / "capture").is_dir():
                generate(small, max(1, samples // 4))
            r = _run_child("contexta-parquet", small, base / "out-quarter.parquet")
            results.append({"scenario": "contexta-parquet@1/4", **r})
            full = max(x["peak_rss_mib"] for x in runs["contexta-parquet"])
            print(
                f"peak RSS of the Parquet export: {r['peak_rss_mib']} MiB at {r['rows']:,} "
                f"rows (a 1/4 workspace), {full} MiB at {metrics:,}"
            )
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    print(f"load average at end {_load()}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
