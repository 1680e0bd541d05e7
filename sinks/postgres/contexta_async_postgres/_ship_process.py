"""The helper process of ``Contexta(..., ship_to=URL)``: the whole shipper, out of the capturing
process.

Reading, parsing and COPY cost a few µs of CPU per line, as much as capturing the line; in
the capturing process they would hold its GIL for that long. So :class:`BackgroundShipper`
(in ``_background``) runs :func:`main` in ``python -P -c`` (a plain subprocess, never a
fork: nothing of the caller's ``__main__`` runs again, and no lock held by another thread
is inherited), lowers its CPU priority (``os.nice``) so that capture keeps its core, and
talks to it over its stdin and stdout, one JSON object a line:

- in: the settings first (``workspace``: the path's bytes, base64-encoded, since a Linux path
  need not be UTF-8; ``url``, ``share``, ...), then ``{"pass": n}``
  (someone waits for a pass that begins after request ``n``) and ``{"stop": true}`` (finish
  the batch in flight, then exit; so does the end of stdin, e.g. when the caller died);
- out: ``{"positions": {...}}`` after each pass, ``{"done": n}`` when a pass that began after
  request ``n`` completed, ``{"error": "..."}`` when a pass failed (retried with backoff),
  ``{"log": {...}}`` for each structlog event of the shipper (re-emitted by the caller, so
  corrupt lines are reported where its logging is configured).

Each batch is one transaction (see ``_shipper``): a helper killed anywhere loses nothing, and
the next one (or ``contexta-async ship``) goes on from the stored position.

Between batches (after a commit, never inside a transaction) the helper yields to capture
(``_pacing.Pacer``, the ``share`` setting): while the capture files grow and no request is
unanswered, it pauses so that it ships at most ``share`` of the time. A request or a stop
ends the pause at once (``wake``), and no pause is taken while a request is unanswered: a
waiter never waits for a pause. Only this helper paces; ``contexta-async ship`` (one-shot or
``--follow``) ships at full speed.
"""

from __future__ import annotations

import base64
import os
import sys
import threading
from pathlib import Path
from typing import IO, Any

import msgspec
import structlog

__all__ = ["main"]

_encode = msgspec.json.Encoder(enc_hook=str).encode


class _Channel:
    """The caller's end of the pipes, seen from the helper."""

    def __init__(self, src: IO[bytes], out: IO[bytes]) -> None:
        self._src = src
        self._out = out
        self._lock = threading.Lock()
        self.stop = threading.Event()
        self.wake = threading.Event()  # set by a request, and with stop
        self.requested = 0  # the newest request received
        self.answered = 0  # the newest request a completed pass answered (``done``)

    def send(self, message: dict[str, Any]) -> None:
        try:
            line = _encode(message)
        except UnicodeEncodeError:  # a str holding a non-UTF-8 path's bytes (surrogates)
            line = _encode(_printable(message))
        with self._lock:
            try:
                self._out.write(line + b"\n")
                self._out.flush()
            except (OSError, ValueError):  # the caller went away: nobody to tell
                self.stop.set()
                self.wake.set()

    def waiting(self) -> bool:
        """Whether someone waits for the store (a request no completed pass answered), or
        the helper is stopping: no time to pause."""
        return self.stop.is_set() or self.requested > self.answered

    def settings(self) -> dict[str, Any]:
        line = self._src.readline()
        if not line:
            raise SystemExit(0)
        settings: dict[str, Any] = msgspec.json.decode(line)
        # Where the caller's requests stand: a restarted helper takes over from the last one
        # (a request its predecessor answered is no one waiting).
        self.requested = int(settings.get("requested", 0))
        self.answered = int(settings.get("answered", 0))
        return settings

    def listen(self) -> None:
        """Requests from the caller, until its end of the pipe closes."""
        try:
            for line in self._src:
                message = msgspec.json.decode(line)
                if message.get("stop"):
                    break
                if "pass" in message:
                    self.requested = max(self.requested, int(message["pass"]))
                    self.wake.set()
        except (OSError, ValueError, msgspec.DecodeError):
            pass
        self.stop.set()
        self.wake.set()


def _forward(channel: _Channel) -> Any:
    def processor(_logger: Any, method: str, event: dict[str, Any]) -> Any:
        channel.send({"log": {"level": method, **event}})
        raise structlog.DropEvent

    return processor


def _serve(channel: _Channel) -> None:
    from contexta_async import ContextaError

    from ._identity import FAMILY_FILES
    from ._pacing import Pacer
    from ._shipper import Shipper

    settings = channel.settings()
    # This process is the shipper's own: its events go to the caller, which logs them.
    structlog.configure(processors=[_forward(channel)], cache_logger_on_first_use=False)
    threading.Thread(
        target=channel.listen, name="contexta-async-ship-requests", daemon=True
    ).start()
    parent = os.getppid()
    workspace = Path(os.fsdecode(base64.b64decode(settings["workspace"])))
    poll = float(settings["poll_interval"])
    backoff = float(settings["backoff"])
    max_backoff = float(settings["max_backoff"])
    stop, wake = channel.stop, channel.wake
    pacer = Pacer(
        float(settings.get("share", 1.0)),
        [workspace / "cache" / "capture" / file for file in FAMILY_FILES],
        waiting=channel.waiting,
        pause=wake.wait,
        # Its own start (Python, imports, connecting) is work beside capture too.
        started=(float(settings["started"]), list(settings["sizes"]))
        if "started" in settings
        else None,
    )
    shipper: Shipper | None = None
    delay = backoff
    try:
        while not stop.is_set():
            if os.getppid() != parent:
                break  # the caller died (and a fork of it may hold the pipe open)
            wake.clear()  # before reading the requests: a later one wakes the wait
            asked = channel.requested  # what this pass answers if it completes
            try:
                if shipper is None and (workspace / "cache" / "capture").is_dir():
                    # retries=0: this loop retries, so that a stop ends it any time
                    shipper = Shipper(
                        workspace,
                        settings["url"],
                        batch_lines=settings["batch_lines"],
                        retries=0,
                        progress=pacer.after_batch,
                    )
                if shipper is not None:
                    pacer.begin()
                    # A pass that answers a waiter asks the store where each file stands;
                    # the periodic ones trust what the shipper saw (until a reconnection).
                    result = shipper.ship(stop=stop, cached=asked <= channel.answered)
                    channel.send({"positions": result.positions})
                    if stop.is_set():
                        break  # the pass may have stopped early: it answers nothing
            except Exception as exc:
                channel.send({"error": _one_line(exc)})
                if shipper is not None and not isinstance(exc, ContextaError):
                    shipper.close()
                    shipper = None
                stop.wait(delay)
                delay = min(delay * 2, max_backoff)
                continue
            delay = backoff
            channel.answered = asked
            channel.send({"done": asked})
            wake.wait(poll)
    finally:
        if shipper is not None:
            try:
                shipper.close()
            except Exception:
                pass


def _printable(value: Any) -> Any:
    """``value`` with every str made encodable (``\\xNN`` for each byte of a non-UTF-8
    path), so that no message is lost, nor the helper stopped, over a path's bytes."""
    from ._identity import display_path

    if isinstance(value, str):
        return display_path(value)
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(v) for v in value]
    return value


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main() -> None:
    """The helper process: ship as the caller asks on stdin, until it says stop."""
    _serve(_Channel(sys.stdin.buffer, sys.stdout.buffer))
