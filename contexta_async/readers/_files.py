"""The small capture files: runs and stages from ``context.jsonl``, ``artifact.jsonl``."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Final

from ._decode import CHUNK_SIZE, ArtifactLine, ContextLine, Issues, LineDecoder, read_blocks

__all__ = ["ArtifactInfo", "RunInfo", "read_artifacts", "read_context", "run_matches"]

# Patterns of the CONTEXT lines that listing needs. Lines are compact JSON, and a quote inside
# a JSON string is escaped, so these bytes only occur as the line's own payload_type.
_RUN_LINE: Final = b'"payload_type":"Run"'
_STAGE_LINE: Final = b'"payload_type":"StageExecution"'


def run_matches(ref: str, name: str) -> bool:
    """``name`` names the run ``ref``: the full ref, or a suffix of whole components."""
    name = name.strip()
    if ref == name:
        return True
    if name.startswith("run:"):
        return False
    value = ref.split(":", 1)[-1]
    return value == name or value.endswith("." + name)


class RunInfo:
    """What the CONTEXT lines say about one run (the newest line wins)."""

    __slots__ = (
        "dataset_ref",
        "ended_at",
        "failure_reason",
        "name",
        "project",
        "ref",
        "stages",
        "started_at",
        "status",
        "tags",
    )

    def __init__(self, ref: str) -> None:
        self.ref = ref
        value = ref.split(":", 1)[-1]
        self.project = value.split(".", 1)[0]
        self.name = value.rsplit(".", 1)[-1]
        self.status = "unknown"
        self.started_at: str | None = None
        self.ended_at: str | None = None
        self.dataset_ref: str | None = None
        self.failure_reason: str | None = None
        self.tags: dict[str, str] = {}
        self.stages: dict[str, int] = {}


async def read_context(
    path: Path, issues: Issues, *, chunk_size: int = CHUNK_SIZE
) -> dict[str, RunInfo]:
    """Runs and their stages from ``context.jsonl``; sample and batch lines are not decoded."""
    runs: dict[str, RunInfo] = {}
    decoder = LineDecoder(ContextLine)
    name = str(path)
    async for block in read_blocks(path, issues, chunk_size=chunk_size):
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
            info.project = body.project_ref.split(":", 1)[-1]
        info.status = body.status
        info.started_at = body.started_at
        info.ended_at = body.ended_at
        info.dataset_ref = body.dataset_ref
        info.failure_reason = body.failure_reason
        info.tags = dict(body.tags or {})
    elif line.payload_type == "StageExecution":
        stage = (body.stage_execution_ref or "").rsplit(".", 1)[-1] or body.stage_name or "?"
        info.stages.setdefault(stage, body.order_index)


class ArtifactInfo:
    """One ARTIFACT line, narrowed; ``place`` is its scope relative to the run
    (``""`` for the run itself, ``"evaluate"``, ``"evaluate.case-1"``...)."""

    __slots__ = (
        "batch",
        "hash_value",
        "kind",
        "location_ref",
        "place",
        "recorded_at",
        "ref",
        "run_ref",
        "sample",
        "sample_ref",
        "size_bytes",
        "stage",
        "stage_ref",
    )

    def __init__(self, line: ArtifactLine) -> None:
        manifest = line.payload.manifest
        self.ref = manifest.artifact_ref
        self.kind = manifest.artifact_kind
        self.run_ref = manifest.run_ref
        self.hash_value = manifest.hash_value
        self.location_ref = manifest.location_ref
        self.size_bytes = manifest.size_bytes
        self.recorded_at = manifest.created_at
        self.stage_ref = manifest.stage_execution_ref
        self.sample_ref = manifest.sample_observation_ref
        self.stage = _last(manifest.stage_execution_ref)
        self.batch = _last(manifest.batch_execution_ref)
        self.sample = _last(manifest.sample_observation_ref)
        self.place = ".".join(p for p in (self.stage, self.batch, self.sample) if p)


def _last(ref: str | None) -> str | None:
    return None if ref is None else ref.rsplit(".", 1)[-1]


async def read_artifacts(
    path: Path,
    issues: Issues,
    *,
    wanted: Iterable[str] | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> dict[str, list[ArtifactInfo]]:
    """Artifacts per run ref, in capture order."""
    chosen = None if wanted is None else frozenset(wanted)
    out: dict[str, list[ArtifactInfo]] = {}
    decoder = LineDecoder(ArtifactLine)
    name = str(path)
    async for block in read_blocks(path, issues, chunk_size=chunk_size):
        for line in decoder.decode(block.view(), name, block.offset, issues):
            run = line.payload.manifest.run_ref
            if chosen is None or run in chosen:
                out.setdefault(run, []).append(ArtifactInfo(line))
    return out
