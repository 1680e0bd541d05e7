#!/usr/bin/env python3
"""Read benchmark: list runs and compare two runs of a 1,000,000-record workspace.

A benchmark, not a test: it asserts nothing. The workspace is generated without the
capture pipeline but with the library's own Structs and its local sink, so record.jsonl and
record.index are what a capture writes (one chunk per 64 records, the batch size of a capture
running flat out, coalesced by the sink into index frames of 4,096 lines): two runs, one
``evaluate`` stage, N samples per run, each sample with six metrics (correct 0/1,
judge.score 1-5, latency.ms, prompt.tokens, completion.tokens, cost.usd) and two events,
plus the CONTEXT lines of every run, stage and sample (opened and closed). Every measurement
runs in a fresh subprocess (its peak RSS is its own), three times; the median is reported.

Scenarios (and the clustered shape: the same samples as 4 attempts per item, items in
clusters of 4, with compare timed on it):
  list-runs         Workspace.list_runs(): statuses from CONTEXT, counts from every record
  compare-read      the read half of compare: scan, aggregate per (stage, key) and per sample
  compare           Workspace.compare(a, b): the above plus deltas, artifacts and the paired
                    statistics (bootstrap="auto": with 62,500 pairs per metric, the bootstrap
                    distribution by saddlepoint approximation, not by resampling)
  paired-stats      the paired statistics alone, on runs already read (not on the clock)
  *-json            the same with use_index=False: every record line parsed from its JSON
                    (what a workspace without record.index costs, e.g. one Contexta 1.0.0 wrote)

Each run also reports its CPU time (all of this process's threads), and the load average is
printed at the start and the end: on a machine shared with other work, CPU seconds vary less
than wall time. Peak RSS is measured for three shapes: 1M records with 62,500 samples per run;
1M records with 15,625 samples per run, each metric captured 4 times (same file size, a 4x
smaller answer); 250k records with 15,625 samples per run (a 4x smaller file, the same
answer).

The anchor: DuckDB (the `bench` extra, all cores) computes per run and metric the mean over
samples of each sample's latest value from the same record.jsonl (read_ndjson, "latest" by
file order: _DUCKDB_QUERY); the run prints its time, compare's time over it, and a check that
its means equal compare's. --no-duckdb skips it.

Usage:
  .venv/bin/python benchmarks/read.py                # full run (~4 min on 2 cores)
  .venv/bin/python benchmarks/read.py --quick        # 100k records, one repeat
  .venv/bin/python benchmarks/read.py --json out.json
  .venv/bin/python benchmarks/read.py --dir /tmp/new-dir   # keep the workspaces (a new dir)
  .venv/bin/python benchmarks/read.py --no-duckdb      # without the `bench` extra
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import contexta_async
from contexta_async._format.lines import (
    CONTEXT,
    RECORD,
    SCHEMA_VERSION,
    CaptureLine,
    Envelope,
    EventPayload,
    Item,
    MetricPayload,
    RecordPayload,
    Run,
    SampleObservation,
    StageExecution,
)
from contexta_async.sinks import LocalJsonlSink

PROJECT = "bench"
RUNS = ("baseline", "candidate")
METRICS_PER_SAMPLE = 6
EVENTS_PER_SAMPLE = 2
# One chunk of record.jsonl per 64 records: the batch size the writer settles at when 500
# coroutines capture flat out (benchmarks/capture.py); the sink coalesces the chunks into
# index frames of 4,096 lines, as it does in a capture.
BATCH = 64


def _stamp(i: int) -> str:
    seconds, micros = divmod(i, 1_000_000)
    minutes, seconds = divmod(seconds, 60)
    return f"2026-11-26T05:{minutes % 60:02d}:{seconds:02d}.{micros:06d}Z"


def _run_line(name: str, started: str, status: str, ended: str | None) -> CaptureLine:
    run_ref = f"run:{PROJECT}.{name}"
    return CaptureLine(
        captured_at=ended or started,
        family=CONTEXT,
        payload=Run(
            code_revision=None,
            dataset_ref="dataset:bench.cases",
            ended_at=ended,
            failure_reason=None,
            metadata={},
            name=name,
            project_ref=f"project:{PROJECT}",
            run_ref=run_ref,
            started_at=started,
            status=status,
            tags={},
        ),
        payload_ref=run_ref,
        payload_type="Run",
        sink_name="local-jsonl",
    )


def _stage_line(name: str, started: str, status: str, ended: str | None) -> CaptureLine:
    stage_ref = f"stage:{PROJECT}.{name}.evaluate"
    return CaptureLine(
        captured_at=ended or started,
        family=CONTEXT,
        payload=StageExecution(
            ended_at=ended,
            failure_reason=None,
            order_index=0,
            run_ref=f"run:{PROJECT}.{name}",
            stage_execution_ref=stage_ref,
            stage_name="evaluate",
            started_at=started,
            status=status,
        ),
        payload_ref=stage_ref,
        payload_type="StageExecution",
        sink_name="local-jsonl",
    )


def _record_item(
    stamp: str,
    ref: str,
    record_type: str,
    refs: tuple[str, str, str],
    payload: MetricPayload | EventPayload,
) -> Item:
    """A queued RECORD item for a sample, as the capture API builds it.

    ``refs`` are the enclosing (run, stage, sample) refs.
    """
    run_ref, stage_ref, sample_ref = refs
    return Item(
        family=RECORD,
        payload_type="MetricRecord" if record_type == "metric" else "StructuredEventRecord",
        payload_ref=ref,
        run_ref=run_ref,
        payload=RecordPayload(
            envelope=Envelope(
                batch_execution_ref=None,
                observed_at=stamp,
                record_ref=ref,
                record_type=record_type,
                recorded_at=stamp,
                run_ref=run_ref,
                sample_observation_ref=sample_ref,
                stage_execution_ref=stage_ref,
            ),
            payload=payload,
        ),
    )


# The clustered shape: the same samples as attempts, EPOCHS per item, items in clusters of
# CLUSTER_SIZE (e.g. questions about one passage).
EPOCHS = 4
CLUSTER_SIZE = 4


def generate(
    workspace: Path, samples: int, repeat: int = 1, seed: int = 1, *, clustered: bool = False
) -> int:
    """Write the workspace; return the number of RECORD lines. ``clustered``: sample ``s`` is
    attempt ``s % EPOCHS + 1`` of item ``s // EPOCHS``, in cluster ``item // CLUSTER_SIZE``
    (the same number of samples and records, with clusters and epochs)."""
    capture = workspace / "cache" / "capture"
    if capture.exists():
        # The sink appends: a second run into one --dir would time a workspace twice as big.
        raise SystemExit(f"{workspace} already holds a workspace: give a new or empty --dir")
    capture.mkdir(parents=True)
    # Every line goes through the local sink, RECORD lines in chunks of BATCH lines:
    # record.jsonl, context.jsonl and their indexes are what a capture writes (no fsync here),
    # and the sink writes the indexes' last frames when it is closed.
    sink = LocalJsonlSink(capture, fsync=False)
    rng = random.Random(seed)
    tick = 0
    records = 0

    def write_records(items: list[Item]) -> None:
        for start in range(0, len(items), BATCH):
            part = items[start : start + BATCH]
            for chunk in sink.prepare(part, _stamp(tick)):
                sink.write(chunk)

    def write_context(lines: list[CaptureLine]) -> None:
        # Through the sink too: context.jsonl and context.index as a capture writes them.
        items = [
            Item(CONTEXT, line.payload_type, line.payload_ref, line.payload.run_ref, line.payload)
            for line in lines
        ]
        for chunk in sink.prepare(items, lines[0].captured_at):
            sink.write(chunk)

    for run_index, name in enumerate(RUNS):
        run_ref = f"run:{PROJECT}.{name}"
        stage_ref = f"stage:{PROJECT}.{name}.evaluate"
        quality = 0.70 + 0.05 * run_index  # the candidate is a little better
        context: list[CaptureLine] = []
        started = _stamp(tick)

        write_context(
            [
                _run_line(name, started, "open", None),
                _stage_line(name, started, "open", None),
            ]
        )
        batch: list[Item] = []
        for s in range(samples):
            item, epoch = divmod(s, EPOCHS) if clustered else (s, -1)
            epoch += 1
            component = f"case-{item}-epoch-{epoch}" if clustered else f"case-{s}"
            sample_ref = f"sample:{PROJECT}.{name}.evaluate.{component}"
            refs = (run_ref, stage_ref, sample_ref)
            opened = _stamp(tick)
            correct = float(rng.random() < quality)
            prompt_tokens = rng.randint(50, 400)
            completion = rng.randint(5, 120)
            values: list[tuple[str, float | int, str | None]] = [
                ("correct", correct, "ratio"),
                ("judge.score", rng.randint(1, 5), None),
                ("latency.ms", rng.lognormvariate(5.5, 0.4), "ms"),
                ("prompt.tokens", prompt_tokens, None),
                ("completion.tokens", completion, None),
                ("cost.usd", (prompt_tokens * 0.15 + completion * 0.6) / 1e6, "usd"),
            ]
            for _ in range(repeat):
                for key, value, unit in values:
                    tick += 1
                    stamp = _stamp(tick)
                    ref = f"record:{PROJECT}.{name}.metric-{records:012x}"
                    records += 1
                    metric = MetricPayload(
                        aggregation_scope="step",
                        metric_key=key,
                        subject_ref=sample_ref,
                        summary_basis="raw_observation",
                        tags={},
                        unit=unit,
                        value=value,
                        value_type="int" if isinstance(value, int) else "float",
                    )
                    batch.append(_record_item(stamp, ref, "metric", refs, metric))
                for key in ("request", "response")[:EVENTS_PER_SAMPLE]:
                    tick += 1
                    stamp = _stamp(tick)
                    ref = f"record:{PROJECT}.{name}.event-{records:012x}"
                    records += 1
                    event = EventPayload(
                        attributes={"model": "mock"},
                        event_key=key,
                        level="info",
                        message=f"{key} for case-{s}",
                        subject_ref=sample_ref,
                    )
                    batch.append(_record_item(stamp, ref, "event", refs, event))
            closed = _stamp(tick)
            for status, ended in (("open", None), ("completed", closed)):
                context.append(
                    CaptureLine(
                        captured_at=closed,
                        family=CONTEXT,
                        payload=SampleObservation(
                            batch_execution_ref=None,
                            cluster=f"passage-{item // CLUSTER_SIZE}" if clustered else None,
                            ended_at=ended,
                            epoch=epoch if clustered else None,
                            extensions=(),
                            failure_reason=None,
                            observed_at=opened,
                            run_ref=run_ref,
                            sample_name=f"case-{item}",
                            sample_observation_ref=sample_ref,
                            schema_version=SCHEMA_VERSION,
                            stage_execution_ref=stage_ref,
                            status=status,
                        ),
                        payload_ref=sample_ref,
                        payload_type="SampleObservation",
                        sink_name="local-jsonl",
                    )
                )
            if len(batch) >= 8192:
                write_records(batch)
                batch = []
                write_context(context)
                context = []
        write_records(batch)
        if context:
            write_context(context)
        ended = _stamp(tick)
        write_context(
            [
                _stage_line(name, started, "completed", ended),
                _run_line(name, started, "completed", ended),
            ]
        )
    sink.close()
    return records


# ---- measurement (in a child process) -----------------------------------------------------


def _measure(scenario: str, workspace: str, repeat: int) -> dict[str, Any]:
    import anyio

    from contexta_async.readers import Workspace
    from contexta_async.readers._aggregate import stage_order
    from contexta_async.readers._model import CompareOptions
    from contexta_async.readers._pairing import paired_results

    use_index = "-json" not in scenario
    base = scenario.removesuffix("-json")
    times: list[float] = []
    cpu: list[float] = []
    records = 0

    def cpu_now() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)  # all of this process's threads
        return own.ru_utime + own.ru_stime

    async def once() -> None:
        nonlocal records
        ws = Workspace(workspace, use_index=use_index)
        cpu_started = cpu_now()
        started = time.perf_counter()
        if base == "list-runs":
            runs = await ws.list_runs()
            records = sum(r.counts.metrics + r.counts.events for r in runs)
        elif base == "compare-read":
            agg, _ = await ws._read(list(RUNS), values=True)
            records = agg.scan.records
        elif base == "paired-stats":
            # The statistics alone: the runs are read first, outside the clock.
            agg, refs = await ws._read(list(RUNS), values=True)
            left, right = (agg.metrics(ref) for ref in refs)
            order = stage_order([agg.summary(ref) for ref in refs])
            records = agg.scan.records
            cpu_started = cpu_now()
            started = time.perf_counter()
            paired_results(left, right, order, CompareOptions())
        else:
            result = await ws.compare(*RUNS)
            records = sum(s.counts.metrics + s.counts.events for s in (result.left, result.right))
        times.append(time.perf_counter() - started)
        cpu.append(cpu_now() - cpu_started)

    for _ in range(repeat):
        anyio.run(once)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "scenario": scenario,
        "records": records,
        "times": times,
        "cpu_s": cpu,
        "peak_rss_mib": round(own / 1024, 1),
    }


# DuckDB on the same record.jsonl: the performance anchor (issue 12). The query computes what
# compare's metric table shows for sample-level metrics: per run and metric key, the mean over
# samples of each sample's latest value. "Latest" is the line written last (capture order is
# file order, docs/format.md): row_number() OVER () numbers the lines in file order (DuckDB
# keeps the scan's order for a window with an empty OVER clause) and arg_max keeps the value of
# the highest number per (run, sample, key). DuckDB runs on all cores (its default).
_DUCKDB_COLUMNS = (
    "{payload: 'STRUCT(envelope STRUCT(run_ref VARCHAR), "
    "payload STRUCT(subject_ref VARCHAR, metric_key VARCHAR, value DOUBLE))', "
    "payload_type: 'VARCHAR'}"
)
_DUCKDB_QUERY = """
WITH metric AS (
    SELECT payload.envelope.run_ref AS run, payload.payload.subject_ref AS sample,
           payload.payload.metric_key AS key, payload.payload.value AS value,
           row_number() OVER () AS line
    FROM read_ndjson(?, columns = {columns})
    WHERE payload_type = 'MetricRecord' AND starts_with(payload.payload.subject_ref, 'sample:')
), latest AS (
    SELECT run, sample, key, arg_max(value, line) AS value FROM metric GROUP BY ALL
)
SELECT run, key, avg(value) AS mean, count(*) AS samples FROM latest GROUP BY ALL ORDER BY ALL
"""


def _measure_duckdb(record_file: str, repeat: int) -> dict[str, Any]:
    """DuckDB's per-run, per-metric means (see _DUCKDB_QUERY), timed like a scenario."""
    import duckdb  # the `bench` extra: pip install -e '.[bench]'

    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    query = _DUCKDB_QUERY.format(columns=_DUCKDB_COLUMNS)
    times: list[float] = []
    cpu: list[float] = []
    rows: list[Any] = []
    for _ in range(repeat):
        own = resource.getrusage(resource.RUSAGE_SELF)
        cpu_started = own.ru_utime + own.ru_stime
        started = time.perf_counter()
        rows = con.execute(query, [record_file]).fetchall()
        times.append(time.perf_counter() - started)
        own = resource.getrusage(resource.RUSAGE_SELF)
        cpu.append(own.ru_utime + own.ru_stime - cpu_started)
    threads = con.execute("SELECT current_setting('threads')").fetchone()
    return {
        "scenario": "duckdb-means",
        "version": duckdb.__version__,
        "threads": threads[0] if threads else None,
        "times": times,
        "cpu_s": cpu,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "means": [[run, key, mean, samples] for run, key, mean, samples in rows],
    }


