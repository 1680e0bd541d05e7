"""The command line's edges: usage errors after parsing (named option, the subcommand's usage,
status 2), filters that match nothing, terminal-safe table cells, and ``view`` failing to
listen. Each runs the real program (``python -m contexta_async``) unless in-process is the
point."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from contexta_async import Contexta

from .test_cli import cli, inproc
from .test_readers_helpers import capture_llm_workspace

# argparse's usage line of each subcommand starts with this.
SHOW_USAGE = "usage: contexta-async show "
TOP_USAGE = "usage: contexta-async [-h]"


@pytest.fixture
def llm_ws(tmp_path: Path) -> Path:
    return capture_llm_workspace(tmp_path / "ws")


def _add_run(workspace: Path, name: str, message: str = "ok") -> None:
    with (
        Contexta(workspace=workspace, config={"project_name": "mock-openai-compare"}) as ctx,
        ctx.run(name) as run,
        run.stage("evaluate") as stage,
        stage.sample("case-1") as sample,
    ):
        sample.metric("correct", 1.0)
        sample.event("answer", message=message)


# ---- show --limit ------------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["0", "-5"])
def test_show_limit_below_one_is_a_usage_error_naming_the_option(llm_ws: Path, limit: str) -> None:
    done = cli("-w", str(llm_ws), "show", "grounded", "--records", f"--limit={limit}")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(SHOW_USAGE)
    assert "contexta-async: error: --limit must be at least 1" in done.stderr


# ---- usage errors raised after parsing -----------------------------------------------------


def test_a_usage_error_after_parsing_prints_the_subcommands_usage(llm_ws: Path) -> None:
    done = cli("-w", str(llm_ws), "compare", "helpful-only", "grounded", "--resamples", "-1")
    assert done.returncode == 2
    assert done.stderr.startswith("usage: contexta-async compare "), done.stderr
    assert TOP_USAGE not in done.stderr
    assert "--resamples: must be at least 1" in done.stderr


def test_export_to_a_suffix_naming_no_format_is_a_usage_error_naming_format(
    llm_ws: Path, tmp_path: Path
) -> None:
    done = cli("-w", str(llm_ws), "export", "-o", str(tmp_path / "out.txt"))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("usage: contexta-async export "), done.stderr
    assert "contexta-async: error: --format: not given, and the output's suffix" in done.stderr
    assert not (tmp_path / "out.txt").exists()


def test_ship_to_something_not_a_url_is_a_usage_error(llm_ws: Path) -> None:
    done = cli("-w", str(llm_ws), "ship", "--to", "notaurl")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("usage: contexta-async ship "), done.stderr
    assert "contexta-async: error: --to: must be a store URL" in done.stderr


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0"])
@pytest.mark.parametrize("command", ["ship", "view"])
def test_a_poll_interval_not_finite_and_positive_is_a_usage_error(
    llm_ws: Path, command: str, value: str
) -> None:
    extra = ["--to", "postgresql://nobody@127.0.0.1:1/none"] if command == "ship" else []
    code, out, err = inproc("-w", str(llm_ws), command, *extra, f"--poll-interval={value}")
    assert (code, out) == (2, "")
    assert err.startswith(f"usage: contexta-async {command} "), err
    assert "contexta-async: error: --poll-interval must be positive and finite" in err


@pytest.mark.parametrize(
    "option",
    [
        ("--samples",),
        ("--resamples", "5"),
        ("--seed", "3"),
        ("--seed", "0"),  # the default's value, given: still a two-run option
        ("--confidence", "0.5"),
        ("--bootstrap", "saddlepoint"),
    ],
)
def test_compare_of_three_runs_refuses_the_two_run_options(
    llm_ws: Path, option: tuple[str, ...]
) -> None:
    _add_run(llm_ws, "third")
    code, out, err = inproc(
        "-w", str(llm_ws), "compare", "helpful-only", "grounded", "third", *option
    )
    assert (code, out) == (2, "")
    assert err.startswith("usage: contexta-async compare "), err
    assert f"contexta-async: error: {option[0]} needs two runs (a paired comparison)" in err


def test_compare_of_three_runs_still_takes_its_own_options(llm_ws: Path) -> None:
    _add_run(llm_ws, "third")
    code, out, err = inproc(
        "-w", str(llm_ws), "compare", "helpful-only", "grounded", "third",
        "--adjust", "bh", "--maximize", "correct",
    )  # fmt: skip
    assert code == 0, err
    assert "[3] run:mock-openai-compare.third" in out


# ---- show filters that match nothing --------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [("--key", "no.such.key"), ("--stage", "nope"), ("--key", "correct", "--stage", "nope")],
)
def test_show_filters_matching_nothing_say_so_on_stderr(
    llm_ws: Path, options: tuple[str, ...]
) -> None:
    done = cli("-w", str(llm_ws), "show", "grounded", *options)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("run:mock-openai-compare.grounded\n")
    assert "Records" not in done.stdout
    notes = done.stderr.splitlines()
    assert len(notes) == 1, notes
    assert notes[0].startswith("contexta-async: note: no record of ")
    assert all(part in notes[0] for part in options), notes[0]
    # A filter that matches prints the records and no note.
    done = cli("-w", str(llm_ws), "show", "grounded", "--key", "correct", "--limit", "1")
    assert done.returncode == 0 and done.stderr == ""
    assert "Records (first 1)" in done.stdout


def test_show_filters_matching_nothing_keep_json_parseable(llm_ws: Path) -> None:
    import json

    done = cli("-w", str(llm_ws), "--json", "show", "grounded", "--stage", "nope")
    assert done.returncode == 0
    assert json.loads(done.stdout)["records"] == []
    assert "contexta-async: note: no record of " in done.stderr


# ---- terminal-safe cells --------------------------------------------------------------------


def test_control_characters_in_workspace_strings_are_escaped_in_tables(llm_ws: Path) -> None:
    _add_run(llm_ws, "third", message="\x1b[2J\x1b[31mred\rX\nY\tZ\x9b1m ok é 漢")
    done = cli("-w", str(llm_ws), "show", "third", "--kind", "event")
    assert done.returncode == 0, done.stderr
    for raw in ("\x1b", "\r", "\t", "\x9b"):
        assert raw not in done.stdout
    row = next(line for line in done.stdout.splitlines() if line.startswith("event"))
    assert r"\x1b[2J\x1b[31mred\rX\nY\tZ\x9b1m ok é 漢" in row  # ordinary text unchanged
    assert len(done.stdout.splitlines()) == done.stdout.count("\n")  # no row split in two


def test_ordinary_cells_are_printed_unchanged(llm_ws: Path) -> None:
    code, out, err = inproc("-w", str(llm_ws), "show", "grounded", "--kind", "event")
    assert code == 0, err
    assert "answered case-2" in out
    assert "\\" not in out


# ---- view: listening ------------------------------------------------------------------------


def test_view_on_a_port_in_use_is_one_line_error_and_announces_nothing(llm_ws: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = cli("-w", str(llm_ws), "view", "--port", str(port))
    assert (done.returncode, done.stdout) == (1, ""), (done.returncode, done.stdout)
    assert done.stderr == (
        f"contexta-async: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )


def test_view_on_a_host_that_does_not_resolve_is_one_line_error(llm_ws: Path) -> None:
    done = cli("-w", str(llm_ws), "view", "--host", "no-such-host.invalid", "--port", "0")
    assert (done.returncode, done.stdout) == (1, ""), (done.returncode, done.stdout)
    lines = done.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("contexta-async: error: cannot listen on no-such-host.invalid:0: ")


def test_view_on_port_zero_announces_the_port_it_listens_on(llm_ws: Path) -> None:
    from .test_view import raw_get

    proc = subprocess.Popen(
        [sys.executable, "-m", "contexta_async", "-w", str(llm_ws), "view", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # written once the server listens
        assert line.startswith(f"contexta-async view of {llm_ws}: http://127.0.0.1:"), line
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        assert port != 0
        status, body = raw_get(f"http://127.0.0.1:{port}", "/")  # no retry: it listens
        assert status == 200 and "run:mock-openai-compare.grounded" in body
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
