"""The ``contexta_async.stores`` entry point: ``contexta-async ship --to postgresql://...``
and the readers' ``Workspace("postgresql://...")``."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

import msgspec

from contexta_async.stores import ShipRequest

from ._background import BackgroundShipper
from ._shipper import Shipper, ShipProgress, ShipResult

if TYPE_CHECKING:
    from ._reader import PostgresSource

__all__ = ["PostgresBackend", "backend"]


class PostgresBackend:
    """Serves the ``postgresql://`` and ``postgres://`` schemes."""

    def ship_command(self, request: ShipRequest) -> int:
        """Ship the workspace (``--follow``: until SIGINT/SIGTERM); print what was done."""
        bar = _ProgressLine(request.err) if request.err.isatty() else None
        shipper = Shipper(
            request.workspace,
            request.url,
            batch_lines=request.batch_lines,
            retries=request.retries,
            retry_first_connect=request.follow,
            progress=bar.update if bar else None,
        )
        stop = threading.Event()
        try:
            with shipper:
                if request.follow:
                    with _stop_on_signals(stop):
                        result = shipper.follow(stop, poll_interval=request.poll_interval)
                else:
                    result = shipper.ship()
        finally:
            if bar is not None:
                bar.done()
        _print_result(result, shipper.target.redacted_url, request.json, request.out)
        return 0

    def start_shipper(self, workspace: Path, url: str) -> BackgroundShipper:
        """The thread of ``Contexta(..., ship_to=url)``: ships ``workspace`` in the background."""
        return BackgroundShipper(workspace, url)

    def open_source(self, url: str) -> PostgresSource:
        """The readers' source over the store (``Workspace("postgresql://...")``)."""
        # Imported here: a process that only captures (``ship_to``) needs no reader side.
        from ._reader import PostgresSource

        return PostgresSource(url)


backend = PostgresBackend()
"""The object the entry point names."""


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop``: the batch in flight commits (or rolls back), then the
    shipper returns. Only the main thread can take signals; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class _ProgressLine:
    """One self-rewriting line on a terminal: lines, MiB, rate, what is left."""

    def __init__(self, err: TextIO) -> None:
        self.err = err
        self.started = time.monotonic()
        self.last = 0.0
        self.shown = False

    def update(self, p: ShipProgress) -> None:
        now = time.monotonic()
        if now - self.last < 0.2:
            return
        self.last = now
        rate = p.lines / max(now - self.started, 1e-9)
        left = f", {p.remaining_bytes / 2**20:,.1f} MiB left" if p.remaining_bytes else ""
        skipped = f", {p.skipped:,} corrupt skipped" if p.skipped else ""
        self.err.write(
            f"\rshipping: {p.lines:,} lines, {p.bytes / 2**20:,.1f} MiB, "
            f"{rate:,.0f} lines/s{left}{skipped}\x1b[K"
        )
        self.err.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            self.err.write("\n")
            self.err.flush()


def _print_result(result: ShipResult, where: str, as_json: bool, out: TextIO) -> None:
    if as_json:
        doc: dict[str, Any] = msgspec.to_builtins(result)
        doc["to"] = where
        out.write(msgspec.json.format(msgspec.json.encode(doc), indent=2).decode() + "\n")
        return
    out.write(
        f"shipped {result.lines_shipped:,} line(s) in {result.batches:,} batch(es) to {where} "
        f"(workspace {result.workspace_id})\n"
    )
    if result.lines_already_stored:
        out.write(f"  {result.lines_already_stored:,} line(s) were already in the store\n")
    if result.reconnects:
        out.write(f"  reconnected {result.reconnects} time(s)\n")
    if result.lines_skipped:
        first = ""
        if result.corrupt:
            bad = result.corrupt[0]
            first = f" (first: {bad.file} byte {bad.byte_offset}: {bad.reason})"
        out.write(f"  ! {result.lines_skipped:,} corrupt line(s) skipped, not shipped{first}\n")
    if result.waiting_bytes:
        out.write(
            f"  {result.waiting_bytes:,} byte(s) of an unfinished last line wait for its newline\n"
        )
