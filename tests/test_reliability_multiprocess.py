"""Several processes capturing into one workspace at once: no interleaved or torn lines."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections import Counter
from pathlib import Path

import anyio

from contexta_async.readers import Workspace
from contexta_async.readers._index import load_index

from ._children.verify import read_family

CHILD = Path(__file__).parent / "_children" / "mp_writer.py"
PROCESSES = 4
RECORDS = 50_000


async def _counts(workspace: Path, use_index: bool) -> dict[str, int]:
    runs = await Workspace(workspace, use_index=use_index).list_runs()
    return {run.ref: run.counts.metrics for run in runs}


def test_four_processes_share_one_workspace_without_interleaving_or_tearing_lines(
    tmp_path: Path,
) -> None:
    children = [
        subprocess.Popen(
            [sys.executable, str(CHILD), str(tmp_path), str(index), str(RECORDS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for index in range(PROCESSES)
    ]
    for child in children:  # every child imported and built its context
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    for child in children:  # go
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        child.stdin.flush()
    for child in children:
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err.decode()[-2000:]

    # read_family parses every line on its own: a line glued to, or cut by, another
    # process's write fails here.
    records = read_family(tmp_path, "RECORD")
    values: dict[str, list[int]] = {f"run:mp.proc-{i}": [] for i in range(PROCESSES)}
    events: Counter[str] = Counter()
    for line in records:
        run_ref = line["payload"]["envelope"]["run_ref"]
        if line["payload_type"] == "MetricRecord":
            payload = line["payload"]["payload"]
            assert payload["tags"] == {"proc": run_ref[-1]}
            values[run_ref].append(payload["value"])
        else:
            events[run_ref] += 1
    assert len(records) == PROCESSES * (RECORDS + RECORDS // 5_000)
    for run_ref, seen in values.items():
        # Exactly once each, and in each process's own order, in the shared file.
        assert seen == list(range(RECORDS)), f"{run_ref}: lost, doubled or reordered"
        assert events[run_ref] == RECORDS // 5_000
    # The processes really wrote at the same time: their batches alternate in the file.
    owners = [line["payload"]["envelope"]["run_ref"] for line in records]
    switches = sum(a != b for a, b in itertools.pairwise(owners))
    assert switches > 4 * PROCESSES
    refs = {line["payload_ref"] for line in records}
    assert len(refs) == len(records), "two records share a ref"
    contexts = read_family(tmp_path, "CONTEXT")
    assert len(contexts) == PROCESSES * 4  # run and stage, opened and closed, per process
    # Each process indexed each of its chunks where the chunk landed, between the others'.
    loaded = load_index(str(tmp_path / "cache" / "capture" / "record.jsonl"))
    assert loaded.rejected == 0
    # A chunk under 32 lines gets no frame (a small batch, frequent on a loaded machine): the
    # frames cover at most every line, and the counts read through them are the JSON's.
    assert 0 < sum(entry.lines for entry in loaded.frames) <= len(records)
    indexed = anyio.run(_counts, tmp_path, True)
    assert indexed == anyio.run(_counts, tmp_path, False)
    assert indexed == {f"run:mp.proc-{i}": RECORDS for i in range(PROCESSES)}
    print(
        f"\nmultiprocess: {PROCESSES} processes x {RECORDS} records, {len(records)} lines "
        f"parsed, writers alternated {switches} times in record.jsonl"
    )
