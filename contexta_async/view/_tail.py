"""The view's in-memory state, kept by folding only what was appended to the capture files.

Each capture file is followed from a byte offset: a poll reads from there to the current end,
folds the complete lines into the state and keeps a torn last line (a writer mid-line) until
its newline arrives. A file that shrank, was replaced, or was rewritten in place (its first
bytes, or those before the offset, differ from what was read) is read again from the start. Lines
are decoded with the readers' narrow Structs; ``record.jsonl`` is counted block by block
(C-level passes, no Python loop per record), and the metric values and events of a run are
kept only once its page was asked for (``track``: one read of the lines so far, then only
what is appended).
"""

from __future__ import annotations

import os
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import attrgetter, eq
from pathlib import Path
from typing import Final, cast

import msgspec

from .._format.index import index_path_for
from .._format.lines import (
    EVENT_LINE,
    ArtifactLine,
    ContextLine,
    FullRecordLine,
    RunCountLine,
    RunValueLine,
    run_marker,
)
from .._format.refs import first_component, last_component, parse_scope
from ..readers._context import context_lines, fold_context_line
from ..readers._index import expand_entry, load_index, open_index, pieces, read_entry
from ..readers._read import Block, Issues, LineCutter, LineDecoder, open_regular_file

__all__ = ["EventView", "RunDetail", "RunState", "WorkspaceTail", "event_views"]

_READ_SIZE: Final = 4 << 20
# Bytes remembered at the file's start and just before the offset read to: a file rewritten
# in place (``cp`` over it: same inode, truncated, written again, maybe longer) differs there.
_MARK_SIZE: Final = 256
# Appended bytes from which record.index is worth looking at (checking its frames reads it
# whole): a first read, or a poll after a large burst.
INDEX_FROM: Final = 16 << 20
_MAX_EVENTS: Final = 200
_KIND: Final = {
    "MetricRecord": "metrics",
    "StructuredEventRecord": "events",
    "TraceSpanRecord": "spans",
}


def _count_kinds(counts: dict[str, int], types: list[str]) -> None:
    """Add a block of one run's record types to its counts (list.count per kind: no Python
    step per record)."""
    rest = len(types)
    for kind, name in _KIND.items():
        if n := types.count(kind):
            counts[name] += n
            rest -= n
    if rest:
        counts["other"] += rest


_BODY = attrgetter("payload.payload")
_RUN = attrgetter("payload.envelope.run_ref")
_TYPE = attrgetter("payload_type")
_SUBJECT = attrgetter("subject_ref")
_KEY = attrgetter("metric_key")
_VALUE = attrgetter("value")
_UNIT = attrgetter("unit")
_FULL = msgspec.json.Decoder(FullRecordLine)
_KIND_OF_LINE = msgspec.json.Decoder(RunCountLine)


@dataclass(slots=True)
class EventView:
    """One event of a tracked run, as the run page lists it."""

    recorded_at: str
    stage: str | None
    sample: str | None
    key: str
    level: str | None
    message: str | None


@dataclass(slots=True)
class RunDetail:
    """The metric values and newest events of one tracked run.

    ``values`` maps (subject ref, metric key) to the value captured last; ``samples`` lists
    the sample refs in the order first seen; ``events`` the raw lines of the newest events.
    """

    values: dict[tuple[str | None, str], float | None] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    keys: dict[str, None] = field(default_factory=dict)  # the metric keys, as first seen
    samples: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    events: deque[bytes] = field(default_factory=lambda: deque(maxlen=_MAX_EVENTS))


def event_views(detail: RunDetail) -> list[EventView]:
    """The kept events, newest first (a line that does not decode is left out)."""
    out = []
    for raw in reversed(detail.events):
        try:
            line = _FULL.decode(raw)
        except (msgspec.DecodeError, RecursionError):  # RecursionError: nested past msgspec's limit
            continue
        env, body = line.payload.envelope, line.payload.payload
        out.append(
            EventView(
                recorded_at=env.recorded_at,
                stage=last_component(env.stage_execution_ref),
                sample=last_component(env.sample_observation_ref),
                key=body.event_key or "",
                level=body.level,
                message=body.message,
            )
        )
    return out


@dataclass(slots=True)
class RunState:
    """One run as the view shows it; ``version`` is the tail's version at its last change."""

    ref: str
    name: str
    project: str
    status: str = "unknown"
    started_at: str | None = None
    ended_at: str | None = None
    dataset_ref: str | None = None
    failure_reason: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    stages: dict[str, int] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    version: int = 0
    detail: RunDetail | None = None

    @classmethod
    def named(cls, ref: str) -> RunState:
        return cls(ref=ref, name=last_component(ref) or "", project=first_component(ref))


