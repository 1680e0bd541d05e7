"""``contexta-async ship --to URL`` with a URL the PostgreSQL store refuses: a usage error
naming ``--to`` (status 2, the subcommand's usage), never the URL's password."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pgtest import capture

from contexta_async._cli import run_cli


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgresql://u:p@ss@h/db", "--to: must percent-encode '@' and '/'"),
        ("postgresql://u:pw@h/db?nosuchopt=1", "--to: must be a valid postgresql:// URL"),
    ],
)
def test_ship_to_a_malformed_postgresql_url_is_a_usage_error_naming_to(
    tmp_path: Path, url: str, reason: str
) -> None:
    ws = capture(tmp_path / "ws")
    out, err = io.StringIO(), io.StringIO()
    code = run_cli(["--workspace", str(ws), "ship", "--to", url], out=out, err=err)
    assert (code, out.getvalue()) == (2, "")
    assert err.getvalue().startswith("usage: contexta-async ship "), err.getvalue()
    assert f"contexta-async: error: {reason}" in err.getvalue()
    assert "ss@h" not in err.getvalue() and "pw" not in err.getvalue()


def test_ship_of_a_folder_that_is_no_workspace_is_still_an_error_not_a_usage_error(
    tmp_path: Path,
) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = run_cli(
        ["--workspace", str(tmp_path), "ship", "--to", "postgresql://u@127.0.0.1:1/db"],
        out=out,
        err=err,
    )
    assert code == 1
    assert err.getvalue().startswith("contexta-async: error: workspace: "), err.getvalue()
