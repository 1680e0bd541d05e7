"""One pass over ``record.jsonl``, aggregating only what the answers need.

Per block, the work is done by C-level passes (``map`` with ``attrgetter``, ``zip``,
``Counter.update``, ``dict.update``, ``itertools.compress``) instead of a Python loop per
record: that keeps the cost per record near msgspec's decoding cost. Memory holds one block,
the per-run counters, and the latest value per (subject, metric key) of the wanted runs.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterable
from itertools import compress, repeat
from operator import attrgetter, eq, is_not, itemgetter, not_
from pathlib import Path
from typing import Any, Final

import aiofiles
import anyio

from ._compare import RunMetrics, collect_metrics
from ._decode import CHUNK_SIZE, Issues, LineDecoder, RecordLine, TimedRecordLine, _Envelope
from ._errors import UnreadableFileError
from ._files import run_matches

__all__ = ["DECODE_SIZE", "Accumulator", "BlockFeeder", "RecordScan", "scan_records"]

DECODE_SIZE: Final = 512 << 10

_ENV = attrgetter("payload.envelope")
_RUN = attrgetter("run_ref")
_TYPE = attrgetter("payload_type")
_STAGE = attrgetter("stage_execution_ref")
_BATCH = attrgetter("batch_execution_ref")
_SAMPLE = attrgetter("sample_observation_ref")
_BODY = attrgetter("payload.payload")
_KEY = attrgetter("metric_key")
_VALUE = attrgetter("value")


_COMMON_TYPES: Final = ("MetricRecord", "StructuredEventRecord")


def _distinct(values: list[Any]) -> set[Any]:
    """``set(values)``; a block usually holds one run, stage and batch, and checking that
    with ``list.count`` (an equality test per item) is cheaper than hashing every item."""
    if values and values.count(values[0]) == len(values):
        return {values[0]}
    return set(values)


def _count_types(types: list[str]) -> Iterable[tuple[str, int]]:
    """(payload type, lines) of a block: counted with ``list.count`` when the block holds only
    metrics and events, the usual case (cheaper than hashing every item)."""
    counted = [(t, types.count(t)) for t in _COMMON_TYPES]
    if sum(n for _, n in counted) == len(types):
        return [(t, n) for t, n in counted if n]
    return Counter(types).items()


class RecordScan:
    """Per-run counts and stages of every run; the metrics of the wanted runs."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.stage_refs: set[str | None] = set()
        self.first_time: dict[str, str] = {}
        self.last_time: dict[str, str] = {}
        self.metrics: dict[str, RunMetrics] = {}
        self.records = 0

    def run_refs(self) -> set[str]:
        return {run for run, _ in self.counts}

    def merge(self, later: RecordScan) -> None:
        """Fold in the scan of a later part of the same file."""
        self.counts.update(later.counts)
        self.stage_refs.update(later.stage_refs)
        for run, stamp in later.first_time.items():
            self.first_time.setdefault(run, stamp)
        self.last_time.update(later.last_time)
        for run, metrics in later.metrics.items():
            mine = self.metrics.get(run)
            if mine is None:
                self.metrics[run] = metrics
            else:
                mine.merge(metrics)
        self.records += later.records


