"""The ``contexta-async`` command line: list runs, show one, compare, pick the best, report,
export, ship to a store, serve a live view.

Every reading command reads the workspace through the async readers, run with ``anyio.run``;
``ship`` is handed to the store distribution that serves the URL's scheme (``stores.py``).
Human-readable tables by default, ``--json`` for machines; errors go to stderr with exit
status 1 (2 for a usage error).
"""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import Any, Final, NoReturn, TextIO

import anyio
import msgspec

from ._errors import ContextaError, ValidationError
from .readers import (
    SADDLEPOINT_MIN_PAIRS,
    Alignment,
    BestRun,
    Direction,
    EmptyWorkspaceError,
    MultiRunComparison,
    PairedResult,
    RunComparison,
    RunSummary,
    Workspace,
    items_needed,
)
from .readers._model import CompareOptions
from .report import format_number, percent, render_html_report, run_facts
from .stats._inference import check_effect
from .stores import ShipRequest, load_store_backend, url_scheme

__all__ = ["build_parser", "run_cli"]

PROG = "contexta-async"
# compare --target-effect: the power and level the items needed are computed for.
_ALPHA: Final = 0.05
_POWER: Final = 0.8
_NOT_ESTIMABLE: Final = (
    "not estimable: an SE of 0 (every paired difference equal) or none (fewer than 2 items, "
    "or 1 cluster)"
)


