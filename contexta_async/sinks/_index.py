"""The writing half of ``record.index`` and ``context.index`` (the layout is in
``contexta_async._format.index``): what a chunk of RECORD or CONTEXT items says, and pending
frames that describe consecutive chunks.
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from collections.abc import Sequence
from operator import attrgetter
from typing import Final, Generic, NamedTuple, TypeVar, cast

import msgspec

from .._format.index import HEADER, INDEX_MAGIC, ContextEntry, IndexEntry
from .._format.lines import (
    DECODED_CONTEXT_TYPES,
    EventPayload,
    Item,
    MetricPayload,
    RecordPayload,
    SampleObservation,
)

__all__ = [
    "ChunkColumns",
    "ContextColumns",
    "Pending",
    "PendingContextFrame",
    "PendingFrame",
    "columns_from_items",
    "context_columns",
]

_NONE: Final = float("nan")
_BIG_ENDIAN: Final = sys.byteorder == "big"
_ENCODER: Final = msgspec.msgpack.Encoder()
_TYPE: Final = attrgetter("payload_type")


class ChunkColumns(NamedTuple):
    """The per-line columns of a chunk as the writer has them (NaN: no value)."""

    types: list[str]
    subjects: list[str | None]
    keys: list[str | None]
    values: list[float]


def columns_from_items(items: Sequence[Item]) -> ChunkColumns | None:
    """The columns of a chunk of RECORD items, or None when the index cannot describe them
    exactly (a payload it does not know, or a value JSON would not read back as this float).

    Runs in the writer thread for every chunk: one pass, bound methods, no call per item that
    can be avoided (docs/performance.md has its cost next to encoding the JSON).
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


class _Column:
    """One column of a pending frame, dictionary-encoded as it grows: an int per line and
    each distinct value once. The codes stay a list until the frame is written: extending an
    ``array`` converts item by item on every chunk, converting a list once is cheaper
    (docs/performance.md, Readers)."""

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


C = TypeVar("C", "ChunkColumns", "ContextColumns")


class Pending(Generic[C]):
    """Consecutive chunks of one file (each starting where the previous one ended), described
    by one frame once it is written: a writer that appends a few lines at a time still writes
    frames of many lines."""

    def __init__(self, start: int) -> None:
        self.start = self.end = start
        self.lines = 0
        self.head = (0, 0)  # length and CRC-32 of the first line
        self.tail = (0, 0)

    def extend(self, columns: C, data: bytes, end: int) -> None:
        """Add the chunk ``data`` (whole lines) that ``columns`` describe, whose last byte is
        at ``end - 1``."""
        if end - len(data) != self.end:
            raise ValueError("a frame describes consecutive chunks only")
        if not self.lines:
            first = data.index(b"\n") + 1
            self.head = (first, zlib.crc32(data[:first]))
        last = data.rfind(b"\n", 0, len(data) - 1) + 1
        self.tail = (len(data) - last, zlib.crc32(data[last:]))
        self.lines += self._add(columns, end - len(data))
        self.end = end

    def _add(self, columns: C, base: int) -> int:
        """Keep the chunk's columns (its first line at byte ``base``); its number of lines."""
        raise NotImplementedError

    def encode(self) -> tuple[bytes, bytes]:
        """The frame as its header and its body (written with one ``os.writev``, no copy
        joining them)."""
        raise NotImplementedError

    def _head_fields(self) -> tuple[int, int, int, int, int, int, int]:
        """The IndexHead fields, in order (every entry starts with them)."""
        return (self.start, self.end, self.lines, *self.head, *self.tail)

    @staticmethod
    def _framed(entry: IndexEntry | ContextEntry) -> tuple[bytes, bytes]:
        body = _ENCODER.encode(entry)
        return HEADER.pack(INDEX_MAGIC, len(body), zlib.crc32(body)), body


