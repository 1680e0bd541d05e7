"""A self-contained HTML page for a two-run comparison: no script, no network asset."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from html import escape
from typing import Final

from ..readers._direction import infer_direction
from ..readers._model import Alignment, PairedResult, RunComparison, RunSummary
from ._notebook import number as format_number
from ._notebook import percent

__all__ = ["STYLE", "render_html_report", "report_sections"]

_MAX_BARS: Final = 400
_WIDTH: Final = 640
_HEIGHT: Final = 180

STYLE: Final = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#1b1f24;
max-width:72rem}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:2rem}h3{font-size:1rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #d0d7de;padding:.25rem .5rem;
text-align:left;font-variant-numeric:tabular-nums}th{background:#f6f8fa}
td.num{text-align:right}.up{color:#1a7f37}.down{color:#cf222e}.warn{color:#9a6700}
.muted{color:#57606a;font-size:.9rem}svg{background:#fff;border:1px solid #d0d7de}
"""


def _run_rows(label: str, run: RunSummary) -> str:
    counts = run.counts
    return (
        f"<tr><th>{escape(label)}</th><td>{escape(run.ref)}</td><td>{escape(run.status)}</td>"
        f"<td>{escape(run.dataset_ref or '-')}</td><td>{escape(', '.join(run.stages) or '-')}</td>"
        f"<td class=num>{counts.metrics}</td><td class=num>{counts.events}</td>"
        f"<td class=num>{counts.artifacts}</td><td>{escape(run.started_at or '-')}</td>"
        f"<td>{escape(run.ended_at or '-')}</td></tr>"
    )


def _delta_class(delta: float | None, better_when_up: bool) -> str:
    if delta is None or delta == 0:
        return "num"
    good = (delta > 0) == better_when_up
    return "num up" if good else "num down"


def _chart(result: PairedResult) -> str:
    """Bars of the per-sample differences, sorted; many samples are shown by quantiles."""
    samples = result.samples or []
    if not samples:
        return "<p class=muted>No matched samples to chart.</p>"
    # A difference of two finite values can overflow (values near the float range): it has
    # no place on the chart, and the caption says how many were left out.
    diffs = sorted(d for s in samples if math.isfinite(d := s.diff))
    left_out = len(samples) - len(diffs)
    if not diffs:
        return "<p class=muted>No finite differences to chart.</p>"
    if len(diffs) > _MAX_BARS:
        step = (len(diffs) - 1) / (_MAX_BARS - 1)
        shown = [diffs[round(i * step)] for i in range(_MAX_BARS)]
        caption = f"{len(diffs)} samples, shown as {_MAX_BARS} evenly spaced quantiles"
    else:
        shown = diffs
        caption = f"{len(diffs)} samples"
    if left_out:
        caption += f" ({left_out} not finite, left out)"
    top = max(max(shown), 0.0)
    bottom = min(min(shown), 0.0)
    span = (top - bottom) or 1.0
    pad = 10
    inner = _HEIGHT - 2 * pad
    zero_y = pad + inner * (top / span)
    width = (_WIDTH - 2 * pad) / len(shown)
    better_up = result.direction == "maximize"
    bars = []
    for i, d in enumerate(shown):
        height = inner * abs(d) / span
        y = zero_y - height if d > 0 else zero_y
        color = "#8c959f" if d == 0 else "#1a7f37" if (d > 0) == better_up else "#cf222e"
        bars.append(
            f'<rect x="{pad + i * width:.2f}" y="{y:.2f}" width="{max(width - 0.5, 0.5):.2f}" '
            f'height="{max(height, 0.5):.2f}" fill="{color}"/>'
        )
    title = escape(f"{result.stage or '(run)'} / {result.key}: right - left per sample")
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{_HEIGHT}" '
        f'viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img" aria-label="{title}"><title>{title}</title>'
        + "".join(bars)
        + f'<line x1="{pad}" x2="{_WIDTH - pad}" y1="{zero_y:.2f}" y2="{zero_y:.2f}" '
        'stroke="#1b1f24" stroke-width="1"/>'
        f'<text x="{pad}" y="{pad + 2}" font-size="10" dominant-baseline="hanging">'
        f"{escape(format_number(top))}</text>"
        f'<text x="{pad}" y="{_HEIGHT - 2}" font-size="10">{escape(format_number(bottom))}</text>'
        f"</svg><p class=muted>Sorted differences, {escape(caption)}; green = better for the "
        f"right run ({escape(result.direction)}).</p>"
    )


