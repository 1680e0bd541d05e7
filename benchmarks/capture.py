#!/usr/bin/env python3
"""Capture benchmark for contexta-async (a benchmark, not a test: it asserts nothing).

Every scenario runs in its own subprocess, in a fresh workspace on a real disk, with fsync on,
so that each run starts cold and its peak RSS is its own. Runs are interleaved (scenario A, B,
C, then A, B, C again...) so that a burst of load from a neighbour spreads over scenarios
instead of spoiling one; the median of ``--repeat`` runs is reported next to every run.

Scenarios (see benchmarks/README.md and docs/performance.md for the method):

  async-1, async-500   records/s from the first capture to ``await ctx.aflush()`` returned, with
                       1 or 500 producer coroutines (each in its own sample, ``await
                       s.metric(...)`` in a loop); every 16th call is timed for the per-call
                       cost (this includes back-pressure waits while the queue is full).
  percall-1/-500       the same calls with fewer records than the queue holds: the call's own
                       cost, never waiting for room.
  latency-1/-500       an offered 10,000 records/s (one paced producer, or 500 producers at
                       1/500 of the rate each); for every record, the time from the capture call
                       to the moment the fsync of the chunk holding it completed.
  saturation-1/-50/-500  event-loop health: 1, 50 or 500 coroutines capture flat out (no
                       other await) while a 1 ms ticker measures how late the loop runs it
                       (p50/p99/max); every call is timed for the worst single wait.
  sync                 the sync face: one thread, no event loop, ``with ctx.run(...)``,
                       ``stage.metric(...)`` in a loop, then ``ctx.flush()``.
  rss-*                peak RSS (``ru_maxrss``) of async-500 and sync at two record counts.
  naive, naive-fsync   a baseline writer like Contexta 1.0.0's: build the line as a dict,
                       ``json.dumps(sort_keys=True)``, open, append, close, per record (the
                       second one also fsyncs every record).
  fsync-probe          append one ~1 KB line and fsync it, 300 times: the disk's floor.

Usage:
  .venv/bin/python benchmarks/capture.py                 # full run (~5 min on 2 cores)
  .venv/bin/python benchmarks/capture.py --quick         # smoke run (~1 min)
  .venv/bin/python benchmarks/capture.py --json out.json --only async-500,latency-1
  .venv/bin/python benchmarks/capture.py --profile       # cProfile of async-500, top costs
  .venv/bin/python benchmarks/capture.py --breakdown     # per-record cost of each stage
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import io
import json
import os
import platform
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SAMPLE_EVERY = 16  # time every 16th awaited call: perf_counter_ns costs ~50 ns, a call ~10 µs
PROJECT = "bench"

# ---------------------------------------------------------------------------------------------
# helpers shared by parent and child


def _percentile(sorted_values: list[int] | list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return float(sorted_values[rank - 1])


def _summary_us(samples_ns: list[int]) -> dict[str, float]:
    values = sorted(samples_ns)
    return {
        "n": len(values),
        "p50_us": _percentile(values, 50) / 1000,
        "p90_us": _percentile(values, 90) / 1000,
        "p99_us": _percentile(values, 99) / 1000,
        "max_us": (values[-1] / 1000) if values else float("nan"),
        # calls that took over 1 ms: in practice, those that waited for room in the queue
        "over_1ms": sum(1 for v in values if v > 1_000_000) / len(values) if values else 0.0,
    }


def _maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _cpu_since(before: resource.struct_rusage) -> dict[str, float]:
    """User and system CPU seconds of this process (all threads) since ``before``."""
    now = resource.getrusage(resource.RUSAGE_SELF)
    return {"user_s": now.ru_utime - before.ru_utime, "sys_s": now.ru_stime - before.ru_stime}


def _count_lines(path: Path) -> int:
    count = 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            count += block.count(b"\n")
    return count


def _filesystem_of(path: Path) -> dict[str, Any]:
    """The mount point, device and type holding ``path`` (from /proc/mounts) and free space."""
    real = os.path.realpath(path)
    best = ("?", "?", "?")
    with contextlib.suppress(OSError), open("/proc/mounts") as mounts:
        for line in mounts:
            device, mount_point, fs_type = line.split()[:3]
            prefix = mount_point.rstrip("/") + "/"
            if (real + "/").startswith(prefix) and len(mount_point) >= len(best[1]):
                best = (device, mount_point, fs_type)
    stat = os.statvfs(real)
    return {
        "path": real,
        "device": best[0],
        "mount_point": best[1],
        "fs_type": best[2],
        "free_gib": round(stat.f_bavail * stat.f_frsize / 2**30, 1),
    }


def _stats_dict(ctx: Any) -> dict[str, Any]:
    import msgspec

    return msgspec.structs.asdict(ctx.statistics())


# ---------------------------------------------------------------------------------------------
# child scenarios: each returns a JSON-able dict


_PIPELINE_OPTIONS: dict[str, Any] = {}  # --queue-size / --max-batch-size, for every context


def _contexta(ws: Path, **extra: Any) -> Any:
    from contexta_async import Contexta

    return Contexta(workspace=ws, config={"project_name": PROJECT}, **_PIPELINE_OPTIONS, **extra)


def _async_throughput(
    ws: Path,
    records: int,
    producers: int,
    sample: bool,
    writer: str = "owned",
    time_every: int = SAMPLE_EVERY,
) -> dict[str, Any]:
    """``writer="owned"``: the producers run inside ``async with Contexta()``; ``"thread"``:
    the context is never entered (``ctx = Contexta()`` then ``async with ctx.run()``). Since
    038aa90 the writer is a daemon thread in both cases; the two labels stay so that older
    results remain comparable, and their spread shows the machine's noise. With ``sample``,
    every ``time_every``-th call is timed."""
    per = records // producers
    total = per * producers
    timings: list[int] = []
    base_rss = 0

    async def main() -> dict[str, Any]:
        nonlocal base_rss
        perf = time.perf_counter_ns
        ctx = _contexta(ws)
        async with ctx if writer == "owned" else contextlib.nullcontext(ctx):
            async with (
                ctx.run("throughput", dataset_ref="dataset:bench.synthetic") as run,
                run.stage("evaluate") as stage,
            ):
                go = asyncio.Event()
                # Warm up: open the files (mkdir + directory fsync) before the clock starts.
                await stage.metric("warmup", 1.0)
                await _aflush(ctx)
                base_rss = _maxrss_kib()

                opened = [0]
                all_open = asyncio.Event()

                async def producer(index: int) -> None:
                    async with stage.sample(f"case-{index}") as s:
                        opened[0] += 1
                        if opened[0] == producers:
                            all_open.set()
                        await go.wait()
                        mine: list[int] = []
                        for j in range(per):
                            if sample and j % time_every == 0:
                                t0 = perf()
                                await s.metric("correct", (j % 100) / 100, unit="ratio")
                                mine.append(perf() - t0)
                            else:
                                await s.metric("correct", (j % 100) / 100, unit="ratio")
                        timings.extend(mine)

                lags: list[int] = []
                running = True

                async def ticker() -> None:
                    # Event-loop lag: how late a 1 ms sleep wakes up while producers capture.
                    while running:
                        due = perf() + 1_000_000
                        await asyncio.sleep(0.001)
                        lags.append(max(0, perf() - due))

                tasks = [asyncio.create_task(producer(i)) for i in range(producers)]
                await all_open.wait()  # every sample is open before the clock starts
                usage = resource.getrusage(resource.RUSAGE_SELF)
                start = time.perf_counter()
                go.set()
                tick = asyncio.create_task(ticker())
                await asyncio.gather(*tasks)
                await _aflush(ctx)
                seconds = time.perf_counter() - start
                cpu = _cpu_since(usage)
                running = False
                await tick
            await ctx.aclose()
            stats = _stats_dict(ctx)
        lag = sorted(lags)
        loop_lag = {
            "ticks": len(lag),
            "p50_ms": _percentile(lag, 50) / 1e6,
            "p99_ms": _percentile(lag, 99) / 1e6,
            "max_ms": (lag[-1] / 1e6) if lag else float("nan"),
        }
        return {"seconds": seconds, "stats": stats, "cpu": cpu, "loop_lag": loop_lag}

    out = asyncio.run(main())
    lines = _count_lines(ws / "cache" / "capture" / "record.jsonl")
    result: dict[str, Any] = {
        "records": total,
        "seconds": out["seconds"],
        "rate": total / out["seconds"],
        "record_lines": lines,
        "complete": lines == total + 1,  # + the warm-up line
        "maxrss_kib": _maxrss_kib(),
        "base_rss_kib": base_rss,
        "cpu": out["cpu"],
        "loop_lag": out["loop_lag"],
        "stats": out["stats"],
    }
    if sample:
        result["per_call"] = _summary_us(timings)
        result["worst_call_ms"] = max(timings, default=0) / 1e6
    return result


async def _aflush(ctx: Any) -> None:
    """The async flush, whichever face this version of the package has (for A/B runs)."""
    aflush = getattr(ctx, "aflush", None)
    await (aflush() if aflush is not None else ctx.flush())


def _saturation(ws: Path, records: int, producers: int) -> dict[str, Any]:
    """Event-loop health while ``producers`` coroutines capture flat out (no other await):
    the async throughput run with every call timed, reported as the 1 ms ticker's lateness
    (p50/p99/max), the worst single call and records/s."""
    result = _async_throughput(ws, records, producers, sample=True, time_every=1)
    lag = result["loop_lag"]
    return {
        "records": result["records"],
        "rate": result["rate"],
        "seconds": result["seconds"],
        "ticks": lag["ticks"],
        "tick_p50_ms": lag["p50_ms"],
        "tick_p99_ms": lag["p99_ms"],
        "tick_max_ms": lag["max_ms"],
        "worst_call_ms": result["worst_call_ms"],
        "complete": result["complete"],
    }


def _sync_throughput(ws: Path, records: int, sample: bool) -> dict[str, Any]:
    perf = time.perf_counter_ns
    timings: list[int] = []
    ctx = _contexta(ws)
    with ctx.run("sync-face", dataset_ref="dataset:bench.synthetic") as run:  # noqa: SIM117
        with run.stage("evaluate") as stage:
            stage.metric("warmup", 1.0)
            ctx.flush()
            base_rss = _maxrss_kib()
            usage = resource.getrusage(resource.RUSAGE_SELF)
            start = time.perf_counter()
            for j in range(records):
                if sample and j % SAMPLE_EVERY == 0:
                    t0 = perf()
                    stage.metric("correct", (j % 100) / 100, unit="ratio")
                    timings.append(perf() - t0)
                else:
                    stage.metric("correct", (j % 100) / 100, unit="ratio")
            ctx.flush()
            seconds = time.perf_counter() - start
            cpu = _cpu_since(usage)
    ctx.close()
    lines = _count_lines(ws / "cache" / "capture" / "record.jsonl")
    result: dict[str, Any] = {
        "records": records,
        "seconds": seconds,
        "rate": records / seconds,
        "record_lines": lines,
        "complete": lines == records + 1,
        "maxrss_kib": _maxrss_kib(),
        "base_rss_kib": base_rss,
        "cpu": cpu,
        "stats": _stats_dict(ctx),
    }
    if sample:
        result["per_call"] = _summary_us(timings)
        result["worst_call_ms"] = max(timings, default=0) / 1e6
    return result


def _latency(
    ws: Path, rate: float, duration: float, producers: int, writer: str = "owned"
) -> dict[str, Any]:
    """Offered load at ``rate`` records/s; capture-to-fsynced latency for every record.

    The sink is a LocalJsonlSink whose write() notes perf_counter_ns() after the real write and
    fsync of each chunk; every record carries its sequence number as its value, which maps the
    chunk's items back to the capture times noted by the producers.
    """
    from contexta_async import LocalJsonlSink

    class TimedSink(LocalJsonlSink):
        """Notes when each batch reached the sink, and when each chunk's write+fsync began/ended."""

        def __init__(self, root: Path) -> None:
            super().__init__(root, fsync=True)
            self.acks: list[tuple[int, int, int, Any]] = []
            self._prepared_at = 0

        def prepare(self, items: Any, captured_at: str) -> Any:
            self._prepared_at = time.perf_counter_ns()
            return super().prepare(items, captured_at)

        def write(self, chunk: Any) -> None:
            began = time.perf_counter_ns()
            super().write(chunk)  # the real write + fsync
            self.acks.append((self._prepared_at, began, time.perf_counter_ns(), chunk.items))

    total = int(rate * duration) // producers * producers
    per = total // producers
    interval_ns = 1e9 / rate * producers  # each producer's own pace
    captured = [0] * total
    sink = TimedSink(ws / "cache" / "capture")

    async def main() -> dict[str, Any]:
        perf = time.perf_counter_ns
        ctx = _contexta(ws, sinks=[sink])
        async with ctx if writer == "owned" else contextlib.nullcontext(ctx):
            async with (
                ctx.run("latency") as run,
                run.stage("evaluate") as stage,
            ):
                await stage.metric("warmup", -1)
                await _aflush(ctx)
                sink.acks.clear()
                start = perf() + 20_000_000  # 20 ms for all producers to be ready

                async def producer(index: int) -> None:
                    async with stage.sample(f"case-{index}") as s:
                        # Stagger the producers evenly over one interval.
                        first = start + index * interval_ns / producers
                        for j in range(per):
                            due = first + j * interval_ns
                            now = perf()
                            if now < due:
                                await asyncio.sleep((due - now) / 1e9)
                            seq = j * producers + index
                            captured[seq] = perf()
                            await s.metric("probe", seq)

                await asyncio.gather(*(producer(i) for i in range(producers)))
                end = perf()
                await _aflush(ctx)
            await ctx.aclose()
            stats = _stats_dict(ctx)
        return {"offered_seconds": (end - start) / 1e9, "stats": stats}

    out = asyncio.run(main())
    latencies: list[int] = []
    queued: list[int] = []  # capture -> the batch reached the sink (queue + hand-over)
    durations: list[int] = []  # write + fsync of one chunk
    chunk_sizes: list[int] = []
    for prepared, began, acked, items in sink.acks:
        n = 0
        for item in items:
            if item.family == "RECORD":
                seq = item.payload.payload.value
                if type(seq) is int and 0 <= seq < total:
                    latencies.append(acked - captured[seq])
                    queued.append(prepared - captured[seq])
                    n += 1
        if n:
            chunk_sizes.append(n)
            durations.append(acked - began)
    summary = _summary_us(latencies)
    to_sink = _summary_us(queued)
    write_fsync = _summary_us(durations)
    return {
        "records": total,
        "producers": producers,
        "offered_rate": rate,
        "achieved_rate": total / out["offered_seconds"],
        "matched": len(latencies),
        "complete": len(latencies) == total,
        "p50_ms": summary["p50_us"] / 1000,
        "p99_ms": summary["p99_us"] / 1000,
        "max_ms": summary["max_us"] / 1000,
        "mean_chunk": statistics.fmean(chunk_sizes) if chunk_sizes else 0.0,
        "to_sink_p50_ms": to_sink["p50_us"] / 1000,
        "to_sink_p99_ms": to_sink["p99_us"] / 1000,
        "write_fsync_p50_ms": write_fsync["p50_us"] / 1000,
        "write_fsync_p99_ms": write_fsync["p99_us"] / 1000,
        "maxrss_kib": _maxrss_kib(),
        "stats": out["stats"],
    }


