"""The layout of the sidecar indexes: compact descriptions of ``record.jsonl`` and
``context.jsonl`` that readers can trust or ignore.

Comparing runs needs four things per record line (type, subject ref, metric key, value), but
parsing ~1 KB of JSON per line to get them costs most of a comparison (docs/performance.md,
Readers). So the local sink describes the RECORD lines it has written (and fsynced) in
*frames* appended to ``record.index``, one per run of consecutive chunks of up to a few
thousand lines: the byte range the lines occupy in
``record.jsonl``, the length and CRC-32 of the first and last line, and the four columns,
dictionary-encoded (a table of distinct strings plus one little-endian uint32 code per line)
with the values as float64 (NaN where a line has none).

``record.jsonl`` stays the only source of truth. The index is derived data: it is not fsynced,
and a reader uses an entry only when its frame is whole (magic, length, CRC-32) and the lines
at both ends of its range are, byte for byte, the ones it describes; any other part of the file
is read from the JSON. A chunk the index cannot describe exactly (a value JSON would not hold
as that float) gets no frame, so it is simply read from the JSON.

``context.index`` describes ``context.jsonl`` the same way, frame by frame, with what readers
take from its lines (``ContextEntry``): the ref, cluster and epoch of every sample line that
opens a sample, and where the Run and StageExecution lines are. Reading 140 MB of sample lines
to find the clusters and epochs of a million records cost compare more than anything else.

A frame is ``b"CXI1"``, the body length and the body's CRC-32 (both uint32 little-endian), then
the body: an ``IndexEntry`` (``ContextEntry`` in ``context.index``) encoded as MessagePack.

This module holds what writer and readers share (magic, header, the entry Structs, limits);
the writing half is ``contexta_async.sinks._index``, the reading half
``contexta_async.readers._index``.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path
from typing import Final

import msgspec

__all__ = [
    "FRAME_LINES",
    "HEADER",
    "INDEX_MAGIC",
    "MAX_FRAME",
    "MIN_INDEXED_LINES",
    "ContextEntry",
    "Frame",
    "IndexEntry",
    "IndexHead",
    "index_path_for",
    "open_regular",
]

INDEX_MAGIC: Final = b"CXI1"
HEADER: Final = struct.Struct("<4sII")  # magic, body length, body CRC-32
# The writer ends a frame once it holds FRAME_LINES lines (so a frame holds fewer than
# FRAME_LINES + one batch), ~25 bytes a line. It writes no frame larger than MAX_FRAME and
# readers take a larger length for garbage, so reading an index never holds more at once.
FRAME_LINES: Final = 4096
MAX_FRAME: Final = 16 << 20
# Fewer lines get no frame (they are parsed, which costs little): it keeps the readers' small
# record per frame (~340 bytes) well below the lines it stands for.
MIN_INDEXED_LINES: Final = 32


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
    """``.../record.jsonl`` -> ``.../record.index`` (and ``context.jsonl`` -> ``context.index``)."""
    path = Path(record_file)
    return path.with_name(path.name.removesuffix(".jsonl") + ".index")


class IndexHead(msgspec.Struct, array_like=True, gc=False):
    """The first fields of every entry (IndexEntry, ContextEntry): where its chunk is and how
    to recognise it (decoded alone while the index is loaded; the rest when it is used)."""

    start: int  # byte offset of its first line
    end: int  # byte offset just past its last newline
    lines: int
    head_length: int  # the first line, newline included
    head_crc: int
    tail_length: int  # the last line, newline included
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


class IndexEntry(IndexHead, array_like=True, gc=False):
    """One chunk of ``record.jsonl``: where it is, how to recognise it, and its columns."""

    types: list[str]  # distinct payload types; type_codes index into it
    subjects: list[str | None]
    keys: list[str | None]  # None: an event (no metric key)
    type_codes: bytes
    subject_codes: bytes
    key_codes: bytes
    values: bytes  # float64 little-endian, NaN where the line has no value


class ContextEntry(IndexHead, array_like=True, gc=False):
    """One chunk of ``context.jsonl``: where it is, how to recognise it (as IndexEntry), and
    what readers take from it. ``opened`` lists the payload refs of the lines that open a
    sample (status "open"), in file order, with each one's cluster and epoch (None where the
    line has none); ``kept_starts`` and ``kept_lengths`` locate the Run and StageExecution
    lines, which readers decode. Sample lines that close a sample, and batch lines, are in the
    byte range only."""

    opened: list[str]
    clusters: list[str | None]
    epochs: list[int | None]
    kept_starts: list[int]  # byte offsets in context.jsonl
    kept_lengths: list[int]  # newline included
