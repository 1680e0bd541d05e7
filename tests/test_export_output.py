"""The output files of ``export`` and ``report``: what may be replaced, what a failed write
leaves, and the one-line errors (review 9e D1, D2, D3, D12)."""

from __future__ import annotations

import errno
import os
import resource
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from contexta_async import ValidationError
from contexta_async.export import UnwritableOutputError, _output, export_workspace
from contexta_async.readers import RecordRow, Workspace

from .test_cli import inproc
from .test_readers_helpers import capture_llm_workspace


@pytest.fixture
def llm_ws(tmp_path: Path) -> Path:
    return capture_llm_workspace(tmp_path / "ws")


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _limit_file_size(limit: int) -> Callable[[], None]:
    """For a child process: files may not grow past ``limit`` bytes (EFBIG, as on a file
    system that refuses a large file; the signal that would kill the process is ignored)."""

    def limit_it() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return limit_it


def _cli_limited(limit: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "contexta_async", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        preexec_fn=_limit_file_size(limit),
    )


# ---- D1: an output that cannot be written ----------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_an_output_too_large_for_the_file_system_is_a_one_line_error_leaving_the_old_file(
    llm_ws: Path, tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = out / f"m.{fmt}"
    target.write_bytes(b"the previous export")
    done = _cli_limited(1024, "-w", str(llm_ws), "export", "-o", str(target), "--force")
    assert done.returncode == 1, done.stdout
    assert done.stderr == f"contexta-async: error: cannot write {target}: File too large\n"
    assert _listing(out) == [f"m.{fmt}"]  # no partial file
    assert target.read_bytes() == b"the previous export"


async def test_unwritable_output_error_is_an_oserror_naming_the_output(
    llm_ws: Path, tmp_path: Path
) -> None:
    target = tmp_path / ("b" * 252 + ".csv")  # 256 bytes: more than a name may hold
    with pytest.raises(UnwritableOutputError) as caught:
        await Workspace(llm_ws).export(target)
    exc = caught.value
    assert isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG
    assert str(exc) == f"cannot write {target}: File name too long"
    assert exc.path == str(target) and exc.reason == "File name too long"
    assert exc.code == "unwritable_output"
    assert _listing(tmp_path) == ["ws"]


@pytest.mark.parametrize("name", ["a" * 251 + ".csv", "é" * 125 + ".csv"])
async def test_the_longest_legal_output_names_are_exported_to(
    llm_ws: Path, tmp_path: Path, name: str
) -> None:
    # the temporary name (.NAME.XXXXXXXX.partial) is cut to fit: it never makes a name fail
    out = tmp_path / "out"
    out.mkdir()
    target = out / name
    assert len(os.fsencode(name)) in (254, 255)
    result = await Workspace(llm_ws).export(target)
    assert result.rows == 29 and _listing(out) == [name]
    target.write_text("old\n")
    result = await Workspace(llm_ws).export(target, overwrite=True)
    assert result.rows == 29 and _listing(out) == [name]


def test_cli_export_to_a_name_too_long_is_one_line(llm_ws: Path, tmp_path: Path) -> None:
    target = tmp_path / ("c" * 300 + ".csv")
    code, out, err = inproc("-w", str(llm_ws), "export", "-o", str(target))
    assert (code, out) == (1, "")
    assert err == f"contexta-async: error: cannot write {target}: File name too long\n"


# ---- D3: --force replaces a regular file only -------------------------------------------------


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _link_to_file(path: Path) -> None:
    (path.parent / "pointed-at.csv").write_text("pointed at\n")
    path.symlink_to(path.parent / "pointed-at.csv")


def _dangling_link(path: Path) -> None:
    path.symlink_to(path.parent / "nothing-here.csv")


def _socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()


