"""One read of a workspace, run summaries, name resolution and comparison warnings."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final, get_args

import anyio

from ._compare import RunMetrics
from ._errors import AmbiguousRunError, UnknownRunError
from ._files import ArtifactInfo, RunInfo, run_matches
from ._model import ReadReport, RecordCounts, RunStatus, RunSummary
from ._scan import RecordScan

__all__ = [
    "INFERENCE_NOTES",
    "LATEST_NOTE",
    "STATUSES",
    "TYPE_KIND",
    "Snapshot",
    "first_error",
    "nonempty",
    "order_all",
    "pairing_note",
    "resolve_run_ref",
    "run_warnings",
    "stage_order",
]

STATUSES: Final = frozenset(get_args(RunStatus))
TYPE_KIND: Final = {
    "MetricRecord": "metric",
    "StructuredEventRecord": "event",
    "TraceSpanRecord": "span",
}
LATEST_NOTE: Final = (
    "run-, stage- and batch-level metrics show the latest captured value; sample-level "
    "metrics show the mean over samples of each sample's latest value (count = samples)"
)


def resolve_run_ref(name: str, refs: Iterable[str]) -> str:
    """The run ref ``name`` stands for: the full ref, or a unique suffix of whole components
    (``grounded`` and ``mock-openai-compare.grounded`` both name
    ``run:mock-openai-compare.grounded``)."""
    known = sorted(refs)
    if name.strip() in known:
        return name.strip()
    matches = [ref for ref in known if run_matches(ref, name)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise AmbiguousRunError(name, matches)
    raise UnknownRunError(name, known)


async def nonempty(path: Path) -> bool:
    try:
        return (await anyio.Path(path).stat()).st_size > 0
    except OSError:
        return False


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf exception of a task group's failure (readers raise one at a time)."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _name(ref: str | None) -> str | None:
    return None if ref is None else ref.rsplit(".", 1)[-1]


class Snapshot:
    """One read of the workspace: context, record scan, artifacts, and what was skipped."""

    def __init__(
        self,
        runs: dict[str, RunInfo],
        scan: RecordScan,
        artifacts: dict[str, list[ArtifactInfo]],
        report: ReadReport,
    ) -> None:
        self.runs = runs
        self.scan = scan
        self.artifacts = artifacts
        self.report = report

    def refs(self) -> set[str]:
        return set(self.runs) | self.scan.run_refs() | set(self.artifacts)

    def metrics(self, ref: str) -> RunMetrics:
        """The metric values kept for ``ref``: none for a run without RECORD lines (one that
        captured nothing, or was only just opened), which the scan never saw."""
        found = self.scan.metrics.get(ref)
        return RunMetrics() if found is None else found

    def summary(self, ref: str) -> RunSummary:
        info = self.runs.get(ref)
        from_context = info is not None and info.status != "unknown"
        if info is None:
            info = RunInfo(ref)
        counts = RecordCounts()
        for (run, payload_type), n in self.scan.counts.items():
            if run != ref:
                continue
            kind = TYPE_KIND.get(payload_type)
            if kind == "metric":
                counts.metrics += n
            elif kind == "event":
                counts.events += n
            elif kind == "span":
                counts.spans += n
            else:
                counts.other += n
        counts.artifacts = len(self.artifacts.get(ref, ()))
        stages = [s for s, _ in sorted(info.stages.items(), key=lambda item: item[1])]
        prefix = "stage:" + ref.split(":", 1)[-1] + "."
        extra = {
            st[len(prefix) :]
            for st in self.scan.stage_refs
            if st is not None and st.startswith(prefix) and "." not in st[len(prefix) :]
        }
        stages.extend(sorted(s for s in extra if s is not None and s not in info.stages))
        status = info.status if info.status in STATUSES else "unknown"
        return RunSummary(
            ref=ref,
            name=info.name,
            project=info.project,
            status=status,  # type: ignore[arg-type]
            started_at=info.started_at if from_context else self.scan.first_time.get(ref),
            ended_at=info.ended_at if from_context else self.scan.last_time.get(ref),
            dataset_ref=info.dataset_ref,
            stages=stages,
            counts=counts,
            failure_reason=info.failure_reason,
            tags=info.tags,
            source="context" if from_context else "records",
        )


def order_all(order: list[str], *metrics: RunMetrics) -> list[str | None]:
    stages: list[str | None] = list(order)
    for m in metrics:
        for st, _ in m.samples:
            if st not in stages:
                stages.append(st)
    return stages


def stage_order(summaries: Sequence[RunSummary]) -> list[str]:
    order: list[str] = []
    for s in summaries:
        order.extend(st for st in s.stages if st not in order)
    return order


_INFERENCE = (
    "p_value: exact McNemar for 0/1 metrics, paired t (n - 1 df) otherwise; se = s/sqrt(n) of "
    "the differences, unpaired_se as if the runs had different items; mde: smallest true "
    "difference detected with 80% power at two-sided alpha 0.05 (2.80 se); small_n_low/high: "
    "Newcombe's interval for 0/1 metrics"
)
INFERENCE_NOTES = {
    "holm": _INFERENCE + "; p_adjusted: Holm (family-wise) across the paired metrics",
    "bh": _INFERENCE + "; p_adjusted: Benjamini-Hochberg (false discovery rate) across the "
    "paired metrics",
    "none": _INFERENCE + "; p_adjusted: not adjusted",
}


def pairing_note(confidence: float, resamples: int, seed: int, methods: Iterable[str]) -> str:
    """How the paired results were computed; ``methods`` are theirs (``PairedResult.method``)."""
    used = set(methods)
    resampled = bool(used & {"numpy", "python"})
    how = []
    if resampled:
        how.append(f"{resamples} resamples, seed {seed}")
    if "saddlepoint" in used:
        where = " where method is saddlepoint" if resampled else ""
        how.append(f"bootstrap distribution by saddlepoint approximation{where} (no resampling)")
    return (
        "paired analysis: samples matched by name within the stage (whatever their batch); "
        f"{confidence:.0%} percentile bootstrap interval of the mean difference (right - left)"
        + "".join(f", {part}" for part in how)
        + "; McNemar p-value exact (binomial) for 0/1 metrics"
    )


def run_warnings(
    summaries: Sequence[RunSummary], metrics: Sequence[RunMetrics], report: ReadReport
) -> list[str]:
    warnings = []
    for summary, m in zip(summaries, metrics, strict=True):
        if summary.status == "open":
            warnings.append(f"{summary.ref} is still open: its data may be incomplete")
        elif summary.status in ("failed", "cancelled"):
            warnings.append(f"{summary.ref} {summary.status}")
        if not m.latest and not m.samples:
            why = "it holds no records" if summary.counts.total == 0 else "none were captured"
            warnings.append(f"{summary.ref} has no metrics ({why}): nothing of it to compare")
        for st, name in sorted(m.duplicates, key=lambda d: (d[0] or "", d[1])):
            warnings.append(
                f"{summary.ref}: stage {st} holds several samples named {name!r} (in different "
                f"batches); one value is used for it"
            )
    if report.corrupt_lines:
        first = report.problems[0] if report.problems else None
        where = f" (first: {first.file}:{first.line})" if first else ""
        warnings.append(f"{report.corrupt_lines} corrupt line(s) were skipped{where}")
    return warnings
