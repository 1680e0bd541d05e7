"""The aggregate layer: a source's latest values and counts arranged per run, stage, sample
and metric key (``RunMetrics``), and run summaries. Works on any source's ``SourceData``."""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence
from itertools import compress, repeat
from operator import is_not, itemgetter
from typing import Final, cast, get_args

import numpy as np

from .._format.refs import parse_scope
from ..stats._bootstrap import safe_exponent
from ._model import RecordCounts, RunStatus, RunSummary, Scope
from ._source import NO_SAMPLES, TYPE_KIND, RecordScan, RunInfo, SampleFacts, SourceData

__all__ = [
    "STATUSES",
    "Aggregate",
    "Place",
    "RunMetrics",
    "mean_of",
    "natural_key",
    "order_all",
    "run_metrics",
    "stage_order",
]

STATUSES: Final = frozenset(get_args(RunStatus))
_DIGITS = re.compile(r"(\d+)")
_TEXT_NUMBER = re.compile(r"(\D+)(\d+)")

Place = tuple[str | None, Scope, str | None, str]  # (stage, scope, batch, key)


def natural_key(name: str) -> tuple[int | str, ...]:
    """Sort ``case-2`` before ``case-10``: the name's text and number parts in turn, each
    after a tag (0 text, 1 number) so that a text is never compared with a number, then the
    name itself after tag -1, so that names whose parts are equal ("case-01", "case-1") still
    sort in one order (and a name sorts before its extensions). A flat tuple: sorting by it
    sorts faster than a list of (tag, part) pairs (docs/performance.md, Readers)."""
    # Fast path for the usual "<text><number>" names (the same key, built without a split).
    simple = _TEXT_NUMBER.fullmatch(name)
    if simple is not None:
        return (0, simple[1], 1, int(simple[2]), -1, name)
    key: list[int | str] = []
    for part in _DIGITS.split(name):
        if part:
            # isdecimal, not isdigit: "²" is a digit that \d does not match and int() rejects.
            key += (1, int(part)) if part.isdecimal() else (0, part)
    key += (-1, name)
    return tuple(key)


def mean_of(values: Collection[float]) -> float:
    """The mean, exactly rounded (``math.fsum``: independent of the order of the values);
    inf or nan as IEEE arithmetic gives them where the sum leaves the float range."""
    n = len(values)
    try:
        try:
            return math.fsum(values) / n
        except OverflowError:  # the sum is past the float range, the mean may not be
            return math.fsum(v / n for v in values)
    except ValueError:  # inf - inf (raised by either sum)
        return math.nan


class RunMetrics:
    """One run's metrics: the latest value per place, and per-item values by item name.

    An item is a sample, or, when samples carry epochs, the attempts of one item: ``samples``
    then holds each item's mean over its attempts, ``attempts`` how many there were and
    ``attempt_variance`` their sample variance (items with two or more). ``clusters`` names
    the cluster of the items that have one, per stage.
    """

    __slots__ = ("attempt_variance", "attempts", "clusters", "duplicates", "latest", "samples")

    def __init__(self) -> None:
        self.latest: dict[Place, float] = {}
        self.samples: dict[tuple[str | None, str], dict[str, float]] = {}
        self.duplicates: set[tuple[str | None, str]] = set()
        self.clusters: dict[str | None, dict[str, str]] = {}
        self.attempts: dict[tuple[str | None, str], dict[str, int]] = {}
        self.attempt_variance: dict[tuple[str | None, str], dict[str, float]] = {}

    def sample_names(self, stage: str | None) -> list[str]:
        """The names of the samples with a metric in ``stage``, each once."""
        maps = [values for (st, _), values in self.samples.items() if st == stage]
        if not maps:
            return []
        first = list(maps[0])
        # Usually every metric holds the same samples in the same order (the same string
        # objects, so comparing the lists is cheap): no set to build.
        if all(len(values) == len(first) and list(values) == first for values in maps[1:]):
            return first
        names = set(first)
        for values in maps[1:]:
            names.update(values)
        return list(names)

    def value(self, place: Place) -> tuple[float | None, int]:
        stage, scope, _, key = place
        if scope == "sample":
            values = self.samples.get((stage, key))
            if not values:
                return None, 0
            return mean_of(values.values()), len(values)
        found = self.latest.get(place)
        return found, 0 if found is None else 1