class _FileTail:
    """Reads what was appended to one file since the last read, as blocks of whole lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cutter = LineCutter()
        self._read_to = 0  # bytes consumed, the torn tail included
        self._identity: tuple[int, int] | None = None
        self._marks = (b"", b"")  # (the first bytes, the bytes before _read_to), as read

    @property
    def complete_to(self) -> int:
        """The byte offset after the last complete line folded."""
        return self._cutter.offset

    @property
    def pending(self) -> bool:
        """Whether a partial line was read and waits for its newline."""
        return self._read_to != self._cutter.offset

    def skip_to(self, offset: int) -> None:
        """Continue from ``offset`` (a line boundary): the lines before it were folded."""
        self._cutter = LineCutter(offset)
        self._read_to = offset
        try:
            handle = open_regular_file(self.path)
        except OSError:
            self._marks = (b"", b"")  # checked next poll: a file gone is a reset then
            return
        with handle:
            self._marks = self._marks_of(handle.fileno())

    def _marks_of(self, fd: int) -> tuple[bytes, bytes]:
        """The file's first bytes and the bytes before ``_read_to``, as they are now."""
        end = self._read_to
        start = max(0, end - _MARK_SIZE)
        return os.pread(fd, min(_MARK_SIZE, end), 0), os.pread(fd, end - start, start)

    def replaced(self) -> bool:
        """Whether the file was replaced, truncated, rewritten in place or removed since the
        last read."""
        try:
            handle = open_regular_file(self.path)
        except FileNotFoundError:
            return self._read_to > 0
        with handle:
            info = os.fstat(handle.fileno())
            identity = (info.st_dev, info.st_ino)
            if info.st_size < self._read_to or self._identity not in (None, identity):
                return True
            # Same file, not shorter: still the bytes that were read? (An append leaves them.)
            return self._read_to > 0 and self._marks_of(handle.fileno()) != self._marks

    def read_new(self) -> Iterator[Block]:
        """The complete lines appended since the last read, block by block."""
        try:
            handle = open_regular_file(self.path)
        except FileNotFoundError:
            return
        with handle:
            info = os.fstat(handle.fileno())
            self._identity = (info.st_dev, info.st_ino)
            handle.seek(self._read_to)
            # Up to the size seen now: a writer that keeps appending is caught next poll.
            remaining = info.st_size - self._read_to
            while remaining > 0 and (data := handle.read(min(_READ_SIZE, remaining))):
                remaining -= len(data)
                self._read_to += len(data)
                yield from self._cutter.cut(data)
            self._marks = self._marks_of(handle.fileno())


def read_range(path: Path, end: int) -> Iterator[Block]:
    """The complete lines of ``path`` before byte ``end`` (a line boundary)."""
    cutter = LineCutter()
    try:
        handle = open_regular_file(path)
    except FileNotFoundError:
        return
    with handle:
        remaining = end
        while remaining > 0 and (data := handle.read(min(_READ_SIZE, remaining))):
            remaining -= len(data)
            yield from cutter.cut(data)