# The level below which the adjusted p-value counts as a clear difference in the "How sure are
# we" reading (the level the MDE is computed for).
_ALPHA: Final = 0.05


def _reading(p: PairedResult) -> tuple[str, str]:
    """One phrase a reviewer reads first, and its CSS class."""
    if p.p_adjusted is None or p.mean_diff is None:
        why = {
            "non-finite": "differences past the float range",
            "one-cluster": "every matched item in one cluster",
        }.get(p.method, "fewer than 2 matched samples" if p.n_matched < 2 else "no SE")
        return f"not tested ({why})", "muted"
    if p.p_adjusted < _ALPHA and p.mean_diff != 0:
        better = (p.mean_diff > 0) == (p.direction == "maximize")
        return ("right is better", "up") if better else ("right is worse", "down")
    if p.mde is not None:
        return f"no clear difference (detectable at this n: ±{format_number(p.mde)})", "muted"
    if p.se == 0:
        return "no clear difference (SE 0: every difference equal, power not estimable)", "muted"
    return "no clear difference", "muted"


def _how_sure(comparison: RunComparison) -> list[str]:
    """The compact "How sure are we" table: one row per paired metric."""
    level = f"{comparison.paired[0].confidence:.0%}"
    adjustment = {"holm": "Holm", "bh": "Benjamini-Hochberg", "none": "not adjusted"}.get(
        comparison.adjustment, comparison.adjustment
    )
    headers: tuple[str, ...] = (
        "metric",
        "reading",
        "n",
        "mean diff",
        f"{level} CI",
        "p",
        f"p adjusted ({adjustment})",
        "MDE (80% power)",
        "SE paired",
        "SE unpaired",
        "correlation",
    )
    binary = any(p.small_n_low is not None for p in comparison.paired)
    clustered = any(p.clusters is not None for p in comparison.paired)
    attempts = any(
        p.attempts_left is not None or p.attempts_right is not None for p in comparison.paired
    )
    if binary:
        headers += (f"small-n {level} CI (Newcombe)",)
    if clustered:
        headers += ("clusters", "design effect")
    if attempts:
        headers += ("attempts per item (L/R)", "variance across attempts (L/R)")
    parts = [
        "<h2 id=how-sure>How sure are we</h2>",
        f"<p class=muted>Right minus left, per paired metric. &ldquo;Right is better/worse&rdquo;"
        f" when the adjusted p is below {_ALPHA:g}; MDE: the smallest true difference found "
        "80% of the time at two-sided alpha 0.05; a paired SE below the unpaired one is what "
        "pairing the samples bought."
        + (
            " With clusters the SE is cluster-robust (the p-value, MDE and interval use it) and"
            " the design effect is its variance over the naive one."
            if clustered
            else ""
        )
        + (
            " Small-n CI: Newcombe's interval for a paired difference of proportions (0/1"
            " metrics without clusters), which keeps its coverage at a few dozen items."
            if binary
            else ""
        )
        + (" Attempts of one item are averaged before pairing (n = items)." if attempts else "")
        + "</p>",
        "<table class=how-sure><tr>",
        *(f"<th>{escape(h)}</th>" for h in headers),
        "</tr>",
    ]
    for p in comparison.paired:
        metric = f"{p.stage or '(run)'} / {p.key}"
        reading, css = _reading(p)
        ci = f"[{format_number(p.ci_low, signed=True)}, {format_number(p.ci_high, signed=True)}]"
        test = {
            "mcnemar-exact": "exact McNemar",
            "paired-t": "paired t",
            "clustered-t": "clustered t",
        }.get(p.p_test or "", p.p_test or "")
        p_raw = format_number(p.p_value) + (f" ({test})" if test else "")
        cells: tuple[str, ...] = (
            format_number(p.mean_diff, signed=True),
            ci,
            p_raw,
            format_number(p.p_adjusted),
            format_number(p.mde),
            format_number(p.se),
            format_number(p.unpaired_se),
            format_number(p.correlation),
        )
        if binary:
            cells += (
                "-"
                if p.small_n_low is None or p.small_n_high is None
                else f"[{format_number(p.small_n_low, signed=True)}, "
                f"{format_number(p.small_n_high, signed=True)}]",
            )
        if clustered:
            cells += (
                "-" if p.clusters is None else str(p.clusters),
                format_number(p.design_effect),
            )
        if attempts:
            cells += (
                f"{format_number(p.attempts_left)} / {format_number(p.attempts_right)}",
                f"{format_number(p.within_item_variance_left)} / "
                f"{format_number(p.within_item_variance_right)}",
            )
        parts.append(
            f"<tr data-metric='{escape(metric)}'><td>{escape(metric)}</td>"
            f"<td class={css}>{escape(reading)}</td><td class=num>{p.n_matched}</td>"
            + "".join(f"<td class=num>{escape(cell)}</td>" for cell in cells)
            + "</tr>"
        )
    parts.append("</table>")
    return parts


