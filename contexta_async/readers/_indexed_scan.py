"""Scan ``record.jsonl`` in a worker thread: from ``record.index`` where it verifiably
matches, from the JSON elsewhere.

The scan is blocking work (reads, msgspec decoding, C-level aggregation passes): it runs in
one worker thread of anyio's, so the event loop stays free and the same code serves asyncio
and trio. Its parts follow the file in order: the verified index frames (their columns need
next to no decoding), and the stretches between them, read in ``chunk_size`` blocks and
decoded in place.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import anyio
import anyio.to_thread

from .._record_index import Frame, index_path_for, read_entry
from ._decode import CHUNK_SIZE, Issues, open_regular_file
from ._errors import UnreadableFileError
from ._indexed import LoadedIndex, open_index, pieces
from ._scan import Accumulator, BlockFeeder, RecordScan

__all__ = ["ScanAbandoned", "scan_file", "scan_indexed"]


class ScanAbandoned(Exception):
    """A scan given up because its caller was cancelled."""


def scan_file(
    path: str,
    wanted: frozenset[str] | None,
    keep_values: bool,
    chunk_size: int,
    *,
    times: bool = False,
    frames: Sequence[Frame] = (),
    stop_event: threading.Event | None = None,
) -> tuple[RecordScan, Issues]:
    """Scan the whole file (blocking), taking the parts that ``frames`` (verified index
    frames) describe from them and the rest from the JSON; a missing file is an empty scan.
    ``stop_event`` set: give up (ScanAbandoned) at the next frame or block. The scan is not
    yet arranged by run (``RecordScan.arrange``)."""
    issues = Issues()
    acc = Accumulator(wanted, keep_values, times)
    try:
        handle = open_regular_file(path)  # closed below, after the index
    except FileNotFoundError:
        return acc.finish(), issues
    with handle, _index_file(path, bool(frames)) as index:
        for piece_start, piece_end, frame in pieces(frames, 0, None):
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


async def scan_indexed(
    path: Path,
    issues: Issues,
    index: LoadedIndex | None,
    *,
    wanted: frozenset[str] | None,
    keep_values: bool,
    times: bool = False,
    chunk_size: int = CHUNK_SIZE,
) -> RecordScan:
    """``scan_file`` over ``path`` in a worker thread, with the frames of ``index`` (None:
    every line from the JSON), arranged by run. Cancelled, it returns at once and the thread
    stops at its next frame or block."""
    stop_event = threading.Event()
    try:
        scan, found = await anyio.to_thread.run_sync(
            _scan_whole,
            str(path),
            wanted,
            keep_values,
            times,
            chunk_size,
            [] if index is None else index.frames,
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
    times: bool,
    chunk_size: int,
    frames: list[Frame],
    stop_event: threading.Event,
) -> tuple[RecordScan, Issues]:
    try:
        scan, found = scan_file(
            path,
            wanted,
            keep_values,
            chunk_size,
            times=times,
            frames=frames,
            stop_event=stop_event,
        )
    except OSError as exc:
        raise UnreadableFileError(path, exc.strerror or str(exc)) from exc
    return scan.arrange(), found
