"""The record index: a compact sidecar of ``record.jsonl`` that readers can trust or ignore.

Comparing runs needs four things per record line (type, subject ref, metric key, value), but
parsing ~1 KB of JSON per line to get them costs ~1 us. So the local sink describes the RECORD
lines it has written (and fsynced) in *frames* appended to ``record.index``, one per run of
consecutive chunks of up to a few thousand lines: the byte range the lines occupy in
``record.jsonl``, the length and CRC-32 of the first and last line, and the four columns,
dictionary-encoded (a table of distinct strings plus one little-endian uint32 code per line)
with the values as float64 (NaN where a line has none).

``record.jsonl`` stays the only source of truth. The index is derived data: it is not fsynced,
and a reader uses an entry only when its frame is whole (magic, length, CRC-32) and the lines
at both ends of its range are, byte for byte, the ones it describes; any other part of the file
is read from the JSON. A chunk the index cannot describe exactly (a value JSON would not hold
as that float) gets no frame, so it is simply read from the JSON.

A frame is ``b"CXI1"``, the body length and the body's CRC-32 (both uint32 little-endian), then
the body: an ``IndexEntry`` encoded as MessagePack.
"""

from __future__ import annotations

import os
import stat
import struct
import sys
import zlib
from array import array
from collections.abc import Sequence
from operator import attrgetter
from pathlib import Path
from typing import BinaryIO, Final, NamedTuple, cast

import msgspec

from ._records import EventPayload, Item, MetricPayload, RecordPayload

__all__ = [
    "FRAME_LINES",
    "INDEX_MAGIC",
    "MAX_FRAME",
    "MIN_INDEXED_LINES",
    "ChunkColumns",
    "Frame",
    "IndexColumns",
    "IndexEntry",
    "IndexHead",
    "PendingFrame",
    "columns_from_items",
    "columns_from_lines",
    "encode_frame",
    "expand_entry",
    "index_path_for",
    "open_regular",
    "read_entry",
    "read_frames",
]

INDEX_MAGIC: Final = b"CXI1"
_HEADER: Final = struct.Struct("<4sII")
_NONE: Final = float("nan")
_BIG_ENDIAN: Final = sys.byteorder == "big"


