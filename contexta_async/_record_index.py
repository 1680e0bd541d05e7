"""The record index: a compact sidecar of ``record.jsonl`` that readers can trust or ignore.

Comparing runs needs four things per record line (type, subject ref, metric key, value), but
parsing ~1 KB of JSON per line to get them costs ~1 us. So the local sink, after each chunk of
RECORD lines is written and fsynced, appends one *frame* to ``record.index`` describing that
chunk: the byte range it occupies in ``record.jsonl``, the length and CRC-32 of its first and
last line, and the four columns, dictionary-encoded (a table of distinct strings plus one
little-endian uint32 code per line) with the values as float64 (NaN where a line has none).

``record.jsonl`` stays the only source of truth. The index is derived data: it is not fsynced,
and a reader uses an entry only when its frame is whole (magic, length, CRC-32) and the lines
at both ends of its range are, byte for byte, the ones it describes; any other part of the file
is read from the JSON. A chunk the index cannot describe exactly (a value JSON would not hold
as that float) gets no frame, so it is simply read from the JSON.

A frame is ``b"CXI1"``, the body length and the body's CRC-32 (both uint32 little-endian), then
the body: an ``IndexEntry`` encoded as MessagePack.
"""

from __future__ import annotations

import io
import math
import os
import struct
import sys
import zlib
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Final, NamedTuple, cast

import msgspec

from ._records import EventPayload, Item, MetricPayload, RecordPayload

__all__ = [
    "INDEX_MAGIC",
    "MIN_INDEXED_LINES",
    "Frame",
    "IndexColumns",
    "IndexEntry",
    "IndexHead",
    "columns_from_items",
    "columns_from_lines",
    "encode_frame",
    "expand_entry",
    "index_path_for",
    "line_crc",
    "parse_frames",
    "read_entry",
    "read_frames",
]

INDEX_MAGIC: Final = b"CXI1"
_HEADER: Final = struct.Struct("<4sII")
_NONE: Final = float("nan")
_BIG_ENDIAN: Final = sys.byteorder == "big"


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
    """The per-line columns of one chunk, as readers use them."""

    types: list[str]
    subjects: list[str | None]
    keys: list[str | None]
    values: list[float | None]


_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(IndexEntry)
_HEAD_DECODER: Final = msgspec.msgpack.Decoder(IndexHead)
# A frame describes one chunk (a writer's batch): far below this. A larger length is garbage.
_MAX_FRAME: Final = 1 << 30
# Chunks of fewer lines get no frame: parsing a few lines costs little, and a frame per
# record (a slow producer, one line per batch) would cost the writer a write per record.
MIN_INDEXED_LINES: Final = 32


def line_crc(line: bytes | memoryview) -> int:
    return zlib.crc32(line)


def _u32(values: Sequence[int]) -> bytes:
    codes = array("I", values)
    if codes.itemsize != 4:  # pragma: no cover - 4 on every platform CPython supports today
        codes = array("L", values)
    if _BIG_ENDIAN:  # pragma: no cover - the tests run on little-endian machines
        codes.byteswap()
    return codes.tobytes()


def _from_u32(data: bytes) -> Sequence[int]:
    if _BIG_ENDIAN:  # pragma: no cover
        codes = array("I", data)
        codes.byteswap()
        return codes
    return memoryview(data).cast("I")


def _encoded(column: Sequence[str | None]) -> tuple[list[str | None], bytes]:
    table = list(dict.fromkeys(column))
    position = {value: i for i, value in enumerate(table)}
    return table, _u32(list(map(position.__getitem__, column)))


class _Pending(NamedTuple):
    """A chunk's columns, encoded, waiting for the chunk's place in the file."""

    types: list[str]
    subjects: list[str | None]
    keys: list[str | None]
    type_codes: bytes
    subject_codes: bytes
    key_codes: bytes
    values: bytes
    lines: int


def columns_from_items(items: Sequence[Item]) -> _Pending | None:
    """The columns of a chunk of RECORD items, or None when the index cannot describe them
    exactly (a payload it does not know, or a value JSON would not read back as this float)."""
    subjects: list[str | None] = []
    keys: list[str | None] = []
    values: list[float] = []
    for item in items:
        record = item.payload
        if type(record) is not RecordPayload:
            return None
        body = record.payload
        if type(body) is MetricPayload:
            value = body.value
            if type(value) is float:
                if not math.isfinite(value):
                    return None  # JSON holds it as null
            elif type(value) is int and -(1 << 63) <= value < (1 << 64):
                value = float(value)
            else:
                return None  # bools, huge ints: not read back as this float
            keys.append(body.metric_key)
            values.append(value)
        elif type(body) is EventPayload:
            keys.append(None)
            values.append(_NONE)
        else:
            return None
        subjects.append(body.subject_ref)
    return _pending([item.payload_type for item in items], subjects, keys, values)