@pytest.mark.parametrize(
    ("make", "kind", "is_kind"),
    [
        (_fifo, "a FIFO", stat.S_ISFIFO),
        (_link_to_file, "a symbolic link", stat.S_ISLNK),
        (_dangling_link, "a symbolic link", stat.S_ISLNK),
        (_socket, "a socket", stat.S_ISSOCK),
    ],
)
@pytest.mark.parametrize("overwrite", [False, True])
async def test_an_output_that_is_not_a_regular_file_is_never_replaced(
    llm_ws: Path,
    tmp_path: Path,
    make: Callable[[Path], None],
    kind: str,
    is_kind: Callable[[int], bool],
    overwrite: bool,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = out / "m.csv"
    make(target)
    before = _listing(out)
    with pytest.raises(ValidationError) as caught:
        await Workspace(llm_ws).export(target, overwrite=overwrite)
    assert caught.value.field == "output"
    assert (
        caught.value.rule == f"is {kind}, not a regular file: only a regular file can be replaced"
    )
    assert is_kind(os.lstat(target).st_mode)
    assert _listing(out) == before
    if make is _link_to_file:
        assert (out / "pointed-at.csv").read_text() == "pointed at\n"


def test_cli_export_force_onto_a_fifo_is_refused_in_one_line(llm_ws: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "out.csv"
    os.mkfifo(fifo)
    code, out, err = inproc("-w", str(llm_ws), "export", "-o", str(fifo), "--force")
    assert (code, out) == (1, "")
    assert err.startswith(
        "contexta-async: error: output: is a FIFO, not a regular file: only a regular file "
        "can be replaced (got '"
    )
    assert err.count("\n") == 1
    assert fifo.is_fifo()


# ---- D12: a file created while the export runs ------------------------------------------------


class _RacedWorkspace(Workspace):
    """A workspace whose record stream makes ``make(target)`` happen after its first block:
    someone else creates the output while the export runs."""

    def __init__(self, path: Path, target: Path, make: Callable[[Path], None]) -> None:
        super().__init__(path)
        self._target = target
        self._make = make

    async def _record_blocks(self, refs: Any, rows: Any) -> AsyncGenerator[list[RecordRow], None]:
        made = False
        async with aclosing(super()._record_blocks(refs, rows)) as blocks:
            async for block in blocks:
                if not made:
                    self._make(self._target)
                    made = True
                yield block


def _someone_elses(path: Path) -> None:
    path.write_text("someone else's file\n")


@pytest.fixture(params=["renameat2", "link", "check-then-rename"])
def rename_noreplace(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each way the final rename can refuse to replace: renameat2 (Linux), a hard link where
    renameat2 is missing, and a check where neither is supported (os.link failing as on a
    file system without hard links: only that one is simulated)."""
    if request.param == "renameat2" and _output._renameat2() is None:
        pytest.skip("no renameat2 on this system")
    if request.param != "renameat2":
        monkeypatch.setattr(_output, "_renameat2", lambda: None)
    if request.param == "check-then-rename":

        def no_links(src: Any, dst: Any) -> None:
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))

        monkeypatch.setattr(_output.os, "link", no_links)
    return str(request.param)


async def test_a_file_created_while_the_export_runs_is_not_replaced(
    llm_ws: Path, tmp_path: Path, rename_noreplace: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = out / "race.csv"
    ws = _RacedWorkspace(llm_ws, target, _someone_elses)
    with pytest.raises(ValidationError) as caught:
        await export_workspace(ws, target, batch_rows=4)
    assert caught.value.field == "output" and "was created while" in caught.value.rule
    assert target.read_text() == "someone else's file\n"
    assert _listing(out) == ["race.csv"]  # no partial file left
    # the rename itself, with nothing in the way
    target.unlink()
    result = await export_workspace(Workspace(llm_ws), target)
    assert result.rows == 29 and _listing(out) == ["race.csv"]
    assert target.read_text().startswith("run,stage,")


async def test_with_overwrite_a_file_created_meanwhile_is_replaced_but_a_fifo_is_not(
    llm_ws: Path, tmp_path: Path
) -> None:
    target = tmp_path / "race.csv"
    result = await export_workspace(
        _RacedWorkspace(llm_ws, target, _someone_elses), target, overwrite=True
    )
    assert result.rows == 29 and target.read_text().startswith("run,stage,")
    target.unlink()
    with pytest.raises(ValidationError, match="is a FIFO, not a regular file"):
        await export_workspace(_RacedWorkspace(llm_ws, target, _fifo), target, overwrite=True)
    assert target.is_fifo() and _listing(tmp_path) == ["race.csv", "ws"]


# ---- D2: report -----------------------------------------------------------------------------


def test_report_replaces_its_output_whole_and_leaves_no_temporary_file(
    llm_ws: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    page = out / "r.html"
    page.write_text("previous report\n")
    code, _, err = inproc("-w", str(llm_ws), "report", "helpful-only", "grounded", "-o", str(page))
    assert code == 0, err
    assert page.read_text().startswith("<!DOCTYPE html>") and _listing(out) == ["r.html"]


def test_report_failed_write_keeps_the_previous_page(llm_ws: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    page = out / "r.html"
    page.write_text("previous report\n")
    done = _cli_limited(
        1024, "-w", str(llm_ws), "report", "helpful-only", "grounded", "-o", str(page)
    )
    assert done.returncode == 1, done.stdout
    assert done.stderr == f"contexta-async: error: cannot write {page}: File too large\n"
    assert page.read_text() == "previous report\n" and _listing(out) == ["r.html"]


def test_report_refuses_an_output_in_the_capture_folder_or_not_a_regular_file(
    llm_ws: Path, tmp_path: Path
) -> None:
    capture = llm_ws / "cache" / "capture"
    before = {p.name: p.read_bytes() for p in capture.iterdir()}
    for target in (capture / "record.jsonl", capture / "r.html"):
        code, out, err = inproc(
            "-w", str(llm_ws), "report", "helpful-only", "grounded", "-o", str(target)
        )
        assert (code, out) == (1, "")
        assert err.startswith(
            "contexta-async: error: output: must not be inside the workspace's capture folder "
        )
        assert err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in capture.iterdir()} == before
    fifo = tmp_path / "r.html"
    os.mkfifo(fifo)
    code, out, err = inproc(
        "-w", str(llm_ws), "report", "helpful-only", "grounded", "-o", str(fifo)
    )
    assert code == 1 and "is a FIFO, not a regular file" in err
    assert fifo.is_fifo()