class _Parser(argparse.ArgumentParser):
    """Raises usage errors instead of printing them, so run_cli chooses the stream."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message, self)


def _common() -> _Parser:
    # Accepted before and after the command: `--json runs` and `runs --json` both work.
    common = _Parser(add_help=False)
    common.add_argument(
        "--workspace",
        "-w",
        default=argparse.SUPPRESS,
        help="workspace directory or its capture folder (default: .contexta), or a store URL "
        "(postgresql://user@host/db: needs contexta-async-postgres)",
    )
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = _Parser(
        prog=PROG,
        parents=[common],
        description="Read a contexta-async (or Contexta 1.0.0) workspace: list runs, compare "
        "them with paired per-sample statistics, pick the best one.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    runs = sub.add_parser("runs", parents=[common], help="list the runs")
    runs.add_argument("--project", help="only runs of this project")
    runs.add_argument(
        "--status",
        action="append",
        choices=["open", "completed", "failed", "cancelled", "unknown"],
        help="only runs with this status (repeatable)",
    )

    show = sub.add_parser("show", parents=[common], help="one run: summary and metrics")
    show.add_argument("run", help="full run ref or a unique suffix (e.g. grounded)")
    show.add_argument("--records", action="store_true", help="list the run's records too")
    show.add_argument("--kind", action="append", choices=["metric", "event", "span", "artifact"])
    show.add_argument("--key", help="only records with this metric/event key")
    show.add_argument("--stage", help="only records of this stage")
    show.add_argument("--sample", help="only records of this sample")
    show.add_argument("--limit", type=int, default=100, help="most records to list (default 100)")

    compare = sub.add_parser(
        "compare", parents=[common], help="compare two runs (paired) or more (one table)"
    )
    compare.add_argument("runs", nargs="+", metavar="RUN")
    _stats_options(compare)
    compare.add_argument(
        "--samples", action="store_true", help="with two runs: list every matched sample"
    )
    compare.add_argument(
        "--target-effect",
        type=_target_effect,
        metavar="EFFECT",
        help="with two runs: per paired metric, the items needed to detect a true difference "
        "of EFFECT (in the metric's units) with 80%% power at two-sided alpha 0.05",
    )

    best = sub.add_parser("best", parents=[common], help="the best run by one metric")
    best.add_argument("runs", nargs="+", metavar="RUN")
    best.add_argument("--metric", required=True, help="metric key, e.g. pass.rate")
    best.add_argument("--stage", help="the stage holding the metric, when several do")
    way = best.add_mutually_exclusive_group()
    way.add_argument("--maximize", dest="direction", action="store_const", const="maximize")
    way.add_argument("--minimize", dest="direction", action="store_const", const="minimize")

    report = sub.add_parser("report", parents=[common], help="write an HTML comparison page")
    report.add_argument("left", metavar="LEFT")
    report.add_argument("right", metavar="RIGHT")
    report.add_argument("--output", "-o", required=True, help="the HTML file to write")
    _stats_options(report)

    export = sub.add_parser(
        "export",
        parents=[common],
        help="write one row per metric record (or event) to Parquet, CSV or JSON Lines",
        description="Write one row per metric record (--events: per event) of the runs "
        "(default: every run) to a file, streaming: memory stays bounded whatever the "
        "workspace's size. Parquet needs pip install 'contexta-async[analysis]'.",
    )
    export.add_argument("runs", nargs="*", metavar="RUN", help="runs to export (default: all)")
    export.add_argument(
        "--format",
        choices=("parquet", "csv", "jsonl"),
        help="file format (default: from the output's suffix)",
    )
    export.add_argument("--output", "-o", required=True, metavar="PATH", help="the file to write")
    export.add_argument("--events", action="store_true", help="export events, not metrics")
    export.add_argument("--force", action="store_true", help="replace an existing output file")

    ship = sub.add_parser(
        "ship",
        parents=[common],
        help="forward the workspace's lines to a store (needs the store's distribution)",
        description="Forward every whole line of the workspace to a store, from the position "
        "already shipped, one transaction per batch: a rerun never duplicates or loses a line. "
        "The store's distribution does the work (postgresql://: contexta-async-postgres).",
    )
    ship.add_argument("--to", required=True, metavar="URL", help="e.g. postgresql://host/db")
    ship.add_argument(
        "--follow", action="store_true", help="keep shipping new lines until SIGINT/SIGTERM"
    )
    ship.add_argument("--batch-lines", type=int, default=50_000, help="most lines per transaction")
    ship.add_argument(
        "--retries",
        type=int,
        default=8,
        help="reconnection attempts, with backoff, after a dropped connection (default 8)",
    )
    ship.add_argument(
        "--poll-interval",
        type=float,
        default=0.5,
        help="with --follow: seconds between looks when nothing is new (default 0.5)",
    )

    view = sub.add_parser(
        "view",
        parents=[common],
        help="serve a live page of the workspace to the browser (needs contexta-async[view])",
        description="Serve the runs, one run, and two runs compared as pages that update "
        "while runs are being captured. Read-only; binds to loopback unless --host says "
        "otherwise.",
    )
    view.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    view.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    view.add_argument(
        "--poll-interval",
        type=float,
        default=0.25,
        help="seconds between reads of what was appended (default 0.25)",
    )
    for command in sub.choices.values():
        # A usage error found after parsing prints this command's usage, not the top level's.
        command.set_defaults(command_parser=command)
    return parser


# The two-run statistics options: None when not given (compare of 3+ runs refuses them),
# these values then.
_PAIRED_DEFAULTS: Final = {"resamples": 2000, "seed": 0, "bootstrap": "auto", "confidence": 0.95}


def _stats_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resamples", type=int, help="bootstrap resamples (default 2000)")
    parser.add_argument("--seed", type=int, help="bootstrap seed (default 0)")
    parser.add_argument(
        "--bootstrap",
        choices=("auto", "resample", "saddlepoint"),
        help="resample, approximate the bootstrap distribution by saddlepoint, or auto "
        f"(the approximation from {SADDLEPOINT_MIN_PAIRS:,} matched samples on; default)",
    )
    parser.add_argument("--confidence", type=float, help="interval level (default 0.95)")
    parser.add_argument(
        "--adjust",
        choices=("holm", "bh", "none"),
        default="holm",
        help="adjust the paired p-values across metrics (two runs) or across the runs compared "
        "with the first (three or more): Holm (default), Benjamini-Hochberg, or none",
    )
    parser.add_argument(
        "--maximize", action="append", default=[], metavar="KEY", help="KEY is better higher"
    )
    parser.add_argument(
        "--minimize", action="append", default=[], metavar="KEY", help="KEY is better lower"
    )


def _target_effect(text: str) -> float:
    try:
        effect = float(text)
        check_effect(effect)
    except (ValueError, ValidationError) as exc:
        raise argparse.ArgumentTypeError(
            f"must be a finite, non-zero number (got {text!r})"
        ) from exc
    return effect


def _power(result: RunComparison, effect: float) -> dict[str, Any]:
    """Items needed per paired metric to detect ``effect`` at the CLI's fixed 80 % power and
    two-sided alpha 0.05: None where it is not estimable (no standard error, or an SE of 0)."""
    rows = [
        {
            "stage": p.stage,
            "key": p.key,
            "n_matched": p.n_matched,
            "se": p.se,
            "items_needed": (
                _items_needed(effect, p.se, p.n_matched)
                if p.se is not None and p.se > 0 and p.n_matched >= 1
                else None
            ),
        }
        for p in result.paired
    ]
    return {"target_effect": effect, "alpha": _ALPHA, "power": _POWER, "metrics": rows}


def _items_needed(effect: float, se: float, items: int) -> int:
    try:
        return items_needed(effect, se, items, alpha=_ALPHA, power=_POWER)
    except ValidationError as exc:  # --target-effect so small that the count overflows
        raise _UsageError(f"--target-effect: {exc.rule} (got {effect!r})") from exc


def _write_power(power: dict[str, Any], out: TextIO) -> None:
    out.write(
        f"\nItems needed to detect a difference of {format_number(power['target_effect'])} "
        f"({power['power']:.0%} power, two-sided alpha {power['alpha']:g})\n"
    )
    _table(
        ["STAGE", "KEY", "N", "SE", "ITEMS NEEDED"],
        [
            [
                row["stage"] or "(run)",
                row["key"],
                str(row["n_matched"]),
                format_number(row["se"]),
                "-" if row["items_needed"] is None else str(row["items_needed"]),
            ]
            for row in power["metrics"]
        ],
        out,
    )
    if any(row["items_needed"] is None for row in power["metrics"]):
        _legend([f"-: {_NOT_ESTIMABLE}"], out)


def _directions(args: argparse.Namespace) -> dict[str, Direction]:
    both = sorted(set(args.maximize) & set(args.minimize))
    if both:
        raise _UsageError(f"--maximize/--minimize: a key takes one direction (got both for {both})")
    out: dict[str, Direction] = {key: "maximize" for key in args.maximize}
    out.update({key: "minimize" for key in args.minimize})
    return out


# CompareOptions' field -> the option that sets it (and its attribute on the namespace).
_OPTIONS: Final = {
    "confidence": ("--confidence", "confidence"),
    "resamples": ("--resamples", "resamples"),
    "seed": ("--seed", "seed"),
    "bootstrap": ("--bootstrap", "bootstrap"),
    "adjustment": ("--adjust", "adjust"),
}


def _stats(args: argparse.Namespace) -> dict[str, Any]:
    """``Workspace.compare``'s statistics options, as ``_stats_options`` parsed them, checked
    by CompareOptions' rules: a value that breaks one is a usage error naming the option,
    raised before the workspace is read."""
    given = {key: getattr(args, key) for key in _PAIRED_DEFAULTS}
    stats = {
        "directions": _directions(args),
        **{key: _PAIRED_DEFAULTS[key] if value is None else value for key, value in given.items()},
        "adjustment": args.adjust,
    }
    try:
        CompareOptions(**stats)
    except ValidationError as exc:
        option, attribute = _OPTIONS.get(exc.field, ("--maximize/--minimize", "maximize"))
        raise _UsageError(f"{option}: {exc.rule} (got {getattr(args, attribute)!r})") from exc
    return stats


# ---- output helpers ----------------------------------------------------------------------


# C0 and C1 control characters, DEL, and the Unicode line/paragraph separators and
# direction overrides: a workspace string holding them would move the cursor, clear the
# screen, recolour or reorder the terminal, or split a table row. Shown as repr shows them.
_UNSAFE: Final = {
    code: repr(chr(code))[1:-1]
    for code in (
        *range(0x20),
        *range(0x7F, 0xA0),
        0x2028,
        0x2029,
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
    )
}


def _safe(text: str) -> str:
    """``text`` with its control characters escaped (``\\x1b``, ``\\n``...); other text as is."""
    return text.translate(_UNSAFE)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """Aligned columns; every cell goes through ``_safe``."""
    rows = [[_safe(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    for line in (headers, *rows):
        out.write("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        out.write("\n")


def _json(value: Any, out: TextIO) -> None:
    out.write(msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n")


def _names(names: Sequence[str], limit: int = 10) -> str:
    if not names:
        return "none"
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _run_line(label: str, run: RunSummary) -> str:
    return _safe(
        f"{label}{run.ref}  [{run.status}]  dataset={run.dataset_ref or '-'}  "
        f"metrics={run.counts.metrics} events={run.counts.events} "
        f"artifacts={run.counts.artifacts}"
    )


# ---- commands ----------------------------------------------------------------------------


async def _runs(ws: Workspace, args: argparse.Namespace, out: TextIO) -> int:
    runs = await ws.list_runs(project=args.project, status=args.status)
    if not runs and not (args.project or args.status):
        raise EmptyWorkspaceError(ws.source.describe())
    if args.json:
        _json({"runs": runs, "read_report": ws.last_report}, out)
        return 0
    _table(
        ["RUN", "NAME", "PROJECT", "STATUS", "STARTED", "ENDED", "DATASET", "STAGES", "RECORDS"],
        [
            [
                r.ref,
                r.name,
                r.project,
                r.status,
                r.started_at or "-",
                r.ended_at or "-",
                r.dataset_ref or "-",
                ",".join(r.stages) or "-",
                str(r.counts.total),
            ]
            for r in runs
        ],
        out,
    )
    _report_problems(ws, out)
    return 0


async def _show(ws: Workspace, args: argparse.Namespace, out: TextIO) -> int:
    if args.limit < 1:
        raise _UsageError("--limit must be at least 1")
    table = await ws.compare_many([args.run])
    summary = table.runs[0]
    records = []
    filters = [
        f"{option} {value!r}"
        for option, values in (
            ("--kind", args.kind or []),
            ("--key", [args.key]),
            ("--stage", [args.stage]),
            ("--sample", [args.sample]),
        )
        for value in values
        if value is not None
    ]
    if args.records or filters:
        rows = ws.records(
            summary.ref, kind=args.kind, key=args.key, stage=args.stage, sample=args.sample
        )
        async with aclosing(rows):  # left early at --limit: closed now, not at loop shutdown
            async for row in rows:
                records.append(row)
                if len(records) >= args.limit:
                    break
        if filters and not records:
            # Not an error (exit 0), but not silence either: a misspelt key looks like this.
            args.err.write(
                _safe(f"{PROG}: note: no record of {summary.ref} matches {' '.join(filters)}")
                + "\n"
            )
    if args.json:
        _json(
            {
                "run": summary,
                "metrics": table.rows,
                "records": records,
                "warnings": table.warnings,
            },
            out,
        )
        return 0
    out.write(f"{_safe(summary.ref)}\n")
    for label, value in [*run_facts(summary), ("source", summary.source)]:
        out.write(f"  {label:<8} {_safe(value)}\n")
    if table.rows:
        out.write("\nMetrics (run/stage/batch: latest value; sample: mean over samples)\n")
        _table(
            ["STAGE", "SCOPE", "KEY", "VALUE", "SAMPLES"],
            [
                [
                    row.stage or "(run)",
                    row.scope + (f" {row.batch}" if row.batch else ""),
                    row.key,
                    format_number(row.values[0]),
                    str(row.counts[0]) if row.scope == "sample" else "",
                ]
                for row in table.rows
            ],
            out,
        )
    else:
        still = " yet: the run is still open" if summary.status == "open" else ""
        out.write(f"\nMetrics: none (the run holds no metric records{still})\n")
    if records:
        out.write(f"\nRecords (first {len(records)})\n")
        _table(
            ["KIND", "KEY", "STAGE", "SAMPLE", "VALUE", "RECORDED"],
            [
                [
                    r.kind,
                    r.key,
                    r.stage or "-",
                    r.sample or "-",
                    format_number(r.value)
                    if r.kind == "metric"
                    else (r.message or r.hash_value or ""),
                    r.recorded_at,
                ]
                for r in records
            ],
            out,
        )
    _report_problems(ws, out)
    return 0


def _write_pair(
    result: RunComparison, out: TextIO, samples: bool, power: dict[str, Any] | None = None
) -> None:
    out.write(_run_line("left:  ", result.left) + "\n")
    out.write(_run_line("right: ", result.right) + "\n\n")
    out.write("Metrics (delta = right - left)\n")
    _table(
        ["STAGE", "SCOPE", "KEY", "BASIS", "LEFT", "RIGHT", "DELTA", "CHANGE"],
        [
            [
                m.stage or "(run)",
                m.scope + (f" {m.batch}" if m.batch else ""),
                m.key,
                "latest" if m.basis == "latest" else f"mean n={m.left_count}/{m.right_count}",
                format_number(m.left),
                format_number(m.right),
                format_number(m.delta, signed=True),
                percent(m.relative_change),
            ]
            for m in result.metrics
        ],
        out,
    )
    if result.paired:
        legend = _write_paired(result, out)
        for p in result.paired:
            for line in _paired_details(p):
                out.write(_safe(f"  {p.stage or '(run)'}/{p.key}: {line}") + "\n")
            if samples and p.samples:
                _table(
                    ["    SAMPLE", "LEFT", "RIGHT", "DIFF"],
                    [
                        [
                            "    " + s.name,
                            format_number(s.left),
                            format_number(s.right),
                            format_number(s.diff, signed=True),
                        ]
                        for s in p.samples
                    ],
                    out,
                )
        _legend(legend, out)
        _write_spread(result, out)
    if result.alignment is not None and result.alignment.share > 0:
        _write_alignment(result.alignment, out)
    if result.artifacts:
        out.write("\nArtifacts\n")
        _table(
            ["CHANGE", "KIND", "PLACE", "LEFT", "RIGHT"],
            [
                [
                    a.change,
                    a.kind,
                    a.place,
                    f"{a.left_location or '-'} {(a.left_hash or '')[:12]}".strip(),
                    f"{a.right_location or '-'} {(a.right_hash or '')[:12]}".strip(),
                ]
                for a in result.artifacts
            ],
            out,
        )
    if power is not None:
        _write_power(power, out)
    _write_warnings(result.warnings, result.notes, out)


# PairedResult.p_test -> the tag after a p in the CLI's P column (short: the table is wide
# already), and what the legend under the table says it is.
_TESTS: Final = {"mcnemar-exact": "m", "paired-t": "t", "clustered-t": "ct"}
_TEST_LEGEND: Final = {
    "mcnemar-exact": "m = exact McNemar test (0/1 metrics)",
    "paired-t": "t = paired t-test (n - 1 df)",
    "clustered-t": "ct = Student t on the clustered SE (C - 1 df)",
}
_TEST_NAMES: Final = {
    "mcnemar-exact": "exact McNemar",
    "paired-t": "paired t",
    "clustered-t": "clustered t",
}
_ADJUSTED: Final = {
    "holm": "Holm: family-wise error",
    "bh": "Benjamini-Hochberg: false discovery rate",
    "none": "here: not adjusted",
}
_LEGEND_WIDTH: Final = 100


def _legend(lines: Sequence[str], out: TextIO) -> None:
    """Lines explaining a table's columns, wrapped under it."""
    for line in lines:
        out.write(
            textwrap.fill(line, _LEGEND_WIDTH, initial_indent="  ", subsequent_indent="      ")
            + "\n"
        )


