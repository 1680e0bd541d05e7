"""Every timeout follows one rule (docs/reliability.md): None or a non-negative number of
seconds, where ``inf`` or anything past what the platform can wait means no limit. An int too
large for a float (``10**400``) is such a number: it used to be accepted and then raise
OverflowError when waited on (``aflush()``, ``close()``, ``wait_committed()``)."""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import pytest

from contexta_async import Contexta, ValidationError, stores

from .capture_files import metrics

# inf itself, an int no float holds, a float past threading.TIMEOUT_MAX, and the edge itself
NO_LIMIT = [10**400, math.inf, 1e300, threading.TIMEOUT_MAX]
NOT_TIMEOUTS = [-1, math.nan, True, "soon", -(10**400)]


def _shown(value: object) -> str:
    return "10**400" if value == 10**400 else "-10**400" if value == -(10**400) else repr(value)


@pytest.mark.parametrize("seconds", NO_LIMIT, ids=_shown)
def test_flush_with_a_timeout_past_what_the_platform_can_wait_has_no_limit(
    workspace: Path, seconds: float
) -> None:
    with Contexta(workspace=workspace) as ctx, ctx.run("r") as run:
        run.metric("x", 1.0)
        ctx.flush(timeout=seconds)
        assert len(metrics(workspace)) == 1
        ctx.flush(seconds)  # the writer idle: returns at once too


@pytest.mark.parametrize("seconds", NO_LIMIT, ids=_shown)
async def test_aflush_with_a_timeout_past_what_the_platform_can_wait_has_no_limit(
    workspace: Path, seconds: float
) -> None:
    async with Contexta(workspace=workspace) as ctx, ctx.run("r") as run:
        await run.metric("x", 1.0)
        await ctx.aflush(timeout=seconds)
        assert len(metrics(workspace)) == 1


@pytest.mark.parametrize("seconds", NOT_TIMEOUTS, ids=_shown)
async def test_a_bad_flush_timeout_is_refused_at_the_call(workspace: Path, seconds: Any) -> None:
    async with Contexta(workspace=workspace) as ctx:
        with pytest.raises(ValidationError, match="non-negative number of seconds") as info:
            ctx.flush(seconds)
        assert info.value.field == "timeout"
        with pytest.raises(ValidationError, match="non-negative number of seconds"):
            await ctx.aflush(seconds)


@pytest.mark.parametrize("seconds", NO_LIMIT, ids=_shown)
def test_closing_with_a_shutdown_timeout_past_what_the_platform_can_wait_drains_it_all(
    workspace: Path, seconds: float
) -> None:
    with Contexta(workspace=workspace, shutdown_timeout=seconds) as ctx, ctx.run("r") as run:
        for i in range(1000):
            run.metric("x", i)
    ctx = Contexta(workspace=workspace, shutdown_timeout=seconds)
    with ctx.run("r2") as run:
        run.metric("x", -1)
    ctx.close()
    ctx.close()
    assert len(metrics(workspace)) == 1001


@pytest.mark.parametrize("seconds", NO_LIMIT, ids=_shown)
async def test_async_closing_with_a_shutdown_timeout_past_what_the_platform_can_wait(
    workspace: Path, seconds: float
) -> None:
    async with (
        Contexta(workspace=workspace, shutdown_timeout=seconds) as ctx,
        ctx.run("r") as run,
    ):
        for i in range(1000):
            await run.metric("x", i)
    assert len(metrics(workspace)) == 1000


# ---- ctx.shipper.wait_committed(timeout) -----------------------------------------------------
# No store runs here (contexta-async-postgres and a server are not installed): a backend that
# ships nothing stands in for it, and reports the timeouts it was given.


class _Shipper:
    target = "fake:0/none"
    running = True
    last_error = None

    def __init__(self) -> None:
        self.waits: list[float | None] = []
        self.closes: list[float] = []

    def wait_committed(self, timeout: float | None) -> None:
        self.waits.append(timeout)

    def close(self, timeout: float) -> int:
        self.closes.append(timeout)
        return 0


class _Backend:
    def __init__(self) -> None:
        self.shipper = _Shipper()

    def ship_command(self, request: object) -> int:
        raise NotImplementedError

    def start_shipper(self, workspace: Path, url: str) -> _Shipper:
        return self.shipper

    def open_source(self, url: str) -> object:
        raise NotImplementedError


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> _Backend:
    made = _Backend()

    class EntryPoint:
        value = "tests:backend"

        def load(self) -> _Backend:
            return made

    monkeypatch.setattr(stores, "_entry_points", lambda scheme: [EntryPoint()])
    return made


@pytest.mark.parametrize("seconds", NO_LIMIT, ids=_shown)
async def test_waiting_for_the_store_past_what_the_platform_can_wait_has_no_limit(
    workspace: Path, backend: _Backend, seconds: float
) -> None:
    async with (
        Contexta(workspace=workspace, ship_to="fake://h/db", shutdown_timeout=seconds) as ctx,
        ctx.run("r") as run,
    ):
        await run.metric("x", 1.0)
        assert ctx.shipper is not None
        ctx.shipper.wait_committed(seconds)
        await ctx.shipper.await_committed(timeout=seconds)
        assert len(metrics(workspace)) == 1
    # What the store's thread is given: inf, which it waits on as no limit (a float, never an
    # int it could not add to its clock).
    assert backend.shipper.waits == [math.inf, math.inf]
    assert backend.shipper.closes == [math.inf]


@pytest.mark.parametrize("seconds", NOT_TIMEOUTS, ids=_shown)
def test_a_bad_wait_committed_timeout_is_refused_at_the_call(
    workspace: Path, backend: _Backend, seconds: Any
) -> None:
    with Contexta(workspace=workspace, ship_to="fake://h/db") as ctx:
        assert ctx.shipper is not None
        with pytest.raises(ValidationError, match="non-negative number of seconds") as info:
            ctx.shipper.wait_committed(seconds)
        assert info.value.field == "timeout"
    assert backend.shipper.waits == []