class Accumulator:
    """Feeds decoded blocks into a RecordScan with C-level passes over each block.

    ``times`` keeps the first and last record time per run (wanted for runs that have no
    CONTEXT lines, i.e. Contexta 1.0.0 workspaces); decoding the time costs a little.
    """

    def __init__(self, wanted: frozenset[str] | None, keep_values: bool, times: bool) -> None:
        self.scan = RecordScan()
        # Run names as the user gave them (full refs or suffixes): the values of every run
        # matching one are kept, so the scan need not wait for the names to be resolved.
        self.wanted = wanted
        self._decided: dict[str, bool] = {}
        self.keep_values = keep_values
        self.times = times
        # (parent ref of the samples, metric key) -> sample name -> the value captured last.
        self.samples: dict[tuple[str, str], dict[str, float | None]] = {}
        # (subject ref, metric key) -> the value captured last (run/stage/batch metrics).
        self.others: dict[tuple[str, str], float | None] = {}

    def decoder(self) -> LineDecoder[Any]:
        return LineDecoder(TimedRecordLine if self.times else RecordLine)

    def feed(self, lines: list[RecordLine]) -> None:
        if not lines:
            return
        scan = self.scan
        scan.records += len(lines)
        envs = list(map(_ENV, lines))
        runs = list(map(_RUN, envs))
        run_set = _distinct(runs)
        if len(run_set) == 1:
            (run,) = run_set
            for payload_type, n in _count_types(list(map(_TYPE, lines))):
                scan.counts[(run, payload_type)] += n
        else:
            scan.counts.update(zip(runs, map(_TYPE, lines), strict=True))
        stages = _distinct(list(map(_STAGE, envs)))
        scan.stage_refs.update(stages)
        if self.times:
            self._times(runs, run_set, envs)
        if not self.keep_values:
            return
        wanted = self.wanted
        if wanted is not None:
            decided = self._decided
            for run in run_set - decided.keys():
                decided[run] = any(run_matches(run, name) for name in wanted)
            kept = {run for run in run_set if decided[run]}
        if wanted is not None and kept != run_set:
            keep = list(map(kept.__contains__, runs))
            lines = list(compress(lines, keep))
            envs = list(compress(envs, keep))
            if not envs:
                return
            stages = set(map(_STAGE, envs))
        samples: list[Any] = list(map(_SAMPLE, envs))
        if None in samples:
            at_sample = list(map(is_not, samples, repeat(None)))
            elsewhere = list(map(not_, at_sample))
            self._others(compress(envs, elsewhere), compress(lines, elsewhere))
            lines = list(compress(lines, at_sample))
            envs = list(compress(envs, at_sample))
            samples = list(compress(samples, at_sample))
            if not envs:
                return
            stages = set(map(_STAGE, envs))
        batch_refs = list(map(_BATCH, envs))
        batches = _distinct(batch_refs)
        if len(stages) == 1 and len(batches) == 1:
            (stage,) = stages
            (batch,) = batches
            self._one_parent(batch or stage or "", samples, lines)
            return
        # Samples of several stages or batches in one block (runs captured concurrently, or a
        # run boundary): one group per parent, each grouped like a single-parent block.
        if batches == {None}:
            parents: list[Any] = list(map(_STAGE, envs))
        else:
            stage_refs = map(_STAGE, envs)
            parents = [b or s for b, s in zip(batch_refs, stage_refs, strict=True)]
        for parent in dict.fromkeys(parents):
            chosen = list(map(eq, parents, repeat(parent)))
            self._one_parent(
                parent or "", list(compress(samples, chosen)), list(compress(lines, chosen))
            )

    def _times(self, runs: list[str], run_set: set[str], envs: list[Any]) -> None:
        scan = self.scan
        if len(run_set) == 1:
            (run,) = run_set
            scan.first_time.setdefault(run, envs[0].recorded_at)
            scan.last_time[run] = envs[-1].recorded_at
            return
        for run, env in dict(zip(reversed(runs), reversed(envs), strict=True)).items():
            scan.first_time.setdefault(run, env.recorded_at)
        for run, env in dict(zip(runs, envs, strict=True)).items():
            scan.last_time[run] = env.recorded_at

    def _one_parent(self, parent: str, samples: list[str], lines: list[RecordLine]) -> None:
        # sample:<parent components>.<name>: the name is what follows the parent's components.
        cut = itemgetter(slice(len(parent) - parent.index(":") + len("sample:"), None))
        bodies = list(map(_BODY, lines))
        keys: list[str | None] = list(map(_KEY, bodies))
        values: list[float | None] = list(map(_VALUE, bodies))
        if len(keys) > 64 and self._periodic(parent, cut, samples, keys, values):
            return
        names = list(map(sys.intern, map(cut, samples)))
        # One C-level pass per distinct key of the block (a handful), not a step per record;
        # compress keeps capture order, so the last value per sample wins.
        for key in dict.fromkeys(keys):
            if key is None:
                continue  # events and spans
            # operator.eq, not key.__eq__: str.__eq__(None) is NotImplemented, which is truthy.
            chosen = list(map(eq, keys, repeat(key)))
            self._target(parent, key).update(
                zip(compress(names, chosen), compress(values, chosen), strict=False)
            )

    def _periodic(
        self,
        parent: str,
        cut: Callable[[str], str],
        samples: list[str],
        keys: list[str | None],
        values: list[float | None],
    ) -> bool:
        """Group by slicing when every sample captures the same keys in the same order.

        Then the keys repeat with a period P and ``samples[j::P]``/``values[j::P]`` are the
        samples and values of key ``keys[j]``: O(n) C-level work instead of O(n * keys), and
        events are never touched. Used only when each (sample, key) occurs once in the block,
        so order cannot matter.
        """
        try:
            period = keys.index(keys[0], 1)
        except ValueError:
            return False
        if period > 64 or keys[:-period] != keys[period:]:
            return False
        slots = keys[:period]
        metric_slots = [key for key in slots if key is not None]
        if len(set(metric_slots)) != len(metric_slots):
            return False  # a key twice per sample: keep capture order with the general path
        columns = []
        # The metrics of one sample usually share its sample ref: cut and intern the names
        # once per distinct column of refs, not once per metric.
        names_of: list[tuple[list[str], list[str]]] = []
        for j, key in enumerate(slots):
            if key is None:
                continue
            column = samples[j::period]
            names = next((cut_names for known, cut_names in names_of if known == column), None)
            if names is None:
                if len(set(column)) != len(column):
                    return False  # a sample captured twice in the block
                names = list(map(sys.intern, map(cut, column)))
                names_of.append((column, names))
            columns.append((key, names, values[j::period]))
        for key, names, column_values in columns:
            self._target(parent, key).update(zip(names, column_values, strict=True))
        return True

    def _target(self, parent: str, key: str) -> dict[str, float | None]:
        target = self.samples.get((parent, key))
        if target is None:
            target = self.samples[(parent, sys.intern(key))] = {}
        return target

    def _others(self, envs: Iterable[_Envelope], lines: Iterable[RecordLine]) -> None:
        others = self.others
        for env, line in zip(envs, lines, strict=True):
            body = line.payload.payload
            if body.metric_key is None:
                continue
            subject = env.batch_execution_ref or env.stage_execution_ref or env.run_ref
            others[(subject, body.metric_key)] = body.value

    def finish(self) -> RecordScan:
        if self.wanted is None:
            runs = self.scan.run_refs()
        else:
            runs = {run for run, keep in self._decided.items() if keep}
        self.scan.metrics = collect_metrics(self.samples, self.others, runs)
        self.samples = {}
        self.others = {}
        return self.scan


