"""One pass over ``record.jsonl``, aggregating only what the answers need.

Each line is decoded into a narrow Struct: its type, the ref of the scope it belongs to
(``subject_ref``) and, for a comparison, the metric key and value; the envelope, ~60 % of
the line, is only skipped. A block holds ~500 records of a few dozen samples, so a subject
ref is parsed once per block, not once per record, and the rest is done by C-level passes
(``map`` with ``attrgetter``, slicing, ``zip``, ``itertools.compress``, ``list.extend``)
instead of a Python loop per record. Memory holds one block, the per-run counters, and the
latest value per (subject, metric key) of the wanted runs, plus the values appended since
they were last folded into it.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from itertools import compress, groupby, repeat
from operator import attrgetter, eq, itemgetter
from typing import Any, Final, cast

import msgspec

from .._format.index import IndexEntry
from .._format.lines import ENVELOPE, CountLine, ScanLine
from .._format.refs import SPLIT_LAST, ScopeRef, parse_sample_head, parse_scope, run_matches
from ._index import expand_entry
from ._read import Block, Issues, LineCutter, LineDecoder
from ._source import RecordScan

__all__ = ["DECODE_SIZE", "Accumulator", "BlockFeeder"]

DECODE_SIZE: Final = 512 << 10

_BODY = attrgetter("payload.payload")
_TYPE = attrgetter("payload_type")
_SUBJECT = attrgetter("subject_ref")
_KEY = attrgetter("metric_key")
_VALUE = attrgetter("value")

_HEAD = _FIRST = itemgetter(0)
_NAME = itemgetter(2)

_COMMON_TYPES: Final = ("MetricRecord", "StructuredEventRecord")
_MAX_CACHED_SCOPES: Final = 4096
_FOLD_AT: Final = 1 << 13

# What a subject ref says: (run ref, stage ref or None, for a sample the ref of the stage or
# batch it belongs to, else None).
_Where = tuple[str, str | None, str | None]
_UNSEEN: Final[_Where] = ("", None, None)  # a sentinel: not parsed yet


def _count_types(types: list[str]) -> Iterable[tuple[str, int]]:
    """(payload type, lines) of a block: counted with ``list.count`` when the block holds only
    metrics and events, the usual case (cheaper than hashing every item)."""
    counted = [(t, types.count(t)) for t in _COMMON_TYPES]
    if sum(n for _, n in counted) == len(types):
        return [(t, n) for t, n in counted if n]
    return Counter(types).items()


def _where(scope: ScopeRef | None) -> _Where | None:
    return None if scope is None else (scope.run_ref, scope.stage_ref, scope.parent_ref)


def _period(keys: list[str | None]) -> int | None:
    """The period P of a block's keys when every sample captures the same keys in the same
    order, each key once: then ``subjects[j::P]``/``values[j::P]`` are the samples and values
    of key ``keys[j]``, grouped by slicing, O(n) C-level work instead of O(n * keys), and
    events are never touched. Each key must have one slot in the period: then every value of
    a key is in its one column, in capture order. (With a key in two slots, a block that
    starts inside a sample puts the end of one sample and the start of the next in one row,
    and appending slot by slot would let an earlier value win.)
    """
    try:
        period = keys.index(keys[0], 1)
    except ValueError:
        return None
    if period > 64 or keys[:-period] != keys[period:]:
        return None
    metric_slots = [key for key in keys[:period] if key is not None]
    return period if len(set(metric_slots)) == len(metric_slots) else None


class UnattributableLine(Exception):
    """A line names no scope: no usable ``subject_ref`` and no valid envelope."""


class _Column:
    """The sample values of one (stage or batch, metric key), appended in capture order.

    Appending a block's names and values is sequential, cache-friendly work; building the
    name -> latest value mapping (later values overwrite earlier ones) is deferred to
    ``fold``, run when the appended part outgrows the mapping (so memory stays within about
    twice the answer) and at the end.
    """

    __slots__ = ("latest", "names", "values")

    def __init__(self) -> None:
        self.names: list[str] = []
        self.values: list[float | None] = []
        self.latest: dict[str, float | None] = {}

    def add(self, names: Iterable[str], values: Iterable[float | None]) -> None:
        self.names.extend(names)
        self.values.extend(values)
        if len(self.names) >= _FOLD_AT and len(self.names) >= len(self.latest):
            self.fold()

    def fold(self) -> dict[str, float | None]:
        self.latest.update(zip(self.names, self.values, strict=True))
        self.names.clear()
        self.values.clear()
        return self.latest


class _Block:
    """The scopes named in one block: where each subject ref belongs, and sample names."""

    __slots__ = ("bad", "name_of", "where_of")

    def __init__(self) -> None:
        self.where_of: dict[str, _Where] = {}
        self.name_of: dict[str, str] = {}  # sample ref -> sample name
        self.bad: list[str | None] = []  # subjects that name no scope


class Accumulator:
    """Feeds decoded blocks into a RecordScan with C-level passes over each block.

    ``times`` keeps the first and last record time per run (wanted for runs that have no
    CONTEXT lines, i.e. Contexta 1.0.0 workspaces); it decodes two envelopes per block.
    """

    def __init__(self, wanted: frozenset[str] | None, keep_values: bool, times: bool) -> None:
        self.scan = RecordScan()
        # Run names as the user gave them (full refs or suffixes): the values of every run
        # matching one are kept, so the scan need not wait for the names to be resolved.
        self.wanted = wanted
        self._decided: dict[str, bool] = {}
        self.keep_values = keep_values
        self.times = times
        # (parent ref of the samples, metric key) -> sample names and values in capture order.
        self.samples: dict[tuple[str, str], _Column] = {}
        self.others = self.scan.others
        # A sample ref without its name ("sample:p.r.s") or a run/stage/batch ref -> where;
        # a few per stage or batch, so parsed once and kept (bounded, for odd files).
        self._heads: dict[str, _Where | None] = {}
        self._scopes: dict[str, _Where | None] = {}

    def decoder(self) -> LineDecoder[Any]:
        return LineDecoder(ScanLine if self.keep_values else CountLine)

    def attributable(self, line: CountLine | ScanLine) -> str | None:
        """None when ``line`` names a scope, else the problem (for line-by-line decoding)."""
        subject = line.payload.payload.subject_ref
        if subject is not None and not self._resolve_each([subject]).bad:
            return None
        try:
            ENVELOPE.decode(line.payload.envelope)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return f"no subject_ref and no valid envelope: {exc}"
        return None

    def feed(self, lines: list[Any]) -> None:
        """Aggregate one block of decoded lines (raises UnattributableLine before changing
        anything when a line names no scope)."""
        if not lines:
            return
        bodies = list(map(_BODY, lines))
        subjects: list[Any] = list(map(_SUBJECT, bodies))
        # Lines of a sample are mostly consecutive: dedupe runs of equal refs first (an
        # equality test per line) rather than hashing every ref.
        block = self._resolve(dict.fromkeys(map(_FIRST, groupby(subjects))))
        if block.bad:
            subjects = self._repair(lines, subjects, block)
        keys: list[str | None] = []
        values: list[float | None] = []
        if self.keep_values:
            keys = list(map(_KEY, bodies))
            values = list(map(_VALUE, bodies))
        self._aggregate(block, list(map(_TYPE, lines)), subjects, keys, values, lines)

    def feed_entry(self, entry: IndexEntry) -> bool:
        """Aggregate the lines an index entry describes; False, with nothing changed, when a
        code is out of its table or a subject ref names no scope (then read the JSON)."""
        columns = expand_entry(entry)
        if columns is None:
            return False
        block = self._resolve(entry.subjects)
        if block.bad:
            return False
        self._aggregate(block, columns.types, columns.subjects, columns.keys, columns.values, None)
        return True

    def _aggregate(
        self,
        block: _Block,
        types: list[str],
        subjects: list[Any],
        keys: list[str | None],
        values: list[float | None],
        lines: list[Any] | None,
    ) -> None:
        scan = self.scan
        scan.records += len(subjects)
        places = set(block.where_of.values())
        runs = {run for run, _, _ in places}
        scan.stage_refs.update(stage for _, stage, _ in places)
        line_runs: list[str] | None = None
        if len(runs) == 1:
            (run,) = runs
            for payload_type, n in _count_types(types):
                scan.counts[(run, payload_type)] += n
        else:
            line_runs = [block.where_of[s][0] for s in subjects]
            scan.counts.update(zip(line_runs, types, strict=True))
        if self.times:
            assert lines is not None, "record times need the decoded lines"
            self._times(lines, runs, line_runs)
        if not self.keep_values:
            return
        if self.wanted is not None:
            decided = self._decided
            for run in runs - decided.keys():
                decided[run] = any(run_matches(run, name) for name in self.wanted)
            if not all(decided[run] for run in runs):
                if line_runs is None:
                    line_runs = [block.where_of[s][0] for s in subjects]
                keep = list(map(decided.__getitem__, line_runs))
                subjects = list(compress(subjects, keep))
                if not subjects:
                    return
                keys = list(compress(keys, keep))
                values = list(compress(values, keep))
                places = {block.where_of[s] for s in dict.fromkeys(subjects)}
        parents = {parent for _, _, parent in places}
        if len(parents) == 1:
            (parent,) = parents
            if parent is not None:
                self._samples(parent, subjects, keys, values, block.name_of)
                return
        # Samples of several stages or batches in one block (runs captured concurrently, or a
        # stage boundary), or run/stage/batch metrics: one group per parent.
        line_parents = [block.where_of[s][2] for s in subjects]
        for parent in dict.fromkeys(line_parents):
            chosen = list(map(eq, line_parents, repeat(parent)))
            group = (
                list(compress(subjects, chosen)),
                list(compress(keys, chosen)),
                list(compress(values, chosen)),
            )
            if parent is None:
                self._others(*group)
            else:
                self._samples(parent, *group, block.name_of)

    def _resolve(self, subjects: Iterable[str | None]) -> _Block:
        """Where each distinct subject ref of a block belongs. Usually every one is a sample
        of the same stage or batch: then a few C-level passes over the refs do it."""
        distinct = list(subjects)
        if None not in distinct:
            refs = cast(list[str], distinct)
            split = list(map(SPLIT_LAST, refs))
            heads = self._heads
            wheres = list(map(heads.get, map(_HEAD, split)))
            first = wheres[0]
            if first is not None and wheres.count(first) == len(wheres):
                names = list(map(_NAME, split))
                if "" not in names:
                    block = _Block()
                    block.where_of = dict.fromkeys(refs, first)
                    block.name_of = dict(zip(refs, names, strict=True))
                    return block
        return self._resolve_each(distinct)

    def _resolve_each(self, subjects: Iterable[str | None]) -> _Block:
        block = _Block()
        heads = self._heads
        scopes = self._scopes
        for subject in subjects:
            if subject is None:
                block.bad.append(subject)
                continue
            if subject.startswith("sample:"):
                head, _, name = subject.rpartition(".")
                where = heads.get(head, _UNSEEN)
                if where is _UNSEEN:
                    if len(heads) > _MAX_CACHED_SCOPES:
                        heads.clear()
                    where = heads[head] = _where(parse_sample_head(head))
                if where is None or not name:
                    block.bad.append(subject)
                    continue
                block.name_of[subject] = name
            else:
                where = scopes.get(subject, _UNSEEN)
                if where is _UNSEEN:
                    if len(scopes) > _MAX_CACHED_SCOPES:
                        scopes.clear()
                    where = scopes[subject] = _where(parse_scope(subject))
                if where is None:
                    block.bad.append(subject)
                    continue
            block.where_of[subject] = where
        return block

    def _repair(self, lines: list[Any], subjects: list[Any], block: _Block) -> list[Any]:
        """Lines without a usable subject ref (spans, odd files): the innermost ref of their
        envelope instead; failing that, their run ref, kept as it is."""
        bad = set(block.bad)
        repaired = list(subjects)
        for i, subject in enumerate(subjects):
            if subject not in bad:
                continue
            try:
                envelope = ENVELOPE.decode(lines[i].payload.envelope)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise UnattributableLine(str(exc)) from None
            for ref in (envelope.innermost(), envelope.run_ref):
                found = self._resolve_each([ref])
                if not found.bad:
                    repaired[i] = ref
                    block.where_of.update(found.where_of)
                    block.name_of.update(found.name_of)
                    break
            else:
                # Counted under its run ref as written; its values name no place and are
                # dropped when the metrics are arranged by run.
                repaired[i] = envelope.run_ref
                block.where_of[envelope.run_ref] = (envelope.run_ref, None, None)
        return repaired

    def _times(self, lines: list[Any], runs: set[str], line_runs: list[str] | None) -> None:
        if line_runs is None:
            (run,) = runs
            firsts, lasts = {run: 0}, {run: len(lines) - 1}
        else:
            lasts = {run: i for i, run in enumerate(line_runs)}
            firsts = {run: i for i, run in reversed(list(enumerate(line_runs)))}
        scan = self.scan
        for run, i in firsts.items():
            scan.first_time.setdefault(run, self._recorded_at(lines[i]))
        for run, i in lasts.items():
            scan.last_time[run] = self._recorded_at(lines[i])

    @staticmethod
    def _recorded_at(line: Any) -> str:
        try:
            return ENVELOPE.decode(line.payload.envelope).recorded_at
        except (msgspec.DecodeError, msgspec.ValidationError):
            return ""

    def _samples(
        self,
        parent: str,
        subjects: list[str],
        keys: list[str | None],
        values: list[float | None],
        name_of: Mapping[str, str],
    ) -> None:
        period = _period(keys) if len(keys) > 64 else None
        if period is not None:
            for j, key in enumerate(keys[:period]):
                if key is not None:
                    self._column(parent, key).add(
                        map(name_of.__getitem__, subjects[j::period]), values[j::period]
                    )
            return
        names = list(map(name_of.__getitem__, subjects))
        # One C-level pass per distinct key of the block (a handful), not a step per record;
        # compress keeps capture order, so the last value per sample wins.
        for key in dict.fromkeys(keys):
            if key is None:
                continue  # events and spans
            # operator.eq, not key.__eq__: str.__eq__(None) is NotImplemented, which is truthy.
            chosen = list(map(eq, keys, repeat(key)))
            self._column(parent, key).add(compress(names, chosen), compress(values, chosen))

    def _column(self, parent: str, key: str) -> _Column:
        column = self.samples.get((parent, key))
        if column is None:
            column = self.samples[(parent, sys.intern(key))] = _Column()
        return column

    def _others(
        self, subjects: list[str], keys: list[str | None], values: list[float | None]
    ) -> None:
        others = self.others
        for subject, key, value in zip(subjects, keys, values, strict=True):
            if key is not None:
                others[(subject, key)] = value

    def finish(self) -> RecordScan:
        """The scan of what was fed."""
        scan = self.scan
        if self.wanted is None:
            scan.kept = scan.run_refs()
        else:
            scan.kept = {run for run, keep in self._decided.items() if keep}
        scan.samples = {place: column.fold() for place, column in self.samples.items()}
        self.samples = {}
        return scan


class BlockFeeder:
    """Decodes blocks of complete lines (cut by its ``cutter``) and feeds them to an
    Accumulator, in place through a memoryview (no copy of the block)."""

    def __init__(self, acc: Accumulator, path: str, issues: Issues, offset: int = 0) -> None:
        self.acc = acc
        self.decoder = acc.decoder()
        self.path = path
        self.issues = issues
        self.cutter = LineCutter(offset)

    def feed(self, block: Block) -> None:
        # Decoded in pieces of about DECODE_SIZE: a piece and the objects decoded from it
        # stay in a core's cache while they are aggregated (docs/performance.md, Readers).
        buffer, start, cut = block.buffer, block.start, block.end
        view = memoryview(buffer)
        while start < cut:
            end = cut
            if end - start > DECODE_SIZE:
                end = buffer.rfind(b"\n", start, start + DECODE_SIZE) + 1
                if end <= start:  # a line longer than a piece
                    end = buffer.find(b"\n", start) + 1
            self._decode(view[start:end], block.offset + start - block.start)
            start = end

    def _decode(self, data: memoryview, offset: int) -> None:
        found = Issues()  # kept only if the piece is fed as decoded
        lines = self.decoder.decode(data, self.path, offset, found)
        try:
            self.acc.feed(lines)
        except UnattributableLine:
            # Rare: find the lines that name no scope, count them as corrupt, keep the rest
            # (this pass finds the undecodable lines again: counted once, here).
            lines = self.decoder.line_by_line(
                data, self.path, offset, self.issues, self.acc.attributable
            )
            self.acc.feed(lines)
        else:
            if found.corrupt_lines:
                self.issues.merge(found)

    def close(self) -> bool:
        """At the end of the file (or of a stretch before an index frame): True, and the file
        noted as torn, when a partial last line is left over (a line still being written)."""
        torn = self.cutter.torn
        if torn:
            self.issues.torn_tails.append(self.path)
        return torn
