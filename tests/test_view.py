"""The live view without a browser: its tail, its HTTP guard, its missing-extra error.

The pages in a real browser are tested in test_view_browser.py; both use ``running_view``
(a real uvicorn server in a thread, on a free loopback port) and ``capture_runs``.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from contexta_async import Contexta
from contexta_async.view import MissingExtraError, create_app
from contexta_async.view._serve import server as view_server
from contexta_async.view._tail import WorkspaceTail

MARKUP_NAME = "<img src=x onerror=document.title='pwned'>"
MARKUP_MESSAGE = "<script>document.title='pwned'</script>"

# left, right per sample: case-3 is fixed (0 -> 1), case-7 regressed (1 -> 0).
LEFT_CORRECT = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
RIGHT_CORRECT = [1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0]


def capture_run(
    workspace: Path,
    name: str,
    correct: list[float],
    *,
    score_shift: float = 0.0,
    message: str = "answered",
) -> None:
    """One run through the library's sync face: stage evaluate, a sample per value."""
    config = {"project_name": "view"}
    with (
        Contexta(workspace=workspace, config=config) as ctx,
        ctx.run(name, dataset_ref="dataset:view.cases") as run,
    ):
        run.metric("runs.total", len(correct))
        with run.stage("evaluate") as stage:
            for i, value in enumerate(correct):
                with stage.sample(f"case-{i}") as sample:
                    sample.metric("correct", value)
                    sample.metric("judge.score", 3.0 + score_shift + (i % 3) * 0.5, unit="points")
                    sample.event("answer", message=message)


def capture_runs(workspace: Path) -> None:
    capture_run(workspace, "baseline", LEFT_CORRECT)
    capture_run(workspace, "candidate", RIGHT_CORRECT, score_shift=0.25)
    capture_run(workspace, MARKUP_NAME, [1.0, 0.0], message=MARKUP_MESSAGE)


@contextmanager
def running_view(workspace: Path, port: int = 0, **options: Any) -> Iterator[str]:
    """A real uvicorn server in a thread on a loopback port (by default a free one); yields
    its base URL."""
    app = create_app(workspace, poll_interval=0.05, **options)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the same port again, at once
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    server = view_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the server thread died"
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def raw_get(
    base: str, path: str, *, method: str = "GET", host: str | None = None
) -> tuple[int, str]:
    """A request whose path goes on the wire exactly as given (no client normalises it)."""
    address = base.removeprefix("http://")
    name, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(name, int(port), timeout=30)
    try:
        conn.putrequest(method, path, skip_host=host is not None)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("view") / ".contexta"
    capture_runs(root)
    return root


@pytest.fixture(scope="module")
def view(workspace: Path) -> Iterator[str]:
    with running_view(workspace) as base:
        yield base


# ---- the tail ---------------------------------------------------------------------------


def _record_file(workspace: Path) -> Path:
    return workspace / "cache" / "capture" / "record.jsonl"


def test_tail_counts_the_records_of_every_run(workspace: Path) -> None:
    tail = WorkspaceTail(workspace / "cache" / "capture")
    assert tail.poll()
    counts = {run.name: dict(run.counts) for run in tail.runs.values()}
    assert counts["baseline"] == {"metrics": 1 + 2 * 12, "events": 12}
    assert counts["candidate"] == {"metrics": 1 + 2 * 12, "events": 12}
    assert counts[MARKUP_NAME] == {"metrics": 1 + 2 * 2, "events": 2}
    assert {run.status for run in tail.runs.values()} == {"completed"}
    assert not tail.poll()  # nothing appended: nothing changed


def test_tail_reads_only_what_was_appended_and_waits_for_a_torn_line(tmp_path: Path) -> None:
    root = tmp_path / ".contexta"
    capture_run(root, "first", [1.0, 0.0])
    tail = WorkspaceTail(root / "cache" / "capture")
    tail.poll()
    before = dict(tail.runs["run:view.first"].counts)
    record = _record_file(root)
    data = record.read_bytes()
    lines = data.splitlines(keepends=True)
    # Garbage over what was already read (same size, same file): a tail that read the whole
    # file again would count it as corrupt and lose those records. (Over the second line: the
    # first bytes and the last ones read are checked, a rewrite there starts over.)
    assert len(lines) > 3 and len(lines[0]) > 256
    with open(record, "r+b") as handle:
        handle.seek(len(lines[0]))
        handle.write(b"x" * (len(lines[1]) - 1))
    # Half of a line a writer is still appending waits for its newline.
    new_line = lines[1].replace(b'"metric_key":"judge.score"', b'"metric_key":"judge.later"')
    with open(record, "ab") as handle:
        handle.write(new_line[:40])
    assert not tail.poll()
    assert dict(tail.runs["run:view.first"].counts) == before
    with open(record, "ab") as handle:
        handle.write(new_line[40:])
    assert tail.poll()
    after = dict(tail.runs["run:view.first"].counts)
    assert after["metrics"] == before["metrics"] + 1
    assert tail.issues.corrupt_lines == 0


