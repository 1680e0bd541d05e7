"""The public shipper classes check their arguments at the call: a typed ValidationError
naming the argument, never a TypeError later, a ValueError at the first retry, a helper that
fails in a restart loop or a retry loop that spins."""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import pytest
from contexta_async_postgres import BackgroundShipper, Shipper
from contexta_async_postgres._args import MAX_BACKOFF, MIN_BACKOFF
from pgtest import Database, capture, store_lines, workspace_lines

from contexta_async import ValidationError

URL = "postgresql://nobody@127.0.0.1:1/none"  # never connected to: the call fails first

SHIPPER_CASES: list[tuple[dict[str, Any], str]] = [
    ({"batch_lines": "5"}, "batch_lines"),
    ({"batch_lines": 1.5}, "batch_lines"),
    ({"batch_lines": True}, "batch_lines"),
    ({"batch_bytes": math.nan}, "batch_bytes"),
    ({"batch_bytes": 0}, "batch_bytes"),
    ({"retries": 1.5}, "retries"),
    ({"retries": -1}, "retries"),
    ({"backoff": -1}, "backoff"),
    ({"backoff": math.nan}, "backoff"),
    ({"backoff": 0}, "backoff"),
    ({"backoff": MIN_BACKOFF / 10}, "backoff"),
    ({"backoff": math.inf}, "backoff"),
    ({"backoff": "1"}, "backoff"),
    ({"max_backoff": 0.1}, "max_backoff"),  # below backoff (0.25)
    ({"max_backoff": MAX_BACKOFF * 2}, "max_backoff"),
    ({"retry_first_connect": "yes"}, "retry_first_connect"),
    ({"progress": 5}, "progress"),
]


@pytest.mark.parametrize(("kwargs", "field"), SHIPPER_CASES)
def test_shipper_refuses_a_bad_argument_at_the_call_naming_it(
    tmp_path: Path, kwargs: dict[str, Any], field: str
) -> None:
    ws = capture(tmp_path / "ws")
    with pytest.raises(ValidationError) as caught:
        Shipper(ws, URL, **kwargs)
    assert caught.value.field == field


@pytest.mark.parametrize("url", [None, b"postgresql://h/db", 5])
def test_shipper_refuses_a_url_that_is_no_string_without_showing_it(
    tmp_path: Path, url: Any
) -> None:
    with pytest.raises(ValidationError) as caught:
        Shipper(capture(tmp_path / "ws"), url)
    assert caught.value.field == "to"
    assert "h/db" not in str(caught.value)  # the URL may hold a password: never shown


def test_shipper_refuses_a_workspace_that_is_no_path() -> None:
    with pytest.raises(ValidationError) as caught:
        Shipper(None, URL)  # type: ignore[arg-type]
    assert caught.value.field == "workspace"


@pytest.mark.parametrize("poll_interval", [math.inf, math.nan, 0, -1, "1", 1e12])
def test_follow_refuses_a_poll_interval_it_cannot_wait(tmp_path: Path, poll_interval: Any) -> None:
    with (
        Shipper(capture(tmp_path / "ws"), URL) as shipper,
        pytest.raises(ValidationError) as caught,
    ):
        shipper.follow(threading.Event(), poll_interval=poll_interval)
    assert caught.value.field == "poll_interval"


BACKGROUND_CASES: list[tuple[dict[str, Any], str]] = [
    ({"batch_lines": 0}, "batch_lines"),
    ({"batch_lines": "x"}, "batch_lines"),
    ({"backoff": 0.0}, "backoff"),  # doubling 0 stays 0: the helper spun
    ({"backoff": -1}, "backoff"),
    ({"backoff": math.nan}, "backoff"),
    ({"max_backoff": 0.0}, "max_backoff"),
    ({"poll_interval": math.inf}, "poll_interval"),
    ({"poll_interval": math.nan}, "poll_interval"),
    ({"poll_interval": 0}, "poll_interval"),
    ({"nice": "x"}, "nice"),
    ({"nice": -1}, "nice"),
    ({"nice": 20}, "nice"),
    ({"nice": True}, "nice"),
    ({"share": 0}, "share"),
]


@pytest.mark.parametrize(("kwargs", "field"), BACKGROUND_CASES)
def test_background_shipper_refuses_a_bad_argument_at_the_call_naming_it(
    tmp_path: Path, kwargs: dict[str, Any], field: str
) -> None:
    before = threading.active_count()
    with pytest.raises(ValidationError) as caught:
        BackgroundShipper(capture(tmp_path / "ws"), URL, **kwargs)
    assert caught.value.field == field
    assert threading.active_count() == before  # no thread, no helper started


@pytest.mark.parametrize(
    ("workspace", "url", "field"), [(None, URL, "workspace"), (".", None, "to")]
)
def test_background_shipper_refuses_a_workspace_or_url_of_the_wrong_type(
    workspace: Any, url: Any, field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        BackgroundShipper(workspace, url)
    assert caught.value.field == field


def test_the_limits_themselves_are_accepted_and_ship(tmp_path: Path, db: Database) -> None:
    ws = capture(tmp_path / "ws")
    with Shipper(
        ws,
        db.url,
        batch_lines=1,
        batch_bytes=1,
        retries=0,
        backoff=MIN_BACKOFF,
        max_backoff=MIN_BACKOFF,
    ) as shipper:
        result = shipper.ship()
    assert result.batches == result.lines_shipped > 0
    capture(ws, run="more")
    helper = BackgroundShipper(
        ws,
        db.url,
        poll_interval=0.01,
        batch_lines=1,
        backoff=MIN_BACKOFF,
        max_backoff=MAX_BACKOFF,
        nice=0,
        share=1,
    )
    try:
        helper.wait_committed(timeout=60)
    finally:
        assert helper.close(timeout=30) == 0
    assert store_lines(db, ws) == workspace_lines(ws)
