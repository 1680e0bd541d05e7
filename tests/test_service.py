"""The service example under a real uvicorn server: every request's records reach the disk."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx

ROOT = Path(__file__).resolve().parents[1]
SERVICE_DIR = ROOT / "examples" / "service"
REQUESTS = 300


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(workspace: Path, **settings: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run the example under uvicorn in a subprocess; stop it with SIGINT (graceful)."""
    env = {
        **os.environ,
        "CONTEXTA_SERVICE_WORKSPACE": str(workspace),
        "CONTEXTA_SERVICE_RUN": "live",
        **settings,
    }
    for _attempt in range(3):  # the free port may be taken between probe and bind
        port = _free_port()
        command = [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", str(SERVICE_DIR)]
        command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        proc = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        if proc.poll() is None:
            break
    else:
        _, err = proc.communicate()
        raise AssertionError(f"the server did not start: {err.decode()}")
    try:
        yield base_url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _stop(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err.decode()


def _lines(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n"), f"{path.name} ends with a torn line"
    return [json.loads(line) for line in text.splitlines()]


def _case(i: int) -> dict[str, str]:
    # Half of the answers repeat the reference, half answer something else.
    reference = f"the capital of country {i} is city {i}"
    answer = reference if i % 2 == 0 else f"it might be town {i + 7}"
    return {
        "question": f"What is the capital of country {i}?",
        "answer": answer,
        "reference": reference,
        "case_id": f"case-{i}",
    }


async def _send_all(base_url: str, n: int) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = [{} for _ in range(n)]
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:

        async def one(i: int) -> None:
            response = await client.post("/judge", json=_case(i))
            assert response.status_code == 200, response.text
            results[i] = response.json()

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
    return results


async def test_concurrent_requests_are_all_durable_and_the_run_completes_on_shutdown(
    tmp_path: Path,
) -> None:
    with serve(tmp_path) as (base_url, proc):
        results = await _send_all(base_url, REQUESTS)
        async with httpx.AsyncClient(base_url=base_url) as client:
            stats = (await client.get("/stats")).json()
        code, err = _stop(proc)
    assert code == 0, err
    assert stats["dropped"] == 0 and stats["failed"] == 0

    sample_refs = [r["sample_ref"] for r in results]
    assert len(set(sample_refs)) == REQUESTS
    assert all(ref.startswith("sample:judge-service.live.judge.req-") for ref in sample_refs)
    assert {r["correct"] for r in results} == {True, False}

    capture = tmp_path / "cache" / "capture"
    state: dict[str, dict[str, Any]] = {}
    for line in _lines(capture / "context.jsonl"):
        assert line["family"] == "CONTEXT"
        state[line["payload_ref"]] = line["payload"]  # the newest line per ref wins
    assert state["run:judge-service.live"]["status"] == "completed"
    assert state["run:judge-service.live"]["ended_at"] is not None
    assert state["stage:judge-service.live.judge"]["status"] == "completed"
    for ref in sample_refs:
        assert state[ref]["status"] == "completed", ref

    metrics: dict[str, dict[str, dict[str, Any]]] = {}
    for line in _lines(capture / "record.jsonl"):
        envelope, payload = line["payload"]["envelope"], line["payload"]["payload"]
        assert envelope["run_ref"] == "run:judge-service.live"
        metrics.setdefault(envelope["sample_observation_ref"], {})[payload["metric_key"]] = payload
    assert set(metrics) == set(sample_refs)
    for i, result in enumerate(results):
        recorded = metrics[result["sample_ref"]]
        assert set(recorded) == {"score", "correct", "latency.ms", "tokens"}
        assert recorded["score"]["value"] == result["score"]
        assert recorded["correct"]["value"] == (1.0 if result["correct"] else 0.0)
        assert recorded["tokens"]["value"] == result["tokens"]
        assert recorded["latency.ms"]["value"] == result["latency_ms"]
        assert recorded["latency.ms"]["unit"] == "ms"
        assert recorded["score"]["tags"] == {"case_id": f"case-{i}"}


async def test_requests_in_flight_at_shutdown_are_still_captured(tmp_path: Path) -> None:
    # Slow model: the requests are still being judged when the server is told to stop.
    with serve(tmp_path, CONTEXTA_SERVICE_LATENCY_MS="800,1000") as (base_url, proc):
        async with (
            httpx.AsyncClient(base_url=base_url, timeout=30) as client,
            anyio.create_task_group() as tg,
        ):
            responses: list[httpx.Response] = []

            async def one(i: int) -> None:
                responses.append(await client.post("/judge", json=_case(i)))

            for i in range(20):
                tg.start_soon(one, i)
            # Stop once all 20 samples are open (run + stage + 20 opening lines queued), that
            # is while the model is still judging them.
            for _poll in range(3000):  # polling another process: at most ~30 s
                if (await client.get("/stats")).json()["enqueued"] >= 22:
                    break
                await anyio.sleep(0.01)
            answered_before_stop = len(responses)
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert answered_before_stop < 20, "precondition: requests were in flight at SIGINT"
    assert [r.status_code for r in responses] == [200] * 20
    state = {
        line["payload_ref"]: line["payload"]["status"]
        for line in _lines(tmp_path / "cache" / "capture" / "context.jsonl")
    }
    assert state["run:judge-service.live"] == "completed"
    for response in responses:
        assert state[response.json()["sample_ref"]] == "completed"


async def test_capture_off_serves_requests_and_writes_nothing(tmp_path: Path) -> None:
    with serve(tmp_path, CONTEXTA_SERVICE_CAPTURE="0") as (base_url, proc):
        results = await _send_all(base_url, 20)
        code, err = _stop(proc)
    assert code == 0, err
    assert all(r["sample_ref"] is None for r in results)
    assert not (tmp_path / "cache").exists()


async def test_invalid_request_is_refused_and_opens_no_sample(tmp_path: Path) -> None:
    with serve(tmp_path) as (base_url, proc):
        async with httpx.AsyncClient(base_url=base_url) as client:
            missing = await client.post("/judge", json={"question": "q", "answer": "a"})
            not_json = await client.post("/judge", content=b"{not json")
        code, err = _stop(proc)
    assert code == 0, err
    assert missing.status_code == 422 and "'reference'" in missing.json()["error"]
    assert not_json.status_code == 422
    kinds = {
        line["payload_type"] for line in _lines(tmp_path / "cache" / "capture" / "context.jsonl")
    }
    assert kinds == {"Run", "StageExecution"}
    assert not (tmp_path / "cache" / "capture" / "record.jsonl").exists()