def _write_paired(result: RunComparison, out: TextIO) -> list[str]:
    """The paired table, one row per sample-level metric; returns its legend (written under
    the metrics' detail lines)."""
    paired = result.paired
    level = f"{paired[0].confidence:.0%}"
    # With epochs a row pairs items (each the mean of its attempts), not samples.
    items = any(p.attempts_left is not None or p.attempts_right is not None for p in paired)
    if items:
        out.write(
            f"\nPaired per-item (right - left; each item's attempts averaged, items matched by "
            f"name; {level} CI)\n"
        )
    else:
        out.write(f"\nPaired per-sample (right - left; samples matched by name; {level} CI)\n")
    adjusted = f"P ({result.adjustment.upper()})"
    columns = ["STAGE", "KEY", "DIRECTION", "N", "MEAN DIFF", f"{level} CI", "W/L/T", "P"]
    _table(
        [*columns, adjusted, "MDE 80%"],
        [
            [
                p.stage or "(run)",
                p.key,
                p.direction + (" (inferred)" if p.direction_inferred else ""),
                str(p.n_matched),
                format_number(p.mean_diff, signed=True),
                f"[{format_number(p.ci_low, signed=True)}, "
                f"{format_number(p.ci_high, signed=True)}]",
                f"{p.wins}/{p.losses}/{p.ties}",
                format_number(p.p_value)
                + (f" {_TESTS.get(p.p_test, p.p_test)}" if p.p_test else ""),
                format_number(p.p_adjusted),
                format_number(p.mde),
            ]
            for p in paired
        ],
        out,
    )
    tests = [_TEST_LEGEND[t] for t in _TEST_LEGEND if any(p.p_test == t for p in paired)]
    mde = "MDE 80%: smallest true difference detected with 80% power at two-sided alpha 0.05"
    if any(p.mde is None for p in paired):
        mde += f"; -: {_NOT_ESTIMABLE}"
    return [
        f"N: matched {'items' if items else 'samples'}; P: raw two-sided p of no difference"
        + (f", by the test its tag names: {', '.join(tests)}" if tests else ""),
        f"{adjusted}: P adjusted across the {len(paired)} paired metric(s) "
        f"({_ADJUSTED.get(result.adjustment, result.adjustment)})",
        mde,
    ]


