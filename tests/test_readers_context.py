"""The sample CONTEXT lines read by byte search (``SampleScan``) against a plain reference.

``SampleScan`` finds the openings, clusters and epochs of a block with two regexes and
C-level passes over the block's columns, never decoding a line. The reference below decodes
every line with the standard library and applies the rules one opening at a time; the two
must agree on every sample's (item, epoch, cluster), per stage or batch and per ref, and on
the refs opened more than once, however the file is cut into blocks.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contexta_async._format.refs import parse_sample_head
from contexta_async.readers._context import SampleScan
from contexta_async.readers._read import Issues, read_file

_HEADS = (
    ("run:p.r1", "stage:p.r1.s1", None),
    ("run:p.r1", "stage:p.r1.s2", None),
    ("run:p.r2", "stage:p.r2.s1", "batch:p.r2.s1.b"),
    ("run:p.r2", "stage:p.r2.s1", "not-a-ref"),  # a sample ref that does not parse
)


@st.composite
def _sample_line(draw: st.DrawFn) -> bytes:
    run, stage, batch = draw(st.sampled_from(_HEADS))
    epoch = draw(st.none() | st.integers(min_value=0, max_value=3))
    name = draw(st.sampled_from(["q-1", "q-2", "q-10", "", "x-epoch-1"]))
    # The library suffixes an attempt's name with its epoch; a hand-written line may not.
    if epoch is not None and draw(st.booleans()):
        name += f"-epoch-{epoch}"
    head = f"sample:{batch[6:]}" if batch and batch.startswith("batch:") else None
    if batch == "not-a-ref":
        head, batch = "sample:p", None
    head = head or f"sample:{stage[6:]}"
    opening = draw(st.booleans())
    payload: dict[str, Any] = {
        "batch_execution_ref": batch,
        "ended_at": None if opening else "2026-01-01T00:00:01.000000Z",
        "extensions": [],
        "failure_reason": None,
        "observed_at": "2026-01-01T00:00:00.000000Z",
        "run_ref": run,
        "sample_name": name,
        "sample_observation_ref": f"{head}.{name}",
        "schema_version": "1.0.0",
        "stage_execution_ref": stage,
        "status": "open" if opening else "completed",
    }
    cluster = draw(st.none() | st.sampled_from(["c1", 'pa"ss \\ 7', "Ünï ∑", "t\tab"]))
    if cluster is not None:
        payload["cluster"] = cluster
    if epoch is not None:
        payload["epoch"] = epoch
    line = {
        "captured_at": "2026-01-01T00:00:00.000000Z",
        "family": "CONTEXT",
        "payload": payload,
        "payload_ref": f"{head}.{name}",
        "payload_type": "SampleObservation",
        "sink_name": "local-jsonl",
    }
    return msgspec.json.encode(line, order="sorted") + b"\n"


def _reference(lines: list[bytes]) -> tuple[dict[str, dict[str, Any]], dict[str, Any], Any]:
    samples: dict[str, dict[str, Any]] = {}
    by_ref: dict[str, Any] = {}
    opened: Counter[str] = Counter()
    for raw in lines:
        line = json.loads(raw)
        body = line["payload"]
        if body["status"] != "open":
            continue
        ref = line["payload_ref"]
        opened[ref] += 1
        cluster, epoch = body.get("cluster"), body.get("epoch")
        head, _, name = ref.rpartition(".")
        scope = parse_sample_head(head)
        if (cluster is None and epoch is None) or scope is None or scope.parent_ref is None:
            continue
        suffix = f"-epoch-{epoch}"
        item = name[: -len(suffix)] if epoch is not None and name.endswith(suffix) else name
        info = (item or name, epoch, cluster)
        samples.setdefault(scope.parent_ref, {})[name] = info
        by_ref[ref] = info
    return samples, by_ref, {ref: n for ref, n in opened.items() if n > 1}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_sample_line(), min_size=1, max_size=60), st.integers(64, 8192))
def test_sample_scan_agrees_with_a_line_by_line_reference(
    lines: list[bytes], chunk_size: int
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "context.jsonl"
        path.write_bytes(b"".join(lines))
        scan = SampleScan(by_ref=True)
        for block in read_file(path, Issues(), chunk_size=chunk_size):
            scan.feed(block)
    samples, by_ref, reopened = _reference(lines)
    assert scan.samples == samples
    assert scan.by_ref == by_ref
    assert scan.reopened() == reopened


async def test_a_scan_of_some_runs_keeps_only_their_samples(tmp_path: Path) -> None:
    from contexta_async import Contexta
    from contexta_async.readers import Workspace

    # Two runs open at once: their sample lines interleave within blocks (mixed heads) as
    # well as filling blocks of their own.
    root = tmp_path / "ws"
    with (
        Contexta(workspace=root, config={"project_name": "p"}) as ctx,
        ctx.run("small") as small,
        ctx.run("big") as big,
        small.stage("evaluate") as s_stage,
        big.stage("evaluate") as b_stage,
    ):
        for i in range(400):
            with b_stage.sample(f"b-{i}", cluster=f"bc-{i // 4}", epoch=1 + i % 2) as sample:
                sample.metric("score", float(i))
            if i % 100 == 0:
                with s_stage.sample(f"s-{i}", cluster=f"sc-{i}") as sample:
                    sample.metric("score", 1.0)
    context = root / "cache" / "capture" / "context.jsonl"
    for chunk_size in (512, 1 << 20):  # blocks of mixed heads, and one block
        scan = SampleScan(by_ref=True, runs=["run:p.small"])
        for block in read_file(context, Issues(), chunk_size=chunk_size):
            scan.feed(block)
        assert scan.by_ref == {
            f"sample:p.small.evaluate.s-{i}": (f"s-{i}", None, f"sc-{i}")
            for i in range(0, 400, 100)
        }
        assert list(scan.samples) == ["stage:p.small.evaluate"]
    rows = [row async for row in Workspace(root).records("small")]
    assert {(row.sample, row.cluster) for row in rows} == {
        (f"s-{i}", f"sc-{i}") for i in range(0, 400, 100)
    }
    big_rows = [row async for row in Workspace(root).records("big")]
    # A row names its sample as the ref does (an attempt's name ends in its epoch).
    assert {(row.sample, row.cluster, row.epoch) for row in big_rows} == {
        (f"b-{i}-epoch-{1 + i % 2}", f"bc-{i // 4}", 1 + i % 2) for i in range(400)
    }


# Run metadata is the user's JSON object, written as it is: these look like parts of sample
# lines from inside a Run line (a plain opening; a whole opening of a sample never opened:
# keys are written sorted, so "a" comes first).
_LOOKALIKES: list[dict[str, Any]] = [
    {"template": {"batch_execution_ref": None, "ended_at": None, "extensions": []}},
    {
        "a": {"status": "open"},
        "payload_ref": "sample:p.r0.s.ghost",
        "payload_type": "SampleObservation",
        "sink_name": "local-jsonl",
    },
]


@pytest.mark.parametrize("use_index", [True, False])
@pytest.mark.parametrize("metadata", _LOOKALIKES)
async def test_run_metadata_that_looks_like_a_sample_line_changes_no_answer(
    tmp_path: Path, metadata: dict[str, Any], use_index: bool
) -> None:
    from contexta_async import Contexta
    from contexta_async.readers import Workspace

    ctx = Contexta(workspace=tmp_path / "ws", config={"project_name": "p"})
    # Two Run lines a run (open, close), two openings a run: as many look-alikes as openings.
    for r in range(20):
        with ctx.run(f"r{r}", metadata=metadata) as run, run.stage("s") as stage:
            for i in range(2):
                with stage.sample(f"q-{i}", cluster="c") as sample:
                    sample.metric("v", float(i + r))
    ctx.close()
    ws = Workspace(tmp_path / "ws", use_index=use_index)
    rows = [row async for row in ws.records("r0", kind="metric")]
    assert [(row.sample, row.cluster) for row in rows] == [("q-0", "c"), ("q-1", "c")]
    comparison = await ws.compare("r0", "r1")
    assert comparison.alignment is not None
    assert comparison.alignment.duplicates_left == comparison.alignment.duplicates_right == 0
    assert comparison.paired[0].method == "one-cluster"  # both items in cluster c
