"""Request latency of the service example with capture on versus off.

Starts ``examples/service/app.py`` under uvicorn (a subprocess on 127.0.0.1), warms it up, then
sends ``--requests`` POST /judge requests at a fixed ``--rate`` (open loop, httpx.AsyncClient)
and records each request's latency on the client. Capture on and off alternate, ``--repeats``
times each, every time in a fresh server process with a fresh workspace; the figures are the
medians over the repeats of each run's median and p99.

Three profiles: a ``5-30 ms`` mock model (a realistic remote judge) at the rate; a ``0 ms``
model (it answers at once, so a request is only HTTP + JSON + capture and the overhead shows)
at the rate; and the ``0 ms`` model with one request at a time (``serial``), the least noisy.
Client and server share the machine, so keep it otherwise idle for clean figures.

    .venv/bin/python benchmarks/service_overhead.py            # about two minutes
    .venv/bin/python benchmarks/service_overhead.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

ROOT = Path(__file__).resolve().parents[1]
SERVICE_DIR = ROOT / "examples" / "service"
# (mock model latency, requests at the given rate or one at a time)
PROFILES = {
    "5-30 ms, rate": ("5,30", True),
    "0 ms, rate": ("0,0", True),
    "0 ms, serial": ("0,0", False),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(workspace: str, capture: bool, latency: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {
        **os.environ,
        "CONTEXTA_SERVICE_WORKSPACE": workspace,
        "CONTEXTA_SERVICE_CAPTURE": "1" if capture else "0",
        "CONTEXTA_SERVICE_LATENCY_MS": latency,
    }
    command = [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", str(SERVICE_DIR)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    command += ["--no-access-log"]
    proc = subprocess.Popen(command, env=env, cwd=ROOT)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return proc, base_url
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the service did not start")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    if proc.wait(timeout=60) != 0:
        raise RuntimeError(f"the service exited with {proc.returncode}")


def _body(i: int) -> dict[str, str]:
    reference = f"the capital of country {i} is city {i}"
    answer = reference if i % 2 == 0 else f"it might be town {i + 7}"
    return {"question": f"Capital of country {i}?", "answer": answer, "reference": reference}


async def _load(
    base_url: str, requests: int, rate: float | None
) -> tuple[list[float], list[float], float]:
    """Open loop: request ``i`` is sent at ``i / rate`` seconds, whatever the earlier ones do.
    With ``rate=None``, one request at a time (each sent when the previous one returned).

    A closed loop at high concurrency measures queueing in a saturated server (latency =
    clients / throughput), not what capture adds to a request; a fixed rate below capacity
    does. Returns the client-side latencies, the server-side time spent around the model call
    (handler minus model, from the Server-Timing header: parsing, capture, response) and how
    far behind schedule the last send was (seconds).
    """
    latencies: list[float] = []
    around: list[float] = []
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:

        async def one(i: int) -> None:
            started = time.perf_counter()
            response = await client.post("/judge", json=_body(i))
            latencies.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
            timing = dict(
                part.strip().split(";dur=") for part in response.headers["server-timing"].split(",")
            )
            around.append(float(timing["app"]) - float(timing["model"]))

        lag = 0.0
        if rate is None:
            for i in range(requests):
                await one(i)
            return latencies, around, lag
        async with anyio.create_task_group() as tg:
            start = anyio.current_time()
            for i in range(requests):
                due = start + i / rate
                now = anyio.current_time()
                if due > now:
                    await anyio.sleep(due - now)
                else:
                    lag = now - due
                tg.start_soon(one, i)
    return latencies, around, lag


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(repeats: int, requests: int, rate: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for profile, (latency, at_rate) in PROFILES.items():
        runs: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
        for _ in range(repeats):
            for mode in ("off", "on"):  # alternate so drift hits both modes alike
                with tempfile.TemporaryDirectory() as workspace:
                    proc, base_url = _start(workspace, mode == "on", latency)
                    try:
                        pace = rate if at_rate else None
                        anyio.run(_load, base_url, 100, pace)  # warm-up
                        latencies, around, lag = anyio.run(_load, base_url, requests, pace)
                    finally:
                        _stop(proc)
                runs[mode].append(
                    {
                        "median_ms": statistics.median(latencies),
                        "p99_ms": _p(latencies, 0.99),
                        "server_around_median_us": statistics.median(around) * 1000,
                        "server_around_p99_us": _p(around, 0.99) * 1000,
                        "schedule_lag_ms": lag * 1000,
                    }
                )
        results[profile] = {
            mode: {key: statistics.median(run[key] for run in mode_runs) for key in mode_runs[0]}
            for mode, mode_runs in runs.items()
        }
        results[profile]["runs"] = runs
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--requests", type=int, default=600, help="per run")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    results = measure(args.repeats, args.requests, args.rate)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"{args.requests} requests at {args.rate:g}/s per run, {args.repeats} runs per mode; "
        f"medians over runs"
    )
    print(
        f"{'profile':<14} {'capture':<8} {'median ms':>10} {'p99 ms':>8} "
        f"{'around µs':>10} {'p99 µs':>8} {'lag ms':>7}"
    )
    for profile, figures in results.items():
        for mode in ("off", "on"):
            f = figures[mode]
            print(
                f"{profile:<14} {mode:<8} {f['median_ms']:>10.2f} {f['p99_ms']:>8.2f} "
                f"{f['server_around_median_us']:>10.0f} {f['server_around_p99_us']:>8.0f} "
                f"{f['schedule_lag_ms']:>7.1f}"
            )
        on, off = figures["on"], figures["off"]
        print(
            f"{'':<14} {'on - off':<8} {on['median_ms'] - off['median_ms']:>+10.2f} "
            f"{on['p99_ms'] - off['p99_ms']:>+8.2f} "
            f"{on['server_around_median_us'] - off['server_around_median_us']:>+10.0f} "
            f"{on['server_around_p99_us'] - off['server_around_p99_us']:>+8.0f}"
        )
    print(
        "median/p99 ms: client-side request latency; around µs: server-side handler time "
        "minus the model call (parsing, capture, response); lag: how far the sender fell "
        "behind its schedule"
    )


if __name__ == "__main__":
    main()
