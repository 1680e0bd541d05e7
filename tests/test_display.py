"""Notebook display: compact HTML tables (``_repr_html_``) and short plain reprs."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import msgspec
import pytest

from contexta_async import Contexta
from contexta_async.readers import Workspace
from contexta_async.report._notebook import MAX_ROWS, number

from .test_readers_helpers import capture_llm_workspace

LEFT, RIGHT = "helpful-only", "grounded"


class _Tables(HTMLParser):
    """Every table's caption and rows of cell texts; every start tag; all text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[tuple[str, list[list[str]]]] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self._caption: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "table":
            self.tables.append(("", []))
        elif tag == "caption":
            self._caption = []
        elif tag == "tr":
            self.tables[-1][1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "caption" and self._caption is not None:
            self.tables[-1] = ("".join(self._caption), self.tables[-1][1])
            self._caption = None
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[-1][1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._caption is not None:
            self._caption.append(data)


def parse(page: str) -> _Tables:
    parser = _Tables()
    parser.feed(page)
    parser.close()
    return parser


def body(rows: list[list[str]]) -> list[list[str]]:
    """The rows under the header row."""
    return rows[1:]


@pytest.fixture
def llm_ws(tmp_path: Path) -> Path:
    return capture_llm_workspace(tmp_path / "ws")


async def test_comparison_html_shows_the_paired_section_first_with_the_models_numbers(
    llm_ws: Path,
) -> None:
    result = await Workspace(llm_ws).compare(LEFT, RIGHT)
    page = parse(result._repr_html_())
    captions = [caption for caption, _ in page.tables]
    assert captions[0].startswith("Paired per-sample") and captions[1].startswith("Metrics")
    paired = body(page.tables[0][1])
    assert len(paired) == len(result.paired) == 2
    assert page.tables[0][1][0][11:14] == [
        "MDE (80% power)",
        "small-n 95% CI (Newcombe)",
        "fixed/regressed",
    ]
    for row, p in zip(paired, result.paired, strict=True):
        assert row[:4] == [p.stage, p.key, p.direction, str(p.n_matched)]
        assert row[4:7] == [
            number(p.mean_left),
            number(p.mean_right),
            number(p.mean_diff, signed=True),
        ]
        assert row[7] == f"[{number(p.ci_low, signed=True)}, {number(p.ci_high, signed=True)}]"
        assert row[8] == f"{p.wins}/{p.losses}/{p.ties}"
        assert row[9:12] == [number(p.p_value), number(p.p_adjusted), number(p.mde)]
        # The workspace's 0/1 metric gets Newcombe's small-n interval, the other a dash.
        small_n = (
            "-"
            if p.small_n_low is None or p.small_n_high is None
            else f"[{number(p.small_n_low, signed=True)}, {number(p.small_n_high, signed=True)}]"
        )
        assert row[12] == small_n
        assert row[13] == f"{len(p.fixed)}/{len(p.regressed)}"
    assert [p.small_n_low is not None for p in result.paired].count(True) == 1
    # grounded fixes 3 of the 6 shared cases and regresses 1: 0.5 -> 0.833333, +1/3
    correct = next(row for row in paired if row[1] == "correct")
    assert [*correct[4:7], correct[8], correct[13]] == [
        "0.5",
        "0.833333",
        "+0.333333",
        "3/1/2",
        "3/1",
    ]
    metrics = body(page.tables[1][1])
    assert [[r[2], r[4], r[5], r[6]] for r in metrics] == [
        [m.key, number(m.left), number(m.right), number(m.delta, signed=True)]
        for m in result.metrics
    ]
    assert all(w in "".join(page.text) for w in result.warnings)


async def test_multi_run_summary_and_best_run_html_hold_the_models_numbers(
    llm_ws: Path,
) -> None:
    ws = Workspace(llm_ws)
    many = await ws.compare_many([LEFT, RIGHT])
    rows = body(parse(many._repr_html_()).tables[0][1])
    assert [r[1] for r in rows] == [row.key for row in many.rows]
    assert [r[3:] for r in rows] == [[number(v) for v in row.values] for row in many.rows]

    summary = await ws.get_run(RIGHT)
    facts = dict(parse(summary._repr_html_()).tables[0][1])  # type: ignore[arg-type]
    assert facts["ref"] == summary.ref and facts["status"] == "completed"
    assert facts["records"].startswith(f"{summary.counts.metrics} metrics, ")

    best = await ws.best_run([LEFT, RIGHT], "pass.rate")
    page = parse(best._repr_html_())
    ranking = body(page.tables[0][1])
    assert ranking == [[str(r.rank), r.run, number(r.value)] for r in best.ranking]
    assert ranking[0][1] == best.winners[0] == "run:mock-openai-compare.grounded"
    assert ranking[0][2] == "0.833333"  # 5 of 6 cases pass


async def test_every_user_string_is_escaped(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    ctx = Contexta(workspace=workspace, config={"project_name": "p"})
    for name in ("<script>alert(1)</script>", "plain"):
        with ctx.run(name, tags={"note": "<img src=x onerror=alert(2)>"}) as run:
            with run.stage("evaluate") as stage:
                with stage.sample("s1") as sample:
                    sample.metric("correct", 1.0)
                stage.metric("pass.rate", 1.0)
    ctx.close()
    ws = Workspace(workspace)
    refs = [run.ref for run in await ws.list_runs()]
    summary = await ws.get_run(refs[0])
    assert summary.name == "<script>alert(1)</script>"
    # keys, stages and warnings as another writer could have left them
    result = await ws.compare(refs[0], refs[1])
    evil = "<script>x</script>"
    result = msgspec.structs.replace(
        result,
        left=summary,
        metrics=[msgspec.structs.replace(m, key=evil, stage=evil) for m in result.metrics],
        paired=[msgspec.structs.replace(p, key=evil) for p in result.paired],
        warnings=[evil],
    )
    best = await ws.best_run(refs, "pass.rate")
    best = msgspec.structs.replace(best, metric=evil, winners=[evil], tie=True, missing=[evil])
    many = await ws.compare_many(refs)
    many = msgspec.structs.replace(many, runs=[summary, *many.runs[1:]], warnings=[evil])
    for obj in (result, many, summary, best):
        html = obj._repr_html_()
        page = parse(html)
        assert "script" not in page.tags and "img" not in page.tags, type(obj)
        assert "<script>" not in html and "&lt;script&gt;" in html
    summary_page = parse(summary._repr_html_())
    assert ["tag note", "<img src=x onerror=alert(2)>"] in summary_page.tables[0][1]
    assert evil in "".join(parse(result._repr_html_()).text)


async def test_long_tables_are_cut_and_say_how_many_rows_are_left(llm_ws: Path) -> None:
    result = await Workspace(llm_ws).compare(LEFT, RIGHT)
    metric = result.metrics[0]
    result = msgspec.structs.replace(result, metrics=[metric] * (MAX_ROWS + 7))
    page = parse(result._repr_html_())
    assert len(body(page.tables[-1][1])) == MAX_ROWS
    assert "7 more rows" in "".join(page.text)


async def test_plain_repr_stays_short_and_names_the_runs(llm_ws: Path) -> None:
    ws = Workspace(llm_ws)
    result = await ws.compare(LEFT, RIGHT, include_samples=True)
    shown = repr(result)
    assert shown == (
        "RunComparison(left='run:mock-openai-compare.helpful-only', "
        "right='run:mock-openai-compare.grounded', metrics=3, paired=2, artifacts=2, "
        f"warnings={len(result.warnings)})"
    )
    many = await ws.compare_many([LEFT, RIGHT])
    assert repr(many).startswith("MultiRunComparison(runs=['run:mock-openai-compare.helpful")
    assert len(repr(many)) < 200
    best = await ws.best_run([LEFT, RIGHT], "pass.rate")
    assert repr(best) == (
        "BestRun(metric='pass.rate', direction='maximize', "
        "winners=['run:mock-openai-compare.grounded'])"
    )
    summary = await ws.get_run(LEFT)
    assert repr(summary) == (
        f"RunSummary(ref='run:mock-openai-compare.helpful-only', status='completed', "
        f"records={summary.counts.total})"
    )
    # the values themselves are unchanged: equality and JSON still see every field
    assert msgspec.json.decode(msgspec.json.encode(summary), type=type(summary)) == summary
