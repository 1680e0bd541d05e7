"""LocalJsonlSink: one JSONL file per family, appended with group commit."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from .._errors import ConfigurationError, ValidationError
from .._format.index import FRAME_LINES, MAX_FRAME, MIN_INDEXED_LINES, index_path_for, open_regular
from .._format.lines import CONTEXT, FAMILIES, RECORD, Item
from .._log import log
from ._base import Chunk, FsyncError, Sink, check_sink_name, stamp_lines
from ._index import (
    ChunkColumns,
    ContextColumns,
    Pending,
    PendingContextFrame,
    PendingFrame,
    columns_from_items,
    context_columns,
)

__all__ = ["LocalJsonlSink"]

_FILE_MODE = 0o644
_DIR_MODE = 0o755


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written == 0:  # pragma: no cover - a regular file never returns 0 for a non-empty write
            raise OSError(errno.EIO, "write returned 0")
        view = view[written:]


def _make_dirs(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; return the ones this call created."""
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    created: list[Path] = []
    for path in reversed(missing):
        try:
            path.mkdir(mode=_DIR_MODE)
        except FileExistsError:  # another process made it meanwhile: its entry is its to sync
            continue
        created.append(path)
    return created


def _open_index(path: Path) -> int:
    """``record.index`` (or ``context.index``) open for appending; OSError unless it is a
    regular file (a FIFO there must not stall the writer)."""
    fd = open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, _FILE_MODE)
    if fd is None:
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return fd


def _cut_torn_tail(fd: int, size: int, target: str) -> int:
    """Truncate the file after its last newline; return the new size."""
    end = size
    while end > 0:
        start = max(0, end - 65_536)
        block = os.pread(fd, end - start, start)
        newline = block.rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    os.ftruncate(fd, end)
    log("warning", "contexta_async.torn_tail_removed", target=target, removed_bytes=size - end)
    return end


_NEW_FRAME: dict[str, Callable[[int], Pending[Any]]] = {
    RECORD: PendingFrame,
    CONTEXT: PendingContextFrame,
}


class _IndexFile:
    """One index being written: its descriptor, its pending frame, whether it failed."""

    __slots__ = ("failed", "fd", "frame")

    def __init__(self) -> None:
        self.fd: int | None = None
        self.frame: Pending[Any] | None = None  # consecutive chunks not described yet
        self.failed = False


