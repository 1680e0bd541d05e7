"""A helper process that reads and parses the shipper's batches, off the shipper's GIL.

Parsing a line costs the client about 7 µs of CPU under the GIL: as much as capturing it. In
the process that captures (``Contexta(ship_to=...)``) that would slow capture down, and in
``contexta-async ship`` it leaves the second core to the server alone. So a :class:`Parser`
runs this module's :func:`main` in ``python -c`` (a plain subprocess: nothing of the
caller's ``__main__`` runs again, as it would with multiprocessing's spawn) and asks it for
batches over a pipe; the caller only receives the COPY payload (its thread waits on the pipe
with the GIL released). The worker reads the workspace file itself, so only the parsed batch
crosses the pipe.

Frames, both ways: a 4-byte big-endian length, then a JSON header; a reply's header is followed
by the COPY payload (``body`` bytes). Should the worker be missing or die, the caller parses in
its own thread instead: slower, never wrong.
"""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import IO, Any

import msgspec
import structlog

from ._identity import FAMILY_FILES
from ._lines import COPY_SIGNATURE, COPY_TRAILER, Corrupt, LineParser

__all__ = ["Parsed", "Parser", "parse_batch", "whole_lines"]

logger = structlog.get_logger("contexta_async")

_FRAME = struct.Struct("!I")
# After the helper failed, parse in the caller's thread this long before starting a new one.
RETRY_AFTER = 30.0
_WORKER_MAIN = "from contexta_async_postgres._parse_worker import main; main()"


@dataclass(slots=True)
class Parsed:
    """One batch, parsed: the binary COPY payload and what it spans."""

    position: int
    body: bytes
    rows: int
    corrupt: list[Corrupt]
    used: int


def whole_lines(fd: int, position: int, size: int, batch_bytes: int) -> bytes:
    """The whole lines from ``position``: about ``batch_bytes`` of them (more if one line is
    longer), ending with a newline; empty if there is no whole line yet."""
    want = min(batch_bytes, size - position)
    while want > 0:
        data = os.pread(fd, want, position)
        end = data.rfind(b"\n")
        if end >= 0:
            return data[: end + 1]
        if position + len(data) >= size:
            return b""  # only an unterminated tail
        want = min(want * 2, size - position)
    return b""


def parse_batch(parser: LineParser, data: bytes, position: int, batch_lines: int) -> Parsed:
    """At most ``batch_lines`` lines of ``data`` (whole lines from ``position``) as one binary
    COPY payload."""
    parse = parser.parse
    corrupt: list[Corrupt] = []
    lines = data.split(b"\n")
    lines.pop()  # data ends with a newline: the last piece is empty
    if len(lines) > batch_lines:
        del lines[batch_lines:]
    rows: list[bytes] = [COPY_SIGNATURE]
    offset = position
    for line in lines:
        row = parse(line, offset)
        offset += len(line) + 1
        if isinstance(row, Corrupt):
            corrupt.append(row)
        else:
            rows.append(row)
    count = len(rows) - 1
    rows.append(COPY_TRAILER)
    return Parsed(position, b"".join(rows), count, corrupt, offset - position)