class _Items:
    """How the samples of one stage (all its batches) group into items (see SampleInfo),
    computed once and used for every metric key whose samples come in the same order.
    ``epochs``: some sample is an attempt (has an epoch), so values go by item name, even
    where every item was attempted once."""

    __slots__ = ("attempts", "clusters", "codes", "counts", "epochs", "items", "names")

    def __init__(self, names: list[str], info: Mapping[str, SampleFacts]) -> None:
        self.names = names
        found = list(map(info.get, names))
        # C-level passes (map, dict.fromkeys): this runs once per stage or batch and run, over
        # every sample. A sample not in ``info`` is an item of its own, in no cluster.
        if None in found:
            found = [f or (name, None, None) for name, f in zip(names, found, strict=True)]
        infos = cast(list[SampleFacts], found)
        items = list(map(itemgetter(0), infos))
        self.items = list(dict.fromkeys(items))
        epochs = list(map(itemgetter(1), infos))
        self.epochs = epochs.count(None) < len(epochs)
        self.codes = np.arange(len(items), dtype=np.intp)
        if len(self.items) < len(names):
            position = dict(zip(self.items, range(len(self.items)), strict=True))
            self.codes = np.fromiter(map(position.__getitem__, items), np.intp, len(items))
        self.counts = np.bincount(self.codes, minlength=len(self.items))
        clusters = list(map(itemgetter(2), infos))
        pairs = zip(items, clusters, strict=True)
        # The last attempt's cluster, as later keys win (C-level: no Python step per sample).
        self.clusters: dict[str, str] = dict(
            pairs if None not in clusters else compress(pairs, map(is_not, clusters, repeat(None)))
        )
        self.attempts: dict[str, int] | None = None  # per item, made once for all keys

    def group(self, values: Mapping[str, float]) -> tuple[dict[str, float], dict[str, float]]:
        """Each item's mean over its attempts, and the sample variance of the attempts of
        items with two or more (deviations from the item mean: no cancellation)."""
        vals = np.fromiter(values.values(), dtype=np.float64, count=len(values))
        # Values near the float range are summed scaled by a power of two (exact): two
        # attempts of 1.5e308 have a mean, not an overflow.
        exponent = safe_exponent(vals)
        if exponent:
            vals = np.ldexp(vals, -exponent)
        with np.errstate(all="ignore"):
            means = np.bincount(self.codes, weights=vals, minlength=len(self.items)) / self.counts
            dev = vals - means[self.codes]
            squares = np.bincount(self.codes, weights=dev * dev, minlength=len(self.items))
            several = self.counts > 1
            variances = squares[several] / (self.counts[several] - 1)
            if exponent:
                means, variances = np.ldexp(means, exponent), np.ldexp(variances, 2 * exponent)
        repeated = compress(self.items, several.tolist())
        return dict(zip(self.items, means.tolist(), strict=True)), dict(
            zip(repeated, variances.tolist(), strict=True)
        )


def _arrange_items(
    metrics: RunMetrics, stage: str | None, key: str, values: dict[str, float], grouping: _Items
) -> dict[str, float]:
    """``values`` by sample -> by item, noting attempts (see RunMetrics)."""
    if not grouping.epochs:
        return values  # clusters alone: names are items already
    means, variances = grouping.group(values)
    if grouping.attempts is None:
        grouping.attempts = dict(zip(grouping.items, grouping.counts.tolist(), strict=True))
    metrics.attempts[(stage, key)] = grouping.attempts
    metrics.attempt_variance[(stage, key)] = variances
    return means