class LocalJsonlSink(Sink):
    """Append lines to ``<storage_root>/<family>.jsonl`` (``record.jsonl``, ``context.jsonl``...).

    Each chunk is written with one ``write`` under an exclusive ``flock`` on the file, so
    several processes can share a workspace without interleaving lines; a write that fails is
    cut back off the file, and a torn last line left by a crashed writer (never acknowledged:
    acknowledgement follows the whole write) is cut off before new lines are appended. With
    ``fsync=True`` (the default) each chunk is fsynced before it is acknowledged.

    With ``index=True`` (the default), the RECORD lines written (and fsynced) are also
    described, a frame per run of consecutive chunks, in ``record.index``, and the CONTEXT
    lines in ``context.index``, so that comparisons need not parse their JSON (see
    docs/format.md). An index is derived data: it is not fsynced, and failing to write it
    loses nothing (it is logged once, that index stops until ``close()``, and readers parse
    the lines instead).
    """

    def __init__(
        self,
        storage_root: str | os.PathLike[str],
        *,
        fsync: bool = True,
        name: str = "local-jsonl",
        index: bool = True,
    ) -> None:
        if not isinstance(storage_root, (str, os.PathLike)):
            raise ConfigurationError("storage_root", "must be a path", storage_root)
        check_sink_name(name)
        if not isinstance(fsync, bool):
            raise ConfigurationError("fsync", "must be a bool", fsync)
        if not isinstance(index, bool):
            raise ConfigurationError("index", "must be a bool", index)
        self.index = index
        self._indexes = {RECORD: _IndexFile(), CONTEXT: _IndexFile()}
        # A write that failed and could not be cut back: (its start, the file size it left),
        # per family. The next write cuts it off if nothing was appended since.
        self._leftovers: dict[str, tuple[int, int]] = {}
        # One sink may serve several clients (threads): flock does not exclude threads that
        # share a descriptor, so they take turns here.
        self._lock = threading.Lock()
        self.storage_root = Path(storage_root).absolute()
        self.fsync = fsync
        self.name = name
        self._encoder = msgspec.json.Encoder()  # keys arrive sorted: see _format.lines
        self._fds: dict[str, int] = {}
        self._unsynced_dirs: set[Path] = set()  # directories holding entries not yet fsynced

    def file_path_for(self, family: str) -> Path:
        """The absolute path of the file that holds ``family`` lines."""
        if family not in FAMILIES:
            raise ValidationError("family", f"must be one of {list(FAMILIES)}", family)
        return self.storage_root / f"{family.lower()}.jsonl"

    def prepare(self, items: Sequence[Item], captured_at: str) -> list[Chunk]:
        """One chunk per family file, each encoded once with ``encode_lines``."""
        groups: dict[str, list[Item]] = {}
        for item in items:
            group = groups.get(item.family)
            if group is None:
                groups[item.family] = [item]
            else:
                group.append(item)
        encode_lines = self._encoder.encode_lines
        return [
            Chunk(
                family,
                str(self.file_path_for(family)),
                encode_lines(stamp_lines(members, captured_at, self.name)),
                members,
            )
            for family, members in groups.items()
        ]

    def _fd_for(self, family: str) -> int:
        fd = self._fds.get(family)
        if fd is None:
            path = self.file_path_for(family)
            created = _make_dirs(path.parent)
            if self.fsync:
                # Owed before the file is opened: should that fail (EMFILE, ENOSPC on inodes),
                # the next try finds the directories there and would not know they are new.
                self._unsynced_dirs.update(directory.parent for directory in created)
            existed = path.exists()
            fd = os.open(
                path,
                os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                _FILE_MODE,
            )
            self._fds[family] = fd
            if self.fsync and not existed:
                self._unsynced_dirs.add(path.parent)
        while self._unsynced_dirs:
            # New directory entries (the file's, and any directory created on the way) must be
            # durable too, or a crash can lose the file. Until each fsync succeeds, every
            # attempt to write (before any data) retries it.
            directory = min(self._unsynced_dirs)
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            self._unsynced_dirs.discard(directory)
        return fd

    def write(self, chunk: Chunk) -> None:
        """Append the chunk with one ``write`` under ``flock``, then fsync (when enabled)."""
        with self._lock:
            end = self._write_locked(chunk)
            if self.index and chunk.family in self._indexes:
                self._append_index(chunk, end)

    def _write_locked(self, chunk: Chunk) -> int:
        fd = self._fd_for(chunk.family)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            start = os.fstat(fd).st_size
            leftover = self._leftovers.pop(chunk.family, None)
            if leftover is not None and leftover[1] == start:
                # Whole lines a failed write left (its truncation failed too): never
                # acknowledged, and retried in this very chunk, so they must go.
                try:
                    os.ftruncate(fd, leftover[0])
                except OSError:
                    self._leftovers[chunk.family] = leftover
                    raise
                start = leftover[0]
            if start > 0 and os.pread(fd, 1, start - 1) != b"\n":
                # A writer died mid-line (every writer holds this lock while it writes): cut the
                # unacknowledged fragment off so that every line in the file stays valid.
                start = _cut_torn_tail(fd, start, chunk.target)
            try:
                _write_all(fd, chunk.data)
                # O_APPEND leaves the offset just past what this write appended.
                end = os.lseek(fd, 0, os.SEEK_CUR)
            except OSError:
                try:
                    os.ftruncate(fd, start)
                except OSError:
                    with contextlib.suppress(OSError):
                        self._leftovers[chunk.family] = (start, os.fstat(fd).st_size)
                raise
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        if self.fsync:
            try:
                os.fsync(fd)
            except OSError as exc:
                raise FsyncError(exc.errno, f"fsync failed: {exc.strerror}", chunk.target) from exc
        return end

    def _append_index(self, chunk: Chunk, end: int) -> None:
        """Describe the chunk in its family's index, once its lines are written (and fsynced,
        with ``fsync=True``): no frame ever describes lines a crash could take back.

        Consecutive chunks (nobody else appended in between) extend one pending frame, written
        when it holds FRAME_LINES lines, when the next chunk is not consecutive, or at close:
        a producer that captures a few lines at a time still gets frames of many lines. Lines
        whose frame is not written yet are parsed by readers meanwhile.
        """
        index = self._indexes[chunk.family]
        if index.failed:
            return
        try:
            start = end - len(chunk.data)
            if index.frame is not None and index.frame.end != start:
                self._write_frame(chunk.family)  # another writer appended in between
            described: ChunkColumns | ContextColumns | None
            if chunk.family == CONTEXT:
                described = context_columns(chunk.items, chunk.data)
            else:
                described = columns_from_items(chunk.items)
            if described is None:
                self._write_frame(chunk.family)  # these lines stay unindexed: parsed
                return
            if index.frame is None:
                index.frame = _NEW_FRAME[chunk.family](start)
            index.frame.extend(described, chunk.data, end)
            if index.frame.lines >= FRAME_LINES:
                self._write_frame(chunk.family)
        except Exception as exc:  # the lines are durable whatever happens here
            self._index_broken(chunk.family, exc)

    def _write_frame(self, family: str) -> None:
        index = self._indexes[family]
        frame, index.frame = index.frame, None
        if frame is None or frame.lines < MIN_INDEXED_LINES:
            return
        header, body = frame.encode()
        if len(body) > MAX_FRAME:
            return  # readers would take it for garbage: its lines are parsed instead
        if index.fd is None:
            index.fd = _open_index(index_path_for(self.file_path_for(family)))
        # One write: frames of several writers never interleave. A frame cut short (disk
        # full, a crash) fails its CRC and readers skip it.
        written = os.writev(index.fd, [header, body])
        if written < len(header) + len(body):  # pragma: no cover - a short write to a file
            _write_all(index.fd, (header + body)[written:])

    def _index_broken(self, family: str, exc: BaseException) -> None:
        """Stop this index until ``close()``: logged once; readers parse the lines instead."""
        index = self._indexes[family]
        index.failed = True
        index.frame = None
        # Safe to log: a log call that raised here would fail a write that is durable already.
        log(
            "warning",
            "contexta_async.index_write_failed",
            target=str(index_path_for(self.file_path_for(family))),
            error=(exc.strerror if isinstance(exc, OSError) else None) or repr(exc),
            errno=exc.errno if isinstance(exc, OSError) else None,
        )

    def close(self) -> None:
        """Write the pending index frame, close the open files; a later write opens them
        again (and tries the index again)."""
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        fds, self._fds = self._fds, {}
        for family, index in self._indexes.items():
            if not index.failed:
                try:
                    self._write_frame(family)
                except Exception as exc:  # as in _append_index
                    self._index_broken(family, exc)
            index.frame = None
            index.failed = False
            if index.fd is not None:
                fds[f"{family} index"] = index.fd
                index.fd = None
        for fd in fds.values():
            try:
                os.close(fd)
            except OSError:
                pass

    def reinit_after_fork(self) -> None:
        """In a forked child: a fresh lock; the parent's pending index frame and failed-write
        leftovers stay the parent's; the inherited descriptors are closed (the child's copies
        only) so that the child reopens the files: a descriptor shared with the parent shares
        its ``flock`` too, which would no longer keep the two processes' writes apart."""
        self._lock = threading.Lock()
        self._leftovers = {}
        fds = list(self._fds.values())
        for index in self._indexes.values():
            index.frame = None
            if index.fd is not None:
                fds.append(index.fd)
                index.fd = None
        self._fds = {}
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __repr__(self) -> str:
        return f"LocalJsonlSink({str(self.storage_root)!r}, fsync={self.fsync}, index={self.index})"
