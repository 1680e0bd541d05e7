"""Reading capture files, blocking, in large blocks: the source's only way into a file.

Every read runs in a worker thread (the source hands it to anyio's ``to_thread``), never on
the event loop. A file is read in ``chunk_size`` blocks; each block is cut after its last
newline and its complete lines are decoded in place (``Decoder.decode_lines``); the partial
line after them waits for the next block. Corrupt lines are counted in ``Issues``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Final, Generic, NamedTuple, TypeVar

import msgspec

from .._format.index import open_regular
from ._errors import UnreadableFileError
from ._model import LineProblem, ReadReport

__all__ = [
    "CHUNK_SIZE",
    "Block",
    "Issues",
    "LineCutter",
    "LineDecoder",
    "ReadAbandoned",
    "open_regular_file",
    "read_blocks",
    "read_file",
    "read_lines",
]

CHUNK_SIZE: Final = 2 << 20
_MAX_PROBLEMS: Final = 50
# msgspec raises RecursionError for a value nested past its depth limit (a damaged or crafted
# line of a few KB): such a line is corrupt like any other, not the end of the read.
_UNDECODABLE: Final = (msgspec.DecodeError, RecursionError)


class ReadAbandoned(Exception):
    """A read given up because its caller was cancelled."""


class Issues:
    """Collects corrupt lines (all counted, the first few kept) across the files of one read.

    Lines are located by byte offset while reading (counting newlines in every block would
    cost as much as decoding it); ``report()`` (blocking) turns the kept offsets into line
    numbers.
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

    def merge(self, other: Issues) -> Issues:
        """This read's findings followed by ``other``'s (another file's read meanwhile, or a
        trial decoding of a block)."""
        self.corrupt_lines += other.corrupt_lines
        self._problems.extend(other._problems[: max(0, _MAX_PROBLEMS - len(self._problems))])
        self.torn_tails.extend(other.torn_tails)
        self.records_from_index += other.records_from_index
        self.index_frames_rejected += other.index_frames_rejected
        return self

    def report(self) -> ReadReport:
        problems: list[LineProblem] = []
        for path in dict.fromkeys(p for p, _, _ in self._problems):
            mine = [(o, r) for p, o, r in self._problems if p == path]
            lines = _line_numbers(Path(path), [o for o, _ in mine])
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


def _line_numbers(path: Path, offsets: list[int]) -> list[int]:
    """1-based line numbers of the given byte offsets (only read when problems were found)."""
    wanted = sorted(set(offsets))
    found: dict[int, int] = {}
    lines_before = 0
    position = 0
    try:
        with path.open("rb") as handle:
            while wanted and position <= wanted[-1]:
                block = handle.read(CHUNK_SIZE)
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
        # decode_lines treats a newline as whitespace, but it cannot glue a torn line to the
        # next one into a valid value: a torn line is a prefix of an object, so its braces
        # never balance, and the whole block fails instead. Then find the bad lines one by one.
        try:
            return self._decoder.decode_lines(data)
        except _UNDECODABLE:
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
                except _UNDECODABLE as exc:
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
    """Complete lines: ``buffer[start:end]``, whose first byte is at ``offset`` in the file,
    used in place (``find`` takes the bounds, ``view()`` decodes without a copy)."""

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


def read_blocks(
    handle: BinaryIO,
    cutter: LineCutter,
    stop: int | None = None,
    *,
    chunk_size: int = CHUNK_SIZE,
    stop_event: threading.Event | None = None,
) -> Iterator[Block]:
    """The complete lines of ``handle`` from ``cutter.offset`` up to byte ``stop`` (None: the
    end of the file), block by block (blocking). ``stop_event`` set: ReadAbandoned at the
    next block."""
    position = cutter.offset
    handle.seek(position)
    while stop is None or position < stop:
        if stop_event is not None and stop_event.is_set():
            raise ReadAbandoned
        data = handle.read(chunk_size if stop is None else min(chunk_size, stop - position))
        if not data:
            break
        position += len(data)
        yield from cutter.cut(data)


def read_file(path: Path, issues: Issues, *, chunk_size: int = CHUNK_SIZE) -> Iterator[Block]:
    """The complete lines of ``path``, block by block (blocking); a missing file yields
    nothing. A last line without its newline is a line still being written: it is left out,
    silently (its file is noted in ``issues.torn_tails``), and read complete next time."""
    try:
        handle = open_regular_file(path)
    except FileNotFoundError:
        return
    cutter = LineCutter()
    try:
        with handle:
            yield from read_blocks(handle, cutter, chunk_size=chunk_size)
    except OSError as exc:  # a read failed (the consumer's own errors never come in here)
        raise UnreadableFileError(str(path), exc.strerror or str(exc)) from exc
    if cutter.torn:
        issues.torn_tails.append(str(path))


def read_lines(
    path: Path, kind: type[T], issues: Issues, *, chunk_size: int = CHUNK_SIZE
) -> Iterator[list[T]]:
    """``read_file``, each block's lines decoded as ``kind``."""
    decoder = LineDecoder(kind)
    for block in read_file(path, issues, chunk_size=chunk_size):
        yield decoder.decode(block.view(), str(path), block.offset, issues)