def _compare_means(workspace: str) -> list[list[Any]]:
    """compare's sample-level means per run and key, in the rows DuckDB gives."""
    import anyio

    from contexta_async.readers import Workspace

    async def compare() -> Any:
        return await Workspace(workspace).compare(*RUNS)

    result = anyio.run(compare)
    rows = []
    for row in result.metrics:
        if row.scope == "sample":
            rows.append([result.left.ref, row.key, row.left, row.left_count])
            rows.append([result.right.ref, row.key, row.right, row.right_count])
    return sorted(rows)


def _check_duckdb(duck: list[list[Any]], ours: list[list[Any]]) -> str:
    """'equal' when DuckDB's means are compare's (to 1e-12, relative: DuckDB's avg sums in
    another order than compare's exactly rounded fsum), else what differs."""
    if [row[:2] + row[3:] for row in duck] != [row[:2] + row[3:] for row in ours]:
        return f"DIFFERENT rows: duckdb {duck} vs compare {ours}"
    for (run, key, mean, _), (_, _, expected, _) in zip(duck, ours, strict=True):
        if abs(mean - expected) > 1e-12 * max(abs(expected), 1e-300):
            return f"DIFFERENT mean of {key} in {run}: duckdb {mean!r}, compare {expected!r}"
    return "equal"