def _write_spread(result: RunComparison, out: TextIO) -> None:
    """Each paired metric's standard errors (what pairing bought; clustered where clusters
    exist) and, for 0/1 metrics, the interval that holds its coverage at small n."""
    paired = result.paired
    level = f"{paired[0].confidence:.0%}"
    clustered = any(p.clusters is not None for p in paired)
    binary = any(p.small_n_low is not None for p in paired)
    out.write(
        "\nStandard errors of the mean difference"
        + (" and small-n intervals" if binary else "")
        + "\n"
    )
    _table(
        ["STAGE", "KEY", "SE", "UNPAIRED SE", "CORRELATION"]
        + (["CLUSTERS", "NAIVE SE", "DESIGN EFFECT"] if clustered else [])
        + ([f"SMALL-N {level} CI"] if binary else []),
        [
            [
                p.stage or "(run)",
                p.key,
                format_number(p.se),
                format_number(p.unpaired_se),
                format_number(p.correlation),
            ]
            + (
                [
                    "-" if p.clusters is None else str(p.clusters),
                    format_number(p.naive_se),
                    format_number(p.design_effect),
                ]
                if clustered
                else []
            )
            + (
                [
                    "-"
                    if p.small_n_low is None or p.small_n_high is None
                    else f"[{format_number(p.small_n_low, signed=True)}, "
                    f"{format_number(p.small_n_high, signed=True)}]"
                ]
                if binary
                else []
            )
            for p in paired
        ],
        out,
    )
    _legend(
        [
            "SE: of the paired differences"
            + (
                " (cluster-robust where CLUSTERS is set; NAIVE SE: as if items were independent, "
                "DESIGN EFFECT: (SE / NAIVE SE)^2)"
                if clustered
                else ""
            )
            + "; UNPAIRED SE: as if the runs had measured different items; CORRELATION: of the "
            "runs' per-item values (what pairing bought)",
            *(
                [
                    "SMALL-N CI: Newcombe's interval for a paired difference of proportions "
                    "(0/1 metrics without clusters): keeps its coverage at a few dozen items"
                ]
                if binary
                else []
            ),
        ],
        out,
    )


