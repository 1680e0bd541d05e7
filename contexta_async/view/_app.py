"""The view's Starlette app: read-only pages over a workspace, kept live by the tail."""

from __future__ import annotations

import json
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Final
from urllib.parse import unquote

import anyio
import anyio.to_thread
import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._errors import ValidationError
from ..readers import (
    AmbiguousRunError,
    ReaderError,
    RunComparison,
    UnknownRunError,
    Workspace,
    resolve_run_ref,
)
from ._assets import CSP
from ._pages import (
    compare_href,
    compare_main,
    error_main,
    index_main,
    page,
    run_main,
    sample_main,
)
from ._pages import sample_values as _sample_values
from ._tail import WorkspaceTail

__all__ = ["ViewState", "check_poll_interval", "create_app"]

_log = structlog.get_logger("contexta_async")

_KEEPALIVE: Final = 15.0
# Percent-encoded '.', '/' and '\': no page address needs them, a traversal attempt does.
_REFUSED_ENCODINGS: Final = (b"%2e", b"%2f", b"%5c")
_SECURITY_HEADERS: Final = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]


def check_poll_interval(poll_interval: object) -> None:
    """``poll_interval`` must be a finite real number of seconds above 0 (an infinite one
    would never look at the workspace again)."""
    if (
        not isinstance(poll_interval, int | float)
        or isinstance(poll_interval, bool)
        or not math.isfinite(poll_interval)
        or not poll_interval > 0
    ):
        raise ValidationError(
            "poll_interval", "must be a finite number of seconds above 0", poll_interval
        )


class ViewState:
    """The tail of one workspace, polled in the background, and the pages' caches."""

    def __init__(self, workspace: Workspace, poll_interval: float) -> None:
        self.workspace = workspace
        self.tail = WorkspaceTail(workspace.capture_dir)
        self.poll_interval = poll_interval
        self.lock = anyio.Lock()
        self.ready = anyio.Event()
        self.closing = False
        self._changed = anyio.Event()
        # What /events sends, built under the lock after each poll: the poll's worker thread
        # inserts runs (or swaps the table on a reset) while the loop would iterate it.
        self._versions: dict[str, Any] = {"*": 0, "runs": {}}
        self._comparisons: dict[tuple[str, str], tuple[tuple[int, int], RunComparison]] = {}

    async def refresh(self) -> bool:
        """Fold what was appended since the last poll (in a worker thread)."""
        async with self.lock:
            changed = await anyio.to_thread.run_sync(self.tail.poll)
            tail = self.tail
            runs = {ref: run.version for ref, run in tail.runs.items()}
            self._versions = {"*": tail.version, "runs": runs}
        self.ready.set()
        if changed:
            self._changed.set()
            self._changed = anyio.Event()
        return changed

    async def poll_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # a bad read is logged and retried, the server stays up
                _log.warning(
                    "contexta_async.view_poll_failed",
                    workspace=str(self.workspace.path),
                    error=str(exc),
                )
                self.ready.set()
            await anyio.sleep(self.poll_interval)

    def close(self) -> None:
        """End the event streams (the server is shutting down: they never end otherwise)."""
        self.closing = True
        self._changed.set()

    async def wait_change(self, at_most: float) -> None:
        with anyio.move_on_after(at_most):
            await self._changed.wait()

    def versions(self) -> dict[str, Any]:
        """The tail's version and each run's, as of the last poll (never changed in place)."""
        return self._versions

    def resolve(self, name: str) -> str:
        return resolve_run_ref(name, self.tail.runs)

    async def comparison(self, left: str, right: str) -> RunComparison:
        """``Workspace.compare`` of the two runs, computed again only once either changed."""
        async with self.lock:
            # Resolved again: a poll that started over since the page resolved them (a file
            # was replaced) may have dropped one (UnknownRunError: the page answers 404).
            runs = self.tail.runs
            versions = (runs[self.resolve(left)].version, runs[self.resolve(right)].version)
        cached = self._comparisons.get((left, right))
        if cached is not None and cached[0] == versions:
            return cached[1]
        result = await self.workspace.compare(left, right, include_samples=True)
        if len(self._comparisons) >= 16:
            self._comparisons.clear()
        self._comparisons[(left, right)] = (versions, result)
        return result


def _html(request: Request, title: str, main: str, status_code: int = 200) -> HTMLResponse:
    state: ViewState = request.app.state.view
    if request.query_params.get("fragment"):
        return HTMLResponse(main, status_code=status_code)
    return HTMLResponse(page(title, main, str(state.workspace.path)), status_code=status_code)


def _not_found(request: Request, message: str) -> HTMLResponse:
    return _html(request, "Not found", error_main("Not found", message), 404)


async def _ready(request: Request) -> ViewState:
    state: ViewState = request.app.state.view
    await state.ready.wait()
    return state


async def _index(request: Request) -> Response:
    state = await _ready(request)
    async with state.lock:
        runs = sorted(state.tail.runs.values(), key=lambda r: (r.started_at or "", r.ref))
        main = index_main(runs, state.tail.version, state.tail.issues.corrupt_lines)
    return _html(request, "Runs", main)


async def _run(request: Request) -> Response:
    state = await _ready(request)
    try:
        page_number = int(request.query_params.get("page", "1"))
    except ValueError:
        page_number = 1
    async with state.lock:
        try:
            ref = state.resolve(request.path_params["run"])
        except (UnknownRunError, AmbiguousRunError) as exc:
            return _not_found(request, str(exc))
        detail = await anyio.to_thread.run_sync(state.tail.track, ref)
        run = state.tail.runs[ref]
        main = run_main(run, detail, page_number)
    return _html(request, run.name, main)


