"""The reading half of ``record.index`` and ``context.index`` (the layout is in
``contexta_async._format.index``): their whole frames, which of them still describe
``record.jsonl`` (or ``context.jsonl``), and their entries.

A frame is trusted only when it is whole and the lines at both ends of its byte range are,
byte for byte, the lines it was written for (length, newline before and after, CRC-32): two
small reads per frame, a few hundred per million records. Everything else in the file (no
index, a damaged frame, lines the writer did not index, lines appended since, lines moved by
an edit) is read from the JSON. What this check cannot see is an edit inside a frame's range
that keeps every byte count (a digit changed by hand): docs/format.md says to delete the
index after editing its file by hand.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Iterator, Sequence
from operator import attrgetter
from pathlib import Path
from typing import BinaryIO, Final, NamedTuple, TypeVar

import msgspec
import numpy as np
import structlog

from .._format.index import (
    HEADER,
    INDEX_MAGIC,
    MAX_FRAME,
    ContextEntry,
    Frame,
    IndexEntry,
    IndexHead,
    index_path_for,
    open_regular,
)

__all__ = [
    "NO_INDEX",
    "IndexColumns",
    "LoadedIndex",
    "expand_entry",
    "index_beside",
    "load_index",
    "open_index",
    "pieces",
    "read_context_entry",
    "read_entry",
    "read_frames",
]

_log = structlog.get_logger("contexta_async")
_START = attrgetter("start")
_DECODER: Final = msgspec.msgpack.Decoder(IndexEntry)
_CONTEXT_DECODER: Final = msgspec.msgpack.Decoder(ContextEntry)
# The first byte of every body: a MessagePack array of the entry's fields (a cheap test before
# the CRC of a false start).
_MARKERS: Final = {kind: 0x90 | len(kind.__struct_fields__) for kind in (IndexEntry, ContextEntry)}
_HEAD_DECODER: Final = msgspec.msgpack.Decoder(IndexHead)
_WASTE_FLOOR: Final = 64 << 20
T = TypeVar("T")
E = TypeVar("E", IndexEntry, ContextEntry)


class IndexColumns(NamedTuple):
    """The per-line columns of one frame, as readers use them."""

    types: list[str]
    subjects: list[str | None]
    keys: list[str | None]
    # NaN where a line has no value (an event, whose key is None, so it is never used); typed
    # as the parsed values it stands in for.
    values: list[float | None]


def _take(table: Sequence[T], codes: bytes) -> list[T]:
    """``table[code]`` for each little-endian u32 code, as one numpy gather over an object
    array (the table's own objects; faster than a Python-level map, docs/performance.md);
    IndexError when a code is out of the table."""
    objects = np.empty(len(table), dtype=object)
    objects[:] = table
    found: list[T] = objects[np.frombuffer(codes, dtype="<u4")].tolist()
    return found


def _well_formed(head: IndexHead) -> bool:
    return (
        head.lines >= 1
        and 0 <= head.start < head.end
        and 1 <= head.head_length <= head.end - head.start
        and 1 <= head.tail_length <= head.end - head.start
    )


def _columns_fit(entry: IndexEntry) -> bool:
    n = entry.lines
    return (
        len(entry.type_codes) == len(entry.subject_codes) == len(entry.key_codes) == 4 * n
        and len(entry.values) == 8 * n
    )


class _FrameReader:
    """Finds the whole frames of an index file in blocks: memory holds one block, or one
    frame (at most MAX_FRAME) if larger, and a small record per frame, not the file."""

    def __init__(self, handle: BinaryIO, block_size: int, limit: int | None) -> None:
        self.handle = handle
        self.block_size = block_size
        self.remaining = limit  # bytes still to read (None: to the end of the file)
        self.buffer = bytearray()
        self.base = 0  # file offset of buffer[0]
        self.at = 0  # position in buffer
        self.eof = False

    def available(self, need: int) -> bool:
        """At least ``need`` bytes from ``at`` on are in the buffer (reading more if not)."""
        while len(self.buffer) - self.at < need and not self.eof:
            if self.at >= self.block_size:  # drop what is behind
                del self.buffer[: self.at]
                self.base += self.at
                self.at = 0
            size = max(self.block_size, need - (len(self.buffer) - self.at))
            if self.remaining is not None:
                size = min(size, self.remaining)
            block = self.handle.read(size) if size else b""
            if not block:
                self.eof = True
            elif self.remaining is not None:
                self.remaining -= len(block)
            self.buffer += block
        return len(self.buffer) - self.at >= need

    def next_magic(self, after: int) -> int:
        """The buffer position of the next magic at or past buffer position ``after``
        (reading on as needed); -1 if there is none. What it has searched through is
        dropped as it reads on, so a long stretch of garbage is never held whole."""
        self.at = min(after, len(self.buffer))
        while True:
            found = self.buffer.find(INDEX_MAGIC, self.at)
            if found >= 0 or self.eof:
                return found
            # Keep only the bytes that could begin a magic cut by the end of the buffer.
            self.at = max(self.at, len(self.buffer) - len(INDEX_MAGIC) + 1)
            self.available(len(self.buffer) - self.at + self.block_size)


def read_frames(
    handle: BinaryIO,
    block_size: int = 1 << 20,
    limit: int | None = None,
    kind: type[IndexEntry] | type[ContextEntry] = IndexEntry,
) -> tuple[list[Frame], int]:
    """The whole frames of an index file (its first ``limit`` bytes) whose entries are of
    ``kind``, and how many damaged frames were skipped.

    A damaged frame (a crash while it was written, or garbage) is skipped by searching for the
    next magic (each false start in a damaged stretch counts). An incomplete frame with nothing
    after it is one still being written: ignored, not counted.
    """
    if block_size < 1:
        raise ValueError("block_size must be at least 1")
    reader = _FrameReader(handle, block_size, limit)
    marker = _MARKERS[kind]
    frames: list[Frame] = []
    damaged = 0
    # Bytes checked for frames that were not: each false start is CRC'd over its claimed
    # length and the search resumes one byte on, so a crafted index could cost quadratic
    # time. Past this budget the rest of the index is left unread (its lines are parsed).
    wasted_budget = _WASTE_FLOOR + 2 * (limit or 0)
    while reader.available(HEADER.size):
        magic, length, crc = HEADER.unpack_from(reader.buffer, reader.at)
        if magic == INDEX_MAGIC and length <= MAX_FRAME:
            if reader.available(HEADER.size + length):
                body_at = reader.at + HEADER.size
                with memoryview(reader.buffer) as view:
                    head = _head_of(view[body_at : body_at + length], crc, marker)
                if head is not None:
                    frames.append(Frame(reader.base + body_at, length, crc, head))
                    reader.at = body_at + length
                    continue
                wasted_budget -= length
                if wasted_budget < 0:
                    return frames, damaged + 1
                found = reader.next_magic(reader.at + 1)
            else:
                found = reader.next_magic(reader.at + 1)
                if found < 0:
                    return frames, damaged  # the last frame, still being written
        else:
            found = reader.next_magic(reader.at + 1)
        damaged += 1
        if found < 0:
            return frames, damaged
        reader.at = found
    rest = bytes(reader.buffer[reader.at :])
    if rest and not INDEX_MAGIC.startswith(rest[: len(INDEX_MAGIC)]):
        damaged += 1
    return frames, damaged


def _head_of(body: memoryview, crc: int, marker: int) -> IndexHead | None:
    if not body or body[0] != marker or zlib.crc32(body) != crc:
        return None
    try:
        head = _HEAD_DECODER.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None  # RecursionError: a crafted body nesting arrays deep
    return head if _well_formed(head) else None


def read_entry(fd: int, frame: Frame) -> IndexEntry | None:
    """The whole entry of a frame found by ``read_frames``, read again from ``fd`` (the index
    file); None when its bytes are no longer the ones found, or do not decode to it."""
    entry = _read_body(fd, frame, _DECODER)
    return entry if entry is not None and _columns_fit(entry) else None


def read_context_entry(fd: int, frame: Frame) -> ContextEntry | None:
    """``read_entry`` for a frame of ``context.index``."""
    entry = _read_body(fd, frame, _CONTEXT_DECODER)
    return entry if entry is not None and _context_fits(entry) else None


def _read_body(fd: int, frame: Frame, decoder: msgspec.msgpack.Decoder[E]) -> E | None:
    try:
        body = os.pread(fd, frame.length, frame.offset)
    except OSError:
        return None  # its lines are parsed instead
    if len(body) != frame.length or zlib.crc32(body) != frame.crc:
        return None
    try:
        entry = decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    if (entry.start, entry.end, entry.lines) != (frame.start, frame.end, frame.lines):
        return None
    return entry


def _context_fits(entry: ContextEntry) -> bool:
    return (
        len(entry.opened) == len(entry.clusters) == len(entry.epochs) <= entry.lines
        and len(entry.kept_starts) == len(entry.kept_lengths) <= entry.lines
        and all(
            entry.start <= at and length >= 1 and at + length <= entry.end
            for at, length in zip(entry.kept_starts, entry.kept_lengths, strict=True)
        )
    )


def expand_entry(entry: IndexEntry) -> IndexColumns | None:
    """The entry's columns, one item per line; None when a code points outside its table."""
    try:
        types = _take(entry.types, entry.type_codes)
        subjects = _take(entry.subjects, entry.subject_codes)
        keys = _take(entry.keys, entry.key_codes)
    except IndexError:
        return None
    values: list[float | None] = np.frombuffer(entry.values, dtype="<f8").tolist()
    return IndexColumns(types, subjects, keys, values)


class LoadedIndex(NamedTuple):
    frames: list[Frame]  # verified, in file order, not overlapping
    rejected: int  # damaged frames and frames that no longer match the file


NO_INDEX: Final = LoadedIndex([], 0)


def load_index(
    record_path: str, kind: type[IndexEntry] | type[ContextEntry] = IndexEntry
) -> LoadedIndex:
    """The frames of ``record.index`` that match ``record.jsonl`` as it is now (blocking);
    with ``kind=ContextEntry``, those of ``context.index`` for ``context.jsonl``.

    Any trouble with the index (missing, not a regular file, unreadable) means no index: the
    lines are parsed instead, and what went wrong is logged.
    """
    index_path = index_path_for(record_path)
    try:
        with open_index(index_path) as handle:
            if handle is None:
                return NO_INDEX
            size = os.fstat(handle.fileno()).st_size
            frames, rejected = read_frames(handle, limit=size, kind=kind)
        # Never wait on record.jsonl (a FIFO there): the JSON path says what is wrong with it.
        found = open_regular(record_path, os.O_RDONLY)
        if found is None:
            return NO_INDEX
        fd = found
    except OSError as exc:
        if not isinstance(exc, FileNotFoundError):
            _log.warning(
                "contexta_async.index_unreadable",
                target=str(index_path),
                error=exc.strerror or str(exc),
            )
        return NO_INDEX  # for record.jsonl, the JSON path reports why
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
        return NO_INDEX
    finally:
        os.close(fd)
    if rejected:
        _log.info("contexta_async.index_frames_rejected", target=str(index_path), rejected=rejected)
    return LoadedIndex(verified, rejected)


def index_beside(
    path: str | Path, wanted: bool
) -> contextlib.AbstractContextManager[BinaryIO | None]:
    """The index of ``path`` (``record.index`` beside ``record.jsonl``, ``context.index``
    beside ``context.jsonl``) open for reading; None (its frames' lines are then parsed) when
    not wanted or no longer readable."""
    if wanted:
        with contextlib.suppress(OSError):
            return open_index(index_path_for(path))
    return contextlib.nullcontext()


def open_index(index_path: Path) -> contextlib.AbstractContextManager[BinaryIO | None]:
    """An index file (``record.index``, ``context.index``) open for reading, or None when it
    is not a regular file (never followed through a symlink, never waited on like a FIFO).
    Raises OSError."""
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
