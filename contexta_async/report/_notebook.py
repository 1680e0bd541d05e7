"""Notebook display of the readers' results: the compact HTML tables their ``_repr_html_``
returns (imported on use). Every user-provided string (run names, keys, stages, samples,
metadata, warnings) goes through ``html.escape``. The number formatting and a run's facts are
shared with the HTML page (``_html``) and the CLI, so they read alike."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from html import escape
from typing import TYPE_CHECKING, Final

from ..readers._direction import infer_direction

if TYPE_CHECKING:
    from ..readers._model import BestRun, MultiRunComparison, RunComparison, RunSummary

__all__ = [
    "MAX_ROWS",
    "best_html",
    "comparison_html",
    "multi_html",
    "number",
    "percent",
    "run_facts",
    "summary_html",
]

MAX_ROWS: Final = 50
"""Rows shown per table; the rest are counted below it (the full result is in the object)."""

# Scoped to the output's div: a notebook's other cells keep their look.
_STYLE: Final = (
    "<style>.contexta-async td.n{text-align:right;font-variant-numeric:tabular-nums}"
    ".contexta-async .up{color:#1a7f37}.contexta-async .down{color:#cf222e}"
    ".contexta-async caption{text-align:left;font-weight:bold}</style>"
)
_CELL: Final = '<td class="n">'


def number(value: float | None, *, signed: bool = False) -> str:
    """Up to 6 significant digits; ``-`` for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.6g}" if signed else f"{value:.6g}"


def percent(value: float | None) -> str:
    """A relative change as a signed percentage; ``-`` for a missing value."""
    return "-" if value is None else f"{value * 100:+.1f}%"


def _num(value: float | None, *, signed: bool = False, tone: str = "") -> str:
    return f'<td class="n{" " + tone if tone else ""}">{number(value, signed=signed)}</td>'


def _text(value: object) -> str:
    return f"<td>{escape(str(value))}</td>"


