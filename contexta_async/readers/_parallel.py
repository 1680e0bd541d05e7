"""Scan a large ``record.jsonl`` with several processes, one byte range each.

Decoding JSON is CPU-bound and msgspec holds the GIL, so threads cannot share the work; on a
machine with more than one core a large file is split at line boundaries into ranges, each
scanned by a forked child (which has every module loaded: no interpreter start, no re-import
of the user's main module). A child reads its range with plain blocking reads (it runs no
event loop), aggregates it exactly as the in-process path does, and sends back only the
aggregate, encoded as MessagePack by msgspec into typed Structs (nothing is unpickled: the
parent decodes plain data), through a pipe. The parent reads and decodes each answer in a
worker thread as soon as its child is done, then merges them in file order (later values
win) and arranges them by run, also in a worker thread: its event loop stays free.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
import warnings
from bisect import bisect_right
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO, Final, NamedTuple

import anyio
import anyio.to_thread
import msgspec

from .._record_index import Frame, index_path_for, read_entry
from ._decode import CHUNK_SIZE, Issues
from ._errors import UnreadableFileError
from ._indexed import LoadedIndex, open_index, pieces
from ._scan import Accumulator, BlockFeeder, RecordScan

__all__ = [
    "PARALLEL_MIN_BYTES",
    "can_fork",
    "default_workers",
    "scan_indexed",
    "scan_records_parallel",
]

PARALLEL_MIN_BYTES: Final = 64 << 20


def can_fork() -> bool:
    return hasattr(os, "fork")


def default_workers() -> int:
    """Worker processes for a large file: the usable cores, at most 8 (1 without fork)."""
    if not can_fork():
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def _line_start(handle: BinaryIO, position: int) -> int:
    """The first line start at or after ``position``."""
    if position == 0:
        return 0
    handle.seek(position - 1)
    at = position - 1
    while True:
        block = handle.read(65536)
        if not block:
            return at
        newline = block.find(b"\n")
        if newline >= 0:
            return at + newline + 1
        at += len(block)


def scan_range(
    path: str,
    start: int,
    end: int | None,
    last: bool,
    wanted: frozenset[str] | None,
    keep_values: bool,
    chunk_size: int,
    times: bool = False,
    frames: Sequence[Frame] = (),
    stop_event: threading.Event | None = None,
) -> tuple[RecordScan, Issues]:
    """Scan the lines that start in ``[start, end)`` (``end`` None: to the end of the file),
    taking the parts that ``frames`` (verified index frames) describe from them and the rest
    from the JSON (blocking: run in a child process or a worker thread). ``stop_event`` set:
    give up (ScanAbandoned) at the next frame or block."""
    issues = Issues()
    acc = Accumulator(wanted, keep_values, times)
    with open(path, "rb") as handle, _index_file(path, bool(frames)) as index:
        begin = _line_start(handle, start)
        stop = end if end is None or last else _line_start(handle, end)
        for piece_start, piece_end, frame in pieces(frames, begin, stop):
            if stop_event is not None and stop_event.is_set():
                raise ScanAbandoned
            if frame is not None:
                # One frame's columns in memory at a time: they are read when they are used.
                entry = None if index is None else read_entry(index.fileno(), frame)
                if entry is not None and acc.feed_entry(entry):
                    issues.records_from_index += entry.lines
                    continue
                issues.index_frames_rejected += 1
            feeder = BlockFeeder(acc, path, issues, piece_start)
            _scan_json(handle, feeder, piece_end, chunk_size, stop_event)
    return acc.finish(), issues


class ScanAbandoned(Exception):
    """A scan given up because its caller was cancelled."""


def _index_file(path: str, wanted: bool) -> contextlib.AbstractContextManager[BinaryIO | None]:
    """``record.index`` open for reading; None (its frames' lines are then parsed) when not
    wanted or no longer readable."""
    if wanted:
        with contextlib.suppress(OSError):
            return open_index(index_path_for(path))
    return contextlib.nullcontext()


def _scan_json(
    handle: BinaryIO,
    feeder: BlockFeeder,
    stop: int | None,
    chunk_size: int,
    stop_event: threading.Event | None,
) -> None:
    position = feeder.cutter.offset
    handle.seek(position)
    while stop is None or position < stop:
        if stop_event is not None and stop_event.is_set():
            raise ScanAbandoned
        block = handle.read(chunk_size if stop is None else min(chunk_size, stop - position))
        if not block:
            break
        position += len(block)
        feeder.feed(block)
    feeder.close()


# ---- the aggregate on the pipe (MessagePack) -----------------------------------------------


class _WireScan(msgspec.Struct, array_like=True, gc=False):
    counts: list[tuple[str, str, int]]
    stage_refs: list[str | None]
    first_time: dict[str, str]
    last_time: dict[str, str]
    # The metrics of a stage usually share their sample names: each distinct list of names
    # is sent once (smaller pipe, and the parent's dicts share the name strings).
    names: list[list[str]]
    samples: list[tuple[str, str, int, list[float | None]]]  # (parent, key, names, values)
    others: list[tuple[str, str, float | None]]
    kept: list[str]
    records: int


class _Answer(msgspec.Struct, array_like=True, tag="ok", gc=False):
    scan: _WireScan
    corrupt: int
    problems: list[tuple[str, int, str]]
    torn: bool
    records_from_index: int
    index_frames_rejected: int


class _Failure(msgspec.Struct, array_like=True, tag="error", gc=False):
    kind: str
    message: str


_ANSWER: Final = msgspec.msgpack.Decoder(_Answer | _Failure)


def _to_wire(scan: RecordScan) -> _WireScan:
    tables: list[list[str]] = []
    index_of: dict[tuple[str, ...], int] = {}
    samples = []
    for (parent, key), values in scan.samples.items():
        names = tuple(values)
        # The keys of a stage or batch mostly share their names (and the name strings, so
        # hashing them is cached): one table each, found by a dict, not a scan of the tables.
        index = index_of.setdefault(names, len(tables))
        if index == len(tables):
            tables.append(list(names))
        samples.append((parent, key, index, list(values.values())))
    return _WireScan(
        counts=[(run, kind, n) for (run, kind), n in scan.counts.items()],
        stage_refs=list(scan.stage_refs),
        first_time=scan.first_time,
        last_time=scan.last_time,
        names=tables,
        samples=samples,
        others=[(subject, key, value) for (subject, key), value in scan.others.items()],
        kept=sorted(scan.kept),
        records=scan.records,
    )


def _from_wire(wire: _WireScan) -> RecordScan:
    scan = RecordScan()
    for run, kind, n in wire.counts:
        scan.counts[(run, kind)] += n
    scan.stage_refs = set(wire.stage_refs)
    scan.first_time = wire.first_time
    scan.last_time = wire.last_time
    scan.samples = {
        (parent, key): dict(zip(wire.names[index], values, strict=True))
        for parent, key, index, values in wire.samples
    }
    scan.others = {(subject, key): value for subject, key, value in wire.others}
    scan.kept = set(wire.kept)
    scan.records = wire.records
    return scan


def _child(write_fd: int, args: tuple[Any, ...]) -> None:  # pragma: no cover - in a child
    status = 0
    # The child's objects hold no cycles and it exits when done: the cyclic GC would only
    # spend time (~5% measured) and touch the parent's pages it shares copy-on-write.
    gc.disable()
    try:
        try:
            scan, issues = scan_range(*args)
            payload = msgspec.msgpack.encode(
                _Answer(
                    _to_wire(scan),
                    issues.corrupt_lines,
                    issues.problems_raw(),
                    bool(issues.torn_tails),
                    issues.records_from_index,
                    issues.index_frames_rejected,
                )
            )
        except BaseException as exc:
            status = 1
            payload = msgspec.msgpack.encode(_Failure(type(exc).__name__, str(exc)))
        view = memoryview(payload)
        while view:
            view = view[os.write(write_fd, view) :]
    finally:
        os._exit(status)  # never return into the parent's code (event loop, atexit...)


def _read_all(fd: int) -> bytes:
    parts: list[bytes] = []
    while True:
        part = os.read(fd, 1 << 20)
        if not part:
            return b"".join(parts)
        parts.append(part)


class _Pipe:
    """The read end of a reader's pipe, closed exactly once: by the thread that reads it
    once that thread has started, else by the parent. (The parent must not close it under a
    thread that may still call ``os.read`` on it: the number could already name another
    file.)"""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()
        self._taken = False
        self._closed = False

    def take(self) -> bool:
        """In the reading thread: own the fd, unless the parent has closed it already."""
        with self._lock:
            self._taken = not self._closed
            return self._taken

    def release(self) -> None:
        """In the parent, at the end: close the fd if no thread took it."""
        with self._lock:
            if not self._taken and not self._closed:
                self._closed = True
                os.close(self.fd)


class _Received(NamedTuple):
    scan: RecordScan
    issues: Issues


def _receive(pipe: _Pipe, path: str) -> _Received | _Failure | None:
    """Read a child's answer from its pipe, decode it and rebuild its scan (in a worker
    thread, as soon as that child is done, while the others may still be scanning). None
    when the child died without a whole answer."""
    if not pipe.take():
        return None
    try:
        raw = _read_all(pipe.fd)
    finally:
        os.close(pipe.fd)
    try:
        answer = _ANSWER.decode(raw)
    except msgspec.DecodeError:
        return None  # nothing, or a partial answer: the child was killed while writing
    if isinstance(answer, _Failure):
        return answer
    found = Issues()
    found.absorb(answer.corrupt, answer.problems)
    if answer.torn:
        found.torn_tails.append(path)
    found.records_from_index = answer.records_from_index
    found.index_frames_rejected = answer.index_frames_rejected
    return _Received(_from_wire(answer.scan), found)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


async def scan_records_parallel(
    path: Path,
    issues: Issues,
    *,
    workers: int,
    wanted: frozenset[str] | None = None,
    keep_values: bool = True,
    times: bool = False,
    chunk_size: int = CHUNK_SIZE,
    index: LoadedIndex | None = None,
) -> RecordScan:
    """Like ``scan_records``, with ``workers`` forked processes over byte ranges of ``path``
    (with ``index``, the parts its frames describe are taken from them)."""
    frames: list[Frame] = []
    if index is not None and index.frames:
        frames, size = index.frames, index.size
    else:
        try:
            size = os.stat(path).st_size
        except OSError as exc:
            raise UnreadableFileError(str(path), exc.strerror or str(exc)) from exc
    bounds = _bounds(size, workers, frames)
    children: list[tuple[int, _Pipe]] = []
    try:
        for i in range(workers):
            args = (
                str(path),
                bounds[i],
                bounds[i + 1],
                i == workers - 1,
                wanted,
                keep_values,
                chunk_size,
                times,
                frames,
            )
            read_fd, write_fd = os.pipe()
            try:
                with warnings.catch_warnings():
                    # Python 3.12+ warns that fork() in a threaded process may deadlock the
                    # child. The child touches no lock another thread could hold: it only
                    # reads a file, decodes, encodes and writes to a pipe, then os._exit()s.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    pid = os.fork()
            except BaseException:
                os.close(read_fd)
                os.close(write_fd)
                raise
            if pid == 0:  # pragma: no cover - the child
                os.close(read_fd)
                _child(write_fd, args)
            os.close(write_fd)
            children.append((pid, _Pipe(read_fd)))
        answers: list[_Received | _Failure | None] = [None] * workers

        async def collect(number: int, pipe: _Pipe) -> None:
            answers[number] = await anyio.to_thread.run_sync(
                _receive, pipe, str(path), abandon_on_cancel=True
            )

        async with anyio.create_task_group() as group:
            for number, (_, pipe) in enumerate(children):
                group.start_soon(collect, number, pipe)
    except BaseException:
        # Killed readers close their ends of the pipes: a reading thread left behind by a
        # cancellation sees the end of its pipe and closes it.
        for pid, _ in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise
    finally:
        for _, pipe in children:
            pipe.release()
        with anyio.CancelScope(shield=True):
            for pid, _ in children:
                await anyio.to_thread.run_sync(_reap, pid)
    scans: list[RecordScan] = []
    for received in answers:
        if received is None:
            raise UnreadableFileError(str(path), "a reader process died without an answer")
        if isinstance(received, _Failure):
            if received.kind in ("PermissionError", "FileNotFoundError", "OSError"):
                raise UnreadableFileError(str(path), received.message)
            raise RuntimeError(f"reader process failed: {received.kind}: {received.message}")
        issues.absorb_all(received.issues)
        scans.append(received.scan)
    # Merging and arranging ~100k values per run takes a while: off the event loop.
    return await anyio.to_thread.run_sync(_merged, scans)


async def scan_indexed(
    path: Path,
    issues: Issues,
    index: LoadedIndex,
    *,
    wanted: frozenset[str] | None,
    keep_values: bool,
    chunk_size: int = CHUNK_SIZE,
) -> RecordScan:
    """``scan_range`` over the whole file in a worker thread: the index's frames need no
    decoding to speak of, so there is no block to hand over at a time. Cancelled, it returns
    at once and the thread stops at its next frame or block."""
    stop_event = threading.Event()
    try:
        scan, found = await anyio.to_thread.run_sync(
            _scan_whole,
            str(path),
            wanted,
            keep_values,
            chunk_size,
            index.frames,
            stop_event,
            abandon_on_cancel=True,
        )
    finally:
        stop_event.set()
    issues.absorb_all(found)
    return scan


def _scan_whole(
    path: str,
    wanted: frozenset[str] | None,
    keep_values: bool,
    chunk_size: int,
    frames: list[Frame],
    stop_event: threading.Event,
) -> tuple[RecordScan, Issues]:
    try:
        scan, found = scan_range(
            path, 0, None, True, wanted, keep_values, chunk_size, False, frames, stop_event
        )
    except OSError as exc:
        raise UnreadableFileError(path, exc.strerror or str(exc)) from exc
    return scan.arrange(), found


def _bounds(size: int, workers: int, frames: Sequence[Frame]) -> list[int]:
    """Equal byte ranges, each bound moved to the end of the index frame it falls inside."""
    bounds = [size * i // workers for i in range(workers + 1)]
    starts = [frame.start for frame in frames]
    for i in range(1, workers):
        at = bisect_right(starts, bounds[i]) - 1
        if at >= 0 and frames[at].start < bounds[i] < frames[at].end:
            bounds[i] = frames[at].end
    return bounds


def _merged(scans: list[RecordScan]) -> RecordScan:
    """The scans of consecutive ranges, merged in file order and arranged by run."""
    merged = scans[0]
    for later in scans[1:]:
        merged.merge(later)
    return merged.arrange()