def test_tail_folds_appended_values_into_a_tracked_run(tmp_path: Path) -> None:
    root = tmp_path / ".contexta"
    capture_run(root, "first", [1.0, 0.0])
    tail = WorkspaceTail(root / "cache" / "capture")
    tail.poll()
    detail = tail.track("run:view.first")
    assert detail.values[("sample:view.first.evaluate.case-1", "correct")] == 0.0
    assert len(detail.events) == 2
    record = _record_file(root)
    last = record.read_bytes().splitlines(keepends=True)[-1]
    with open(record, "ab") as handle:
        handle.write(last.replace(b'"message":"answered"', b'"message":"appended"'))
    assert tail.poll()
    assert b"appended" in detail.events[-1]
    assert len(detail.events) == 3


def test_tail_starts_over_when_a_file_is_replaced(tmp_path: Path) -> None:
    root = tmp_path / ".contexta"
    capture_run(root, "first", [1.0, 0.0, 1.0])
    tail = WorkspaceTail(root / "cache" / "capture")
    tail.poll()
    record = _record_file(root)
    kept = record.read_bytes().splitlines(keepends=True)[:2]
    replacement = record.with_suffix(".new")
    replacement.write_bytes(b"".join(kept))
    os.replace(replacement, record)
    assert tail.poll()
    assert sum(tail.runs["run:view.first"].counts.values()) == 2


def test_tail_counts_from_record_index_what_the_json_says(tmp_path: Path) -> None:
    root = tmp_path / ".contexta"
    config = {"project_name": "view"}
    with Contexta(workspace=root, config=config) as ctx:
        # Two runs captured together (frames holding both) and one alone (frames of one run).
        with ctx.run("left") as left, ctx.run("right") as right:
            for i in range(3000):
                left.metric("step.loss", 1.0 / (i + 1))
                right.event("tick", message=f"tick {i}")
        with ctx.run("alone") as alone, alone.stage("evaluate") as stage:
            for i in range(1500):
                with stage.sample(f"case-{i}") as sample:
                    sample.metric("correct", float(i % 2))
                    sample.metric("judge.score", 3.0)
    capture = root / "cache" / "capture"
    from_json = WorkspaceTail(capture, use_index=False)
    from_json.poll()
    from_index = WorkspaceTail(capture)
    from_index.index_from = 0
    from_index.poll()
    assert from_index.lines_from_index > 0
    assert {r.ref: dict(r.counts) for r in from_index.runs.values()} == {
        r.ref: dict(r.counts) for r in from_json.runs.values()
    }
    assert dict(from_index.runs["run:view.alone"].counts) == {"metrics": 3000}
    # Then it goes on from where the frames end, with what is appended.
    capture_run(root, "later", [1.0])
    assert from_index.poll()
    assert dict(from_index.runs["run:view.later"].counts) == {"metrics": 3, "events": 1}


# ---- the HTTP guard -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/../../../../etc/passwd",
        "/runs/../../../etc/passwd",
        "/runs/..%2f..%2f..%2fetc%2fpasswd",
        "/runs/%2e%2e/%2e%2e/etc/passwd",
        "/%2E%2E/%2E%2E/etc/passwd",
        "/runs/..%5c..%5cetc%5cpasswd",
        "/compare/..%2F..%2Fcache/capture",
        "/runs/%252e%252e%252fetc%252fpasswd",
    ],
)
def test_paths_outside_the_pages_are_refused(view: str, path: str) -> None:
    status, body = raw_get(view, path)
    assert status == 404
    # Refused before any page is looked for (the guard's plain answer, not a page's).
    assert body == "not found\n"


def test_only_get_is_answered(view: str) -> None:
    assert raw_get(view, "/", method="POST")[0] == 405
    assert raw_get(view, "/", method="DELETE")[0] == 405
    assert raw_get(view, "/", method="GET")[0] == 200