async def _compare_form(request: Request) -> Response:
    left = request.query_params.get("left", "")
    right = request.query_params.get("right", "")
    if not left or not right:
        return _not_found(request, "choose two runs to compare")
    return RedirectResponse(compare_href(left, right), status_code=303)


async def _compare(request: Request) -> Response:
    state = await _ready(request)
    try:
        async with state.lock:
            left = state.resolve(request.path_params["left"])
            right = state.resolve(request.path_params["right"])
            version = max(state.tail.runs[left].version, state.tail.runs[right].version)
        # Outside the lock (the tail keeps polling): the readers' own read of the files, the
        # numbers `compare --json` prints; the tail's versions say when to read them again.
        comparison = await state.comparison(left, right)
    except (UnknownRunError, AmbiguousRunError) as exc:
        return _not_found(request, str(exc))
    except ReaderError as exc:
        return _html(request, "Cannot compare", error_main("Cannot compare", str(exc)), 409)
    title = f"{comparison.left.name} vs {comparison.right.name}"
    return _html(request, title, compare_main(comparison, version))


async def _sample(request: Request) -> Response:
    state = await _ready(request)
    stage = request.query_params.get("stage") or None
    sample = request.path_params["sample"]
    async with state.lock:
        try:
            left = state.resolve(request.path_params["left"])
            right = state.resolve(request.path_params["right"])
        except (UnknownRunError, AmbiguousRunError) as exc:
            return _not_found(request, str(exc))
        values = []
        for ref in (left, right):
            detail = await anyio.to_thread.run_sync(state.tail.track, ref)
            values.append(_sample_values(detail, stage, sample))
        tail = state.tail
        main = sample_main(tail.runs[left], tail.runs[right], stage, sample, (values[0], values[1]))
    return _html(request, sample, main)


async def _events(request: Request) -> Response:
    state = await _ready(request)

    async def stream() -> AsyncIterator[str]:
        yield "retry: 1000\n\n"
        sent = -1
        while not state.closing:
            versions = state.versions()
            if versions["*"] != sent:
                sent = versions["*"]
                yield f"data: {json.dumps(versions, separators=(',', ':'))}\n\n"
            else:
                yield ": keep-alive\n\n"
            await state.wait_change(_KEEPALIVE)

    return StreamingResponse(stream(), media_type="text/event-stream")


class _Guard:
    """Only GET/HEAD, only the allowed Host names, no dot segment or encoded '.', '/' or
    '\\' in the path; security headers on every response."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str] | None) -> None:
        self.app = app
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + _SECURITY_HEADERS
            await send(message)

        refusal = self._refusal(scope)
        if refusal is not None:
            status, text = refusal
            await Response(text, status_code=status, media_type="text/plain")(
                scope, receive, send_secured
            )
            return
        await self.app(scope, receive, send_secured)

    def _refusal(self, scope: Scope) -> tuple[int, str] | None:
        if scope["method"] not in ("GET", "HEAD"):
            return 405, "read-only: only GET and HEAD\n"
        if self.allowed_hosts is not None:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name.lower() not in self.allowed_hosts:
                return 400, "unexpected Host header\n"
        raw = scope.get("raw_path") or scope["path"].encode()
        lowered = raw.lower()
        path = unquote(scope["path"])
        segments = path.split("/")
        if (
            any(code in lowered for code in _REFUSED_ENCODINGS)
            or ".." in segments
            or "." in segments
            or "\\" in path
            or "\x00" in path
        ):
            return 404, "not found\n"
        return None


def create_app(
    workspace: str | os.PathLike[str] | Workspace,
    *,
    poll_interval: float = 0.25,
    allowed_hosts: Sequence[str] | None = ("127.0.0.1", "localhost", "::1", "[::1]"),
) -> Starlette:
    """The view's ASGI app for ``workspace``: pages ``/``, ``/runs/RUN``,
    ``/compare/LEFT/RIGHT`` (and ``.../samples/NAME``), the event stream ``/events``.

    The workspace is polled every ``poll_interval`` seconds (a finite number above 0) for
    appended lines; ``allowed_hosts`` are the Host header names answered, a sequence of str
    (one string is refused, not read as its characters), or None: any.
    """
    check_poll_interval(poll_interval)
    if allowed_hosts is not None:
        # One str is refused: read as a sequence, it would allow its single characters.
        if isinstance(allowed_hosts, str | bytes) or not isinstance(allowed_hosts, Iterable):
            raise ValidationError(
                "allowed_hosts", "must be a sequence of host names (str) or None", allowed_hosts
            )
        allowed_hosts = tuple(allowed_hosts)
        if not all(isinstance(host, str) for host in allowed_hosts):
            raise ValidationError(
                "allowed_hosts", "must be a sequence of host names (str) or None", allowed_hosts
            )
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    state = ViewState(ws, poll_interval)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(state.poll_forever)
                yield
                group.cancel_scope.cancel()
        finally:
            # An event stream still open at the lifespan's end would never end by itself.
            # (uvicorn sends the lifespan's shutdown only after the open responses ended or
            # its graceful timeout cut them: ``server`` closes the state before that.)
            state.close()

    get: Callable[[str, Callable[[Request], Awaitable[Response]]], Route] = partial(
        Route, methods=["GET"]
    )
    app = Starlette(
        routes=[
            get("/", _index),
            get("/events", _events),
            get("/runs/{run}", _run),
            get("/compare", _compare_form),
            get("/compare/{left}/{right}", _compare),
            get("/compare/{left}/{right}/samples/{sample}", _sample),
        ],
        middleware=[Middleware(_Guard, allowed_hosts=allowed_hosts)],
        lifespan=lifespan,
    )
    app.state.view = state
    return app
