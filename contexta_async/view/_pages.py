"""The view's pages as HTML: every string that comes from a workspace is escaped here."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Final
from urllib.parse import quote, urlencode

from .._format.refs import parse_scope
from ..readers import RunComparison
from ..report import format_number, report_sections
from ._assets import SCRIPT, STYLE
from ._tail import RunDetail, RunState, event_views

__all__ = [
    "SAMPLES_PER_PAGE",
    "MetricLine",
    "compare_main",
    "error_main",
    "index_main",
    "page",
    "run_href",
    "run_main",
    "run_metrics",
    "sample_main",
]

SAMPLES_PER_PAGE: Final = 100


def run_href(ref: str) -> str:
    return "/runs/" + quote(ref, safe="")


def compare_href(left: str, right: str) -> str:
    return f"/compare/{quote(left, safe='')}/{quote(right, safe='')}"


def page(title: str, main: str, workspace: str) -> str:
    """A whole page around ``main`` (a ``<main>`` element)."""
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<header><a href='/'>contexta-async view</a><span id=live>connecting</span>"
        f"<span class=muted>{escape(workspace)}</span></header>"
        f"{main}<script>{SCRIPT}</script></body></html>\n"
    )


def _main(watch: str, version: int, body: str) -> str:
    return f"<main data-watch='{escape(watch)}' data-version='{version}'>{body}</main>"


def _status(status: str) -> str:
    return f"<span class='status status-{escape(status)}'>{escape(status)}</span>"


def error_main(title: str, message: str) -> str:
    return _main("*", 0, f"<h1>{escape(title)}</h1><p class=warn>{escape(message)}</p>")


# ---- / ----------------------------------------------------------------------------------


def index_main(runs: Sequence[RunState], version: int, corrupt_lines: int) -> str:
    parts = [f"<h1>Runs <span class=muted>({len(runs)})</span></h1>"]
    if not runs:
        parts.append("<p class=muted>No runs yet: this page updates when a capture starts.</p>")
        return _main("*", version, "".join(parts))
    parts.append(
        "<table id=runs><tr><th>run</th><th>project</th><th>status</th><th>dataset</th>"
        "<th>stages</th><th>metrics</th><th>events</th><th>spans</th><th>artifacts</th>"
        "<th>started</th><th>ended</th></tr>"
    )
    for run in runs:
        counts = run.counts
        parts.append(
            f"<tr data-ref='{escape(run.ref)}'><td><a href='{escape(run_href(run.ref))}'>"
            f"{escape(run.name)}</a><br><span class=muted>{escape(run.ref)}</span></td>"
            f"<td>{escape(run.project)}</td><td>{_status(run.status)}</td>"
            f"<td>{escape(run.dataset_ref or '-')}</td><td>{escape(_stages(run))}</td>"
            f"<td class=num>{counts['metrics']}</td><td class=num>{counts['events']}</td>"
            f"<td class=num>{counts['spans']}</td><td class=num>{counts['artifacts']}</td>"
            f"<td>{escape(run.started_at or '-')}</td><td>{escape(run.ended_at or '-')}</td></tr>"
        )
    parts.append("</table>")
    if len(runs) >= 2:
        options = "".join(
            f"<option value='{escape(r.ref)}'>{escape(r.name)} ({escape(r.ref)})</option>"
            for r in runs
        )
        parts.append(
            "<h2>Compare two runs</h2><form class=pick method=get action='/compare'>"
            f"<label>left <select name=left>{options}</select></label>"
            f"<label>right <select name=right>{options}</select></label>"
            "<button type=submit>Compare</button></form>"
        )
    if corrupt_lines:
        parts.append(f"<p class=warn>{corrupt_lines} corrupt line(s) skipped</p>")
    return _main("*", version, "".join(parts))


def _stages(run: RunState) -> str:
    return ", ".join(sorted(run.stages, key=lambda s: (run.stages[s], s))) or "-"


# ---- /runs/RUN ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricLine:
    """A metric of a run: the latest value (run/stage/batch) or the mean over samples."""

    stage: str | None
    scope: str
    batch: str | None
    key: str
    basis: str
    value: float | None
    count: int


def where(subject: str | None) -> tuple[str, str | None, str | None, str | None]:
    """A subject ref -> (scope, stage, batch, sample) names."""
    scope = None if subject is None else parse_scope(subject)
    if scope is None or scope.kind == "run":
        return "run", None, None, None
    if scope.kind == "sample":
        return "sample", scope.stage, scope.batch, scope.name
    return scope.kind, scope.stage, scope.batch, None


def run_metrics(detail: RunDetail) -> list[MetricLine]:
    """Run, stage and batch metrics (latest), then sample metrics (mean over samples)."""
    places: dict[str | None, tuple[str, str | None, str | None, str | None]] = {}
    latest: dict[tuple[str | None, str, str | None, str], float | None] = {}
    sums: dict[tuple[str | None, str], list[float]] = {}
    for (subject, key), value in detail.values.items():
        place = places.get(subject)
        if place is None:
            place = places[subject] = where(subject)
        scope, stage, batch, sample = place
        if sample is None:
            latest[(stage, scope, batch, key)] = value
            continue
        acc = sums.setdefault((stage, key), [0.0, 0])
        if value is not None and math.isfinite(value):
            acc[0] += value
            acc[1] += 1
    lines = [
        MetricLine(stage, scope, batch, key, "latest", value, 1)
        for (stage, scope, batch, key), value in latest.items()
    ]
    lines.extend(
        MetricLine(stage, "sample", None, key, "mean", total / n if n else None, int(n))
        for (stage, key), (total, n) in sums.items()
    )
    order = {"run": 0, "stage": 1, "batch": 2, "sample": 3}
    lines.sort(key=lambda m: (m.stage or "", order[m.scope], m.batch or "", m.key))
    return lines


def _facts(rows: Iterable[tuple[str, str]]) -> str:
    return (
        "<dl class=facts>"
        + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in rows)
        + "</dl>"
    )


def run_main(run: RunState, detail: RunDetail, page_number: int) -> str:
    counts = run.counts
    facts = [
        ("ref", run.ref),
        ("project", run.project),
        ("status", run.status),
        ("dataset", run.dataset_ref or "-"),
        ("started", run.started_at or "-"),
        ("ended", run.ended_at or "-"),
        ("stages", _stages(run)),
        (
            "records",
            f"{counts['metrics']} metrics, {counts['events']} events, {counts['spans']} spans, "
            f"{counts['artifacts']} artifacts",
        ),
    ]
    if run.failure_reason:
        facts.append(("failure", run.failure_reason))
    facts.extend((f"tag {k}", v) for k, v in sorted(run.tags.items()))
    parts = [f"<h1>{escape(run.name)} {_status(run.status)}</h1>", _facts(facts)]
    parts.append(
        "<h2>Metrics</h2><table id=metrics><tr><th>stage</th><th>scope</th><th>key</th>"
        "<th>basis</th><th>value</th><th>samples</th><th>unit</th></tr>"
    )
    for m in run_metrics(detail):
        scope = m.scope + (f" {m.batch}" if m.batch else "")
        parts.append(
            f"<tr><td>{escape(m.stage or '(run)')}</td><td>{escape(scope)}</td>"
            f"<td>{escape(m.key)}</td><td>{escape(m.basis)}</td>"
            f"<td class=num>{format_number(m.value)}</td>"
            f"<td class=num>{m.count if m.basis == 'mean' else ''}</td>"
            f"<td>{escape(detail.units.get(m.key, ''))}</td></tr>"
        )
    parts.append("</table>")
    parts.append(_samples(run, detail, page_number))
    parts.append(
        "<h2>Newest events</h2><table id=events><tr><th>recorded</th><th>stage</th>"
        "<th>sample</th><th>key</th><th>level</th><th>message</th></tr>"
    )
    for e in event_views(detail):
        parts.append(
            f"<tr><td>{escape(e.recorded_at)}</td><td>{escape(e.stage or '-')}</td>"
            f"<td>{escape(e.sample or '-')}</td><td>{escape(e.key)}</td>"
            f"<td>{escape(e.level or '-')}</td><td>{escape(e.message or '')}</td></tr>"
        )
    parts.append("</table>")
    return _main(run.ref, run.version, "".join(parts))


def _samples(run: RunState, detail: RunDetail, page_number: int) -> str:
    total = len(detail.samples)
    if not total:
        return "<h2>Samples</h2><p class=muted>No sample records yet.</p>"
    pages = max(1, math.ceil(total / SAMPLES_PER_PAGE))
    page_number = min(max(page_number, 1), pages)
    shown = detail.samples[(page_number - 1) * SAMPLES_PER_PAGE : page_number * SAMPLES_PER_PAGE]
    keys = sorted(_sample_keys(detail, shown))
    parts = [
        f"<h2>Samples <span class=muted>({total})</span></h2>",
        "<table id=samples><tr><th>stage</th><th>batch</th><th>sample</th>"
        + "".join(f"<th>{escape(k)}</th>" for k in keys)
        + "</tr>",
    ]
    for subject in shown:
        _, stage, batch, sample = where(subject)
        parts.append(
            f"<tr><td>{escape(stage or '-')}</td><td>{escape(batch or '-')}</td>"
            f"<td>{escape(sample or '-')}</td>"
            + "".join(
                f"<td class=num>{format_number(detail.values.get((subject, k)))}</td>" for k in keys
            )
            + "</tr>"
        )
    parts.append("</table>")
    if pages > 1:
        base = run_href(run.ref)
        links = [
            f"<a href='{escape(base)}?{urlencode({'page': n})}'>{n}</a>"
            if n != page_number
            else f"<strong>{n}</strong>"
            for n in sorted({1, page_number - 1, page_number, page_number + 1, pages})
            if 1 <= n <= pages
        ]
        parts.append(f"<p class=pages>page {' '.join(links)} of {pages}</p>")
    return "".join(parts)


def _sample_keys(detail: RunDetail, subjects: Sequence[str]) -> set[str]:
    """The metric keys the shown samples hold (not every value of the run: that would cost)."""
    keys: set[str] = set()
    for subject in subjects:
        keys.update(k for k in detail.keys if (subject, k) in detail.values)
    return keys


# ---- /compare/LEFT/RIGHT --------------------------------------------------------------------


def compare_main(comparison: RunComparison, version: int) -> str:
    left, right = comparison.left, comparison.right

    def sample_link(stage: str | None, sample: str) -> str:
        query = urlencode({"stage": stage}) if stage else ""
        return f"{compare_href(left.ref, right.ref)}/samples/{quote(sample, safe='')}" + (
            f"?{query}" if query else ""
        )

    heading = (
        f"<h1><a href='{escape(run_href(left.ref))}'>{escape(left.name)}</a> vs "
        f"<a href='{escape(run_href(right.ref))}'>{escape(right.name)}</a></h1>"
    )
    return _main(
        f"{left.ref} {right.ref}",
        version,
        heading + report_sections(comparison, sample_link=sample_link),
    )


def sample_values(detail: RunDetail, stage: str | None, sample: str) -> dict[str, float | None]:
    """Every metric of the named sample (within ``stage``, whatever its batch)."""
    out: dict[str, float | None] = {}
    for subject in detail.samples:
        _, s_stage, _, name = where(subject)
        if name == sample and (stage is None or s_stage == stage):
            out.update(
                {
                    k: detail.values[(subject, k)]
                    for k in detail.keys
                    if (subject, k) in detail.values
                }
            )
    return out


def sample_main(
    left: RunState,
    right: RunState,
    stage: str | None,
    sample: str,
    values: tuple[dict[str, float | None], dict[str, float | None]],
) -> str:
    lhs, rhs = values
    parts = [
        f"<h1>{escape(sample)} <span class=muted>{escape(stage or '')}</span></h1>",
        f"<p><a href='{escape(compare_href(left.ref, right.ref))}'>back to "
        f"{escape(left.name)} vs {escape(right.name)}</a></p>",
    ]
    if not lhs and not rhs:
        parts.append("<p class=warn>Neither run holds this sample.</p>")
    parts.append(
        f"<table id=sample><tr><th>key</th><th>{escape(left.name)} (left)</th>"
        f"<th>{escape(right.name)} (right)</th><th>right - left</th></tr>"
    )
    for key in sorted(set(lhs) | set(rhs)):
        a, b = lhs.get(key), rhs.get(key)
        diff = None if a is None or b is None else b - a
        parts.append(
            f"<tr><td>{escape(key)}</td><td class=num>{format_number(a)}</td>"
            f"<td class=num>{format_number(b)}</td>"
            f"<td class=num>{format_number(diff, signed=True)}</td></tr>"
        )
    parts.append("</table>")
    return _main(f"{left.ref} {right.ref}", max(left.version, right.version), "".join(parts))