def _load() -> str:
    """The 1/5/15-minute load averages: other work on the machine skews every figure."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _run_child(scenario: str, workspace: Path, repeat: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", scenario, str(workspace), str(repeat)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _duckdb_anchor(workspace: Path, repeat: int, results: list[dict[str, Any]]) -> None:
    """DuckDB's per-run, per-metric means beside compare's time, their ratio, and a check
    that both give the same means."""
    duck = _run_child("duckdb-means", workspace, repeat)
    duck["median_s"] = statistics.median(duck["times"])
    duck["median_cpu_s"] = statistics.median(duck["cpu_s"])
    compare = next(r for r in results if r["scenario"] == "compare")
    duck["records"] = compare["records"]
    duck["compare_over_duckdb"] = compare["median_s"] / duck["median_s"]
    done = subprocess.run(
        [sys.executable, __file__, "--child", "compare-means", str(workspace), "1"],
        capture_output=True,
        text=True,
        check=True,
    )
    duck["check"] = _check_duckdb(duck["means"], json.loads(done.stdout))
    results.append(duck)
    rate = compare["records"] / duck["median_s"]
    print(
        f"{'duckdb-means':<20} {duck['median_s']:>9.3f} {rate:>12,.0f} "
        f"{duck['median_cpu_s']:>6.2f} {duck['peak_rss_mib']:>8}   "
        f"runs: {', '.join(f'{t:.3f}' for t in duck['times'])}  "
        f"(duckdb {duck['version']}, {duck['threads']} threads)"
    )
    print(
        f"compare / duckdb-means: {duck['compare_over_duckdb']:.2f} "
        f"(compare {compare['median_s']:.3f} s, duckdb {duck['median_s']:.3f} s); "
        f"means check: {duck['check']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="100k records, one repeat")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument(
        "--dir",
        help="a new or empty directory to generate the workspaces in, kept (default: a temp dir)",
    )
    parser.add_argument(
        "--no-duckdb",
        action="store_true",
        help="skip the DuckDB anchor (it needs the `bench` extra: pip install -e '.[bench]')",
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        scenario, workspace, repeat = args.child
        if scenario == "duckdb-means":
            record_file = str(Path(workspace) / "cache" / "capture" / "record.jsonl")
            print(json.dumps(_measure_duckdb(record_file, int(repeat))))
        elif scenario == "compare-means":
            print(json.dumps(_compare_means(workspace)))
        else:
            print(json.dumps(_measure(scenario, workspace, int(repeat))))
        return
    per_sample = METRICS_PER_SAMPLE + EVENTS_PER_SAMPLE
    total = 100_000 if args.quick else 1_000_000
    repeat = 1 if args.quick else args.repeat
    samples = total // len(RUNS) // per_sample
    base = Path(args.dir or tempfile.mkdtemp(prefix="contexta-read-bench-"))
    results: list[dict[str, Any]] = []
    # To measure another copy of the package (before/after), put it first on the path:
    # PYTHONPATH=/tmp/old .venv/bin/python benchmarks/read.py
    print(f"package {os.path.dirname(contexta_async.__file__)}")
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, "
        f"{total:,} records ({len(RUNS)} runs x {samples:,} samples x {per_sample}), "
        f"load average at start {_load()}"
    )
    try:
        main_ws = base / "main"
        started = time.perf_counter()
        records = generate(main_ws, samples)
        size = (main_ws / "cache" / "capture" / "record.jsonl").stat().st_size
        print(
            f"generated {records:,} records, {size / 2**20:,.0f} MiB record.jsonl, "
            f"in {time.perf_counter() - started:.1f}s"
        )
        scenarios = [
            "list-runs",
            "compare-read",
            "compare",
            "paired-stats",
            "list-runs-json",
            "compare-read-json",
            "compare-json",
        ]
        print(f"{'scenario':<20} {'median s':>9} {'records/s':>12} {'cpu s':>6} {'rss MiB':>8}")
        for scenario in scenarios:
            r = _run_child(scenario, main_ws, repeat)
            r["median_s"] = statistics.median(r["times"])
            r["records_per_s"] = r["records"] / r["median_s"]
            r["shape"] = "main"
            results.append(r)
            r["median_cpu_s"] = statistics.median(r["cpu_s"])
            # The statistics' cost follows the samples and resamples, not the records.
            rate = "-" if scenario == "paired-stats" else f"{r['records_per_s']:,.0f}"
            print(
                f"{scenario:<20} {r['median_s']:>9.3f} {rate:>12} "
                f"{r['median_cpu_s']:>6.2f} "
                f"{r['peak_rss_mib']:>8}   "
                f"runs: {', '.join(f'{t:.3f}' for t in r['times'])}"
            )
        if not args.no_duckdb:
            _duckdb_anchor(main_ws, repeat, results)
        # The same 1M records with clusters and epochs: compare's time beside the main shape's.
        clustered_ws = base / "clustered"
        generate(clustered_ws, samples, clustered=True)
        r = _run_child("compare", clustered_ws, repeat)
        r["shape"] = f"clustered ({EPOCHS} epochs per item, {CLUSTER_SIZE} items per cluster)"
        r["median_s"] = statistics.median(r["times"])
        r["median_cpu_s"] = statistics.median(r["cpu_s"])
        results.append(r)
        plain = next(x for x in results if x["scenario"] == "compare")
        print(
            f"{'compare clustered':<20} {r['median_s']:>9.3f} "
            f"{r['records'] / r['median_s']:>12,.0f} {r['median_cpu_s']:>6.2f} "
            f"{r['peak_rss_mib']:>8}   runs: {', '.join(f'{t:.3f}' for t in r['times'])}  "
            f"({r['median_s'] / plain['median_s']:.2f}x compare)"
        )
        # Peak RSS follows the answer (samples x keys), not the file.
        shapes = [
            ("same file, answer / 4", samples // 4, 4),
            ("file / 4, answer / 4", samples // 4, 1),
        ]
        for label, shape_samples, shape_repeat in shapes:
            ws = base / f"shape-{shape_samples}-{shape_repeat}"
            generate(ws, shape_samples, shape_repeat)
            r = _run_child("compare", ws, 1)
            r["shape"] = label
            r["median_s"] = statistics.median(r["times"])
            results.append(r)
            size = (ws / "cache" / "capture" / "record.jsonl").stat().st_size
            print(
                f"rss {label:<24} {r['records']:>9,} records {size / 2**20:>6,.0f} MiB "
                f"{shape_samples:>7,} samples/run: compare peak RSS {r['peak_rss_mib']} MiB, "
                f"{r['median_s']:.3f}s"
            )
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    print(f"load average at end {_load()}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
