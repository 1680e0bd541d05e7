#!/usr/bin/env python3
"""View benchmark: first render of ``/`` on a 1,000,000-record workspace, and the update
after 1,000 new records.

A benchmark, not a test: it asserts nothing. The workspace is benchmarks/read.py's
(``generate``: two runs, 62,500 samples each, 1,000,000 RECORD lines, ~1 GB). Each repeat
runs in a fresh subprocess, which:

  first-render  starts the view (``create_app`` under a real uvicorn server on a loopback
                port) and times from then to the first ``GET /`` answered in full: the
                server's first read of the whole workspace plus the page.
  update        opens ``/events`` as a page does, appends the lines of a new run of 1,000
                metric records (captured with the library beforehand, into a scratch
                workspace, so that they arrive at once), and times from the append to the
                refetched ``<main>`` showing the run with its 1,000 records, refetching on
                each event as a page does: one poll interval (0.25 s) at most, plus the fold
                of only the appended lines and the page.

The median of the repeats is reported, with every run, the CPU time of the first render
(all threads of the server process: less sensitive to a shared machine than wall time), the
peak RSS of each server process, and the load average at the start and the end (the
machine may be shared).

Usage:
  .venv/bin/python benchmarks/view.py                 # 1M records, 3 repeats
  .venv/bin/python benchmarks/view.py --quick         # 100k records, one repeat
  .venv/bin/python benchmarks/view.py --dir /tmp/new-dir   # keep the workspace (a new dir)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

NEW_RECORDS = 1_000


def _get(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read().decode()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status}")
        return body
    finally:
        conn.close()


def _new_lines(tag: str) -> dict[str, bytes]:
    """The lines of a new run of NEW_RECORDS metric records, captured with the library into a
    scratch workspace: appended to the benchmark's in one write per file, they arrive at once."""
    from contexta_async import Contexta

    scratch = Path(tempfile.mkdtemp(prefix="view-bench-new-"))
    try:
        config = {"project_name": "bench"}
        with Contexta(workspace=scratch, config=config) as ctx, ctx.run(tag) as run:
            for i in range(NEW_RECORDS):
                run.metric("late.value", float(i))
        capture = scratch / "cache" / "capture"
        return {name: (capture / name).read_bytes() for name in ("context.jsonl", "record.jsonl")}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return own.ru_utime + own.ru_stime


def _child(workspace: str, tag: str) -> dict[str, Any]:
    from contexta_async.view import create_app
    from contexta_async.view._serve import server as view_server

    lines = _new_lines(tag)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.listen(64)  # the first request waits in the backlog until uvicorn accepts it
    cpu = _cpu()
    started = time.perf_counter()
    app = create_app(workspace, poll_interval=0.25)
    server = view_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    page = _get(port, "/")
    first_render = time.perf_counter() - started
    first_cpu = _cpu() - cpu
    assert "run:bench.baseline" in page

    # An event stream, as a page holds one; read on its own thread.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("GET", "/events")
    stream = conn.getresponse()
    events: list[float] = []

    def read_events() -> None:
        for raw in stream:
            if raw.startswith(b"data: "):
                events.append(time.perf_counter())

    threading.Thread(target=read_events, daemon=True).start()
    while not events:
        time.sleep(0.01)
    seen = len(events)
    ref = f"run:bench.{tag}"
    capture = Path(workspace) / "cache" / "capture"
    appended = time.perf_counter()
    for name in ("context.jsonl", "record.jsonl"):
        with open(capture / name, "ab") as handle:
            handle.write(lines[name])
    # As a page does: on each event, fetch <main> again; done once it shows the new run whole.
    while True:
        while len(events) == seen:
            time.sleep(0.002)
        seen = len(events)
        fragment = _get(port, "/?fragment=1")
        if f"data-ref='{ref}'" in fragment and f"<td class=num>{NEW_RECORDS}</td>" in fragment:
            break
    shown = time.perf_counter()
    server.should_exit = True
    conn.close()
    thread.join(10)
    return {
        "first_render_s": first_render,
        "first_render_cpu_s": first_cpu,
        "update_s": shown - appended,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="100k records, one repeat")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", help="generate the workspace here (a new or empty dir); kept")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(*args.child)))
        return
    from read import generate

    samples = 6_250 if args.quick else 62_500
    repeat = 1 if args.quick else args.repeat
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="view-bench-"))
    workspace = root / "ws"
    try:
        print(f"load average at start: {_load()}")
        records = generate(workspace, samples)
        size = (workspace / "cache" / "capture" / "record.jsonl").stat().st_size
        print(f"workspace: {records:,} records, record.jsonl {size / 1e6:.0f} MB")
        runs = []
        for i in range(repeat):
            done = subprocess.run(
                [sys.executable, __file__, "--child", str(workspace), f"late-{i}"],
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            runs.append(result)
            print(
                f"  run {i + 1}: first render {result['first_render_s']:.2f} s "
                f"(CPU {result['first_render_cpu_s']:.2f} s), update {result['update_s']:.3f} s, "
                f"peak RSS {result['peak_rss_mib']:.0f} MiB"
            )
        for key, label in (
            ("first_render_s", "first render of /"),
            ("first_render_cpu_s", "CPU time of the first render"),
            ("update_s", f"update after {NEW_RECORDS:,} new records"),
        ):
            print(f"median {label}: {statistics.median(r[key] for r in runs):.3f} s")
        print(f"load average at end: {_load()}")
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