def _alignment(found: Alignment) -> list[str]:
    """Items only in one run, duplicated, or attempted a different number of times."""
    css = "warn" if found.warn else "muted"
    parts = [
        "<h2 id=alignment>Alignment</h2>",
        f"<p class={css}>{found.share:.1%} of {found.items} items misaligned "
        f"(a warning above {found.threshold:.0%}).</p><table><tr><th>what</th><th>count</th>"
        f"<th>first {found.listed}</th></tr>",
    ]
    for label, count, names in found.kinds():
        parts.append(
            f"<tr data-alignment='{escape(label)}'><td>{escape(label)}</td>"
            f"<td class=num>{count}</td><td>{_names(names)}</td></tr>"
        )
    parts.append("</table>")
    return parts


def _names(names: Sequence[str], limit: int = 50, link: Callable[[str], str] | None = None) -> str:
    if not names:
        return "none"
    if link is None:
        shown = ", ".join(escape(n) for n in names[:limit])
    else:
        shown = ", ".join(f'<a href="{escape(link(n))}">{escape(n)}</a>' for n in names[:limit])
    return shown + (f" … and {len(names) - limit} more" if len(names) > limit else "")


def render_html_report(comparison: RunComparison, *, title: str | None = None) -> str:
    """The page for ``comparison``; charts need ``compare(..., include_samples=True)``."""
    left, right = comparison.left, comparison.right
    heading = title or f"{left.ref} vs {right.ref}"
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(heading)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{escape(heading)}</h1>{report_sections(comparison)}</body></html>\n"
    )


