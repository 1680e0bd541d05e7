"""Using ``record.index``: which of its frames still describe ``record.jsonl``.

A frame is trusted only when it is whole and the lines at both ends of its byte range are,
byte for byte, the lines it was written for (length, newline before and after, CRC-32): two
small reads per frame, a few hundred per million records. Everything else in the file (no
index, a damaged frame, lines the writer did not index, lines appended since, lines moved by
an edit) is read from the JSON. What this check cannot see is an edit inside a frame's range
that keeps every byte count (a digit changed by hand): docs/format.md says to delete the
index after editing ``record.jsonl``.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Iterator, Sequence
from operator import attrgetter
from pathlib import Path
from typing import BinaryIO, NamedTuple

import structlog

from .._record_index import Frame, index_path_for, open_regular, read_frames

__all__ = ["LoadedIndex", "load_index", "open_index", "pieces"]

_log = structlog.get_logger("contexta_async")
_START = attrgetter("start")


class LoadedIndex(NamedTuple):
    frames: list[Frame]  # verified, in file order, not overlapping
    rejected: int  # damaged frames and frames that no longer match the file
    size: int  # the size of record.jsonl when the frames were checked


def load_index(record_path: str) -> LoadedIndex:
    """The frames of ``record.index`` that match ``record.jsonl`` as it is now (blocking).

    Any trouble with the index (missing, not a regular file, unreadable) means no index: the
    lines are parsed instead, and what went wrong is logged.
    """
    index_path = index_path_for(record_path)
    try:
        with open_index(index_path) as handle:
            if handle is None:
                return LoadedIndex([], 0, 0)
            size = os.fstat(handle.fileno()).st_size
            frames, rejected = read_frames(handle, limit=size)
        # Never wait on record.jsonl (a FIFO there): the JSON path says what is wrong with it.
        found = open_regular(record_path, os.O_RDONLY)
        if found is None:
            return LoadedIndex([], 0, 0)
        fd = found
    except OSError as exc:
        if not isinstance(exc, FileNotFoundError):
            _log.warning(
                "contexta_async.index_unreadable",
                target=str(index_path),
                error=exc.strerror or str(exc),
            )
        return LoadedIndex([], 0, 0)  # for record.jsonl, the JSON path reports why
    try:
        size = os.fstat(fd).st_size
        # Frames past the size seen now describe lines written since: not read this time.
        frames = sorted((f for f in frames if f.end <= size), key=_START)
        verified: list[Frame] = []
        covered = 0
        for frame in frames:
            if frame.start >= covered and _matches(fd, frame):
                verified.append(frame)
                covered = frame.end
            else:
                rejected += 1
    except OSError as exc:
        _log.warning("contexta_async.index_unreadable", target=str(record_path), error=str(exc))
        return LoadedIndex([], 0, 0)
    finally:
        os.close(fd)
    if rejected:
        _log.info(
            "contexta_async.index_frames_rejected",
            target=str(index_path),
            rejected=rejected,
        )
    return LoadedIndex(verified, rejected, size)


def open_index(index_path: Path) -> contextlib.AbstractContextManager[BinaryIO | None]:
    """``record.index`` open for reading, or None when it is not a regular file (never
    followed through a symlink, never waited on like a FIFO). Raises OSError."""
    fd = open_regular(index_path, os.O_RDONLY | os.O_NOFOLLOW)
    if fd is None:
        _log.warning("contexta_async.index_unreadable", target=str(index_path), error="not a file")
        return contextlib.nullcontext()
    return os.fdopen(fd, "rb")


def _is_line(fd: int, start: int, length: int, crc: int) -> bool:
    """The bytes at ``start`` are one whole line of ``length`` bytes with this CRC-32."""
    # With the byte before it, which must end the line before (or be the file's start).
    data = os.pread(fd, length + 1, start - 1) if start else b"\n" + os.pread(fd, length, 0)
    return (
        len(data) == length + 1
        and data[0] == 0x0A
        and data.find(b"\n", 1) == length
        and zlib.crc32(memoryview(data)[1:]) == crc
    )


def _matches(fd: int, frame: Frame) -> bool:
    head = frame.head
    return _is_line(fd, head.start, head.head_length, head.head_crc) and _is_line(
        fd, head.end - head.tail_length, head.tail_length, head.tail_crc
    )


def pieces(
    frames: Sequence[Frame], begin: int, stop: int | None
) -> Iterator[tuple[int, int | None, Frame | None]]:
    """``[begin, stop)`` cut into the frames inside it and the gaps between them, in file
    order: (start, end, frame or None for a gap). ``stop`` None: to the end of the file."""
    position = begin
    for frame in frames:
        if frame.start < begin or (stop is not None and frame.end > stop):
            continue
        if frame.start > position:
            yield position, frame.start, None
        yield frame.start, frame.end, frame
        position = frame.end
    if stop is None or position < stop:
        yield position, stop, None