def _table(caption: str, headers: Sequence[str], rows: Sequence[str]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    head = f"<thead><tr>{head}</tr></thead>" if head else ""
    shown = "".join(f"<tr>{row}</tr>" for row in rows[:MAX_ROWS])
    more = (
        f"<p>… {len(rows) - MAX_ROWS} more rows (the object holds them all)</p>"
        if len(rows) > MAX_ROWS
        else ""
    )
    return f"<table><caption>{escape(caption)}</caption>{head}<tbody>{shown}</tbody></table>{more}"


def _list(title: str, items: Iterable[str]) -> str:
    entries = "".join(f"<li>{escape(item)}</li>" for item in items)
    return f"<p><b>{escape(title)}</b></p><ul>{entries}</ul>" if entries else ""


def _wrap(body: str) -> str:
    return f'<div class="contexta-async">{_STYLE}{body}</div>'


def _interval(low: float | None, high: float | None) -> str:
    if low is None or high is None:
        return f"{_CELL}-</td>"
    return f"{_CELL}[{number(low, signed=True)}, {number(high, signed=True)}]</td>"


def _tone(delta: float | None, direction: str) -> str:
    if delta is None or delta == 0 or (isinstance(delta, float) and math.isnan(delta)):
        return ""
    return "up" if (delta > 0) == (direction == "maximize") else "down"


def _run_line(label: str, run: RunSummary) -> str:
    return (
        f"<b>{escape(label)}</b> {escape(run.ref)} ({escape(run.status)}, "
        f"{run.counts.metrics} metrics)"
    )


# ---- HTML ----------------------------------------------------------------------------------


def comparison_html(result: RunComparison) -> str:
    """Two runs: the paired per-sample statistics first, then the metric deltas."""

    parts = [f"<p>{_run_line('left', result.left)}<br>{_run_line('right', result.right)}</p>"]
    if result.paired:
        level = f"{result.paired[0].confidence:.0%}"
        clustered = any(p.clusters is not None for p in result.paired)
        attempts = any(
            p.attempts_left is not None or p.attempts_right is not None for p in result.paired
        )
        binary = any(p.small_n_low is not None for p in result.paired)
        rows = [
            _text(p.stage or "(run)")
            + _text(p.key)
            + _text(p.direction)
            + f"{_CELL}{p.n_matched}</td>"
            + _num(p.mean_left)
            + _num(p.mean_right)
            + _num(p.mean_diff, signed=True, tone=_tone(p.mean_diff, p.direction))
            + _interval(p.ci_low, p.ci_high)
            + f"{_CELL}{p.wins}/{p.losses}/{p.ties}</td>"
            + _num(p.p_value)
            + _num(p.p_adjusted)
            + _num(p.mde)
            + (_interval(p.small_n_low, p.small_n_high) if binary else "")
            + f"{_CELL}{len(p.fixed)}/{len(p.regressed)}</td>"
            + (
                f"{_CELL}{'-' if p.clusters is None else p.clusters}</td>" + _num(p.design_effect)
                if clustered
                else ""
            )
            + (
                f"{_CELL}{number(p.attempts_left)}/{number(p.attempts_right)}</td>"
                if attempts
                else ""
            )
            for p in result.paired
        ]
        parts.append(
            _table(
                f"Paired per-sample (right − left, {level} CI)",
                [
                    "stage",
                    "key",
                    "direction",
                    "n",
                    "mean left",
                    "mean right",
                    "mean diff",
                    f"{level} CI",
                    "W/L/T",
                    "p",
                    f"p ({result.adjustment})",
                    "MDE (80% power)",
                    *([f"small-n {level} CI (Newcombe)"] if binary else []),
                    "fixed/regressed",
                    *(["clusters", "design effect"] if clustered else []),
                    *(["attempts L/R"] if attempts else []),
                ],
                rows,
            )
        )
    rows = [
        _text(m.stage or "(run)")
        + _text(m.scope + (f" {m.batch}" if m.batch else ""))
        + _text(m.key)
        + _text(m.basis)
        + _num(m.left)
        + _num(m.right)
        + _num(m.delta, signed=True, tone=_tone(m.delta, infer_direction(m.key)))
        + f"{_CELL}{percent(m.relative_change)}</td>"
        for m in result.metrics
    ]
    parts.append(
        _table(
            "Metrics (delta = right − left)",
            ["stage", "scope", "key", "basis", "left", "right", "delta", "change"],
            rows,
        )
    )
    if result.artifacts:
        changes = [f"{a.change} {a.kind} ({a.place})" for a in result.artifacts]
        parts.append(_list("Artifacts", changes))
    parts.append(_list("Warnings", result.warnings))
    return _wrap("".join(parts))


def multi_html(result: MultiRunComparison) -> str:
    """N runs in one table, the best value of each row in bold."""
    refs = [run.ref for run in result.runs]
    runs = "<br>".join(_run_line(f"[{i}]", run) for i, run in enumerate(result.runs, 1))
    rows = []
    for row in result.rows:
        cells = _text(row.stage or "(run)") + _text(row.key) + _text(row.direction)
        for ref, value in zip(refs, row.values, strict=True):
            best = ref in row.best and len(refs) > 1
            shown = f"<b>{number(value)}</b>" if best else number(value)
            cells += f"{_CELL}{shown}</td>"
        rows.append(cells)
    headers = ["stage", "key", "direction"] + [f"[{i}]" for i in range(1, len(refs) + 1)]
    body = f"<p>{runs}</p>" + _table("Metrics (bold = best)", headers, rows)
    return _wrap(body + _list("Warnings", result.warnings))


def run_facts(run: RunSummary) -> list[tuple[str, str]]:
    """One run's facts as (label, text) pairs, as the notebook and the terminal show them."""
    counts = run.counts
    return [
        ("name", run.name),
        ("project", run.project),
        ("status", run.status + (f" ({run.failure_reason})" if run.failure_reason else "")),
        ("started", run.started_at or "-"),
        ("ended", run.ended_at or "-"),
        ("dataset", run.dataset_ref or "-"),
        ("stages", ", ".join(run.stages) or "-"),
        (
            "records",
            f"{counts.metrics} metrics, {counts.events} events, {counts.spans} spans, "
            f"{counts.artifacts} artifacts",
        ),
    ]


def summary_html(run: RunSummary) -> str:
    """One run's facts as a two-column table."""
    facts = [("ref", run.ref), *run_facts(run)]
    facts += [(f"tag {key}", value) for key, value in sorted(run.tags.items())]
    rows = [f"<th>{escape(k)}</th>{_text(v)}" for k, v in facts]
    return _wrap(_table(f"Run {run.name}", [], rows))


def best_html(result: BestRun) -> str:
    """The ranking, winners in bold."""
    how = "inferred" if result.direction_inferred else "given"
    caption = f"Best by {result.stage or '(run)'}/{result.metric}: {result.direction} ({how})"
    rows = []
    for ranked in result.ranking:
        name = escape(ranked.run)
        if ranked.run in result.winners:
            name = f"<b>{name}</b>"
        rows.append(f"{_CELL}{ranked.rank or '-'}</td><td>{name}</td>" + _num(ranked.value))
    body = _table(caption, ["rank", "run", "value"], rows)
    if result.tie:
        body += f"<p>Tie: {escape(', '.join(result.winners))}</p>"
    return _wrap(body + _list("Missing the metric", result.missing))