class BlockFeeder:
    """Cuts raw blocks at their last newline and feeds the complete lines to an Accumulator.

    The complete lines are decoded in place through a memoryview (no copy of the block); only
    the partial line carried over from the previous block is glued to the start of this one.
    """

    def __init__(self, acc: Accumulator, path: str, issues: Issues, offset: int = 0) -> None:
        self.acc = acc
        self.decoder = acc.decoder()
        self.path = path
        self.issues = issues
        self.offset = offset
        self.tail = b""

    def feed(self, block: bytes) -> None:
        cut = block.rfind(b"\n")
        if cut < 0:
            self.tail += block
            return
        start = 0
        if self.tail:
            first = block.find(b"\n")
            head = self.tail + block[: first + 1]
            self._decode(head)
            start = first + 1
        # Decoded in pieces of about DECODE_SIZE: a piece and the objects decoded from it stay
        # in a core's cache while they are aggregated (measured ~9% less CPU than 2 MiB).
        view = memoryview(block)
        while start <= cut:
            end = cut + 1
            if end - start > DECODE_SIZE:
                end = block.rfind(b"\n", start, start + DECODE_SIZE) + 1
                if end <= start:  # a line longer than a piece
                    end = block.find(b"\n", start) + 1
            self._decode(view[start:end])
            start = end
        self.tail = block[cut + 1 :]

    def _decode(self, data: bytes | memoryview) -> None:
        self.acc.feed(self.decoder.decode(data, self.path, self.offset, self.issues))
        self.offset += len(data)

    def close(self) -> None:
        """At the end of the file: a partial last line is a line still being written."""
        if self.tail.strip():
            self.issues.torn_tails.append(self.path)
        self.tail = b""


async def scan_records(
    path: Path,
    issues: Issues,
    *,
    wanted: frozenset[str] | None = None,
    keep_values: bool = True,
    times: bool = False,
    chunk_size: int = CHUNK_SIZE,
) -> RecordScan:
    """Scan ``record.jsonl`` in this process. With ``keep_values``, keep the latest value per
    (subject, key) of the ``wanted`` runs (every run when ``wanted`` is None).

    The next block is read (in aiofiles' worker thread, which releases the GIL) while this one
    is decoded, so reading and decoding overlap; at most three blocks are held.
    """
    acc = Accumulator(wanted, keep_values, times)
    feeder = BlockFeeder(acc, str(path), issues)
    failure: OSError | None = None
    try:
        handle = await aiofiles.open(path, "rb")
    except FileNotFoundError:
        return acc.finish()
    except OSError as exc:
        raise UnreadableFileError(str(path), exc.strerror or str(exc)) from exc
    send, receive = anyio.create_memory_object_stream[bytes](1)

    async def produce() -> None:
        nonlocal failure
        async with send:
            try:
                while block := await handle.read(chunk_size):
                    await send.send(block)
            except OSError as exc:
                failure = exc

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(produce)
            async with receive:
                async for block in receive:
                    feeder.feed(block)
    finally:
        await handle.close()
    if failure is not None:
        raise UnreadableFileError(str(path), failure.strerror or str(failure)) from failure
    feeder.close()
    return acc.finish()