def read_batch(
    parser: LineParser, path: str, position: int, size: int, batch_bytes: int, batch_lines: int
) -> Parsed | None:
    """Read and parse the batch at ``position`` of ``path``; None when no whole line is there."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        data = whole_lines(fd, position, size, batch_bytes)
    finally:
        os.close(fd)
    return parse_batch(parser, data, position, batch_lines) if data else None


class Parser:
    """The caller's end: one worker process, one request at a time (a lock serialises them)."""

    def __init__(self, *, retry_after: float = RETRY_AFTER) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._retry_after = retry_after
        self._failed_until = 0.0  # monotonic time before which no new helper is started
        self.failures = 0  # helpers that failed or could not start

    @property
    def _failed(self) -> bool:
        return time.monotonic() < self._failed_until

    def read_batch(
        self,
        parser: LineParser,
        path: str,
        position: int,
        size: int,
        batch_bytes: int,
        batch_lines: int,
    ) -> Parsed | None:
        """As :func:`read_batch`, in the worker when it runs, else in this thread."""
        with self._lock:
            proc = self._worker()
            if proc is not None:
                request = {
                    "workspace_id": str(parser.workspace_id),
                    "file": parser.file,
                    "path": path,
                    "position": position,
                    "size": size,
                    "batch_bytes": batch_bytes,
                    "batch_lines": batch_lines,
                }
                try:
                    return _ask(proc, request)
                except (OSError, ValueError, msgspec.DecodeError, _WorkerFailed) as exc:
                    self._stop()
                    self._give_up_for_now(exc)  # parse here meanwhile: slower, never wrong
        return read_batch(parser, path, position, size, batch_bytes, batch_lines)

    def _give_up_for_now(self, error: BaseException) -> None:
        self.failures += 1
        self._failed_until = time.monotonic() + self._retry_after
        logger.warning(
            "contexta_async.ship_parse_helper_failed",
            error=f"{type(error).__name__}: {error}"[:200],
            retry_in_seconds=self._retry_after,
            hint="the shipper parses in its own thread meanwhile (more CPU, same rows)",
        )

    def _worker(self) -> subprocess.Popen[bytes] | None:
        if self._proc is not None or self._failed:
            return self._proc
        try:
            self._proc = subprocess.Popen(
                # -P: the caller's working directory is not put on sys.path (a msgspec.py
                # there must not run in the helper)
                [sys.executable, "-P", "-c", _WORKER_MAIN],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                close_fds=True,
                # its own session: a Ctrl-C at the terminal is the caller's to handle, and
                # does not kill the helper behind its back
                start_new_session=True,
            )
        except OSError as exc:
            self._give_up_for_now(exc)
            return None
        if self._proc.stdout is not None and hasattr(fcntl, "F_SETPIPE_SZ"):
            try:  # batches are tens of MiB: fewer, larger pipe reads (Linux: up to 1 MiB)
                fcntl.fcntl(self._proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
            except OSError:
                pass
        return self._proc

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
        # Not waiting for it to see its stdin close: a forked child of the caller may hold
        # the pipe open. It keeps no state: nothing is lost by killing it.
        proc.kill()
        proc.wait()


class _WorkerFailed(Exception):
    pass


def _ask(proc: subprocess.Popen[bytes], request: dict[str, Any]) -> Parsed | None:
    assert proc.stdin is not None and proc.stdout is not None
    _write_frame(proc.stdin, msgspec.json.encode(request))
    proc.stdin.flush()
    head = msgspec.json.decode(_read_frame(proc.stdout))
    if head.get("error"):
        raise _WorkerFailed(head["error"])
    if head.get("empty"):
        return None
    body = _read_exact(proc.stdout, int(head["body"]))
    corrupt = [Corrupt(str(f), int(o), str(r)) for f, o, r in head["corrupt"]]
    return Parsed(request["position"], body, int(head["rows"]), corrupt, int(head["used"]))


def _write_frame(out: IO[bytes], data: bytes) -> None:
    out.write(_FRAME.pack(len(data)))
    out.write(data)


def _read_exact(src: IO[bytes], n: int) -> bytes:
    data = src.read(n)
    if data is None or len(data) != n:
        raise _WorkerFailed("the parse worker went away")
    return data


def _read_frame(src: IO[bytes]) -> bytes:
    (n,) = _FRAME.unpack(_read_exact(src, _FRAME.size))
    return _read_exact(src, n)


def _serve(src: IO[bytes], out: IO[bytes]) -> None:
    parsers: dict[tuple[str, str], LineParser] = {}
    while True:
        try:
            request = msgspec.json.decode(_read_frame(src))
        except _WorkerFailed:
            return  # the caller closed the pipe
        try:
            key = (request["workspace_id"], request["file"])
            parser = parsers.get(key)
            if parser is None:
                file = request["file"]
                parser = LineParser(uuid.UUID(key[0]), file, FAMILY_FILES[file])
                parsers[key] = parser
            parsed = read_batch(
                parser,
                request["path"],
                request["position"],
                request["size"],
                request["batch_bytes"],
                request["batch_lines"],
            )
        except Exception as exc:
            _write_frame(out, msgspec.json.encode({"error": repr(exc)}))
            out.flush()
            continue
        if parsed is None:
            _write_frame(out, msgspec.json.encode({"empty": True}))
        else:
            head = {
                "rows": parsed.rows,
                "used": parsed.used,
                "body": len(parsed.body),
                "corrupt": [[c.file, c.byte_offset, c.reason] for c in parsed.corrupt],
            }
            _write_frame(out, msgspec.json.encode(head))
            out.write(parsed.body)
        out.flush()


def main() -> None:
    """The worker process: serve requests on stdin until it closes."""
    _serve(sys.stdin.buffer, sys.stdout.buffer)