class PendingFrame(Pending[ChunkColumns]):
    """A pending frame of ``record.index``. Holds ~40 bytes a line (three list slots and a
    float) and each distinct ref once."""

    def __init__(self, start: int) -> None:
        super().__init__(start)
        self.types = _Column()
        self.subjects = _Column()
        self.keys = _Column()
        self.values: list[float] = []

    def _add(self, columns: ChunkColumns, base: int) -> int:
        self.types.extend(columns.types)
        self.subjects.extend(columns.subjects)
        self.keys.extend(columns.keys)
        self.values.extend(columns.values)
        return len(columns.values)

    def encode(self) -> tuple[bytes, bytes]:
        type_table, type_codes = self.types.encoded()
        subject_table, subject_codes = self.subjects.encoded()
        key_table, key_codes = self.keys.encoded()
        return self._framed(
            IndexEntry(
                *self._head_fields(),
                types=cast(list[str], type_table),
                subjects=subject_table,
                keys=key_table,
                type_codes=type_codes,
                subject_codes=subject_codes,
                key_codes=key_codes,
                values=struct.pack(f"<{len(self.values)}d", *self.values),
            )
        )


class ContextColumns(NamedTuple):
    """What a chunk of CONTEXT items says that readers take (see ContextEntry): the openings,
    and where the Run and StageExecution lines are in the chunk (offset, length)."""

    lines: int
    opened: list[str]
    clusters: list[str | None]
    epochs: list[int | None]
    kept_starts: list[int]
    kept_lengths: list[int]


def context_columns(items: Sequence[Item], data: bytes) -> ContextColumns | None:
    """The columns of a chunk of CONTEXT items (``data`` their lines), or None when the index
    cannot describe them exactly: a sample line whose payload is not a SampleObservation
    (what it opens is then known only from its JSON), or not one line per item."""
    opened: list[str] = []
    clusters: list[str | None] = []
    epochs: list[int | None] = []
    kept: list[int] = []
    for index, item in enumerate(items):
        body = item.payload
        if type(body) is SampleObservation:
            # What a reader takes for an opening: a sample line of status "open"; its cluster
            # and epoch only while it has not ended (as read back from the JSON).
            ref = item.payload_ref
            if body.status == "open" and ref is not None and ref.startswith("sample:"):
                opened.append(ref)
                current = body.ended_at is None
                clusters.append(body.cluster if current else None)
                epochs.append(body.epoch if current else None)
        elif item.payload_type == "SampleObservation":
            return None
        elif item.payload_type in DECODED_CONTEXT_TYPES:
            kept.append(index)
    if data.count(b"\n") != len(items):
        return None
    starts: list[int] = []
    lengths: list[int] = []
    at, line = 0, 0
    for index in kept:
        while line < index:  # the start of line ``index``: newlines found in order
            at = data.index(b"\n", at) + 1
            line += 1
        starts.append(at)
        lengths.append(data.index(b"\n", at) + 1 - at)
    return ContextColumns(len(items), opened, clusters, epochs, starts, lengths)


class PendingContextFrame(Pending[ContextColumns]):
    """A pending frame of ``context.index``: the sample openings of its chunks (ref, cluster,
    epoch) and where their Run and StageExecution lines are."""

    def __init__(self, start: int) -> None:
        super().__init__(start)
        self.opened: list[str] = []
        self.clusters: list[str | None] = []
        self.epochs: list[int | None] = []
        self.kept_starts: list[int] = []
        self.kept_lengths: list[int] = []

    def _add(self, columns: ContextColumns, base: int) -> int:
        self.opened.extend(columns.opened)
        self.clusters.extend(columns.clusters)
        self.epochs.extend(columns.epochs)
        self.kept_starts.extend(base + at for at in columns.kept_starts)
        self.kept_lengths.extend(columns.kept_lengths)
        return columns.lines

    def encode(self) -> tuple[bytes, bytes]:
        return self._framed(
            ContextEntry(
                *self._head_fields(),
                opened=self.opened,
                clusters=self.clusters,
                epochs=self.epochs,
                kept_starts=self.kept_starts,
                kept_lengths=self.kept_lengths,
            )
        )