class WorkspaceTail:
    """Runs, their counts and (for tracked runs) their values, kept current by ``poll``.

    Not thread-safe: the app calls ``poll`` and ``track`` one at a time, in a worker thread.
    """

    def __init__(self, capture_dir: Path, *, use_index: bool = True) -> None:
        self.capture_dir = capture_dir
        self.use_index = use_index
        self.index_from = INDEX_FROM
        self.issues = Issues()
        self._reset()

    def _reset(self) -> None:
        self.version = 0
        self.runs: dict[str, RunState] = {}
        self.issues = Issues()
        self._files = {
            family: _FileTail(self.capture_dir / f"{family}.jsonl")
            for family in ("context", "record", "artifact")
        }
        self._context = LineDecoder(ContextLine)
        self._counts = LineDecoder(RunCountLine)
        self._values = LineDecoder(RunValueLine)
        self._artifact = LineDecoder(ArtifactLine)
        self._changed: set[str] = set()
        self._run_of_subject: dict[str, str | None] = {}
        self.lines_from_index = 0

    # ---- polling -----------------------------------------------------------------------

    def poll(self) -> bool:
        """Fold what was appended since the last poll; True if anything changed."""
        if any(tail.replaced() for tail in self._files.values()):
            # A file was replaced, truncated or removed: start over (tracked runs stay so).
            tracked = [ref for ref, run in self.runs.items() if run.detail is not None]
            version = self.version
            self._reset()
            self.version = version
            self._fold_new()
            for ref in tracked:
                if ref in self.runs:
                    self.track(ref)
            self._stamp(set(self.runs))
            return True
        self._fold_new()
        changed = bool(self._changed)
        self._stamp(self._changed)
        return changed

    def _fold_new(self) -> None:
        files = self._files
        for block in files["context"].read_new():
            self._fold_context(block)
        self._fold_indexed()
        for block in files["record"].read_new():
            self._fold_records(block)
        for block in files["artifact"].read_new():
            self._fold_artifacts(block)

    def _stamp(self, refs: set[str]) -> None:
        if not refs:
            return
        self.version += 1
        for ref in refs:
            run = self.runs.get(ref)
            if run is not None:
                run.version = self.version
        self._changed = set()

    def _run(self, ref: str) -> RunState:
        run = self.runs.get(ref)
        if run is None:
            run = self.runs[ref] = RunState.named(ref)
        self._changed.add(ref)
        return run

    # ---- context.jsonl: runs and stages --------------------------------------------------

    def _fold_context(self, block: Block) -> None:
        name = str(self._files["context"].path)
        for line in context_lines(block, self._context, name, self.issues):
            self._apply_context(line)

    def _apply_context(self, line: ContextLine) -> None:
        fold_context_line(self._run(line.payload.run_ref), line)

    # ---- record.jsonl: counts, and the values of tracked runs ----------------------------

    def _fold_records(self, block: Block) -> None:
        tracked = [
            ref
            for ref, run in self.runs.items()
            if run.detail is not None and block.find(run_marker(ref)) >= 0
        ]
        path = str(self._files["record"].path)
        decoder = self._values if tracked else self._counts
        lines: list[RunCountLine] | list[RunValueLine] = decoder.decode(
            block.view(), path, block.offset, self.issues
        )
        runs = list(map(_RUN, lines))
        types = list(map(_TYPE, lines))
        # No Python step per record: a block of one run (the usual case) is counted with
        # list.count, a mixed one with Counter's C loop.
        if runs and runs.count(runs[0]) == len(runs):
            _count_kinds(self._run(runs[0]).counts, types)
        else:
            for (ref, kind), n in Counter(zip(runs, types, strict=True)).items():
                self._run(ref).counts[_KIND.get(kind, "other")] += n
        for ref in tracked:
            detail = self.runs[ref].detail
            assert detail is not None
            mine = cast("list[RunValueLine]", lines)
            if runs.count(ref) != len(runs):
                mine = list(compress(mine, map(eq, runs, repeat(ref))))
            _fold_values(detail, mine)
            _fold_events(detail, ref, block)

    def _fold_indexed(self) -> None:
        """Count a large unread part of record.jsonl from record.index's verified frames (as
        the readers do: the frames' type and subject columns, no JSON), the stretches between
        frames from the JSON; the rest, from the last frame on, is read as usual."""
        record = self._files["record"]
        if not self.use_index or record.pending or any(r.detail for r in self.runs.values()):
            return  # a tracked run needs every line's values: the JSON
        try:
            size = os.stat(record.path).st_size
        except OSError:
            return
        if size - record.complete_to < self.index_from:
            return
        index = load_index(str(record.path))
        if not index.frames:
            return
        position = record.complete_to
        with (
            open_index(index_path_for(record.path)) as found,
            open_regular_file(record.path) as data,
        ):
            if found is None:
                return
            for start, end, frame in pieces(index.frames, position, None):
                if end is None:
                    break  # after the last frame: read as usual (it may end mid-line)
                entry = None if frame is None else read_entry(found.fileno(), frame)
                columns = None if entry is None else expand_entry(entry)
                if entry is not None and columns is not None and None not in entry.subjects:
                    table = cast("list[str]", entry.subjects)
                    self._fold_columns(table, cast("list[str]", columns.subjects), columns.types)
                    self.lines_from_index += len(columns.types)
                else:  # a gap between frames, or a frame that cannot be used (spans: no subject)
                    data.seek(start)
                    cutter = LineCutter(start)
                    remaining = end - start
                    while remaining > 0 and (chunk := data.read(min(_READ_SIZE, remaining))):
                        remaining -= len(chunk)
                        for block in cutter.cut(chunk):
                            self._fold_records(block)
                position = end
        record.skip_to(position)

    def _fold_columns(self, table: list[str], subjects: list[str], types: list[str]) -> None:
        """Count one frame's lines: ``table`` holds its distinct subjects, ``subjects`` and
        ``types`` one item per line."""
        # Usually every subject of a frame is in one run: the least and the greatest share
        # the run's prefix (``sample:p.r.``), so all between them do; then list.count.
        low, high = min(table), max(table)
        dot = low.find(".", low.find(".") + 1)
        if dot > 0 and high.startswith(low[: dot + 1]):
            ref = _subject_run(low)
            if ref is not None:
                _count_kinds(self._run(ref).counts, types)
                return
        # Several runs: counted per (subject, type) with Counter's C loop first.
        for (subject, kind), n in Counter(zip(subjects, types, strict=True)).items():
            ref = self._run_of_subject.get(subject, "")
            if ref == "":
                ref = self._run_of_subject[subject] = _subject_run(subject)
                if len(self._run_of_subject) > 1 << 16:
                    self._run_of_subject.clear()
            if ref is None:
                self.issues.corrupt(str(self._files["record"].path), 0, "subject names no run")
                continue
            self._run(ref).counts[_KIND.get(kind, "other")] += n

    def track(self, ref: str) -> RunDetail:
        """Keep ``ref``'s values from now on: read its lines so far once, then fold only
        appended lines into them (``poll``)."""
        run = self.runs[ref]
        if run.detail is None:
            detail = RunDetail()
            record = self._files["record"]
            marker = run_marker(ref)
            for block in read_range(record.path, record.complete_to):
                if block.find(marker) < 0:
                    continue
                lines = self._values.decode(block.view(), "", 0, Issues())
                runs = list(map(_RUN, lines))
                if runs.count(ref) != len(runs):
                    lines = list(compress(lines, map(eq, runs, repeat(ref))))
                _fold_values(detail, lines)
                _fold_events(detail, ref, block)
            run.detail = detail
        return run.detail

    # ---- artifact.jsonl --------------------------------------------------------------------

    def _fold_artifacts(self, block: Block) -> None:
        path = str(self._files["artifact"].path)
        for line in self._artifact.decode(block.view(), path, block.offset, self.issues):
            self._run(line.payload.manifest.run_ref).counts["artifacts"] += 1


