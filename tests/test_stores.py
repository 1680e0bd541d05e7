"""``contexta-async ship`` finds the store's distribution through an entry point; without it,
the error says what to install and never shows the URL (it may hold a password)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from contexta_async import (
    ConfigurationError,
    Contexta,
    StoreNotInstalledError,
    ValidationError,
    stores,
)
from contexta_async._cli import run_cli
from contexta_async.readers import Workspace
from contexta_async.sinks import LocalJsonlSink, MemorySink

URL = "postgresql://user:pa55-secret@db.example:5432/evals"


def _ship(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_cli(["--workspace", "ws", "ship", *args], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_a_scheme_whose_distribution_is_missing_names_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As on a machine where contexta-async-postgres is not installed: no entry point.
    monkeypatch.setattr(stores, "_entry_points", lambda scheme: [])
    with pytest.raises(StoreNotInstalledError) as caught:
        stores.load_store_backend(URL)
    assert caught.value.scheme == "postgresql"
    assert caught.value.distribution == "contexta-async-postgres"
    code, out, err = _ship("--to", URL)
    assert (code, out) == (1, "")
    assert err == (
        "contexta-async: error: --to: the postgresql:// scheme needs the contexta-async-postgres "
        "distribution: pip install contexta-async-postgres (got 'postgresql')\n"
    )
    code, _, err = _ship("--to", URL.replace("postgresql", "postgres", 1))
    assert code == 1 and "pip install contexta-async-postgres" in err


def test_a_url_without_a_known_scheme_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValidationError, match="--to: no installed store serves this scheme"):
        stores.load_store_backend("mysql://user:pa55-secret@h/db")
    code, _, err = _ship("--to", "user:pa55-secret@h/db")
    assert code == 2 and "--to: must be a store URL" in err  # a usage error
    assert "pa55-secret" not in err


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--batch-lines", "0"], "--batch-lines must be at least 1"),
        (["--retries", "-1"], "--retries must be 0 or more"),
        (["--poll-interval", "0"], "--poll-interval must be positive"),
    ],
)
def test_ship_options_out_of_range_are_usage_errors(
    option: list[str], message: str, tmp_path: Path
) -> None:
    code, _, err = _ship("--to", URL, *option)
    assert code == 2 and message in err


def test_url_scheme_is_the_lower_cased_part_before_the_separator() -> None:
    assert stores.url_scheme("PostgreSQL://h/db") == "postgresql"
    assert stores.url_scheme("/some/path") == ""
    assert stores.url_scheme("://h") == ""


def test_a_store_that_is_installed_but_cannot_load_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As with contexta-async-postgres installed but its driver (psycopg) missing.
    class Broken:
        value = "contexta_async_postgres:backend"

        def load(self) -> object:
            raise ImportError("no module named 'psycopg'")

    monkeypatch.setattr(stores, "_entry_points", lambda scheme: [Broken()])
    code, out, err = _ship("--to", URL)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and "cannot be loaded" in err and "psycopg" in err
    assert "Traceback" not in err


def test_ship_to_without_the_store_distribution_fails_at_the_call_naming_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(stores, "_entry_points", lambda scheme: [])
    with pytest.raises(StoreNotInstalledError) as caught:
        Contexta(workspace=tmp_path, ship_to=URL)
    assert caught.value.field == "ship_to" and "pa55-secret" not in str(caught.value)
    with pytest.raises(ValidationError, match="ship_to: no installed store serves this scheme"):
        Contexta(workspace=tmp_path, ship_to="mysql://user:pa55-secret@h/db")


def test_ship_to_needs_the_sink_that_writes_the_workspace_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="ship_to: ships the workspace's files"):
        Contexta(workspace=tmp_path, sinks=[MemorySink()], ship_to=URL)
    elsewhere = LocalJsonlSink(tmp_path / "elsewhere")
    with pytest.raises(ConfigurationError, match="LocalJsonlSink writing to"):
        Contexta(workspace=tmp_path, sinks=[elsewhere], ship_to=URL)


def test_without_ship_to_a_context_has_no_shipper(tmp_path: Path) -> None:
    ctx = Contexta(workspace=tmp_path)
    assert ctx.shipper is None
    ctx.close()


# ---- reading a store: Workspace(URL), --workspace URL ------------------------------------


def _read(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_cli(list(args), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("command", [["runs"], ["compare", "a", "b"], ["show", "a"]])
def test_reading_a_store_without_its_distribution_names_what_to_install(
    monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.setattr(stores, "_entry_points", lambda scheme: [])
    with pytest.raises(StoreNotInstalledError) as caught:
        Workspace(URL)
    assert caught.value.field == "workspace" and "pa55-secret" not in str(caught.value)
    code, out, err = _read("--workspace", URL, *command)
    assert (code, out) == (1, "")
    assert err == (
        "contexta-async: error: workspace: the postgresql:// scheme needs the "
        "contexta-async-postgres distribution: pip install contexta-async-postgres "
        "(got 'postgresql')\n"
    )


def test_a_workspace_url_of_an_unknown_scheme_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValidationError, match="workspace: no installed store serves this"):
        Workspace("mysql://user:pa55-secret@h/db")
    code, _, err = _read("--workspace", "mysql://user:pa55-secret@h/db", "runs")
    assert code == 1 and "pa55-secret" not in err


def test_view_of_a_store_is_a_one_line_error_without_the_url() -> None:
    code, out, err = _read("--workspace", URL, "view")
    assert (code, out) == (1, "")
    assert err == (
        "contexta-async: error: view reads a workspace folder; a store (postgresql://) cannot "
        "be viewed yet: use runs, show, compare, best, report or export on it\n"
    )