def report_sections(
    comparison: RunComparison, *, sample_link: Callable[[str | None, str], str] | None = None
) -> str:
    """The report's sections (summary to notes), for a page of its own or another's.

    ``sample_link(stage, sample)``, if given, is the address each fixed or regressed sample
    links to.
    """
    left, right = comparison.left, comparison.right
    parts = [
        "<h2>Summary</h2><table><tr><th></th><th>run</th><th>status</th><th>dataset</th>"
        "<th>stages</th><th>metrics</th><th>events</th><th>artifacts</th><th>started</th>"
        "<th>ended</th></tr>",
        _run_rows("left", left),
        _run_rows("right", right),
        "</table>",
    ]
    if comparison.warnings:
        parts.append("<h2>Warnings</h2><ul>")
        parts.extend(f"<li class=warn>{escape(w)}</li>" for w in comparison.warnings)
        parts.append("</ul>")
    if comparison.paired:
        parts.extend(_how_sure(comparison))
    if comparison.alignment is not None and comparison.alignment.share > 0:
        parts.extend(_alignment(comparison.alignment))
    parts.append(
        "<h2>Metrics</h2><table><tr><th>stage</th><th>scope</th><th>key</th><th>basis</th>"
        "<th>left</th><th>right</th><th>delta (right - left)</th><th>relative</th></tr>"
    )
    for m in comparison.metrics:
        up = infer_direction(m.key) == "maximize"
        basis = "latest" if m.basis == "latest" else f"mean of {m.left_count} / {m.right_count}"
        place = m.stage or "(run)"
        parts.append(
            f"<tr><td>{escape(place)}</td><td>{escape(m.scope)}"
            f"{escape(' ' + m.batch) if m.batch else ''}</td><td>{escape(m.key)}</td>"
            f"<td>{escape(basis)}</td><td class=num>{format_number(m.left)}</td>"
            f"<td class=num>{format_number(m.right)}</td>"
            f"<td class='{_delta_class(m.delta, up)}'>{format_number(m.delta, signed=True)}</td>"
            f"<td class=num>{percent(m.relative_change)}</td></tr>"
        )
    parts.append("</table>")
    if comparison.paired:
        parts.append(
            "<h2>Paired per-sample results</h2><table><tr><th>stage</th><th>key</th>"
            "<th>direction</th><th>matched</th><th>mean diff</th><th>CI</th><th>wins</th>"
            "<th>losses</th><th>ties</th><th>McNemar p</th></tr>"
        )
        for p in comparison.paired:
            direction = p.direction + (" (inferred)" if p.direction_inferred else "")
            ci = (
                f"[{format_number(p.ci_low, signed=True)}, {format_number(p.ci_high, signed=True)}]"
            )
            parts.append(
                f"<tr><td>{escape(p.stage or '(run)')}</td><td>{escape(p.key)}</td>"
                f"<td>{escape(direction)}</td><td class=num>{p.n_matched}</td>"
                f"<td class=num>{format_number(p.mean_diff, signed=True)}</td>"
                f"<td class=num>{escape(ci)}</td><td class=num>{p.wins}</td>"
                f"<td class=num>{p.losses}</td><td class=num>{p.ties}</td>"
                f"<td class=num>{format_number(p.mcnemar_p)}</td></tr>"
            )
        parts.append("</table>")
        for p in comparison.paired:
            parts.append(f"<h3>{escape(p.stage or '(run)')} / {escape(p.key)}</h3>")
            parts.append(_chart(p))
            if p.binary:
                link = None if sample_link is None else partial(sample_link, p.stage)
                parts.append(
                    f"<p>Fixed: {_names(p.fixed, link=link)}</p>"
                    f"<p>Regressed: {_names(p.regressed, link=link)}</p>"
                )
            if p.unmatched_left or p.unmatched_right:
                parts.append(
                    f"<p class=warn>Only in left: {_names(p.unmatched_left)}. "
                    f"Only in right: {_names(p.unmatched_right)}.</p>"
                )
    if comparison.artifacts:
        parts.append(
            "<h2>Artifacts</h2><table><tr><th>change</th><th>kind</th><th>place</th>"
            "<th>left</th><th>right</th></tr>"
        )
        for a in comparison.artifacts:
            lhs = f"{a.left_location or '-'} {(a.left_hash or '')[:12]}"
            rhs = f"{a.right_location or '-'} {(a.right_hash or '')[:12]}"
            parts.append(
                f"<tr><td>{escape(a.change)}</td><td>{escape(a.kind)}</td>"
                f"<td>{escape(a.place)}</td><td>{escape(lhs)}</td><td>{escape(rhs)}</td></tr>"
            )
        parts.append("</table>")
    parts.append("<h2>Notes</h2><ul>")
    parts.extend(f"<li class=muted>{escape(n)}</li>" for n in comparison.notes)
    report = comparison.read_report
    if report.corrupt_lines:
        parts.append(f"<li class=warn>{report.corrupt_lines} corrupt line(s) skipped</li>")
    parts.append("</ul>")
    return "".join(parts)
