"""Delivery: writing the writer's batches to the sinks, and telling what could not be written.

Runs on the writer thread (``deliver``); producers only count the lines the overflow policy
drops (``count_drop``), and flush/close ask for the failures not yet raised. Every sink encodes
a batch once; a batch that fails to encode is encoded again line by line, so that only the
lines at fault are lost (and reported), never the rest of their batch. A failed write is
retried with a doubling backoff, except after a failed fsync (the data may be gone from the page
cache: a retry could only pretend durability). What is lost is told twice: raised by the next
flush()/close() (DeliveryError), and written into the sink itself, once it recovers, as one
DEGRADATION line per run; lines dropped by ``overflow="drop_newest"`` get DEGRADATION lines too.
While a sink cannot write, what it is owed is added up: at most one DEGRADATION line per run
and kind waits for it, however long the outage (memory stays bounded, and the loss is recorded
compactly once it recovers).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from . import _clock
from ._errors import DeliveryError
from ._format.lines import DEGRADATION, DegradationRecord, Item
from ._log import log
from ._validation import writable_text
from .sinks import Chunk, FsyncError, Sink

__all__ = ["Delivery"]

_ENCODING: Final = "encoding"  # the target named for lines that failed to encode
_MAX_BACKOFF: Final = 2.0  # seconds: the longest wait between two tries of one write


@dataclass(slots=True)
class _Failure:
    count: int
    runs: Counter[str]
    error: str


@dataclass(slots=True)
class _Owed:
    """The DEGRADATION line owed to a sink for one run and kind: counts added up."""

    count: int
    first: str
    last: str
    reason: str  # the latest
    sink_name: str | None


_OwedLines = dict[tuple[str | None, str], _Owed]  # (run ref, degradation kind) -> the line


def _owe(
    owed: _OwedLines,
    run_ref: str | None,
    kind: str,
    count: int,
    first: str,
    last: str,
    reason: str,
    sink_name: str | None,
) -> None:
    line = owed.get((run_ref, kind))
    if line is None:
        owed[run_ref, kind] = _Owed(count, first, last, reason, sink_name)
        return
    line.count += count
    line.first = min(line.first, first)
    line.last = max(line.last, last)
    line.reason = reason


class _Drops:
    """Per-run counts of lines dropped by the overflow policy, until written as DEGRADATION."""

    __slots__ = ("first", "last", "per_run")

    def __init__(self) -> None:
        self.per_run: Counter[str | None] = Counter()
        self.first = ""
        self.last = ""


def _degradation(
    run_ref: str | None,
    count: int,
    kind: str,
    first: str,
    last: str,
    reason: str,
    sink_name: str | None,
) -> Item:
    """A DEGRADATION line: ``count`` lines of ``run_ref`` dropped or not delivered."""
    record = DegradationRecord(
        count=count,
        degradation_kind=kind,
        first_observed_at=first,
        last_observed_at=last,
        reason=reason,
        recorded_at=_clock.now(),
        run_ref=run_ref,
        sink_name=sink_name,
    )
    return Item(DEGRADATION, "DegradationRecord", None, run_ref, record)


def _describe(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a sink's error whose __str__ fails must not stop the writer
        return type(exc).__name__


class Delivery:
    """The sinks' side of one pipeline (per process: a forked child starts a new one)."""

    def __init__(
        self, sinks: Sequence[Sink], *, queue_size: int, max_retries: int, retry_backoff: float
    ) -> None:
        self.sinks = tuple(sinks)
        self._drop_reason = f"capture queue full (overflow='drop_newest', queue_size={queue_size})"
        self._max_retries = max_retries
        self._retry_backoff = retry_backoff
        self._lock = threading.Lock()  # failures and drops: producers and flushers read them
        self._failures: list[_Failure] = []
        self._reported = 0  # failures before this index were raised by a flush or close
        self._owed: dict[str, _OwedLines] = {s.name: {} for s in self.sinks}
        self._drops = _Drops()
        self.counts = Counter[str]()  # written, fsyncs, failed, retries, dropped

    # ---- producers -------------------------------------------------------------------

    def count_drop(self, run_ref: str | None) -> None:
        """A line of ``run_ref`` was dropped by the overflow policy: count it, and tell it in a
        DEGRADATION line with the next batch."""
        with self._lock:
            drops = self._drops
            stamp = _clock.now()
            if not drops.per_run:
                drops.first = stamp
            drops.last = stamp
            drops.per_run[run_ref] += 1
            self.counts["dropped"] += 1

    # ---- the writer thread -----------------------------------------------------------

    @property
    def owes_lines(self) -> bool:
        """DEGRADATION lines are still to be written (drops, or a sink that failed)."""
        return bool(self._drops.per_run) or any(self._owed.values())

    def deliver(self, batch: list[Item]) -> None:
        """Every sink encodes and writes ``batch``, with the DEGRADATION lines owed to it."""
        drops = self._take_drops()
        captured_at = _clock.now()
        for sink in self.sinks:
            owed = self._owed[sink.name]
            if drops is not None:
                for run_ref, n in drops.per_run.items():
                    why = self._drop_reason
                    _owe(owed, run_ref, "dropped", n, drops.first, drops.last, why, None)
            items = batch
            if owed:
                self._owed[sink.name] = {}  # owed again if their chunk fails (_record_failure)
                items = [
                    _degradation(run_ref, o.count, kind, o.first, o.last, o.reason, o.sink_name)
                    for (run_ref, kind), o in owed.items()
                ]
                items += batch
            try:
                chunks = sink.prepare(items, captured_at)
            except Exception:  # a line that cannot be encoded must not cost the others theirs
                chunks = self._prepare_apart(sink, items, captured_at)
            for chunk in chunks:
                self._write_chunk(sink, chunk)

    def _take_drops(self) -> _Drops | None:
        with self._lock:
            drops = self._drops
            if not drops.per_run:
                return None
            self._drops = _Drops()
        return drops

    def _prepare_apart(self, sink: Sink, items: list[Item], captured_at: str) -> list[Chunk]:
        """The batch failed to encode: find the line(s) at fault by encoding each line alone,
        report only those as lost, and encode the rest together again.

        Only this rare path pays for it; a batch that encodes (nearly always: validation
        refuses at the call what cannot be encoded) is encoded once, whole.
        """
        good: list[Item] = []
        bad: list[Item] = []
        first: Exception | None = None
        for item in items:
            try:
                sink.prepare([item], captured_at)
            except Exception as exc:
                bad.append(item)
                first = first or exc
            else:
                good.append(item)
        try:
            chunks = sink.prepare(good, captured_at) if good else []
        except Exception as exc:  # no single line at fault: a sink bug; the batch is lost
            self._record_failure(sink, Chunk("*", _ENCODING, b"", items), exc)
            return []
        if bad:
            assert first is not None
            self._record_failure(sink, Chunk("*", _ENCODING, b"", bad), first)
        return chunks

    def _write_chunk(self, sink: Sink, chunk: Chunk) -> None:
        delay = self._retry_backoff
        attempt = 0
        while True:
            try:
                sink.write(chunk)
            except FsyncError as exc:
                # The data may be gone from the page cache: never retry into false durability.
                self._record_failure(sink, chunk, exc)
                return
            except OSError as exc:
                if attempt >= self._max_retries:
                    self._record_failure(sink, chunk, exc)
                    return
                attempt += 1
                self.counts["retries"] += 1
                log(
                    "warning",
                    "contexta_async.write_retry",
                    sink=sink.name,
                    target=chunk.target,
                    attempt=attempt,
                    error=str(exc),
                )
                time.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF)
                continue
            except Exception as exc:  # a sink bug is reported like an I/O failure
                self._record_failure(sink, chunk, exc)
                return
            self.counts["written"] += len(chunk.items)
            if sink.fsync:
                self.counts["fsyncs"] += 1
            return

    def _record_failure(self, sink: Sink, chunk: Chunk, exc: BaseException) -> None:
        count = len(chunk.items)
        runs: Counter[str] = Counter(
            item.run_ref or "(none)" for item in chunk.items if item.family != DEGRADATION
        )
        lost = sum(runs.values())
        # Captured lines only, as DeliveryError counts them: an owed DEGRADATION line that
        # failed is owed again below, not lost (counting it each time would count it forever).
        self.counts["failed"] += lost
        # The reason is written into DEGRADATION lines: it must be writable, or that line
        # would fail (and be retried) forever.
        reason = writable_text(_describe(exc))
        error = f"{sink.name}: {chunk.target}: {reason}"
        log(
            "error",
            "contexta_async.write_failed",
            sink=sink.name,
            target=chunk.target,
            lines=count,
            error=reason,
        )
        if lost:
            # Only captured data is raised by flush()/close(); a DEGRADATION line that could
            # not be written is logged above and owed again, with the next batch.
            with self._lock:
                self._failures.append(_Failure(lost, runs, error))
        # Tell the story in the sink itself once it recovers: one DEGRADATION line per run and
        # kind, however many chunks failed meanwhile (their counts are added up).
        owed = self._owed[sink.name]
        if chunk.target != _ENCODING:  # a line that failed to encode would fail again
            for item in chunk.items:
                if item.family == DEGRADATION:
                    line: DegradationRecord = item.payload
                    _owe(
                        owed,
                        line.run_ref,
                        line.degradation_kind,
                        line.count,
                        line.first_observed_at,
                        line.last_observed_at,
                        line.reason,
                        line.sink_name,
                    )
        now = _clock.now()
        for run_ref, n in runs.items():
            _owe(owed, run_ref, "delivery_failed", n, now, now, reason, sink.name)

    # ---- flush and close -------------------------------------------------------------

    @property
    def reported(self) -> int:
        """How many failures were raised already: a flush raises those recorded after it."""
        return self._reported

    def raise_failures(self, start: int) -> None:
        """Raise DeliveryError for the failures recorded from index ``start`` on (``start``:
        ``reported`` when the flush began); from now on they count as raised."""
        with self._lock:
            # Every failure not yet raised is reported by the first flush or close to return,
            # and by every other one under way then (each waited on the lost lines: returning
            # would acknowledge them); a flush that begins later never raises it again.
            found = self._failures[start:]
            self._reported = max(self._reported, len(self._failures))
        if found:
            runs: Counter[str] = Counter()
            for failure in found:
                runs.update(failure.runs)
            raise DeliveryError(sum(f.count for f in found), runs, [f.error for f in found])