def _paired_details(p: PairedResult) -> list[str]:
    """What a paired metric has beyond the tables' columns, one line per topic."""
    lines = []
    if p.mcnemar_p is not None and p.p_test != "mcnemar-exact":
        lines.append(
            f"exact McNemar p {format_number(p.mcnemar_p)} (it treats the pairs as "
            f"independent: P is the {_TEST_NAMES.get(p.p_test or '', p.p_test)})"
        )
    if p.binary:
        lines.append(f"fixed: {_names(p.fixed)}; regressed: {_names(p.regressed)}")
    if p.unmatched_left or p.unmatched_right:
        lines.append(
            f"only in left: {_names(p.unmatched_left)}; only in right: {_names(p.unmatched_right)}"
        )
    if p.attempts_left is not None or p.attempts_right is not None:
        lines.append(
            f"attempts per item {format_number(p.attempts_left)}/"
            f"{format_number(p.attempts_right)}, variance across attempts "
            f"{format_number(p.within_item_variance_left)}/"
            f"{format_number(p.within_item_variance_right)} (left/right)"
        )
    return lines


def _write_alignment(found: Alignment, out: TextIO) -> None:
    out.write(
        f"\nAlignment: {found.items} items; {found.only_left} only in left, "
        f"{found.only_right} only in right, {found.duplicates_left}/{found.duplicates_right} "
        f"duplicated (left/right), {found.attempts_differ} with different attempt counts "
        f"({found.share:.1%} misaligned; warning above {found.threshold:.0%})\n"
    )
    for label, count, names in found.kinds():
        if names:
            more = f" (+{count - len(names)} more)" if count > len(names) else ""
            out.write(_safe(f"  {label}: {', '.join(names)}{more}") + "\n")


