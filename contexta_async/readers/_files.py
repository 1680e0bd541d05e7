"""The small capture files, read blocking (in the source's worker thread): runs and stages
from ``context.jsonl``, artifacts from ``artifact.jsonl``."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Final

from .._format.lines import ArtifactLine, ContextLine
from .._format.refs import components, last_component
from ._read import CHUNK_SIZE, Issues, LineDecoder, read_file, read_lines
from ._source import ArtifactInfo, RunInfo

__all__ = ["read_artifacts", "read_context"]

# Patterns of the CONTEXT lines that listing needs. Lines are compact JSON, and a quote inside
# a JSON string is escaped, so these bytes only occur as the line's own payload_type.
_RUN_LINE: Final = b'"payload_type":"Run"'
_STAGE_LINE: Final = b'"payload_type":"StageExecution"'


def read_context(path: Path, issues: Issues, *, chunk_size: int = CHUNK_SIZE) -> dict[str, RunInfo]:
    """Runs and their stages from ``context.jsonl``; sample and batch lines are not decoded."""
    runs: dict[str, RunInfo] = {}
    decoder = LineDecoder(ContextLine)
    name = str(path)
    for block in read_file(path, issues, chunk_size=chunk_size):
        buffer = block.buffer
        starts: list[int] = []
        for pattern in (_RUN_LINE, _STAGE_LINE):
            at = block.find(pattern)
            while at >= 0:
                starts.append(max(block.start, buffer.rfind(b"\n", block.start, at) + 1))
                at = block.find(pattern, at + len(pattern))
        starts.sort()
        for start in starts:
            end = buffer.find(b"\n", start, block.end)
            line = memoryview(buffer)[start : end + 1]
            for value in decoder.decode(line, name, block.offset + start - block.start, issues):
                _apply_context(runs, value)
    return runs


def _apply_context(runs: dict[str, RunInfo], line: ContextLine) -> None:
    body = line.payload
    info = runs.get(body.run_ref)
    if info is None:
        info = runs[body.run_ref] = RunInfo(body.run_ref)
    if line.payload_type == "Run":
        if body.name:
            info.name = body.name
        if body.project_ref:
            info.project = components(body.project_ref)
        info.status = body.status
        info.started_at = body.started_at
        info.ended_at = body.ended_at
        info.dataset_ref = body.dataset_ref
        info.failure_reason = body.failure_reason
        info.tags = dict(body.tags or {})
    elif line.payload_type == "StageExecution":
        stage = last_component(body.stage_execution_ref or "") or body.stage_name or "?"
        info.stages.setdefault(stage, body.order_index)


def read_artifacts(
    path: Path,
    issues: Issues,
    *,
    wanted: Iterable[str] | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> dict[str, list[ArtifactInfo]]:
    """Artifacts per run ref, in capture order."""
    chosen = None if wanted is None else frozenset(wanted)
    out: dict[str, list[ArtifactInfo]] = {}
    for lines in read_lines(path, ArtifactLine, issues, chunk_size=chunk_size):
        for line in lines:
            run = line.payload.manifest.run_ref
            if chosen is None or run in chosen:
                out.setdefault(run, []).append(ArtifactInfo(line))
    return out