def run_metrics(
    scan: RecordScan, sample_info: Mapping[str, Mapping[str, SampleFacts]] = NO_SAMPLES
) -> dict[str, RunMetrics]:
    """The kept values of a scan arranged by run: item values per (stage, key) whatever their
    batch (a sample's value, or the mean of an item's attempts when ``sample_info`` gives
    epochs), and the latest run/stage/batch values per place. The scan's sample dicts are
    taken over, not copied (they are large)."""
    samples, others = scan.samples, scan.others
    out = {run: RunMetrics() for run in scan.kept}
    # The attempts of one item may sit in different batches of its stage: a stage's samples
    # are merged first (by sample name), then grouped into items with what the CONTEXT lines
    # of all its batches say.
    infos: dict[tuple[str, str | None], list[Mapping[str, SampleFacts]]] = {}
    for (parent, key), values in samples.items():
        scope = parse_scope(parent)
        if scope is None:
            continue
        metrics = out.get(scope.run_ref)
        if metrics is None:
            continue
        present: dict[str, float] = (
            {name: v for name, v in values.items() if v is not None}
            if None in values.values()
            else values  # type: ignore[assignment]
        )
        info = sample_info.get(parent) if sample_info else None
        if info:
            found = infos.setdefault((scope.run_ref, scope.stage), [])
            if not any(known is info for known in found):
                found.append(info)
        bucket = metrics.samples.get((scope.stage, key))
        if bucket is None:
            metrics.samples[(scope.stage, key)] = present
        else:  # a second batch of this stage: a name seen in both is a duplicate
            for name in bucket.keys() & present.keys():
                metrics.duplicates.add((scope.stage, name))
            bucket.update(present)
    for (run, stage), found in infos.items():
        metrics = out[run]
        info = found[0]
        if len(found) > 1:
            combined: dict[str, SampleFacts] = {}
            for part in found:
                combined.update(part)
            info = combined
        # Usually every key of a stage holds the same samples in the same order: one grouping.
        grouping: _Items | None = None
        for (of_stage, key), by_sample in metrics.samples.items():
            if of_stage != stage:
                continue
            names = list(by_sample)
            if grouping is None or grouping.names != names:
                grouping = _Items(names, info)
                metrics.clusters.setdefault(stage, {}).update(grouping.clusters)
            metrics.samples[(stage, key)] = _arrange_items(metrics, stage, key, by_sample, grouping)
    for (subject, key), value in others.items():
        scope = parse_scope(subject)
        if scope is None or value is None or scope.kind == "sample":
            continue
        metrics = out.get(scope.run_ref)
        if metrics is not None:
            place: Place = (scope.stage, scope.kind, scope.batch, key)  # type: ignore[assignment]
            metrics.latest[place] = value
    return out


class Aggregate:
    """One read of a workspace, arranged: run refs, run summaries, metrics by run."""

    def __init__(self, data: SourceData) -> None:
        self.runs = data.runs
        self.scan = data.scan
        self.artifacts = data.artifacts
        self.report = data.report
        self.reopened = data.reopened
        self._metrics = run_metrics(data.scan, data.samples)
        # Per run, once (summary is asked for every run by list_runs).
        self._counts: dict[str, list[tuple[str, int]]] = {}
        for (run, payload_type), n in data.scan.counts.items():
            self._counts.setdefault(run, []).append((payload_type, n))
        self._stages: dict[str, set[str | None]] = {}
        for st in data.scan.stage_refs:
            if st is not None and (scope := parse_scope(st)) is not None:
                self._stages.setdefault(scope.run_ref, set()).add(scope.stage)

    def refs(self) -> set[str]:
        return set(self.runs) | self.scan.run_refs() | set(self.artifacts)

    def metrics(self, ref: str) -> RunMetrics:
        """The metric values kept for ``ref``: none for a run without RECORD lines (one that
        captured nothing, or was only just opened), which the scan never saw."""
        found = self._metrics.get(ref)
        return RunMetrics() if found is None else found

    def summary(self, ref: str) -> RunSummary:
        info = self.runs.get(ref)
        from_context = info is not None and info.status != "unknown"
        if info is None:
            info = RunInfo(ref)
        counts = RecordCounts()
        for payload_type, n in self._counts.get(ref, ()):  # .metrics, .events, .spans, .other
            field = f"{TYPE_KIND[payload_type]}s" if payload_type in TYPE_KIND else "other"
            setattr(counts, field, getattr(counts, field) + n)
        counts.artifacts = len(self.artifacts.get(ref, ()))
        stages = [s for s, _ in sorted(info.stages.items(), key=lambda item: item[1])]
        extra = self._stages.get(ref, set())
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
