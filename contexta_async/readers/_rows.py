"""Records and artifacts of a run as RecordRow, with the stream's filters."""

from __future__ import annotations

from collections.abc import Collection

from .._format.lines import FullRecordLine
from .._format.refs import last_component
from ._model import RecordRow
from ._source import TYPE_KIND, ArtifactInfo

__all__ = ["artifact_row", "record_row"]


def _matches(value: str | None, wanted: str | None) -> bool:
    if wanted is None:
        return True
    if value is None:
        return False
    return value == wanted or last_component(value) == wanted


def record_row(
    line: FullRecordLine,
    ref: str,
    kinds: Collection[str],
    key: str | None,
    stage: str | None,
    sample: str | None,
) -> RecordRow | None:
    env = line.payload.envelope
    if env.run_ref != ref:
        return None
    kind = TYPE_KIND.get(line.payload_type)
    if kind is None or kind not in kinds:
        return None
    body = line.payload.payload
    name = (
        body.metric_key
        if kind == "metric"
        else body.event_key
        if kind == "event"
        else body.span_name
    ) or ""
    if key is not None and name != key:
        return None
    if not _matches(env.stage_execution_ref, stage):
        return None
    if not _matches(env.sample_observation_ref, sample):
        return None
    return RecordRow(
        kind=kind,  # type: ignore[arg-type]
        ref=env.record_ref or line.payload_ref or "",
        run_ref=ref,
        key=name,
        stage=last_component(env.stage_execution_ref),
        batch=last_component(env.batch_execution_ref),
        sample=last_component(env.sample_observation_ref),
        recorded_at=env.recorded_at,
        value=body.value,
        value_type=body.value_type,
        unit=body.unit,
        tags=body.tags or {},
        level=body.level,
        message=body.message,
        attributes=body.attributes or {},
        status=body.status,
    )


def artifact_row(
    item: ArtifactInfo, key: str | None, stage: str | None, sample: str | None
) -> RecordRow | None:
    if key is not None and item.kind != key:
        return None
    if stage is not None and stage not in (item.stage, item.stage_ref):
        return None
    if sample is not None and sample not in (item.sample, item.sample_ref):
        return None
    return RecordRow(
        kind="artifact",
        ref=item.ref,
        run_ref=item.run_ref,
        key=item.kind,
        stage=item.stage,
        batch=item.batch,
        sample=item.sample,
        recorded_at=item.recorded_at,
        hash_value=item.hash_value,
        location_ref=item.location_ref,
        size_bytes=item.size_bytes,
    )