def test_a_foreign_host_name_is_refused_on_loopback(view: str) -> None:
    # A page of another site, resolved to 127.0.0.1 by DNS rebinding, sends its own name.
    assert raw_get(view, "/", host="attacker.example")[0] == 400
    assert raw_get(view, "/", host="localhost:8000")[0] == 200


def test_pages_carry_a_content_security_policy(view: str) -> None:
    address = view.removeprefix("http://")
    name, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(name, int(port), timeout=30)
    conn.request("GET", "/")
    response = conn.getresponse()
    policy = response.getheader("content-security-policy") or ""
    conn.close()
    assert "default-src 'none'" in policy
    assert "script-src 'sha256-" in policy and "connect-src 'self'" in policy


def test_unknown_run_is_not_found(view: str) -> None:
    status, body = raw_get(view, "/runs/no-such-run")
    assert status == 404
    assert "no-such-run" in body


def test_markup_in_a_run_name_is_escaped_in_the_html(view: str) -> None:
    status, body = raw_get(view, "/")
    assert status == 200
    assert "&lt;img src=x onerror=document.title=&#x27;pwned&#x27;&gt;" in body
    assert "<img" not in body


# ---- the optional extra ---------------------------------------------------------------------


def test_view_without_its_extra_names_the_install_command(workspace: Path) -> None:
    code = (
        "import sys; sys.modules['starlette'] = None; sys.modules['uvicorn'] = None\n"
        "from contexta_async._cli import run_cli\n"
        f"sys.exit(run_cli(['--workspace', {str(workspace)!r}, 'view', '--port', '0']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert "pip install 'contexta-async[view]'" in done.stderr


def test_create_app_without_starlette_raises_missing_extra(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "starlette", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'contexta-async\[view\]'"):
        create_app(workspace)


# ---- the command ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_view_command_serves_on_loopback_until_interrupted(workspace: Path) -> None:
    port = _free_port()
    command = [sys.executable, "-m", "contexta_async", "--workspace", str(workspace), "view"]
    proc = subprocess.Popen(
        [*command, "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[1].decode()
            try:
                status, body = raw_get(f"http://127.0.0.1:{port}", "/")
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "the view did not start"
                time.sleep(0.05)
        assert status == 200 and "run:view.candidate" in body
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert f"http://127.0.0.1:{port}/" in out.decode()


def test_view_command_rejects_a_bad_port(workspace: Path) -> None:
    code = (
        "import sys\nfrom contexta_async._cli import run_cli\n"
        f"sys.exit(run_cli(['--workspace', {str(workspace)!r}, 'view', '--port', '70000']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert "--port must be between 0 and 65535" in done.stderr


# ---- the state the pages and the event stream read ----------------------------------------


def test_versions_read_during_a_poll_that_adds_runs_do_not_fail(tmp_path: Path) -> None:
    # /events reads the versions on the event loop while refresh() polls in a worker thread.
    from contexta_async.readers import Workspace
    from contexta_async.view._app import ViewState

    root = tmp_path / ".contexta"
    capture_run(root, "base", [1.0])
    context = root / "cache" / "capture" / "context.jsonl"
    first = context.read_text().splitlines()[0]
    state = ViewState(Workspace(root), 0.25)
    state.tail.poll()
    errors: list[str] = []
    for round_ in range(3):
        # A sweep: many runs start at once.
        with open(context, "a") as f:
            for i in range(20000):
                name = f"r{round_}-{i}"
                f.write(
                    first.replace("run:view.base", f"run:view.{name}").replace(
                        '"name":"base"', f'"name":"{name}"'
                    )
                    + "\n"
                )
        poll = threading.Thread(target=state.tail.poll)
        poll.start()
        while poll.is_alive():
            try:
                state.versions()
            except RuntimeError as exc:
                errors.append(str(exc))
        poll.join()
    assert errors == []


def test_versions_are_those_of_the_last_poll(tmp_path: Path) -> None:
    import anyio

    from contexta_async.readers import Workspace
    from contexta_async.view._app import ViewState

    root = tmp_path / ".contexta"
    capture_run(root, "first", [1.0])
    state = ViewState(Workspace(root), 0.25)

    async def main() -> None:
        await state.refresh()
        seen = state.versions()
        assert seen["*"] == state.tail.version
        assert set(seen["runs"]) == {"run:view.first"}
        capture_run(root, "second", [1.0])
        assert state.versions() == seen  # not read from the tail until the next poll
        await state.refresh()
        assert set(state.versions()["runs"]) == {"run:view.first", "run:view.second"}

    anyio.run(main)


def test_a_metric_tagged_like_an_event_is_not_listed_as_one(tmp_path: Path) -> None:
    from contexta_async.view._tail import event_views

    root = tmp_path / ".contexta"
    with Contexta(workspace=root, config={"project_name": "view"}) as ctx, ctx.run("r") as run:
        run.metric("m", 1.0, tags={"payload_type": "StructuredEventRecord"})
        run.metric("n", 2.0, tags={"run_ref": "run:view.other"})
        run.event("real", message="one")
    with Contexta(workspace=root, config={"project_name": "view"}) as ctx, ctx.run("other") as run:
        run.metric("spoof", 1.0, tags={"payload_type": "StructuredEventRecord", "x": "run:view.r"})
    tail = WorkspaceTail(root / "cache" / "capture")
    tail.poll()
    assert [e.key for e in event_views(tail.track("run:view.r"))] == ["real"]
    assert event_views(tail.track("run:view.other")) == []
    # ... and the same for events appended after the run was tracked.
    with Contexta(workspace=root, config={"project_name": "view"}) as ctx, ctx.run("r") as run:
        run.metric("m", 3.0, tags={"payload_type": "StructuredEventRecord"})
    tail.poll()
    assert [e.key for e in event_views(tail.track("run:view.r"))] == ["real"]


def test_comparing_a_run_dropped_by_a_reset_is_unknown(tmp_path: Path) -> None:
    # The compare page resolves the runs, then asks for the comparison: a poll between the
    # two may start over (a file replaced) without one of them.
    import anyio

    from contexta_async.readers import UnknownRunError, Workspace
    from contexta_async.view._app import ViewState

    root = tmp_path / ".contexta"
    capture_run(root, "left", [1.0])
    capture_run(root, "right", [0.0])
    state = ViewState(Workspace(root), 0.25)
    capture = root / "cache" / "capture"

    async def main() -> None:
        await state.refresh()
        for name in ("context", "record", "artifact"):
            path = capture / f"{name}.jsonl"
            if path.exists():
                kept = [ln for ln in path.read_bytes().splitlines(True) if b"view.right" not in ln]
                path.with_suffix(".new").write_bytes(b"".join(kept))
                os.replace(path.with_suffix(".new"), path)
        await state.refresh()
        assert "run:view.right" not in state.tail.runs
        with pytest.raises(UnknownRunError):
            await state.comparison("run:view.left", "run:view.right")

    anyio.run(main)


def test_the_apps_lifespan_closes_its_state_under_plain_uvicorn(tmp_path: Path) -> None:
    # create_app served by a plain uvicorn Server (not view.server): its lifespan's end
    # closes the state, so no event stream on it goes on.
    import uvicorn

    root = tmp_path / ".contexta"
    capture_run(root, "a", [1.0])
    app = create_app(root, poll_interval=0.05)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "the server thread died"
            time.sleep(0.02)
        status, _ = raw_get(f"http://127.0.0.1:{sock.getsockname()[1]}", "/")
        assert status == 200 and not app.state.view.closing
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
    assert not thread.is_alive()
    assert app.state.view.closing


def test_a_metrics_place_on_the_run_page_is_what_its_subject_ref_names() -> None:
    from contexta_async.view._pages import where

    assert where(None) == where("run:p.r") == ("run", None, None, None)
    assert where("stage:p.r.s") == ("stage", "s", None, None)
    assert where("batch:p.r.s.b") == ("batch", "s", "b", None)
    assert where("sample:p.r.s.n") == ("sample", "s", None, "n")
    assert where("sample:p.r.s.b.n") == ("sample", "s", "b", "n")
    assert where("x:p.r.s") == ("run", None, None, None)  # not a scope ref: the run's


def test_a_line_nested_too_deep_to_decode_is_skipped_by_the_tail(tmp_path: Path) -> None:
    from contexta_async.view._tail import event_views

    root = tmp_path / ".contexta"
    with Contexta(workspace=root, config={"project_name": "view"}) as ctx, ctx.run("r") as run:
        run.event("real", message="one")
    deep = b"[" * 5000 + b"]" * 5000  # past msgspec's depth limit: RecursionError
    with (root / "cache" / "capture" / "record.jsonl").open("ab") as handle:
        handle.write(
            b'{"family":"RECORD","payload_type":"StructuredEventRecord","x":'
            + deep
            + b',"run_ref":"run:view.r"}\n'
        )
    tail = WorkspaceTail(root / "cache" / "capture")
    tail.poll()
    assert [e.key for e in event_views(tail.track("run:view.r"))] == ["real"]


# ---- arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"allowed_hosts": "localhost"}, "allowed_hosts"),
        ({"allowed_hosts": ["localhost", 1]}, "allowed_hosts"),
        ({"poll_interval": "1"}, "poll_interval"),
        ({"poll_interval": None}, "poll_interval"),
        ({"poll_interval": True}, "poll_interval"),
        ({"poll_interval": float("inf")}, "poll_interval"),
        ({"poll_interval": float("nan")}, "poll_interval"),
        ({"poll_interval": -1}, "poll_interval"),
    ],
)
def test_create_app_bad_arguments_are_validation_errors_naming_the_field(
    workspace: Path, options: dict[str, Any], field: str
) -> None:
    from contexta_async import ValidationError

    with pytest.raises(ValidationError) as caught:
        create_app(workspace, **options)
    assert caught.value.field == field


def test_create_app_takes_allowed_hosts_as_a_sequence_of_names(workspace: Path) -> None:
    with running_view(workspace, allowed_hosts=["localhost"]) as base:
        assert raw_get(base, "/", host="localhost")[0] == 200
        assert raw_get(base, "/", host="l")[0] == 400


@pytest.mark.parametrize(
    ("options", "field"),
    [({"port": 70000}, "port"), ({"port": "80"}, "port"), ({"host": 1}, "host")],
)
def test_serve_bad_arguments_are_validation_errors_naming_the_field(
    workspace: Path, options: dict[str, Any], field: str
) -> None:
    from contexta_async import ValidationError
    from contexta_async.view import serve

    with pytest.raises(ValidationError) as caught:
        serve(workspace, **options)
    assert caught.value.field == field


def test_serve_on_a_port_in_use_raises_listen_error(workspace: Path) -> None:
    from contexta_async.view import ListenError, serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ListenError) as caught:
            serve(workspace, port=port)
    assert str(caught.value) == f"cannot listen on 127.0.0.1:{port}: Address already in use"
    assert isinstance(caught.value, OSError)


# ---- a file rewritten in place ----------------------------------------------------------------


def _overwrite_in_place(target: Path, source: Path) -> None:
    """As ``cp source target`` does: the same inode, truncated and written again."""
    with target.open("r+b") as dst:
        dst.write(source.read_bytes())
        dst.truncate()


def test_tail_starts_over_when_a_file_is_overwritten_in_place_with_more_bytes(
    tmp_path: Path,
) -> None:
    first, second = tmp_path / "a" / ".contexta", tmp_path / "b" / ".contexta"
    capture_run(first, "one", [1.0, 0.0])
    capture_run(second, "two", [1.0, 0.0, 1.0, 1.0])
    capture_run(second, "three", [0.0, 0.0, 1.0, 1.0, 1.0])
    capture = first / "cache" / "capture"
    tail = WorkspaceTail(capture)
    tail.poll()
    assert set(tail.runs) == {"run:view.one"}
    tail.track("run:view.one")
    inodes = {}
    for name in ("context.jsonl", "record.jsonl"):
        inodes[name] = os.stat(capture / name).st_ino
        assert (second / "cache" / "capture" / name).stat().st_size > (
            capture / name
        ).stat().st_size
        _overwrite_in_place(capture / name, second / "cache" / "capture" / name)
        assert os.stat(capture / name).st_ino == inodes[name]
    assert tail.poll()
    assert set(tail.runs) == {"run:view.two", "run:view.three"}
    fresh = WorkspaceTail(capture)
    fresh.poll()
    assert {ref: run.counts for ref, run in tail.runs.items()} == {
        ref: run.counts for ref, run in fresh.runs.items()
    }


def test_tail_reads_on_when_a_file_only_grew(tmp_path: Path) -> None:
    root = tmp_path / ".contexta"
    capture_run(root, "first", [1.0, 0.0])
    tail = WorkspaceTail(root / "cache" / "capture")
    tail.poll()
    version = tail.runs["run:view.first"].version
    capture_run(root, "second", [1.0])
    assert tail.poll()
    assert set(tail.runs) == {"run:view.first", "run:view.second"}
    assert tail.runs["run:view.first"].version == version  # not folded again: no reset