def _write_many(result: MultiRunComparison, out: TextIO) -> None:
    for i, run in enumerate(result.runs, 1):
        out.write(_run_line(f"[{i}] ", run) + "\n")
    out.write("\nMetrics (* = best; run/stage/batch: latest value, sample: mean)\n")
    headers = ["STAGE", "SCOPE", "KEY", "DIRECTION"] + [
        f"[{i}]" for i in range(1, len(result.runs) + 1)
    ]
    rows = []
    for row in result.rows:
        cells = [
            row.stage or "(run)",
            row.scope + (f" {row.batch}" if row.batch else ""),
            row.key,
            row.direction + (" (inferred)" if row.direction_inferred else ""),
        ]
        for run, value in zip(result.runs, row.values, strict=True):
            mark = "*" if run.ref in row.best and len(result.runs) > 1 else ""
            cells.append(format_number(value) + mark)
        rows.append(cells)
    _table(headers, rows, out)
    tested = [row for row in result.rows if row.p_values is not None]
    if tested and len(result.runs) > 1:
        out.write(
            f"\nAgainst the baseline [1], paired (p raw / p adjusted across runs, "
            f"{result.adjustment})\n"
        )
        _table(
            ["STAGE", "KEY"] + [f"[{i}]" for i in range(2, len(result.runs) + 1)],
            [
                [row.stage or "(run)", row.key]
                + [
                    f"{format_number(p)} / {format_number(q)}"
                    for p, q in zip(
                        (row.p_values or [])[1:], (row.p_adjusted or [])[1:], strict=True
                    )
                ]
                for row in tested
            ],
            out,
        )
    _write_warnings(result.warnings, result.notes, out)


def _write_warnings(warnings: Sequence[str], notes: Sequence[str], out: TextIO) -> None:
    if warnings:
        out.write("\nWarnings\n")
        for w in warnings:
            out.write(f"  ! {_safe(w)}\n")
    if notes:
        out.write("\nNotes\n")
        for n in notes:
            out.write(f"  - {_safe(n)}\n")