def _metric_line(seq: int) -> dict[str, Any]:
    """A metric line shaped like Contexta 1.0.0's (reference §4), built per record."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    ref = f"record:bench.naive.metric-{seq:012x}"
    return {
        "captured_at": stamp,
        "family": "RECORD",
        "payload": {
            "envelope": {
                "batch_execution_ref": None,
                "completeness_marker": "complete",
                "correlation_refs": {"session_id": None, "trace_id": None},
                "degradation_marker": "none",
                "deployment_execution_ref": None,
                "extensions": [],
                "observed_at": stamp,
                "operation_context_ref": None,
                "producer_ref": "sdk.python.local",
                "record_ref": ref,
                "record_type": "metric",
                "recorded_at": stamp,
                "run_ref": "run:bench.naive",
                "sample_observation_ref": None,
                "schema_version": "1.0.0",
                "stage_execution_ref": "stage:bench.naive.evaluate",
            },
            "payload": {
                "aggregation_scope": "step",
                "metric_key": "correct",
                "slice_ref": None,
                "subject_ref": "stage:bench.naive.evaluate",
                "summary_basis": "raw_observation",
                "tags": {},
                "unit": "ratio",
                "value": (seq % 100) / 100,
                "value_type": "float",
            },
        },
        "payload_ref": ref,
        "payload_type": "MetricRecord",
        "sink_name": "local-jsonl",
    }


def _naive(ws: Path, records: int, fsync: bool) -> dict[str, Any]:
    path = ws / "cache" / "capture" / "record.jsonl"
    path.parent.mkdir(parents=True)
    start = time.perf_counter()
    for seq in range(records):
        line = json.dumps(_metric_line(seq), sort_keys=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
    seconds = time.perf_counter() - start
    return {
        "records": records,
        "seconds": seconds,
        "rate": records / seconds,
        "complete": _count_lines(path) == records,
        "maxrss_kib": _maxrss_kib(),
    }


def _fsync_probe(ws: Path, count: int) -> dict[str, Any]:
    path = ws / "probe.jsonl"
    line = json.dumps(_metric_line(0), sort_keys=True).encode() + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    samples: list[int] = []
    try:
        for _ in range(count):
            t0 = time.perf_counter_ns()
            os.write(fd, line)
            os.fsync(fd)
            samples.append(time.perf_counter_ns() - t0)
    finally:
        os.close(fd)
    s = _summary_us(samples)
    return {"records": count, "p50_us": s["p50_us"], "p99_us": s["p99_us"], "max_us": s["max_us"]}


def _wakeup_probe(count: int) -> dict[str, Any]:
    """Round trips main thread -> worker thread -> main thread through queues, 1 ms apart.

    The writer's hand-off per batch (event loop -> I/O thread -> event loop) is two such
    wake-ups; on a busy machine each waits for the OS to give the woken thread a CPU.
    """
    import queue
    import threading

    to_worker: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    back: queue.SimpleQueue[int] = queue.SimpleQueue()

    def worker() -> None:
        while (item := to_worker.get()) is not None:
            back.put(item)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    samples: list[int] = []
    for i in range(count):
        t0 = time.perf_counter_ns()
        to_worker.put(i)
        back.get()
        samples.append(time.perf_counter_ns() - t0)
        time.sleep(0.001)  # idle between batches, as under a paced load
    to_worker.put(None)
    thread.join()
    s = _summary_us(samples)
    return {"records": count, "p50_us": s["p50_us"], "p99_us": s["p99_us"], "max_us": s["max_us"]}


def _breakdown(ws: Path, records: int) -> dict[str, Any]:
    """Per-record cost of each stage of the path, each measured alone on one thread.

    Uses private attributes (``_core``, ``_pipeline``); it may need updating when they change.
    """
    from contexta_async import Contexta, LocalJsonlSink

    n = min(records, 60_000)
    batch_size = 8192
    result: dict[str, Any] = {"records": n}

    async def main() -> None:
        sink = LocalJsonlSink(ws / "cache" / "capture", fsync=True)
        async with (
            Contexta(
                workspace=ws, config={"project_name": PROJECT}, sinks=[sink], queue_size=1 << 20
            ) as ctx,
            ctx.run("breakdown") as run,
            run.stage("evaluate") as stage,
            stage.sample("case") as s,
        ):
            core = s._core  # type: ignore[attr-defined]

            def per_record(fn: Callable[[], Any], count: int) -> float:
                t0 = time.perf_counter_ns()
                for _ in range(count):
                    fn()
                return (time.perf_counter_ns() - t0) / count / 1000

            # 1. validation + building the msgspec record (ref, timestamps) in the core
            build = core.metric_item
            result["build_item_us"] = per_record(
                lambda: build("correct", 0.5, "ratio", None, "step", "raw_observation"), n
            )
            items = [
                build("correct", (j % 100) / 100, "ratio", None, "step", "raw_observation")
                for j in range(batch_size)
            ]
            # 2. the whole awaited call with room in the queue (build + queue)
            t0 = time.perf_counter_ns()
            for j in range(n):
                await s.metric("correct", (j % 100) / 100, unit="ratio")
            result["awaited_call_us"] = (time.perf_counter_ns() - t0) / n / 1000
            await _aflush(ctx)
            # 3. stamping + msgspec encode_lines of one batch, per record
            from contexta_async._clock import now

            reps = 5
            t0 = time.perf_counter_ns()
            for _ in range(reps):
                chunks = sink.prepare(items, now())
            result["encode_us"] = (time.perf_counter_ns() - t0) / reps / batch_size / 1000
            result["line_bytes"] = len(chunks[0].data) / batch_size
            # 4. write + fsync of one 8,192-line chunk, per record
            t0 = time.perf_counter_ns()
            for _ in range(reps):
                sink.write(chunks[0])
            result["write_fsync_us"] = (time.perf_counter_ns() - t0) / reps / batch_size / 1000
            result["write_fsync_batch_ms"] = (time.perf_counter_ns() - t0) / reps / 1e6
            # 5. the queue operations alone
            buffer = ctx._pipeline._buffer  # type: ignore[attr-defined]
            # BoundedBuffer.offer, or try_put in copies of the package from before offer
            put = getattr(buffer, "try_put", None) or functools.partial(buffer.offer, line="record")
            t0 = time.perf_counter_ns()
            for item in items:
                put(item)
            result["queue_put_us"] = (time.perf_counter_ns() - t0) / batch_size / 1000
            await _aflush(ctx)

    asyncio.run(main())
    return result


def _profile(ws: Path, records: int, top: int) -> dict[str, Any]:
    """cProfile the async-500 scenario: the event-loop thread and the writer's worker thread.

    cProfile sees one thread, so the writer's delivery step (``Delivery.deliver``, which runs
    in the writer thread) gets a profiler of its own, installed by wrapping the method on the
    instance.
    """
    producers = 500
    per = records // producers
    loop_prof = cProfile.Profile()
    writer_prof = cProfile.Profile()

    async def main() -> float:
        async with _contexta(ws) as ctx:
            pipeline = ctx._pipeline  # type: ignore[attr-defined]
            # The writer's delivery step: Delivery.deliver, or Pipeline._write_batch in copies
            # of the package from before delivery had a module of its own.
            owner, method = (
                (pipeline._delivery, "deliver")
                if hasattr(pipeline, "_delivery")
                else (pipeline, "_write_batch")
            )
            original = getattr(owner, method)

            def profiled(*args: Any) -> None:
                writer_prof.runcall(original, *args)

            setattr(owner, method, profiled)
            async with ctx.run("profile") as run, run.stage("evaluate") as stage:

                async def producer(index: int) -> None:
                    async with stage.sample(f"case-{index}") as s:
                        for j in range(per):
                            await s.metric("correct", (j % 100) / 100, unit="ratio")

                start = time.perf_counter()
                loop_prof.enable()
                await asyncio.gather(*(producer(i) for i in range(producers)))
                await _aflush(ctx)
                loop_prof.disable()
                return time.perf_counter() - start

    seconds = asyncio.run(main())
    total = per * producers

    def top_rows(prof: cProfile.Profile) -> list[dict[str, Any]]:
        stats = pstats.Stats(prof, stream=io.StringIO())
        rows = []
        for (filename, line, func), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            short = filename.split("site-packages/")[-1].split("/work/main/")[-1]
            rows.append(
                {
                    "function": f"{short}:{line}({func})",
                    "calls": calls,
                    "tottime_s": tottime,
                    "cumtime_s": cumtime,
                    "tot_us_per_record": tottime / total * 1e6,
                }
            )
        rows.sort(key=lambda r: r["tottime_s"], reverse=True)
        return rows[:top]

    return {
        "records": total,
        "seconds_under_profiler": seconds,
        "loop_thread": top_rows(loop_prof),
        "writer_thread": top_rows(writer_prof),
    }


def _child(scenario: str, params: dict[str, Any]) -> dict[str, Any]:
    ws = Path(params["workspace"])
    records = int(params.get("records", 0))
    _PIPELINE_OPTIONS.update(params.get("pipeline", {}))
    if scenario in ("async-1", "async-500", "percall-1", "percall-500", "rss-async-500"):
        producers = 1 if scenario.endswith("-1") else 500
        return _async_throughput(ws, records, producers, sample=not scenario.startswith("rss"))
    if scenario == "async-500-thread":
        return _async_throughput(ws, records, 500, sample=True, writer="thread")
    if scenario.startswith("saturation-"):
        return _saturation(ws, records, int(scenario.rsplit("-", 1)[1]))
    if scenario in ("sync", "rss-sync"):
        return _sync_throughput(ws, records, sample=scenario == "sync")
    if scenario.startswith("latency-"):
        producers = 1 if scenario.startswith("latency-1") else 500
        writer = "thread" if scenario.endswith("-thread") else "owned"
        return _latency(ws, params["rate"], params["duration"], producers, writer)
    if scenario in ("naive", "naive-fsync"):
        return _naive(ws, records, fsync=scenario == "naive-fsync")
    if scenario == "fsync-probe":
        return _fsync_probe(ws, records)
    if scenario == "wakeup-probe":
        return _wakeup_probe(records)
    if scenario == "breakdown":
        return _breakdown(ws, records)
    if scenario == "profile":
        return _profile(ws, records, int(params.get("top", 25)))
    raise SystemExit(f"unknown scenario {scenario!r}")


# ---------------------------------------------------------------------------------------------
# parent: plan, run children, report


def _pressure() -> dict[str, int]:
    """Linux PSI "some" totals (µs during which some task waited for CPU / for I/O)."""
    totals = {}
    for resource_name in ("cpu", "io"):
        with contextlib.suppress(OSError, ValueError), open(f"/proc/pressure/{resource_name}") as f:
            first = f.readline().split()
            totals[resource_name] = int(first[-1].split("=")[1])
    return totals


def _run_child(scenario: str, params: dict[str, Any], workdir: Path) -> dict[str, Any]:
    ws = Path(tempfile.mkdtemp(prefix=f"capture-{scenario}-", dir=workdir))
    before, started = _pressure(), time.perf_counter()
    try:
        proc = subprocess.run(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--child",
                scenario,
                "--params",
                json.dumps({**params, "workspace": str(ws)}),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        shutil.rmtree(ws, ignore_errors=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-5:]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    # Share of the run's wall time during which something on the machine waited for a CPU or
    # for I/O: how noisy the machine was while this run ran.
    wall_us = (time.perf_counter() - started) * 1e6
    after = _pressure()
    result["pressure"] = {
        k: round((after[k] - before[k]) / wall_us, 3) for k in after if k in before
    }
    return result


def _default_queue_size() -> int:
    import inspect

    from contexta_async import Contexta

    default = inspect.signature(Contexta).parameters["queue_size"].default
    return default if isinstance(default, int) else 65_536


def _plan(args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, scenario, params) for every scenario to run, in order."""
    n = args.records
    # Half the queue: the calls never wait for room.
    percall_n = min(n, (args.queue_size or _default_queue_size()) // 2)
    rss_small, rss_large = args.rss_records
    plan: list[tuple[str, str, dict[str, Any]]] = [
        ("async-1", "async-1", {"records": n}),
        ("async-500", "async-500", {"records": n}),
        ("async-500-thread", "async-500-thread", {"records": n}),
        ("percall-1", "percall-1", {"records": percall_n}),
        ("percall-500", "percall-500", {"records": percall_n}),
        (
            "latency-1",
            "latency-1",
            {"rate": args.latency_rate, "duration": args.latency_seconds},
        ),
        (
            "latency-500",
            "latency-500",
            {"rate": args.latency_rate, "duration": args.latency_seconds},
        ),
        (
            "latency-500-thread",
            "latency-500-thread",
            {"rate": args.latency_rate, "duration": args.latency_seconds},
        ),
        ("sync", "sync", {"records": n}),
        ("saturation-1", "saturation-1", {"records": n}),
        ("saturation-50", "saturation-50", {"records": n}),
        ("saturation-500", "saturation-500", {"records": n}),
        (f"rss-async-500@{rss_small}", "rss-async-500", {"records": rss_small}),
        (f"rss-async-500@{rss_large}", "rss-async-500", {"records": rss_large}),
        (f"rss-sync@{rss_small}", "rss-sync", {"records": rss_small}),
        (f"rss-sync@{rss_large}", "rss-sync", {"records": rss_large}),
        ("naive", "naive", {"records": args.naive_records}),
        ("naive-fsync", "naive-fsync", {"records": args.naive_fsync_records}),
        ("fsync-probe", "fsync-probe", {"records": 300}),
        ("wakeup-probe", "wakeup-probe", {"records": 1000}),
    ]
    if args.only:
        wanted = set(args.only.split(","))
        plan = [p for p in plan if p[0] in wanted or p[1] in wanted]
    pipeline = {}
    if args.queue_size:
        pipeline["queue_size"] = args.queue_size
    if args.max_batch_size:
        pipeline["max_batch_size"] = args.max_batch_size
    return [(label, scenario, {**params, "pipeline": pipeline}) for label, scenario, params in plan]


def _median_of(runs: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in runs if key in r]
    return statistics.median(values) if values else float("nan")


def _nested_median(runs: list[dict[str, Any]], outer: str, key: str) -> float:
    values = [r[outer][key] for r in runs if outer in r]
    return statistics.median(values) if values else float("nan")


def _fmt_runs(values: list[float], fmt: str) -> str:
    return ", ".join(format(v, fmt) for v in values)


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _report(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> dict[str, Any]:
    """Print the human report; return the summary (medians + targets) for --json."""
    summary: dict[str, Any] = {}
    targets: list[dict[str, Any]] = []
    out = print

    def runs_of(label: str) -> list[dict[str, Any]]:
        return [r for r in results.get(label, []) if "error" not in r]

    def errors_of(label: str) -> list[Any]:
        return [r["error"] for r in results.get(label, []) if "error" in r]

    out("\n== Throughput, fsync on (records/s from first capture to flush() returned) ==")
    for label in ("async-1", "async-500", "async-500-thread", "sync"):
        runs = runs_of(label)
        for err in errors_of(label):
            out(f"  {label}: ERROR {err}")
        if not runs:
            continue
        rates = [r["rate"] for r in runs]
        med = statistics.median(rates)
        complete = all(r["complete"] for r in runs)
        batches = _nested_median(runs, "stats", "batches")
        cpu = statistics.median(
            (r["cpu"]["user_s"] + r["cpu"]["sys_s"]) / r["seconds"] for r in runs
        )
        out(
            f"  {label:<16} median {med:>9,.0f} rec/s   runs [{_fmt_runs(rates, ',.0f')}]   "
            f"{runs[0]['records']:,} records, all on disk: {complete}, batches ~{batches:.0f}, "
            f"CPU {cpu:.2f} cores"
        )
        summary[label] = {
            "median_rate": med,
            "runs": rates,
            "complete": complete,
            "cpu_cores": cpu,
        }
        if all("loop_lag" in r for r in runs):
            lag_max = statistics.median(r["loop_lag"]["max_ms"] for r in runs)
            ticks = statistics.median(r["loop_lag"]["ticks"] for r in runs)
            out(
                f"  {'':<16} event-loop lag while capturing: max {lag_max:,.1f} ms "
                f"({ticks:,.0f} ticks of a 1 ms sleep in {med and runs[0]['seconds']:.1f} s)"
            )
            summary[label]["loop_lag_max_ms"] = lag_max

    out("\n== Per-call cost of an awaited metric() (every 16th call timed; µs) ==")
    for label, note in (
        ("async-1", "saturated run, includes waits for room"),
        ("async-500", "saturated run, includes waits for room"),
        ("async-500-thread", "the same, context never entered"),
        ("percall-1", "queue never full: the call's own cost"),
        ("percall-500", "queue never full: the call's own cost"),
        ("sync", "sync face stage.metric(), saturated run"),
    ):
        runs = [r for r in runs_of(label) if "per_call" in r]
        for err in errors_of(label) if label.startswith("percall") else []:
            out(f"  {label}: ERROR {err}")
        if not runs:
            continue
        p50 = [r["per_call"]["p50_us"] for r in runs]
        p99 = [r["per_call"]["p99_us"] for r in runs]
        waited = statistics.median(r["per_call"]["over_1ms"] for r in runs)
        out(
            f"  {label:<16} p50 {statistics.median(p50):6.2f}  p99 {statistics.median(p99):8.2f}"
            f"  >1ms {waited:5.1%}   runs p50 [{_fmt_runs(p50, '.2f')}] "
            f"p99 [{_fmt_runs(p99, '.1f')}]  ({note})"
        )
        summary.setdefault("per_call", {})[label] = {
            "p50_us": statistics.median(p50),
            "p99_us": statistics.median(p99),
            "over_1ms": waited,
            "runs_p50": p50,
            "runs_p99": p99,
        }

    out(f"\n== Capture -> fsynced latency at an offered {args.latency_rate:,.0f} records/s ==")
    for label in ("latency-1", "latency-500", "latency-500-thread"):
        runs = runs_of(label)
        for err in errors_of(label):
            out(f"  {label}: ERROR {err}")
        if not runs:
            continue
        p50 = [r["p50_ms"] for r in runs]
        p99 = [r["p99_ms"] for r in runs]
        achieved = _median_of(runs, "achieved_rate")
        chunk = _median_of(runs, "mean_chunk")
        complete = all(r["complete"] for r in runs)
        to_sink = _median_of(runs, "to_sink_p99_ms")
        write_fsync = _median_of(runs, "write_fsync_p99_ms")
        out(
            f"  {label:<18} p50 {statistics.median(p50):5.2f} ms  p99 "
            f"{statistics.median(p99):6.2f} ms   runs p99 [{_fmt_runs(p99, '.2f')}]\n"
            f"  {'':<18} p99 of: capture->sink {to_sink:.2f} ms, write+fsync {write_fsync:.2f} ms;"
            f" achieved {achieved:,.0f} rec/s, {chunk:.1f} records/fsync, all matched: {complete}"
        )
        summary[label] = {
            "p50_ms": statistics.median(p50),
            "p99_ms": statistics.median(p99),
            "runs_p99_ms": p99,
            "achieved_rate": achieved,
            "mean_records_per_fsync": chunk,
            "to_sink_p99_ms": to_sink,
            "write_fsync_p99_ms": write_fsync,
        }

    out("\n== Peak RSS (ru_maxrss, each run in its own process; MiB) ==")
    small, large = args.rss_records
    for kind in ("rss-async-500", "rss-sync"):
        peaks = {}
        for count in (small, large):
            label = f"{kind}@{count}"
            runs = runs_of(label)
            for err in errors_of(label):
                out(f"  {label}: ERROR {err}")
            if not runs:
                continue
            peak = _median_of(runs, "maxrss_kib") / 1024
            base = _median_of(runs, "base_rss_kib") / 1024
            rate = _median_of(runs, "rate")
            queued = _nested_median(runs, "stats", "peak_queued")
            peaks[count] = peak
            each = _fmt_runs([r["maxrss_kib"] / 1024 for r in runs], ".1f")
            out(
                f"  {label:<22} peak {peak:7.1f}   before capture {base:6.1f}   most lines "
                f"queued {queued:>8,.0f}   runs [{each}]   ({rate:,.0f} rec/s)"
            )
        if len(peaks) == 2:
            growth = peaks[large] / peaks[small] - 1
            summary[kind] = {"peak_mib": peaks, "growth": growth}
            out(f"  {kind}: {large:,} vs {small:,} records -> peak grows {growth:+.1%}")

    out("\n== Baselines ==")
    for label, note in (
        ("naive", "json.dumps(sort_keys) + open/append/close per record, no fsync"),
        ("naive-fsync", "the same + fsync per record"),
    ):
        runs = runs_of(label)
        if runs:
            med = _median_of(runs, "rate")
            out(f"  {label:<12} median {med:>10,.0f} rec/s  ({note})")
            summary[label] = {"median_rate": med, "runs": [r["rate"] for r in runs]}
    probe = runs_of("fsync-probe")
    if probe:
        p50 = _median_of(probe, "p50_us")
        p99 = _median_of(probe, "p99_us")
        out(f"  fsync-probe  append+fsync of one line: p50 {p50:.0f} µs, p99 {p99:.0f} µs")
        summary["fsync_probe"] = {"p50_us": p50, "p99_us": p99}
    wakeup = runs_of("wakeup-probe")
    if wakeup:
        p50 = _median_of(wakeup, "p50_us")
        p99 = _median_of(wakeup, "p99_us")
        out(
            f"  wakeup-probe thread round trip (queue put -> other thread -> back): "
            f"p50 {p50:.0f} µs, p99 {p99:.0f} µs"
        )
        summary["wakeup_probe"] = {"p50_us": p50, "p99_us": p99}
    if "async-500" in summary and "naive" in summary:
        ratio = summary["async-500"]["median_rate"] / summary["naive"]["median_rate"]
        out(f"  async-500 (fsync on) / naive (no fsync): {ratio:.1f}x")
        summary["ratio_async500_vs_naive"] = ratio
    if "async-500" in summary:
        out(
            f"  async-500 / Contexta 1.0.0's documented ~3,400 rec/s: "
            f"{summary['async-500']['median_rate'] / 3400:.0f}x"
        )

    saturation = [f"saturation-{n}" for n in (1, 50, 500)]
    if any(runs_of(label) or errors_of(label) for label in saturation):
        out("\n== Event loop under saturation (producers capture flat out; a 1 ms ticker) ==")
        out("  medians of the runs: records/s, ticker lateness p50 / p99 / max, worst call")
    for label in saturation:
        runs = runs_of(label)
        for err in errors_of(label):
            out(f"  {label}: ERROR {err}")
        if not runs:
            continue
        keys = ("rate", "tick_p50_ms", "tick_p99_ms", "tick_max_ms", "worst_call_ms")
        summary[label] = {k: statistics.median(r[k] for r in runs) for k in keys}
        m = summary[label]
        out(
            f"  {label:<15} {m['rate']:>9,.0f} rec/s   ticker {m['tick_p50_ms']:.2f} / "
            f"{m['tick_p99_ms']:.2f} / {m['tick_max_ms']:.2f} ms   worst call "
            f"{m['worst_call_ms']:.2f} ms   (p99 runs: "
            f"{_fmt_runs([r['tick_p99_ms'] for r in runs], '.1f')})"
        )

    out("\n== Targets (informational) ==")

    def target(name: str, value: float | None, ok: bool | None, shown: str) -> None:
        mark = "n/a " if ok is None else _verdict(ok)
        out(f"  [{mark}] {name}: {shown}")
        targets.append({"target": name, "value": value, "pass": ok})

    a500 = summary.get("async-500")
    target(
        ">= 100,000 metric records/s from 500 coroutines, fsync on",
        a500 and a500["median_rate"],
        None if not a500 else a500["median_rate"] >= 100_000,
        f"{a500['median_rate']:,.0f} rec/s" if a500 else "not run",
    )
    for label in ("latency-1", "latency-500", "latency-500-thread"):
        lat = summary.get(label)
        target(
            f"p99 capture-to-fsynced <= 5 ms at {args.latency_rate:,.0f} rec/s ({label})",
            lat and lat["p99_ms"],
            None if not lat else lat["p99_ms"] <= 5.0,
            f"p99 {lat['p99_ms']:.2f} ms" if lat else "not run",
        )
    sync = summary.get("sync")
    target(
        "sync face >= 50,000 records/s",
        sync and sync["median_rate"],
        None if not sync else sync["median_rate"] >= 50_000,
        f"{sync['median_rate']:,.0f} rec/s" if sync else "not run",
    )
    sat = summary.get("saturation-500")
    target(
        "ticker p99 <= 10 ms with 500 producers capturing flat out",
        sat and sat["tick_p99_ms"],
        None if not sat else sat["tick_p99_ms"] <= 10.0,
        f"p99 {sat['tick_p99_ms']:.1f} ms" if sat else "not run",
    )
    for kind in ("rss-async-500", "rss-sync"):
        rss = summary.get(kind)
        target(
            f"peak RSS flat ({kind}, growth < 10% for {large // small}x the records)",
            rss and rss["growth"],
            None if not rss else rss["growth"] < 0.10,
            f"{rss['growth']:+.1%}" if rss else "not run",
        )
    summary["targets"] = targets
    return summary


def _headline(res: dict[str, Any]) -> str:
    if "error" in res:
        return "ERROR"
    if "rate" in res:
        shown = f"{res['rate']:,.0f} rec/s"
    elif "p99_ms" in res:
        shown = f"p99 {res['p99_ms']:.2f} ms"
    else:
        shown = f"p50 {res['p50_us']:.0f} µs"
    pressure = res.get("pressure", {})
    if pressure:
        shown += f"  [stall cpu {pressure.get('cpu', 0):.0%} io {pressure.get('io', 0):.0%}]"
    return shown


def _machine(workdir: Path) -> dict[str, Any]:
    try:
        import contexta_async

        version = contexta_async.__version__
        package = os.path.dirname(contexta_async.__file__)
    except Exception as exc:  # report, do not fail: the children will say what is wrong
        version, package = f"import failed: {exc}", "?"
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    # The commit of the package that was imported (not of this script): with PYTHONPATH
    # pointing at a copy outside any checkout there is none.
    where = package if os.path.isdir(package) else os.path.dirname(os.path.abspath(__file__))
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=where,
            check=False,
        ).stdout.strip()
        or "none (not a git checkout)"
    )
    if commit[0] != "n":
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            cwd=where,
            check=False,
        ).stdout.strip()
        if dirty:
            commit += " + uncommitted changes"
    return {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in load],
        "contexta_async": version,
        "package_path": package,
        "git_commit": commit,
        "filesystem": _filesystem_of(workdir),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=None, help="records per throughput run")
    parser.add_argument("--repeat", type=int, default=None, help="runs per scenario (default 3)")
    parser.add_argument("--quick", action="store_true", help="small counts, 1 run: a smoke run")
    parser.add_argument(
        "--json", metavar="PATH", help="also write the results as JSON ('-': stdout)"
    )
    parser.add_argument("--only", help="comma-separated scenario labels to run")
    parser.add_argument(
        "--workdir", default=None, help="where workspaces are created (default: system temp dir)"
    )
    parser.add_argument("--latency-rate", type=float, default=10_000.0)
    parser.add_argument("--latency-seconds", type=float, default=None)
    parser.add_argument(
        "--rss-records", default=None, help="two counts for the RSS runs (default 100000,1000000)"
    )
    parser.add_argument("--queue-size", type=int, help="Contexta(queue_size=) for every run")
    parser.add_argument("--max-batch-size", type=int, help="Contexta(max_batch_size=)")
    parser.add_argument("--profile", action="store_true", help="cProfile async-500 and exit")
    parser.add_argument("--breakdown", action="store_true", help="per-stage costs and exit")
    parser.add_argument("--top", type=int, default=25, help="rows of --profile output")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        result = _child(args.child, json.loads(args.params))
        print(json.dumps(result))
        return 0

    quick = args.quick
    args.records = args.records or (50_000 if quick else 500_000)
    args.repeat = args.repeat or (1 if quick else 3)
    args.latency_seconds = args.latency_seconds or (1.0 if quick else 5.0)
    rss = args.rss_records or ("100000,300000" if quick else "100000,1000000")
    args.rss_records = tuple(int(x) for x in rss.split(","))
    args.naive_records = 10_000 if quick else 50_000
    args.naive_fsync_records = 300 if quick else 1_000
    workdir = Path(args.workdir or tempfile.gettempdir()).absolute()
    workdir.mkdir(parents=True, exist_ok=True)

    machine = _machine(workdir)
    fs = machine["filesystem"]
    print(
        f"contexta-async {machine['contexta_async']} from {machine['package_path']} "
        f"(commit {machine['git_commit']})"
    )
    print(
        f"{machine['date_utc']}  Python {machine['python']}  {machine['cpus']} CPUs "
        f"({machine['cpu']})  load {machine['loadavg_at_start']}"
    )
    print(
        f"workspaces in {fs['path']}: {fs['fs_type']} on {fs['device']} (mounted at "
        f"{fs['mount_point']}), {fs['free_gib']} GiB free; fsync on"
    )
    if fs["fs_type"] in ("tmpfs", "ramfs"):
        print("WARNING: this is a memory filesystem; fsync costs nothing here. Use --workdir.")

    if args.profile or args.breakdown:
        scenario = "profile" if args.profile else "breakdown"
        records = args.records if args.profile else min(args.records, 60_000)
        pipeline = {
            k: v
            for k, v in (("queue_size", args.queue_size), ("max_batch_size", args.max_batch_size))
            if v
        }
        res = _run_child(
            scenario, {"records": records, "top": args.top, "pipeline": pipeline}, workdir
        )
        if "error" in res:
            print("ERROR", *res["error"], sep="\n")
            return 1
        if args.profile:
            print(
                f"\ncProfile of async-500: {res['records']:,} records in "
                f"{res['seconds_under_profiler']:.2f} s under the profiler (slower than real)"
            )
            for thread in ("loop_thread", "writer_thread"):
                print(f"\n-- {thread.replace('_', ' ')}: top by own time --")
                print(f"  {'µs/record':>9} {'calls':>9}  function")
                for row in res[thread]:
                    print(f"  {row['tot_us_per_record']:9.3f} {row['calls']:9d}  {row['function']}")
        else:
            print(f"\nPer-record cost of each stage, alone, one thread ({res['records']:,}):")
            for key, value in res.items():
                if isinstance(value, (int, float)):
                    print(f"  {key:<22} {value:10.3f}")
        if args.json:
            text = json.dumps({"machine": machine, scenario: res}, indent=2)
            if args.json == "-":
                print(text)
            else:
                Path(args.json).write_text(text + "\n")
        return 0

    plan = _plan(args)
    print(f"{len(plan)} scenarios x {args.repeat} runs, interleaved; {args.records:,} records")
    chosen = {k: v for k, v in vars(args).items() if k in ("queue_size", "max_batch_size") and v}
    print(f"pipeline options: {chosen or 'library defaults'}")
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in plan}
    started = time.perf_counter()
    for round_index in range(args.repeat):
        for label, scenario, params in plan:
            t0 = time.perf_counter()
            res = _run_child(scenario, params, workdir)
            results[label].append(res)
            print(
                f"  run {round_index + 1}/{args.repeat} {label:<24} {_headline(res):>42}  "
                f"({time.perf_counter() - t0:.1f} s)",
                flush=True,
            )
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    machine["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(f"load average at the end: {machine['loadavg_at_end']}")
    summary = _report(results, args)
    if args.json:
        doc = {
            "machine": machine,
            "options": {
                "records": args.records,
                "repeat": args.repeat,
                "latency_rate": args.latency_rate,
                "latency_seconds": args.latency_seconds,
                "rss_records": list(args.rss_records),
                "queue_size": args.queue_size,
                "max_batch_size": args.max_batch_size,
            },
            "summary": summary,
            "runs": results,
        }
        text = json.dumps(doc, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
            print(f"\nJSON written to {args.json}")
    crashed = [label for label, runs in results.items() if any("error" in r for r in runs)]
    if crashed:
        print(f"\nscenarios that crashed: {', '.join(crashed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