def _pending(
    types: list[str], subjects: list[str | None], keys: list[str | None], values: list[float]
) -> _Pending:
    type_table, type_codes = _encoded(cast(list[str | None], types))
    subject_table, subject_codes = _encoded(subjects)
    key_table, key_codes = _encoded(keys)
    packed = array("d", values)
    if _BIG_ENDIAN:  # pragma: no cover
        packed.byteswap()
    return _Pending(
        cast(list[str], type_table),
        subject_table,
        key_table,
        type_codes,
        subject_codes,
        key_codes,
        packed.tobytes(),
        len(types),
    )


def columns_from_lines(
    types: list[str], subjects: list[str | None], keys: list[str | None], values: list[float | None]
) -> _Pending | None:
    """The same from columns read back from JSON (for tests): None when a metric has no value
    (the index holds NaN only where the key is None)."""
    if any(v is None for k, v in zip(keys, values, strict=True) if k is not None):
        return None
    return _pending(types, subjects, keys, [_NONE if v is None else v for v in values])


def encode_frame(pending: _Pending, data: bytes, end: int) -> bytes:
    """The frame for ``data`` (whole lines), now that its last byte is at ``end - 1``."""
    first = data.index(b"\n") + 1
    last = data.rfind(b"\n", 0, len(data) - 1) + 1
    entry = IndexEntry(
        start=end - len(data),
        end=end,
        lines=pending.lines,
        head_length=first,
        head_crc=line_crc(data[:first]),
        tail_length=len(data) - last,
        tail_crc=line_crc(data[last:]),
        types=pending.types,
        subjects=pending.subjects,
        keys=pending.keys,
        type_codes=pending.type_codes,
        subject_codes=pending.subject_codes,
        key_codes=pending.key_codes,
        values=pending.values,
    )
    body = _ENCODER.encode(entry)
    return _HEADER.pack(INDEX_MAGIC, len(body), zlib.crc32(body)) + body


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
    """Finds the whole frames of ``record.index`` in blocks: memory holds one block (or one
    frame, if larger) and a small record per frame, not the file."""

    def __init__(self, handle: BinaryIO, block_size: int) -> None:
        self.handle = handle
        self.block_size = block_size
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
            block = self.handle.read(max(self.block_size, need - (len(self.buffer) - self.at)))
            if not block:
                self.eof = True
            self.buffer += block
        return len(self.buffer) - self.at >= need

    def next_magic(self, after: int) -> int:
        """The buffer position of the next magic at or past buffer position ``after``
        (reading on as needed); -1 if there is none."""
        skip = after - self.at  # relative: reading on may drop what is behind ``at``
        while True:
            found = self.buffer.find(INDEX_MAGIC, self.at + skip)
            if found >= 0 or self.eof:
                return found
            skip = max(skip, len(self.buffer) - self.at - len(INDEX_MAGIC) + 1)
            self.available(len(self.buffer) - self.at + self.block_size)


def read_frames(handle: BinaryIO, block_size: int = 1 << 20) -> tuple[list[Frame], int]:
    """The whole frames of an index file, and how many damaged frames were skipped.

    A damaged frame (a crash while it was written, or garbage) is skipped by searching for the
    next magic. An incomplete frame with nothing after it is one still being written: ignored,
    not counted.
    """
    reader = _FrameReader(handle, block_size)
    frames: list[Frame] = []
    damaged = 0
    while reader.available(_HEADER.size):
        magic, length, crc = _HEADER.unpack_from(reader.buffer, reader.at)
        if magic == INDEX_MAGIC and length <= _MAX_FRAME:
            if reader.available(_HEADER.size + length):
                body_at = reader.at + _HEADER.size
                with memoryview(reader.buffer) as view:
                    head = _head_of(view[body_at : body_at + length], crc)
                if head is not None:
                    if head.lines >= 1:
                        frames.append(Frame(reader.base + body_at, length, crc, head))
                    reader.at = body_at + length
                    continue
            elif reader.next_magic(reader.at + 1) < 0:
                return frames, damaged  # the last frame, still being written
        damaged += 1
        found = reader.next_magic(reader.at + 1)
        if found < 0:
            return frames, damaged
        reader.at = found
    rest = bytes(reader.buffer[reader.at :])
    if rest and not INDEX_MAGIC.startswith(rest[: len(INDEX_MAGIC)]):
        damaged += 1
    return frames, damaged


def _head_of(body: memoryview, crc: int) -> IndexHead | None:
    if zlib.crc32(body) != crc:
        return None
    try:
        head = _HEAD_DECODER.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return head if _well_formed(head) else None


def parse_frames(data: bytes) -> tuple[list[Frame], int]:
    """``read_frames`` of index bytes held in memory."""
    return read_frames(io.BytesIO(data))


def read_entry(fd: int, frame: Frame) -> IndexEntry | None:
    """The whole entry of a frame found by ``read_frames``, read again from ``fd`` (the index
    file); None when its bytes are no longer the ones found, or do not decode to it."""
    body = os.pread(fd, frame.length, frame.offset)
    if len(body) != frame.length or zlib.crc32(body) != frame.crc:
        return None
    try:
        entry = _DECODER.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
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