async def _compare(ws: Workspace, args: argparse.Namespace, out: TextIO) -> int:
    if len(args.runs) < 2:
        raise _UsageError("compare needs at least two runs")
    stats = _stats(args)  # out-of-range values first, whatever the number of runs
    if len(args.runs) != 2:
        # Silently ignored, they would suggest a paired analysis that did not happen.
        for option, given in (
            ("--target-effect", args.target_effect is not None),
            ("--samples", args.samples),
            *((f"--{key}", getattr(args, key) is not None) for key in _PAIRED_DEFAULTS),
        ):
            if given:
                raise _UsageError(f"{option} needs two runs (a paired comparison)")
    if len(args.runs) == 2:
        result = await ws.compare(args.runs[0], args.runs[1], include_samples=args.samples, **stats)
        power = None if args.target_effect is None else _power(result, args.target_effect)
        if args.json:
            _json(result if power is None else {**msgspec.to_builtins(result), "power": power}, out)
        else:
            _write_pair(result, out, args.samples, power)
        return 0
    many = await ws.compare_many(args.runs, directions=_directions(args), adjustment=args.adjust)
    if args.json:
        _json(many, out)
    else:
        _write_many(many, out)
    return 0


async def _best(ws: Workspace, args: argparse.Namespace, out: TextIO) -> int:
    result: BestRun = await ws.best_run(
        args.runs, args.metric, direction=args.direction, stage=args.stage
    )
    if args.json:
        _json(result, out)
        return 0
    how = "inferred from the key" if result.direction_inferred else "given"
    basis = "latest value" if result.basis == "latest" else "mean over samples"
    out.write(
        _safe(
            f"Best by {result.stage or '(run)'}/{result.metric} "
            f"({result.scope}-level, {basis}), {result.direction} ({how})"
        )
        + "\n"
    )
    _table(
        ["RANK", "RUN", "VALUE"],
        [[str(r.rank or "-"), r.run, format_number(r.value)] for r in result.ranking],
        out,
    )
    if result.tie:
        out.write(_safe(f"Tie: {', '.join(result.winners)} share the best value") + "\n")
    else:
        out.write(_safe(f"Winner: {result.winners[0]}") + "\n")
    if result.missing:
        out.write(_safe(f"Missing the metric: {', '.join(result.missing)}") + "\n")
    return 0


async def _report(ws: Workspace, args: argparse.Namespace, out: TextIO) -> int:
    from .export._output import check_output, create_partial, move_into_place, unwritable

    # As export does: checked before reading, never inside the capture folder, and written
    # under a temporary name then renamed, so a failed write keeps the previous page.
    # An existing regular file is replaced (no --force), nothing else.
    target = await anyio.to_thread.run_sync(check_output, args.output, True, ws.capture_dir)
    result = await ws.compare(args.left, args.right, include_samples=True, **_stats(args))
    page = render_html_report(result)

    def write() -> None:
        partial = create_partial(target)
        try:
            partial.write_text(page, encoding="utf-8")
            move_into_place(partial, target, True)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    try:
        await anyio.to_thread.run_sync(write)
    except OSError as exc:
        raise unwritable(target, exc) from exc
    if args.json:
        _json({"output": str(target), "warnings": result.warnings}, out)
    else:
        out.write(f"wrote {args.output} ({len(page.encode())} bytes)\n")
    return 0


async def _export(ws: Workspace, args: argparse.Namespace, out: TextIO) -> int:
    result = await ws.export(
        args.output,
        format=args.format,
        runs=args.runs or None,
        events=args.events,
        overwrite=args.force,
    )
    if args.json:
        _json(result, out)
        return 0
    what = "metric" if result.table == "metrics" else "event"
    out.write(
        f"wrote {result.rows} {what} rows of {len(result.runs)} run(s) to {args.output} "
        f"({result.format})\n"
    )
    _report_problems(ws, out)
    return 0


def _report_problems(ws: Workspace, out: TextIO) -> None:
    report = ws.last_report
    if report.corrupt_lines:
        first = report.problems[0] if report.problems else None
        where = f" (first at {first.file}:{first.line})" if first else ""
        out.write(f"\n! {report.corrupt_lines} corrupt line(s) skipped{where}\n")


class _CliError(Exception):
    """An error to print as is, exit status 1."""


class _UsageError(Exception):
    """A usage error, exit status 2; ``parser`` is the (sub)command's parser, for its usage."""

    def __init__(self, message: str, parser: argparse.ArgumentParser | None = None) -> None:
        super().__init__(message)
        self.parser = parser


