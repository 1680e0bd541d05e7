"""Lines are shaped exactly like Contexta 1.0.0's capture lines (reference §4)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from contexta_async import Contexta

from .capture_files import read_lines

# One real metric line written by Contexta 1.0.0 (reference/contexta-1.0.md §4).
CONTEXTA_METRIC_LINE = (
    '{"captured_at":"2026-11-26T04:52:19.560695Z","family":"RECORD","payload":{"envelope":'
    '{"batch_execution_ref":"batch:iris-svm.linear-svm.evaluate.holdout-split",'
    '"completeness_marker":"complete","correlation_refs":{"session_id":null,"trace_id":null},'
    '"degradation_marker":"none","deployment_execution_ref":null,"extensions":[],'
    '"observed_at":"2026-11-26T04:52:19.560131Z","operation_context_ref":null,'
    '"producer_ref":"sdk.python.local","record_ref":"record:iris-svm.linear-svm.metric-46954487a531",'
    '"record_type":"metric","recorded_at":"2026-11-26T04:52:19.560180Z",'
    '"run_ref":"run:iris-svm.linear-svm","sample_observation_ref":null,"schema_version":"1.0.0",'
    '"stage_execution_ref":"stage:iris-svm.linear-svm.evaluate"},"payload":'
    '{"aggregation_scope":"step","metric_key":"accuracy","slice_ref":null,'
    '"subject_ref":"batch:iris-svm.linear-svm.evaluate.holdout-split",'
    '"summary_basis":"raw_observation","tags":{},"unit":"ratio","value":0.9777777777777777,'
    '"value_type":"float"}},"payload_ref":"record:iris-svm.linear-svm.metric-46954487a531",'
    '"payload_type":"MetricRecord","sink_name":"local-jsonl"}'
)
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
TIMESTAMP_KEYS = {
    "captured_at",
    "observed_at",
    "recorded_at",
    "started_at",
    "ended_at",
    "created_at",
}


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    return type(value).__name__ if value is not None else "null"


def _walk_keys(raw: str) -> list[list[str]]:
    orders: list[list[str]] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        orders.append([key for key, _ in pairs])
        return dict(pairs)

    json.loads(raw, object_pairs_hook=hook)
    return orders


def _capture_seed_metric(workspace: Path) -> str:
    ctx = Contexta(workspace=workspace, config={"project_name": "iris-svm"})
    with ctx.run("linear-svm", dataset_ref="dataset:sklearn.iris") as run:
        with run.stage("evaluate") as stage, stage.batch("holdout-split") as batch:
            batch.metric("accuracy", 0.9777777777777777, unit="ratio")
    ctx.close()
    path = workspace / "cache" / "capture" / "record.jsonl"
    return path.read_text(encoding="utf-8").splitlines()[0]


def test_metric_line_has_contexta_shape_and_values(workspace: Path) -> None:
    ours = json.loads(_capture_seed_metric(workspace))
    theirs = json.loads(CONTEXTA_METRIC_LINE)
    assert _shape(ours) == _shape(theirs)
    for volatile in ("captured_at",):
        ours.pop(volatile), theirs.pop(volatile)
    ours_env, theirs_env = ours["payload"].pop("envelope"), theirs["payload"].pop("envelope")
    for key in ("observed_at", "recorded_at", "record_ref"):
        assert ours_env.pop(key) and theirs_env.pop(key)
    ours.pop("payload_ref"), theirs.pop("payload_ref")
    assert ours_env == theirs_env
    assert ours == theirs


def test_lines_are_compact_sorted_utf8_with_six_digit_timestamps(workspace: Path) -> None:
    ctx = Contexta(workspace=workspace, config={"project_name": "p"})
    with ctx.run("Ünïcode run", tags={"zeta": "z", "alpha": "a"}) as run:
        run.event("note", message="héllo ✓", attributes={"b": 1, "a": {"y": 2, "x": 1}})
        run.metric("x", 1.0, tags={"b": "2", "a": "1"})
    ctx.close()
    for family in ("RECORD", "CONTEXT"):
        path = workspace / "cache" / "capture" / f"{family.lower()}.jsonl"
        raw = path.read_text(encoding="utf-8")
        assert "\\u" not in raw  # raw UTF-8, never escaped
        if family == "RECORD":
            assert "héllo ✓" in raw
        for line in raw.splitlines():
            assert line == json.dumps(
                json.loads(line), sort_keys=True, separators=(",", ":"), ensure_ascii=False
            )
            for keys in _walk_keys(line):
                assert keys == sorted(keys)
    for line in read_lines(workspace, "CONTEXT") + read_lines(workspace, "RECORD"):
        stack: list[Any] = [line]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                for key, value in node.items():
                    if key in TIMESTAMP_KEYS and value is not None:
                        assert TIMESTAMP.fullmatch(value), (key, value)
                    stack.append(value)


def test_context_lines_use_contexta_field_names(workspace: Path) -> None:
    ctx = Contexta(workspace=workspace, config={"project_name": "p"})
    with ctx.run("r", dataset_ref="dataset:d.v1", code_revision="abc123") as run:
        with run.stage("s") as stage, stage.batch("b") as batch, batch.sample("x"):
            pass
    ctx.close()
    lines = read_lines(workspace, "CONTEXT")
    by_type: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_type.setdefault(line["payload_type"], []).append(line["payload"])
    assert set(by_type) == {"Run", "StageExecution", "BatchExecution", "SampleObservation"}
    run_line = by_type["Run"][-1]
    assert {
        "run_ref",
        "project_ref",
        "name",
        "status",
        "started_at",
        "ended_at",
        "description",
    } <= set(run_line)
    assert run_line["dataset_ref"] == "dataset:d.v1"
    assert run_line["code_revision"] == "abc123"
    assert {"stage_execution_ref", "run_ref", "stage_name", "status", "order_index"} <= set(
        by_type["StageExecution"][-1]
    )
    assert {"batch_execution_ref", "stage_execution_ref", "batch_name", "order_index"} <= set(
        by_type["BatchExecution"][-1]
    )
    sample = by_type["SampleObservation"][-1]
    assert {"sample_observation_ref", "sample_name", "observed_at", "batch_execution_ref"} <= set(
        sample
    )
    assert sample["batch_execution_ref"] == "batch:p.r.s.b"
    # opened then closed: two lines per scope, open first
    assert [p["status"] for p in by_type["Run"]] == ["open", "completed"]


def test_record_refs_are_unique_twelve_hex_digits(workspace: Path) -> None:
    ctx = Contexta(workspace=workspace, config={"project_name": "p"})
    with ctx.run("r") as run:
        for i in range(1000):
            run.metric("x", i)
    ctx.close()
    refs = [line["payload_ref"] for line in read_lines(workspace, "RECORD")]
    assert len(set(refs)) == 1000
    assert all(re.fullmatch(r"record:p\.r\.metric-[0-9a-f]{12}", ref) for ref in refs)


def test_the_ref_parser_says_what_each_scope_ref_names() -> None:
    from contexta_async._format.refs import ScopeRef, parse_sample_head, parse_scope

    run, stage, batch = "run:p.r", "stage:p.r.s", "batch:p.r.s.b"
    assert parse_scope(run) == ScopeRef("run", run, None, None, None, None, None)
    assert parse_scope(stage) == ScopeRef("stage", run, stage, None, "s", None, None)
    assert parse_scope(batch) == ScopeRef("batch", run, stage, None, "s", "b", None)
    assert parse_scope("sample:p.r.s.n") == ScopeRef("sample", run, stage, stage, "s", None, "n")
    assert parse_scope("sample:p.r.s.b.n") == ScopeRef("sample", run, stage, batch, "s", "b", "n")
    # A sample ref's head (as the scan splits it off) names the place of any sample under it.
    assert parse_sample_head("sample:p.r.s.b") == parse_scope("sample:p.r.s.b.n")._replace(
        name=None
    )
    for odd in ("run:legacy", "run:p.r.x", "stage:p.r", "batch:p..s.b", "sample:p.r.s.", "x:p.r"):
        assert parse_scope(odd) is None, odd
    assert parse_sample_head("sample:p.r") is None and parse_sample_head("stage:p.r.s") is None


def test_run_names_are_full_refs_or_suffixes_of_whole_components() -> None:
    from contexta_async._format.refs import (
        components,
        first_component,
        last_component,
        run_matches,
    )

    ref = "run:mock-openai-compare.grounded"
    assert all(run_matches(ref, n) for n in (ref, "grounded", "mock-openai-compare.grounded"))
    assert not any(run_matches(ref, n) for n in ("rounded", "run:grounded", "compare.grounded"))
    assert components(ref) == "mock-openai-compare.grounded"
    assert last_component("sample:p.r.s.case-1") == "case-1" and last_component(None) is None
    assert first_component(ref) == "mock-openai-compare"
    assert first_component("project:p") == first_component("sample:p.r.s.b.n") == "p"