def open_regular(path: str | Path, flags: int, mode: int = 0o644) -> int | None:
    """A descriptor of ``path`` opened with ``flags`` (plus ``O_CLOEXEC`` and ``O_NONBLOCK``:
    a FIFO is never waited on), or None when it is not a regular file. Raises OSError."""
    fd = os.open(path, flags | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        os.close(fd)
        raise
    if not regular:
        os.close(fd)
        return None
    return fd


def index_path_for(record_file: str | Path) -> Path:
    """``.../record.jsonl`` -> ``.../record.index``."""
    path = Path(record_file)
    return path.with_name(path.name.removesuffix(".jsonl") + ".index")


class IndexHead(msgspec.Struct, array_like=True, gc=False):
    """The first fields of an IndexEntry: where its chunk is and how to recognise it
    (decoded alone while the index is loaded; the columns are decoded when they are used)."""

    start: int
    end: int
    lines: int
    head_length: int
    head_crc: int
    tail_length: int
    tail_crc: int


class Frame(msgspec.Struct, frozen=True, gc=False):
    """Where a whole frame's body is in ``record.index``, and what its head says."""

    offset: int  # of the body
    length: int
    crc: int
    head: IndexHead

    @property
    def start(self) -> int:
        return self.head.start

    @property
    def end(self) -> int:
        return self.head.end

    @property
    def lines(self) -> int:
        return self.head.lines


class IndexEntry(msgspec.Struct, array_like=True, gc=False):
    """One chunk of ``record.jsonl``: where it is, how to recognise it, and its columns."""

    start: int  # byte offset of its first line
    end: int  # byte offset just past its last newline
    lines: int
    head_length: int  # the first line, newline included
    head_crc: int
    tail_length: int  # the last line, newline included
    tail_crc: int
    types: list[str]  # distinct payload types; type_codes index into it
    subjects: list[str | None]
    keys: list[str | None]  # None: an event (no metric key)
    type_codes: bytes
    subject_codes: bytes
    key_codes: bytes
    values: bytes  # float64 little-endian, NaN where the line has no value


class IndexColumns(NamedTuple):
    """The per-line columns of one frame, as readers use them."""

    types: list[str]
    subjects: list[str | None]
    keys: list[str | None]
    # NaN where a line has no value (an event, whose key is None, so it is never used); typed
    # as the parsed values it stands in for.
    values: list[float | None]


_ENCODER: Final = msgspec.msgpack.Encoder()
_TYPE: Final = attrgetter("payload_type")
_DECODER: Final = msgspec.msgpack.Decoder(IndexEntry)
_HEAD_DECODER: Final = msgspec.msgpack.Decoder(IndexHead)
# The writer ends a frame once it holds FRAME_LINES lines (so a frame holds fewer than
# FRAME_LINES + one batch), ~25 bytes a line. It writes no frame larger than MAX_FRAME and
# readers take a larger length for garbage, so reading an index never holds more at once.
FRAME_LINES: Final = 4096
MAX_FRAME: Final = 16 << 20
# Fewer lines get no frame (they are parsed, which costs little): it keeps the readers' small
# record per frame (~340 bytes) well below the lines it stands for.
MIN_INDEXED_LINES: Final = 32
_WASTE_FLOOR: Final = 64 << 20


def _from_u32(data: bytes) -> Sequence[int]:
    if _BIG_ENDIAN:  # pragma: no cover
        codes = array("I", data)
        codes.byteswap()
        return codes
    return memoryview(data).cast("I")


class ChunkColumns(NamedTuple):
    """The per-line columns of a chunk as the writer has them (NaN: no value)."""

    types: list[str]
    subjects: list[str | None]
    keys: list[str | None]
    values: list[float]


def columns_from_items(items: Sequence[Item]) -> ChunkColumns | None:
    """The columns of a chunk of RECORD items, or None when the index cannot describe them
    exactly (a payload it does not know, or a value JSON would not read back as this float).

    Runs in the writer thread for every chunk (~0.2 us a record, next to ~1 us to encode its
    JSON): one pass, bound methods, no call per item that can be avoided.
    """
    subjects: list[str | None] = []
    keys: list[str | None] = []
    values: list[float] = []
    add_subject, add_key, add_value = subjects.append, keys.append, values.append
    for item in items:
        record = item.payload
        if type(record) is not RecordPayload:
            return None
        body = record.payload
        if type(body) is MetricPayload:
            value = body.value
            if type(value) is float:
                if value - value != 0.0:
                    return None  # NaN or infinity: JSON holds it as null
            elif type(value) is int and -(1 << 63) <= value < (1 << 64):
                value = float(value)
            else:
                return None  # bools, huge ints: not read back as this float
            add_key(body.metric_key)
            add_value(value)
        elif type(body) is EventPayload:
            add_key(None)
            add_value(_NONE)
        else:
            return None
        add_subject(body.subject_ref)
    return ChunkColumns(list(map(_TYPE, items)), subjects, keys, values)


def columns_from_lines(
    types: list[str], subjects: list[str | None], keys: list[str | None], values: list[float | None]
) -> ChunkColumns | None:
    """The same from columns read back from JSON (for tests): None when a metric has no value
    (the index holds NaN only where the key is None)."""
    if any(v is None for k, v in zip(keys, values, strict=True) if k is not None):
        return None
    return ChunkColumns(types, subjects, keys, [_NONE if v is None else v for v in values])


class _Column:
    """One column of a pending frame, dictionary-encoded as it grows: an int per line and
    each distinct value once. The codes stay a list until the frame is written: extending an
    ``array`` converts item by item on every chunk, converting a list once is ~3x cheaper."""

    __slots__ = ("codes", "table")

    def __init__(self) -> None:
        self.table: dict[str | None, int] = {}
        self.codes: list[int] = []

    def extend(self, column: list[str] | list[str | None]) -> None:
        table = self.table
        for value in dict.fromkeys(column):  # a Python step per distinct value only
            if value not in table:
                table[value] = len(table)
        self.codes.extend(map(table.__getitem__, column))

    def encoded(self) -> tuple[list[str | None], bytes]:
        codes = array("I", self.codes)
        if codes.itemsize != 4:  # pragma: no cover - 4 on every platform CPython supports
            raise ValueError("no 4-byte unsigned array type")
        if _BIG_ENDIAN:  # pragma: no cover - the tests run on little-endian machines
            codes.byteswap()
        return list(self.table), codes.tobytes()


class PendingFrame:
    """Consecutive chunks of ``record.jsonl`` (each starting where the previous one ended),
    described by one frame once it is written: a writer that appends a few lines at a time
    still writes frames of many lines. Holds ~40 bytes a line (three list slots and a float)
    and each distinct ref once."""

    def __init__(self, start: int) -> None:
        self.start = self.end = start
        self.head = (0, 0)  # length and CRC-32 of the first line
        self.tail = (0, 0)
        self.types = _Column()
        self.subjects = _Column()
        self.keys = _Column()
        self.values: list[float] = []

    @property
    def lines(self) -> int:
        return len(self.values)

    def extend(self, columns: ChunkColumns, data: bytes, end: int) -> None:
        """Add the chunk ``data`` (whole lines), whose last byte is at ``end - 1``."""
        if end - len(data) != self.end:
            raise ValueError("a frame describes consecutive chunks only")
        if not self.values:
            first = data.index(b"\n") + 1
            self.head = (first, zlib.crc32(data[:first]))
        last = data.rfind(b"\n", 0, len(data) - 1) + 1
        self.tail = (len(data) - last, zlib.crc32(data[last:]))
        self.types.extend(columns.types)
        self.subjects.extend(columns.subjects)
        self.keys.extend(columns.keys)
        self.values.extend(columns.values)
        self.end = end

    def encode(self) -> tuple[bytes, bytes]:
        """The frame as its header and its body (written with one ``os.writev``, no copy
        joining them)."""
        type_table, type_codes = self.types.encoded()
        subject_table, subject_codes = self.subjects.encoded()
        key_table, key_codes = self.keys.encoded()
        entry = IndexEntry(
            start=self.start,
            end=self.end,
            lines=self.lines,
            head_length=self.head[0],
            head_crc=self.head[1],
            tail_length=self.tail[0],
            tail_crc=self.tail[1],
            types=cast(list[str], type_table),
            subjects=subject_table,
            keys=key_table,
            type_codes=type_codes,
            subject_codes=subject_codes,
            key_codes=key_codes,
            values=struct.pack(f"<{len(self.values)}d", *self.values),
        )
        body = _ENCODER.encode(entry)
        return _HEADER.pack(INDEX_MAGIC, len(body), zlib.crc32(body)), body


def encode_frame(columns: ChunkColumns, data: bytes, end: int) -> bytes:
    """The frame for one chunk ``data`` (whole lines), whose last byte is at ``end - 1``."""
    pending = PendingFrame(end - len(data))
    pending.extend(columns, data, end)
    return b"".join(pending.encode())


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
    """Finds the whole frames of ``record.index`` in blocks: memory holds one block, or one
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
    handle: BinaryIO, block_size: int = 1 << 20, limit: int | None = None
) -> tuple[list[Frame], int]:
    """The whole frames of an index file (its first ``limit`` bytes), and how many damaged
    frames were skipped.

    A damaged frame (a crash while it was written, or garbage) is skipped by searching for the
    next magic (each false start in a damaged stretch counts). An incomplete frame with nothing
    after it is one still being written: ignored, not counted.
    """
    if block_size < 1:
        raise ValueError("block_size must be at least 1")
    reader = _FrameReader(handle, block_size, limit)
    frames: list[Frame] = []
    damaged = 0
    # Bytes checked for frames that were not: each false start is CRC'd over its claimed
    # length and the search resumes one byte on, so a crafted index could cost quadratic
    # time. Past this budget the rest of the index is left unread (its lines are parsed).
    wasted_budget = _WASTE_FLOOR + 2 * (limit or 0)
    while reader.available(_HEADER.size):
        magic, length, crc = _HEADER.unpack_from(reader.buffer, reader.at)
        if magic == INDEX_MAGIC and length <= MAX_FRAME:
            if reader.available(_HEADER.size + length):
                body_at = reader.at + _HEADER.size
                with memoryview(reader.buffer) as view:
                    head = _head_of(view[body_at : body_at + length], crc)
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


def _head_of(body: memoryview, crc: int) -> IndexHead | None:
    # Every body is a 14-field array (0x9e): a cheap test before the CRC of a false start.
    if not body or body[0] != 0x9E or zlib.crc32(body) != crc:
        return None
    try:
        head = _HEAD_DECODER.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None  # RecursionError: a crafted body nesting arrays deep
    return head if _well_formed(head) else None


def read_entry(fd: int, frame: Frame) -> IndexEntry | None:
    """The whole entry of a frame found by ``read_frames``, read again from ``fd`` (the index
    file); None when its bytes are no longer the ones found, or do not decode to it."""
    try:
        body = os.pread(fd, frame.length, frame.offset)
    except OSError:
        return None  # its lines are parsed instead
    if len(body) != frame.length or zlib.crc32(body) != frame.crc:
        return None
    try:
        entry = _DECODER.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    if (entry.start, entry.end, entry.lines) != (frame.start, frame.end, frame.lines):
        return None
    return entry if _columns_fit(entry) else None


def expand_entry(entry: IndexEntry) -> IndexColumns | None:
    """The entry's columns, one item per line; None when a code points outside its table."""
    try:
        types = list(map(entry.types.__getitem__, _from_u32(entry.type_codes)))
        subjects = list(map(entry.subjects.__getitem__, _from_u32(entry.subject_codes)))
        keys = list(map(entry.keys.__getitem__, _from_u32(entry.key_codes)))
    except IndexError:
        return None
    packed = array("d", entry.values)
    if _BIG_ENDIAN:  # pragma: no cover
        packed.byteswap()
    values: list[float | None] = packed.tolist()  # type: ignore[assignment]
    return IndexColumns(types, subjects, keys, values)