def _ship(
    args: argparse.Namespace, parser: argparse.ArgumentParser, out: TextIO, err: TextIO
) -> int:
    """Hand ``ship`` to the backend the URL's scheme names (synchronous: no event loop)."""
    try:
        if args.batch_lines < 1:
            raise _UsageError("--batch-lines must be at least 1")
        if args.retries < 0:
            raise _UsageError("--retries must be 0 or more")
        _check_poll_interval(args)
        if not url_scheme(args.to):
            raise _UsageError("--to: must be a store URL such as postgresql://host/db")
        backend = load_store_backend(args.to)
        request = ShipRequest(
            workspace=args.workspace,
            url=args.to,
            follow=args.follow,
            batch_lines=args.batch_lines,
            retries=args.retries,
            poll_interval=args.poll_interval,
            json=args.json,
            out=out,
            err=err,
        )
        return backend.ship_command(request)
    except _UsageError as exc:
        return _usage(exc, parser, err)
    except ValidationError as exc:
        option = _OPTION_FIELDS["ship"].get(exc.field)
        if option is None:
            err.write(f"{PROG}: error: {exc}\n")
            return 1
        # The backend's URL check ("to: must percent-encode ..."): a usage error naming --to.
        return _usage(_UsageError(option + str(exc).removeprefix(exc.field)), parser, err)
    except ContextaError as exc:
        err.write(f"{PROG}: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        err.write(f"{PROG}: interrupted\n")
        return 130


def _view(
    args: argparse.Namespace, parser: argparse.ArgumentParser, out: TextIO, err: TextIO
) -> int:
    """Serve the view until interrupted (uvicorn runs its own event loop). The address is
    announced once the server listens, with the port it got (``--port 0``); an address it
    cannot listen on is a one-line error, status 1."""
    try:
        if not 0 <= args.port <= 65535:
            raise _UsageError("--port must be between 0 and 65535")
        _check_poll_interval(args)
        scheme = url_scheme(args.workspace)
        if scheme:
            # The view tails the workspace files; a store has none (yet). The URL is not
            # echoed: it may hold a password.
            raise _CliError(
                f"view reads a workspace folder; a store ({scheme}://) cannot be viewed yet: "
                "use runs, show, compare, best, report or export on it"
            )
        from .view import serve

        ws = Workspace(args.workspace)

        def announce(url: str) -> None:
            out.write(f"{PROG} view of {ws.path}: {url} (Ctrl-C stops it)\n")
            out.flush()

        serve(
            ws,
            host=args.host,
            port=args.port,
            poll_interval=args.poll_interval,
            ready=announce,
        )
        return 0
    except _UsageError as exc:
        return _usage(exc, parser, err)
    except (ContextaError, _CliError) as exc:  # ListenError: a ContextaError
        err.write(f"{PROG}: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 0


def _check_poll_interval(args: argparse.Namespace) -> None:
    # inf would never look again; nan compares false with everything.
    if not (math.isfinite(args.poll_interval) and args.poll_interval > 0):
        raise _UsageError("--poll-interval must be positive and finite")


def _usage(exc: _UsageError, parser: argparse.ArgumentParser, err: TextIO) -> int:
    """Print a usage error with the usage of the parser that found it (else ``parser``, the
    command's); status 2."""
    (exc.parser or parser).print_usage(err)
    err.write(f"{PROG}: error: {exc}\n")
    return 2


# Fields of a library ValidationError that are the command's own options: a value the
# library refuses there is a usage error naming the option (status 2), not a failure.
_OPTION_FIELDS: Final[dict[str, dict[str, str]]] = {
    "export": {"format": "--format"},
    "ship": {"to": "--to"},  # the store backend's URL check (parse_target)
}


_COMMANDS: dict[str, Callable[[Workspace, argparse.Namespace, TextIO], Awaitable[int]]] = {
    "runs": _runs,
    "show": _show,
    "compare": _compare,
    "best": _best,
    "report": _report,
    "export": _export,
}


def run_cli(argv: Sequence[str], *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Parse ``argv`` and run the command; return the exit status."""
    stdout = out or sys.stdout
    stderr = err or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv))
    except _UsageError as exc:
        return _usage(exc, parser, stderr)
    except SystemExit as exc:  # --help printed its text
        return int(exc.code or 0)
    args.workspace = getattr(args, "workspace", ".contexta")
    args.json = getattr(args, "json", False)
    args.err = stderr  # for notes that are not errors (show: a filter matching nothing)
    command: argparse.ArgumentParser = args.command_parser
    if args.command == "ship":
        return _ship(args, command, stdout, stderr)
    if args.command == "view":
        return _view(args, command, stdout, stderr)

    async def main() -> int:
        ws = Workspace(args.workspace)
        return await _COMMANDS[args.command](ws, args, stdout)

    try:
        return anyio.run(main)
    except _UsageError as exc:
        return _usage(exc, command, stderr)
    except ValidationError as exc:
        option = _OPTION_FIELDS.get(args.command, {}).get(exc.field)
        if option is None:
            stderr.write(f"{PROG}: error: {exc}\n")
            return 1
        # The library's message with the option for the field: "--format: ... (got '.txt')".
        return _usage(_UsageError(option + str(exc).removeprefix(exc.field)), command, stderr)
    except (ContextaError, _CliError, ValueError) as exc:
        stderr.write(f"{PROG}: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        stderr.write(f"{PROG}: interrupted\n")
        return 130
    except BrokenPipeError:
        return 0