def _fold_values(detail: RunDetail, lines: list[RunValueLine]) -> None:
    """The latest value per (subject, metric key), units and samples: C-level passes."""
    bodies = list(map(_BODY, lines))
    keys = list(map(_KEY, bodies))
    subjects = list(map(_SUBJECT, bodies))
    # Events have no metric key: compress drops them.
    detail.values.update(
        compress(zip(zip(subjects, keys, strict=True), map(_VALUE, bodies), strict=True), keys)
    )
    detail.units.update(compress(zip(keys, map(_UNIT, bodies), strict=True), map(_UNIT, bodies)))
    detail.keys.update(dict.fromkeys(compress(keys, keys)))
    for subject in dict.fromkeys(subjects):
        if subject is not None and subject.startswith("sample:") and subject not in detail.seen:
            detail.seen.add(subject)
            detail.samples.append(subject)


def _fold_events(detail: RunDetail, ref: str, block: Block) -> None:
    """The run's newest events, kept as raw lines (decoded when a page shows them)."""
    marker = run_marker(ref)
    buffer = block.buffer
    found: list[bytes] = []
    # From the block's end back: only its newest events can be among the run's newest.
    at = buffer.rfind(EVENT_LINE, block.start, block.end)
    while at >= 0 and len(found) < _MAX_EVENTS:
        start = buffer.rfind(b"\n", block.start, at) + 1 or block.start
        end = buffer.find(b"\n", at, block.end)
        line = buffer[max(start, block.start) : end]
        # The bytes may be in a metric's tags, the marker in an event's attributes: the
        # line's own type and run say.
        if marker in line and _is_event_of(line, ref):
            found.append(line)
        at = buffer.rfind(EVENT_LINE, block.start, start) if start > block.start else -1
    detail.events.extend(reversed(found))


def _is_event_of(line: bytes, ref: str) -> bool:
    try:
        kind = _KIND_OF_LINE.decode(line)
    except (msgspec.DecodeError, RecursionError):
        return False
    return kind.payload_type == "StructuredEventRecord" and kind.payload.envelope.run_ref == ref


def _subject_run(subject: str) -> str | None:
    """``sample:p.r.s.c`` (or ``stage:``, ``batch:``, ``run:``) -> ``run:p.r``."""
    scope = parse_scope(subject)
    return None if scope is None else scope.run_ref
