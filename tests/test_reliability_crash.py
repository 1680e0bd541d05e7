"""Durability under SIGKILL: what flush() acknowledged survives, and no line is torn or glued.

A child process (tests/_children/crash_writer.py) captures at full speed into its own
workspace and prints, after each ``flush()`` returns, the sequence number of the last record
that flush covered. The parent kills it with SIGKILL at a seeded random moment, then checks the
files and lets a new writer append to them.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from contexta_async import Contexta
from contexta_async._format.index import Frame, index_path_for
from contexta_async._format.lines import ScanLine
from contexta_async.readers._index import expand_entry, load_index, read_entry

from ._children.verify import FAMILY_FILES as FILES
from ._children.verify import parse_strict, read_bytes, read_family

CHILD = Path(__file__).parent / "_children" / "crash_writer.py"
SEED = 20261126
TRIALS = 30


def _values(lines: list[dict[str, Any]], run_ref: str) -> list[int]:
    return [
        line["payload"]["payload"]["value"]
        for line in lines
        if line["family"] == "RECORD" and line["payload"]["envelope"]["run_ref"] == run_ref
    ]


def _indexed_columns_match(record_file: Path, frame: Frame) -> bool:
    with record_file.open("rb") as handle:
        handle.seek(frame.start)
        data = handle.read(frame.end - frame.start)
    with index_path_for(record_file).open("rb") as index:
        entry = read_entry(index.fileno(), frame)
    if entry is None:
        return False
    lines = msgspec.json.Decoder(ScanLine).decode_lines(data)
    columns = expand_entry(entry)
    bodies = [line.payload.payload for line in lines]
    return columns is not None and (
        columns.types == [line.payload_type for line in lines]
        and columns.subjects == [body.subject_ref for body in bodies]
        and columns.keys == [body.metric_key for body in bodies]
        and [v for k, v in zip(columns.keys, columns.values, strict=True) if k is not None]
        == [body.value for body in bodies if body.metric_key is not None]
    )


def _kill_child(workspace: Path, trial: int, rng: random.Random) -> list[int]:
    """Run one child, SIGKILL it at a random moment, return the acknowledged sequence numbers."""
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(workspace), f"trial-{trial}", str(SEED + trial)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    early = b""
    if trial % 5 == 0:
        # Some kills land anywhere from interpreter start-up to the first batches.
        delay = rng.uniform(0.0, 0.4)
    else:
        # Most land while capture is in full swing: after the first acknowledged flush.
        early = proc.stdout.readline()
        assert early.endswith(b"\n"), f"child ended before its first flush: {proc.stderr!r}"
        delay = rng.uniform(0.0, 0.25)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"child exited on its own: {err.decode()[-2000:]}"
    # Only whole lines are acknowledgements; the kill may cut the last print short.
    return [int(line) for line in (early + out).split(b"\n")[:-1]]


def test_acknowledged_records_survive_sigkill_and_a_new_writer_appends_cleanly(
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)
    acknowledged_total = lines_checked = torn_tails = killed_before_any_ack = 0
    frames_checked = 0
    for trial in range(TRIALS):
        workspace = tmp_path / f"ws-{trial}"
        capture = workspace / "cache" / "capture"
        acks = _kill_child(workspace, trial, rng)
        assert acks == sorted(acks)
        run_ref = f"run:crash.trial-{trial}"
        last_ack = acks[-1] if acks else -1
        killed_before_any_ack += not acks

        # Right after the kill only the last line of a file may be torn (checked below: what
        # precedes it is kept byte for byte and parses).
        crashed = {name: read_bytes(capture / name) for name in FILES}
        torn_tails += sum(bool(data) and not data.endswith(b"\n") for data in crashed.values())

        # A new writer appends to the crashed files: the torn fragment must go, nothing the
        # crashed writer left complete may change, and the new lines must parse.
        with Contexta(workspace=workspace, config={"project_name": "crash"}) as ctx:
            with ctx.run("recovery") as run:
                for i in range(5):
                    run.metric("after-crash", i)
                run.event("recovered", message="line\nbreaks stay escaped")
            ctx.flush()
        parsed = {}
        for name in FILES:
            data = read_bytes(capture / name)
            complete = crashed[name][: crashed[name].rfind(b"\n") + 1]
            assert data.startswith(complete), f"trial {trial}: {name} lost complete lines"
            parsed[name], tail = parse_strict(data, name)
            assert tail == b"", f"trial {trial}: {name} still ends in a torn line"
            lines_checked += len(parsed[name])

        records = parsed["record.jsonl"]
        values = _values(records, run_ref)
        # One writer, one file, queue order: the file holds exactly a prefix 0..m of the
        # run's records (no gap, no duplicate), and that prefix covers every acknowledgement.
        assert values == list(range(len(values))), f"trial {trial}: gap or duplicate"
        assert len(values) > last_ack, f"trial {trial}: acknowledged record {last_ack} lost"
        acknowledged_total += last_ack + 1
        refs = [line["payload_ref"] for line in records]
        assert len(refs) == len(set(refs)), f"trial {trial}: duplicate record refs"
        statuses = [c["payload"]["status"] for c in parsed["context.jsonl"]]
        if acks:  # the killed run never closed: its newest state is "open"
            assert [
                c["payload"]["status"]
                for c in parsed["context.jsonl"]
                if c["payload_ref"] == run_ref
            ][-1] == "open"
        assert statuses[-1] == "completed"  # the recovery run
        recovery = [
            line
            for line in records
            if line["payload"]["envelope"]["run_ref"] == "run:crash.recovery"
        ]
        assert [r["payload"]["payload"].get("value") for r in recovery] == [0, 1, 2, 3, 4, None]
        assert records[-len(recovery) :] == recovery
        # record.index survived the kill too: every entry a reader trusts describes exactly
        # the lines in its range, and the recovery's lines are indexed.
        record_file = capture / "record.jsonl"
        entries = load_index(str(record_file)).frames
        frames_checked += len(entries)
        for entry in entries:
            assert _indexed_columns_match(record_file, entry), f"trial {trial}: {entry.start}"
        shutil.rmtree(workspace)  # the trials write up to ~100 MB each

    print(
        f"\ncrash: {TRIALS} SIGKILL trials, {acknowledged_total} acknowledged records present, "
        f"{lines_checked} lines parsed after recovery, {torn_tails} torn tails repaired, "
        f"{killed_before_any_ack} kills before the first acknowledgement, "
        f"{frames_checked} record.index frames checked against their lines"
    )
    assert acknowledged_total > 0
    assert frames_checked > 0


def test_flush_returns_only_after_an_fsync_covered_the_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync
    synced: dict[str, int] = {}  # file -> largest size an fsync has completed on

    def recording_fsync(fd: int) -> None:
        size = os.fstat(fd).st_size
        real_fsync(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
        synced[path] = max(synced.get(path, 0), size)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    record_file = tmp_path / "cache" / "capture" / "record.jsonl"
    with Contexta(workspace=tmp_path, config={"project_name": "p"}) as ctx:
        with ctx.run("r") as run:
            sent = 0
            for count in (1, 7, 500, 3000, 1, 20000):
                for _ in range(count):
                    run.metric("seq", sent)
                    sent += 1
                ctx.flush()
                durable = dict(synced)  # what was fsynced by the time flush returned
                data = record_file.read_bytes()
                marker = f'"value":{sent - 1},'.encode()
                end = data.index(b"\n", data.index(marker)) + 1
                assert durable.get(str(record_file), 0) >= end, (
                    f"flush returned before record {sent - 1} (ending at byte {end}) was fsynced"
                )
        assert ctx.statistics().fsyncs > 0


def test_a_new_writer_cuts_a_torn_tail_instead_of_gluing_onto_it(tmp_path: Path) -> None:
    with (
        Contexta(workspace=tmp_path, config={"project_name": "p"}) as ctx,
        ctx.run("before") as run,
    ):
        run.metric("m", 1)
    record_file = tmp_path / "cache" / "capture" / "record.jsonl"
    complete = record_file.read_bytes()
    # What a writer killed in the middle of write(2) leaves: part of a line, no newline.
    with record_file.open("ab") as handle:
        handle.write(complete[: len(complete) // 2])
    with (
        Contexta(workspace=tmp_path, config={"project_name": "p"}) as ctx,
        ctx.run("after") as run,
    ):
        run.metric("m", 2)
    data = record_file.read_bytes()
    assert data.startswith(complete)
    lines = read_family(tmp_path, "RECORD")
    assert [line["payload"]["payload"]["value"] for line in lines] == [1, 2]


def test_a_new_workspace_fsyncs_every_directory_entry_it_creates_before_acknowledging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync
    synced: set[str] = set()

    def recording_fsync(fd: int) -> None:
        real_fsync(fd)
        synced.add(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(os, "fsync", recording_fsync)
    workspace = tmp_path / "projects" / "ws"
    with Contexta(workspace=workspace, config={"project_name": "p"}) as ctx, ctx.run("r") as run:
        run.metric("m", 1)
        ctx.flush()
        # A power cut now must not lose the files: each new directory entry on the way from
        # tmp_path down to the files was fsynced in its parent before flush returned.
        capture = workspace / "cache" / "capture"
        created = [tmp_path / "projects", workspace, workspace / "cache", capture]
        for entry in [*created, capture / "record.jsonl", capture / "context.jsonl"]:
            assert str(entry.parent) in synced, f"the entry of {entry} was never fsynced"
