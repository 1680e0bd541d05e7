"""Narrow msgspec Structs for the capture lines, and chunked, non-blocking reading.

A capture line holds ~40 fields; the readers need a handful. Decoding into Structs that name
only those fields lets msgspec skip the rest without building Python objects for them, which
is most of the cost of reading. Files are read in large blocks in anyio's worker threads (one
thread hop per block, never per line, on asyncio and trio alike); each block is cut
after its last newline and decoded with ``Decoder.decode_lines``; the partial line after it
waits for the next block.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, BinaryIO, Final, Generic, NamedTuple, TypeVar

import anyio
import anyio.to_thread
import msgspec

from .._record_index import open_regular
from ._errors import UnreadableFileError
from ._model import LineProblem, ReadReport

__all__ = [
    "CHUNK_SIZE",
    "ENVELOPE",
    "ArtifactLine",
    "Block",
    "ContextLine",
    "CountLine",
    "Envelope",
    "FullRecordLine",
    "Issues",
    "LineCutter",
    "LineDecoder",
    "ScanLine",
    "read_blocks",
]

CHUNK_SIZE: Final = 2 << 20
_MAX_PROBLEMS: Final = 50


class _N(msgspec.Struct, gc=False):
    """Base: untracked by the cyclic GC (no cycles), unknown fields ignored."""


# ---- RECORD lines, for scanning (list runs, compare) -----------------------------------


class Envelope(_N):
    """The refs of the scopes around a record, and its time."""

    run_ref: str
    stage_execution_ref: str | None = None
    batch_execution_ref: str | None = None
    sample_observation_ref: str | None = None
    recorded_at: str = ""

    def innermost(self) -> str:
        return (
            self.sample_observation_ref
            or self.batch_execution_ref
            or self.stage_execution_ref
            or self.run_ref
        )


class _CountBody(_N):
    # Metrics and events name the innermost scope around them; spans do not (None).
    subject_ref: str | None = None


class _ScanBody(_N):
    # An event or span has neither: its key is None and it is skipped when grouping metrics.
    metric_key: str | None = None
    subject_ref: str | None = None
    value: float | None = None


class _CountPayload(_N):
    # The envelope repeats what subject_ref says in ~600 bytes: it is kept raw (msgspec only
    # finds where it ends) and decoded for the few lines that need it.
    envelope: msgspec.Raw
    payload: _CountBody


class _ScanPayload(_N):
    envelope: msgspec.Raw
    payload: _ScanBody


class CountLine(_N):
    """A RECORD line as counting needs it: its type and the scope it belongs to."""

    payload: _CountPayload
    payload_type: str = ""


class ScanLine(_N):
    """A RECORD line as the comparison needs it: CountLine plus the metric key and value."""

    payload: _ScanPayload
    payload_type: str = ""


ENVELOPE: Final = msgspec.json.Decoder(Envelope)


# ---- RECORD lines, for streaming (every field a user may want) -------------------------


class _FullEnvelope(_N):
    run_ref: str
    record_ref: str = ""
    record_type: str = ""
    recorded_at: str = ""
    stage_execution_ref: str | None = None
    batch_execution_ref: str | None = None
    sample_observation_ref: str | None = None


class _FullBody(_N):
    metric_key: str | None = None
    value: float | None = None
    value_type: str | None = None
    unit: str | None = None
    aggregation_scope: str | None = None
    tags: dict[str, str] | None = None
    event_key: str | None = None
    level: str | None = None
    message: str | None = None
    attributes: dict[str, Any] | None = None
    span_name: str | None = None
    status: str | None = None
    started_at: str | None = None
    ended_at: str | None = None


class _FullRecordPayload(_N):
    envelope: _FullEnvelope
    payload: _FullBody


class FullRecordLine(_N):
    payload: _FullRecordPayload
    payload_type: str = ""
    payload_ref: str | None = None


# ---- ARTIFACT lines ----------------------------------------------------------------------


class _Manifest(_N):
    artifact_ref: str
    artifact_kind: str
    run_ref: str
    stage_execution_ref: str | None = None
    batch_execution_ref: str | None = None
    sample_observation_ref: str | None = None
    hash_value: str | None = None
    location_ref: str | None = None
    size_bytes: int | None = None
    created_at: str = ""
    attributes: dict[str, Any] | None = None


class _ArtifactPayload(_N):
    manifest: _Manifest
    binding_status: str = ""


class ArtifactLine(_N):
    payload: _ArtifactPayload


# ---- CONTEXT lines -----------------------------------------------------------------------


class _ContextBody(_N):
    run_ref: str
    status: str = "unknown"
    name: str | None = None
    project_ref: str | None = None
    dataset_ref: str | None = None
    started_at: str | None = None
    observed_at: str | None = None
    ended_at: str | None = None
    failure_reason: str | None = None
    stage_name: str | None = None
    stage_execution_ref: str | None = None
    order_index: int = 0
    tags: dict[str, str] | None = None


class ContextLine(_N):
    payload: _ContextBody
    payload_type: str
    payload_ref: str | None = None


# ---- reading -----------------------------------------------------------------------------


class Issues:
    """Collects corrupt lines (all counted, the first few kept) across the files of one read.

    Lines are located by byte offset while reading (counting newlines in every block would
    cost as much as decoding it); ``report()`` turns the kept offsets into line numbers.
    """

    def __init__(self) -> None:
        self.corrupt_lines = 0
        self._problems: list[tuple[str, int, str]] = []
        self.torn_tails: list[str] = []
        self.records_from_index = 0
        self.index_frames_rejected = 0

    def corrupt(self, path: str, offset: int, reason: str) -> None:
        self.corrupt_lines += 1
        if len(self._problems) < _MAX_PROBLEMS:
            self._problems.append((path, offset, reason))

    def problems_raw(self) -> list[tuple[str, int, str]]:
        return list(self._problems)

    def absorb(self, corrupt: int, problems: list[tuple[str, int, str]]) -> None:
        """Add what another process found."""
        self.corrupt_lines += corrupt
        room = _MAX_PROBLEMS - len(self._problems)
        self._problems.extend(problems[: max(0, room)])

    def absorb_all(self, other: Issues) -> None:
        """Add everything another scan found."""
        self.absorb(other.corrupt_lines, other.problems_raw())
        self.torn_tails.extend(other.torn_tails)
        self.records_from_index += other.records_from_index
        self.index_frames_rejected += other.index_frames_rejected

    async def report(self) -> ReadReport:
        problems: list[LineProblem] = []
        for path in dict.fromkeys(p for p, _, _ in self._problems):
            mine = [(o, r) for p, o, r in self._problems if p == path]
            lines = await _line_numbers(Path(path), [o for o, _ in mine])
            problems.extend(
                LineProblem(file=path, line=line, offset=o, reason=r)
                for (o, r), line in zip(mine, lines, strict=True)
            )
        return ReadReport(
            corrupt_lines=self.corrupt_lines,
            problems=problems,
            torn_tails=list(self.torn_tails),
            records_from_index=self.records_from_index,
            index_frames_rejected=self.index_frames_rejected,
        )


async def _line_numbers(path: Path, offsets: list[int]) -> list[int]:
    """1-based line numbers of the given byte offsets (only read when problems were found)."""
    wanted = sorted(set(offsets))
    found: dict[int, int] = {}
    lines_before = 0
    position = 0
    try:
        async with await anyio.open_file(path, "rb") as handle:
            while wanted and position <= wanted[-1]:
                block = await handle.read(CHUNK_SIZE)
                if not block:
                    break
                end = position + len(block)
                for offset in wanted:
                    if position <= offset < end and offset not in found:
                        found[offset] = lines_before + block.count(b"\n", 0, offset - position) + 1
                lines_before += block.count(b"\n")
                position = end
    except OSError:
        pass
    return [found.get(o, 0) for o in offsets]


T = TypeVar("T")


class LineDecoder(Generic[T]):
    """Decode blocks of complete lines; fall back to line by line only when a block fails."""

    def __init__(self, kind: type[T]) -> None:
        self._decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(kind)

    def decode(self, data: bytes | memoryview, path: str, offset: int, issues: Issues) -> list[T]:
        """Decode a block of complete lines that starts at byte ``offset`` of ``path``."""
        try:
            values = self._decoder.decode_lines(data)
        except msgspec.DecodeError:
            values = None
        # decode_lines treats a newline as whitespace, but it cannot glue a torn line to the
        # next one into a valid value: a torn line is a prefix of an object, so its braces
        # never balance, and the whole block fails instead. Then find the bad lines one by one.
        if values is not None:
            return values
        return self.line_by_line(data, path, offset, issues)

    def line_by_line(
        self,
        data: bytes | memoryview,
        path: str,
        offset: int,
        issues: Issues,
        check: Callable[[T], str | None] | None = None,
    ) -> list[T]:
        """Decode line by line, counting the lines that fail (or whose ``check`` names a
        problem) as corrupt."""
        out: list[T] = []
        decode = self._decoder.decode
        position = offset
        for line in bytes(data).split(b"\n"):
            if line.strip():
                try:
                    value = decode(line)
                except msgspec.DecodeError as exc:
                    issues.corrupt(path, position, str(exc))
                else:
                    problem = None if check is None else check(value)
                    if problem is None:
                        out.append(value)
                    else:
                        issues.corrupt(path, position, problem)
            position += len(line) + 1
        return out


class Block(NamedTuple):
    """Complete lines: ``buffer[start:end]``, whose first byte is at ``offset`` in the file.

    A block of a file is read whole and its lines used in place (``bytes.find`` takes the
    bounds, ``view()`` decodes without a copy); only a line cut by the end of a read is copied,
    glued to its rest as a small block of its own.
    """

    buffer: bytes
    start: int
    end: int
    offset: int

    def view(self) -> memoryview:
        return memoryview(self.buffer)[self.start : self.end]

    def find(self, pattern: bytes, at: int | None = None) -> int:
        """The position of ``pattern`` in the buffer at or after ``at``, -1 if not in the block."""
        return self.buffer.find(pattern, self.start if at is None else at, self.end)


class LineCutter:
    """Cuts raw reads of a file into Blocks of complete lines, in order.

    The lines of a read are used in place; only the line cut by the end of the previous read
    is copied, glued to its rest as a small Block of its own. ``torn`` says whether a partial
    line is left over (at the end of a file: a line still being written).
    """

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset  # of the next complete line in the file
        self.tail = b""

    def cut(self, data: bytes) -> list[Block]:
        end = data.rfind(b"\n") + 1
        if not end:
            self.tail += data
            return []
        blocks = []
        start = 0
        if self.tail:
            start = data.find(b"\n") + 1
            head = self.tail + data[:start]
            blocks.append(Block(head, 0, len(head), self.offset))
            self.offset += len(head)
        if start < end:
            blocks.append(Block(data, start, end, self.offset))
            self.offset += end - start
        self.tail = data[end:]
        return blocks

    @property
    def torn(self) -> bool:
        return bool(self.tail.strip())


def open_regular_file(path: str | Path) -> BinaryIO:
    """``path`` opened for reading; UnreadableFileError unless it is a regular file (a FIFO
    put there must not hang the reader). FileNotFoundError passes through."""
    try:
        fd = open_regular(path, os.O_RDONLY)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise UnreadableFileError(str(path), exc.strerror or str(exc)) from exc
    if fd is None:
        raise UnreadableFileError(str(path), "not a regular file")
    return os.fdopen(fd, "rb")


async def read_blocks(
    path: Path, issues: Issues, *, chunk_size: int = CHUNK_SIZE
) -> AsyncIterator[Block]:
    """Yield the complete lines of ``path`` block by block.

    A last line without its newline is a line still being written: it is left out, silently
    (its file is noted in ``issues.torn_tails``), and read complete next time.
    A missing file yields nothing.
    """
    cutter = LineCutter()
    try:
        handle = await anyio.to_thread.run_sync(open_regular_file, path)
    except FileNotFoundError:
        return
    # Closed here, not in a worker thread: a caller that stops iterating early leaves this
    # generator to be closed at any time, even while its event loop shuts down.
    with handle:
        try:
            while data := await anyio.to_thread.run_sync(handle.read, chunk_size):
                for block in cutter.cut(data):
                    yield block
        except OSError as exc:
            raise UnreadableFileError(str(path), exc.strerror or str(exc)) from exc
    if cutter.torn:
        issues.torn_tails.append(str(path))
