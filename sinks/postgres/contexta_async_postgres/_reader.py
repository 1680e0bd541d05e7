"""The readers over the store: ``PostgresSource``, a ``RecordSource`` reading the store.

``Workspace("postgresql://...")`` (and ``contexta-async --workspace postgresql://...``) read
through it, and every answer is computed from what it returns by the readers' own aggregate and
analysis code, exactly as from a workspace folder. What is pushed into SQL:

- runs and stages come from the shard-merged views ``runs`` and ``stages`` (a run captured by
  several workspaces is one run; its times in the format's own form,
  ``2026-11-26T06:25:51.650841Z``); a run's tags from the raw line of each shard's newest
  ``Run`` line;
- record counts per (run, stage, payload type), grouped in SQL;
- with ``values``, the latest value of each metric per subject (sample, or run, stage, batch)
  and key, chosen in SQL with ``DISTINCT ON``: only one row per sample and key comes back,
  never the records.

"Latest" is what the local reader calls latest: the line captured last, i.e. the highest byte
offset within a workspace's ``record.jsonl``. Across the shards of one run, the shards are
taken in the order they started (the first record time of the run in each workspace, then
the workspace id), one after the other: a later shard's value wins, as it would in a folder
holding the shards' lines in that order. ``records`` streams in the same order.

A record is attributed to the run and stage of its envelope (capture always writes the
envelope consistent with ``subject_ref``; the local reader parses ``subject_ref``).

A read touches the lines of the runs it is about and no others: listing (no run named) reads
every run; a read that names runs reads every run's metadata (``runs``, ``stages``) and every
run *ref* (to resolve names exactly as a folder does), but the records, sample lines and
artifacts of the named runs only, through the schema's run indexes (version 2; a version-1
store gives the same answers, scanning). So ``SourceData.artifacts`` holds the named runs'
artifacts (an empty list for every other run), and ``scan.counts`` the named runs' counts
(other runs appear with a count of 0, so that their refs are known).

What a store cannot report: which lines the shipper skipped as corrupt. It counts them per
workspace and file (``positions.lines_skipped``); a read reports the count of the workspaces
holding the runs read (every workspace when listing) as ``ReadReport.corrupt_lines``, without
``problems`` (no line numbers are kept) and without ``torn_tails`` (a torn tail is not
shipped until its line is complete: nothing of it is in the store).

Every blocking psycopg call runs in one of anyio's worker threads, so the event loop stays
free on asyncio and trio alike. Each read is one read-only REPEATABLE READ transaction: its
queries see one snapshot of the store, however many shippers are writing.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, Collection, Generator, Iterable, Iterator, Sequence
from typing import Any, Final

import anyio
import anyio.to_thread
import msgspec
import psycopg
from psycopg import IsolationLevel, sql

from contexta_async._format.lines import ArtifactLine, ContextLine, FullRecordLine
from contexta_async._format.refs import (
    ScopeRef,
    components,
    last_component,
    parse_sample_head,
    run_matches,
)
from contexta_async.readers import EmptyWorkspaceError, ReadReport, RecordRow
from contexta_async.readers._local import artifact_blocks, record_row
from contexta_async.readers._source import (
    ArtifactInfo,
    RecordScan,
    RowFilter,
    RunInfo,
    SampleInfo,
    SourceData,
    resolve_run_ref,
)

from ._errors import SchemaVersionError, StoreError
from ._schema import SCHEMA, SCHEMA_VERSION, store_version
from ._target import Target, parse_target

__all__ = ["APPLICATION_NAME", "PostgresSource"]

APPLICATION_NAME: Final = "contexta-async-read"
"""How a reader's sessions show in ``pg_stat_activity``."""

# Rows fetched per round trip (and per thread hop) while streaming records.
_FETCH: Final = 2000
# Sample lines fetched per round trip while reading the samples' clusters and epochs.
_FETCH_SAMPLES: Final = 20_000
# The schema version that has the run indexes (records, context_lines, artifacts by run_ref).
_INDEXED: Final = 2
# The files whose skipped lines a read reports, as the folder's reader reads them.
_READ_FILES: Final = ("context.jsonl", "record.jsonl", "artifact.jsonl")
# The record types whose rows ``records`` streams, per kind.
_TYPES: Final = {
    "metric": "MetricRecord",
    "event": "StructuredEventRecord",
    "span": "TraceSpanRecord",
}
_TIME: Final = """to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""

Connection = psycopg.Connection[tuple[Any, ...]]
# (run ref, workspace id) -> the shard's place among the run's shards (0 first).
Ranks = dict[tuple[str, uuid.UUID], int]

_CONTEXT = msgspec.json.Decoder(ContextLine)
_ARTIFACT = msgspec.json.Decoder(ArtifactLine)
_RECORD = msgspec.json.Decoder(FullRecordLine)


def _q(text: str) -> sql.Composed:
    return sql.SQL(text).format(s=sql.Identifier(SCHEMA))


class PostgresSource:
    """The records of a PostgreSQL store (``postgresql://`` or ``postgres://`` URL), as a
    ``contexta_async.readers.RecordSource``: ``Workspace(url)`` opens one.

    The URL is parsed at once (ValidationError naming ``field`` for a malformed one); the
    store is first reached by a read. Its password is never shown: ``describe()`` and
    ``repr()`` show ``postgresql://user@host:port/database``, errors ``host:port/database``.
    """

    def __init__(self, url: str, *, field: str = "workspace") -> None:
        self.target: Target = parse_target(url, field=field)
        self.last_report = ReadReport()

    def describe(self) -> str:
        """The store's URL without its password (``postgresql://user@host:port/db``)."""
        return self.target.redacted_url

    def __repr__(self) -> str:
        return f"PostgresSource({self.describe()!r})"

    # ---- connection ---------------------------------------------------------------------

    def _connect(self) -> tuple[Connection, int] | None:
        """A read-only connection and the store's schema version; None when the store holds
        no schema yet (empty)."""
        try:
            conn: Connection = psycopg.connect(
                self.target.url, application_name=APPLICATION_NAME, connect_timeout=10
            )
        except psycopg.Error as exc:
            raise self.target.connection_error(exc) from None
        try:
            conn.isolation_level = IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            version = store_version(conn)
            conn.rollback()
        except psycopg.OperationalError as exc:
            conn.close()
            raise self.target.connection_error(exc) from None
        except BaseException:
            conn.close()
            raise
        if version is None:
            conn.close()
            return None
        if version > SCHEMA_VERSION:
            conn.close()
            raise SchemaVersionError(version, SCHEMA_VERSION, self.target.display, reading=True)
        return conn, version

    def _error(self, exc: psycopg.Error) -> StoreError:
        if isinstance(exc, psycopg.OperationalError):
            return self.target.connection_error(exc)
        reason = self.target.redact(str(exc).strip().splitlines()[0] if str(exc) else "")
        return StoreError(f"reading the store at {self.target.display} failed: {reason}")

    # ---- read -----------------------------------------------------------------------------

    async def read(self, runs: Collection[str] | None, *, values: bool) -> SourceData:
        wanted = None if runs is None else tuple(runs)
        data = await anyio.to_thread.run_sync(self._read, wanted, values, abandon_on_cancel=True)
        self.last_report = data.report
        return data

    def _read(self, wanted: tuple[str, ...] | None, values: bool) -> SourceData:
        found = self._connect()
        if found is None:
            return SourceData({}, RecordScan(), {}, ReadReport())
        conn, version = found
        try:
            with conn:
                return _read_store(conn, wanted, values, indexed=version >= _INDEXED)
        except psycopg.Error as exc:
            raise self._error(exc) from None

    # ---- records ----------------------------------------------------------------------------

    async def records(self, run: str, rows: RowFilter) -> AsyncGenerator[RecordRow, None]:
        report: list[ReadReport] = []
        blocks = self._rows(run, rows, report)
        try:
            while (block := await anyio.to_thread.run_sync(next, blocks, None)) is not None:
                for row in block:
                    yield row
        finally:
            # Closing the cursor and the connection talks to the server: in a worker thread
            # too, shielded so that a cancelled stream still closes them.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(blocks.close)
        self.last_report = report[0] if report else ReadReport()

    async def record_blocks(
        self, refs: Sequence[str], rows: RowFilter
    ) -> AsyncGenerator[list[RecordRow], None]:
        report: list[ReadReport] = []
        blocks = self._rows_of(list(dict.fromkeys(refs)), rows, report)
        try:
            while (block := await anyio.to_thread.run_sync(next, blocks, None)) is not None:
                yield block
        finally:
            with anyio.CancelScope(shield=True):  # as in records
                await anyio.to_thread.run_sync(blocks.close)
        self.last_report = report[0] if report else ReadReport()

    def _rows_of(
        self, refs: list[str], rows: RowFilter, report: list[ReadReport]
    ) -> Generator[list[RecordRow], None, None]:
        """The rows of the runs ``refs`` a block at a time (blocking), from one server-side
        cursor per shard over all of them: a block of rows in memory at a time, beside the
        clusters and epochs of these runs' samples (of no other run). What the shipper
        skipped in their workspaces goes to ``report`` (``last_report`` once done)."""
        found = self._connect()
        if found is None or not refs:
            if found is not None:
                found[0].close()
            return
        conn = found[0]
        try:
            with conn:
                yield from self._stream_many(conn, refs, rows, report)
        except psycopg.Error as exc:
            raise self._error(exc) from None
        finally:
            conn.close()

    def _stream_many(
        self, conn: Connection, refs: list[str], rows: RowFilter, report: list[ReadReport]
    ) -> Generator[list[RecordRow], None, None]:
        types = [_TYPES[k] for k in sorted(rows.kinds) if k in _TYPES]
        ranks = _ranks(conn, refs)
        wanted = frozenset(refs)
        # The files a folder's stream reads lines of (its sample scan reports nothing).
        files = ["record.jsonl"] if types else []
        if "artifact" in rows.kinds:
            files.append("artifact.jsonl")
        report.append(ReadReport(corrupt_lines=_skipped(conn, refs, ranks, files)))
        if types:
            # The shards in the order they started, each in capture order (a folder holding
            # the shards' lines one after the other reads the same).
            shards = conn.execute(
                _q(
                    "SELECT workspace_id FROM {s}.records WHERE run_ref = ANY(%s) "
                    "GROUP BY workspace_id ORDER BY min(recorded_at), workspace_id"
                ),
                (refs,),
            ).fetchall()
            kinds = set(rows.kinds)
            # The streamed runs' samples only (a store holds other runs' too).
            infos = {r: info for r, _, info, _ in _sample_infos(conn, ranks, refs)}
            for (workspace,) in shards:
                with conn.cursor(name="contexta_records") as cursor:
                    cursor.itersize = _FETCH
                    cursor.execute(
                        _q(
                            "SELECT raw FROM {s}.records WHERE workspace_id = %s "
                            "AND run_ref = ANY(%s) AND payload_type = ANY(%s) "
                            "ORDER BY byte_offset"
                        ),
                        (workspace, refs, types),
                    )
                    while batch := cursor.fetchmany(_FETCH):
                        out = []
                        for (raw,) in batch:
                            try:
                                line = _RECORD.decode(raw)
                            except (msgspec.DecodeError, msgspec.ValidationError):
                                continue  # a line of another shape: no row, as locally
                            run = line.payload.envelope.run_ref
                            if run not in wanted:
                                continue
                            row = record_row(
                                line, run, kinds, rows.key, rows.stage, rows.sample, infos
                            )
                            if row is not None:
                                out.append(row)
                        yield out
        if "artifact" in rows.kinds:
            artifacts = _artifacts(conn, ranks, refs)
            yield from artifact_blocks(artifacts, refs, rows)

    def _rows(
        self, name: str, rows: RowFilter, report: list[ReadReport]
    ) -> Generator[list[RecordRow], None, None]:
        """The run's rows a block at a time (blocking), from a server-side cursor per shard:
        constant memory however large the run."""
        found = self._connect()
        if found is None:
            raise EmptyWorkspaceError(self.describe())
        conn, version = found
        try:
            with conn:
                yield from self._stream(conn, name, rows, report, indexed=version >= _INDEXED)
        except psycopg.Error as exc:
            raise self._error(exc) from None
        finally:
            conn.close()

    def _stream(
        self,
        conn: Connection,
        name: str,
        rows: RowFilter,
        report: list[ReadReport],
        *,
        indexed: bool,
    ) -> Generator[list[RecordRow], None, None]:
        known = {
            str(r)
            for (r,) in conn.execute(
                _q(
                    "SELECT run_ref FROM {s}.runs UNION SELECT run_ref FROM {s}.stages "
                    "UNION SELECT run_ref FROM {s}.artifacts"
                )
            )
            if r is not None
        }
        if not any(ref == name.strip() or run_matches(ref, name) for ref in known):
            # A run known only from its records (a Contexta 1.0.0 workspace): look there.
            known |= _run_refs(conn, "records", indexed=indexed)
        if not known:
            raise EmptyWorkspaceError(self.describe())
        yield from self._stream_many(conn, [resolve_run_ref(name, known)], rows, report)


def _time(column: str) -> str:
    return _TIME.format(column)


def _read_store(
    conn: Connection, wanted: tuple[str, ...] | None, values: bool, *, indexed: bool
) -> SourceData:
    """Everything the answers are computed from, in one snapshot (blocking): every run's
    metadata and ref, and the lines of the runs ``wanted`` names (every run when None)."""
    runs = _runs(conn)
    # Every run ref, to resolve the names as a folder would (ambiguity included).
    from_records = _run_refs(conn, "records", indexed=indexed)
    from_artifacts = _run_refs(conn, "artifacts", indexed=indexed)
    known = set(runs) | from_records | from_artifacts
    if wanted is None:
        named = known
    else:
        named = {r for r in known if any(run_matches(r, n) for n in wanted)}
    scan = RecordScan()
    for ref in from_records - named:
        scan.counts[(ref, "")] = 0  # known by its ref, not read
    # Counts per run, stage and type, and each shard's first record time (its rank).
    first: dict[tuple[str, uuid.UUID], Any] = {}
    if named & from_records:
        for run, stage, workspace, payload_type, n, earliest in conn.execute(
            _q(
                "SELECT run_ref, stage_ref, workspace_id, payload_type, count(*), "
                "min(recorded_at) FROM {s}.records WHERE run_ref = ANY(%s) "
                "GROUP BY run_ref, stage_ref, workspace_id, payload_type"
            ),
            (sorted(named & from_records),),
        ):
            scan.counts[(run, payload_type or "")] += int(n)
            scan.stage_refs.add(stage)
            scan.records += int(n)
            seen = first.get((run, workspace), earliest)
            first[(run, workspace)] = (
                earliest if seen is None else seen if earliest is None else min(seen, earliest)
            )
    ranks = _rank(first)
    record_runs = named & from_records
    _times(conn, scan, [r for r in record_runs if r not in runs], ranks)
    samples: dict[str, dict[str, SampleInfo]] = {}
    reopened: dict[str, int] = {}
    if values:
        scan.kept = set(record_runs)
        if scan.kept:
            _values(conn, scan, ranks)
            # As a folder's read: the samples' clusters and epochs only with the values.
            samples, reopened = _sample_context(conn, ranks, sorted(scan.kept))
    if wanted is None:
        artifacts = _artifacts(conn, ranks, None)
    else:
        artifacts = {ref: [] for ref in from_artifacts}  # known by its ref, not read
        if named & from_artifacts:
            artifacts.update(_artifacts(conn, ranks, sorted(named & from_artifacts)))
    skipped = _skipped(conn, None if wanted is None else sorted(named), ranks, _READ_FILES)
    return SourceData(runs, scan, artifacts, ReadReport(corrupt_lines=skipped), samples, reopened)


def _run_refs(conn: Connection, table: str, *, indexed: bool) -> set[str]:
    """Every run ref of ``table`` (``records`` or ``artifacts``)."""
    if indexed:
        # A skip scan of the run index: one index probe per run, however many lines each.
        query = (
            "WITH RECURSIVE refs(run_ref) AS ("
            "  (SELECT run_ref FROM {s}.{t} WHERE run_ref IS NOT NULL ORDER BY run_ref LIMIT 1)"
            "  UNION ALL"
            "  SELECT (SELECT x.run_ref FROM {s}.{t} x WHERE x.run_ref > refs.run_ref"
            "          ORDER BY x.run_ref LIMIT 1)"
            "  FROM refs WHERE refs.run_ref IS NOT NULL"
            ") SELECT run_ref FROM refs WHERE run_ref IS NOT NULL"
        )
    else:
        query = "SELECT DISTINCT run_ref FROM {s}.{t} WHERE run_ref IS NOT NULL"
    found = conn.execute(sql.SQL(query).format(s=sql.Identifier(SCHEMA), t=sql.Identifier(table)))
    return {str(r) for (r,) in found}


def _skipped(
    conn: Connection, refs: Sequence[str] | None, ranks: Ranks, files: Sequence[str]
) -> int:
    """The lines of ``files`` the shipper skipped as corrupt in the workspaces holding lines
    of the runs ``refs`` (every workspace when None): a skipped line may have been one of
    theirs, as a corrupt line in a folder may have been one of its runs'."""
    if refs is None:
        row = conn.execute(
            _q("SELECT sum(lines_skipped) FROM {s}.positions WHERE file = ANY(%s)"),
            (list(files),),
        ).fetchone()
        return int(row[0] or 0) if row else 0
    if not refs:
        return 0
    wanted = set(refs)
    workspaces = {ws for (run, ws) in ranks if run in wanted}  # shards with records
    row = conn.execute(
        _q(
            "SELECT sum(lines_skipped) FROM {s}.positions WHERE file = ANY(%s) "
            "AND (workspace_id = ANY(%s) OR workspace_id IN ("
            "  SELECT workspace_id FROM {s}.context_lines WHERE kind = 'run' "
            "  AND run_ref = ANY(%s)"
            "  UNION SELECT workspace_id FROM {s}.artifacts WHERE run_ref = ANY(%s)))"
        ),
        (list(files), list(workspaces), list(refs), list(refs)),
    ).fetchone()
    return int(row[0] or 0) if row else 0


def _sample_context(
    conn: Connection, ranks: Ranks, refs: list[str]
) -> tuple[dict[str, dict[str, SampleInfo]], dict[str, int]]:
    """What the samples' opening lines of the runs ``refs`` say, as the folder reader's
    ``SampleScan`` reads it: the refs opened more than once (over all shards: a sample two
    shards both captured is a duplicate, as in a folder holding both), and each sample's
    cluster and epoch (the last opening line in shard order wins)."""
    reopened = {
        str(ref): int(n)
        for ref, n in conn.execute(
            _q(
                "SELECT ref, count(*) FROM {s}.context_lines WHERE kind = 'sample' "
                "AND run_ref = ANY(%s) AND status = 'open' GROUP BY ref HAVING count(*) > 1"
            ),
            (refs,),
        )
    }
    samples: dict[str, dict[str, SampleInfo]] = {}
    for _, parent, info, component in _sample_infos(conn, ranks, refs):
        samples.setdefault(parent, {})[component] = info
    return samples, reopened


def _sample_infos(
    conn: Connection, ranks: Ranks, refs: list[str]
) -> Iterator[tuple[str, str, SampleInfo, str]]:
    """(ref, stage or batch ref, SampleInfo, last ref component) of every sample opening line
    of the runs ``refs`` that gives a cluster or an epoch, in shard order; fetched from a
    server-side cursor a bounded number of lines at a time."""
    shards = [(run, ws, rank) for (run, ws), rank in ranks.items()]
    query = _q(
        # jsonb (and json's operators) refuse a line holding the escape \u0000 anywhere (a
        # field of a newer writer, a hand edit, kept raw by the shipper): a line with a \u
        # escape (capture writes one only for a control character) comes back whole, and is
        # decoded here as the folder reader decodes it.
        "SELECT c.ref, coalesce(c.batch_ref, c.stage_ref), j.p ->> 'cluster', j.p ->> 'epoch', "
        "CASE WHEN n.escaped THEN c.raw END "
        "FROM {s}.context_lines c "
        "LEFT JOIN unnest(%s::text[], %s::uuid[], %s::int[]) AS sh(run_ref, workspace_id, rank) "
        "ON c.run_ref = sh.run_ref AND c.workspace_id = sh.workspace_id "
        "CROSS JOIN LATERAL (SELECT strpos(c.raw, '\\u') > 0 AS escaped) n "
        "CROSS JOIN LATERAL "
        "(SELECT CASE WHEN n.escaped THEN NULL ELSE c.raw::jsonb -> 'payload' END AS p) j "
        "WHERE c.kind = 'sample' AND c.run_ref = ANY(%s) AND c.status = 'open' "
        "AND (strpos(c.raw, '\"cluster\":') > 0 OR strpos(c.raw, '\"epoch\":') > 0) "
        # A shard without records ranks first, as it did (0); byte order within a shard.
        "ORDER BY coalesce(sh.rank, 0), c.workspace_id, c.byte_offset"
    )
    params = ([s[0] for s in shards], [s[1] for s in shards], [s[2] for s in shards], refs)
    with conn.cursor(name="contexta_samples") as cursor:
        cursor.itersize = _FETCH_SAMPLES
        cursor.execute(query, params)
        while batch := cursor.fetchmany(_FETCH_SAMPLES):
            for ref, parent, cluster, raw_epoch, raw in batch:
                if raw is not None:
                    cluster, raw_epoch = _cluster_epoch(raw)
                if parent is None or (cluster is None and raw_epoch is None):
                    continue
                component = last_component(ref) or ref
                item, epoch = component, None
                if raw_epoch is not None:
                    epoch = int(raw_epoch)
                    suffix = f"-epoch-{epoch}"
                    if component.endswith(suffix) and len(component) > len(suffix):
                        item = component[: -len(suffix)]
                yield str(ref), str(parent), SampleInfo(item, epoch, cluster), component


class _SampleMeta(msgspec.Struct, gc=False):
    cluster: Any = None
    epoch: Any = None


class _SampleOpening(msgspec.Struct, gc=False):
    payload: _SampleMeta | None = None


# Only the two fields are decoded: the others' escapes are skipped, not checked.
_decode_opening = msgspec.json.Decoder(_SampleOpening).decode


def _cluster_epoch(raw: str) -> tuple[str | None, str | None]:
    """The payload's cluster and epoch as ``->>`` gives them (a string's content, any other
    value's JSON text, None for null or none), from a line with an escape the server's JSON
    may refuse."""
    try:
        payload = _decode_opening(raw).payload
    except (msgspec.DecodeError, RecursionError):  # a ValidationError is a DecodeError
        return None, None
    if payload is None:
        return None, None
    return _as_text(payload.cluster), _as_text(payload.epoch)


def _as_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return msgspec.json.encode(value).decode()


def _rank(first: dict[tuple[str, uuid.UUID], Any]) -> Ranks:
    """Each run's shards numbered in the order they started (first record time, then id)."""
    by_run: dict[str, list[tuple[bool, Any, str, uuid.UUID]]] = {}
    for (run, workspace), earliest in first.items():
        by_run.setdefault(run, []).append((earliest is None, earliest, str(workspace), workspace))
    ranks: Ranks = {}
    for run, shards in by_run.items():
        shards.sort(key=lambda s: (s[0], s[1] if s[1] is not None else 0, s[2]))
        for i, shard in enumerate(shards):
            ranks[(run, shard[3])] = i
    return ranks


def _ranks(conn: Connection, refs: list[str]) -> Ranks:
    first = {
        (run, workspace): earliest
        for run, workspace, earliest in conn.execute(
            _q(
                "SELECT run_ref, workspace_id, min(recorded_at) FROM {s}.records "
                "WHERE run_ref = ANY(%s) GROUP BY run_ref, workspace_id"
            ),
            (refs,),
        )
    }
    return _rank(first)


def _runs(conn: Connection) -> dict[str, RunInfo]:
    """Runs from the shard-merged ``runs`` view, stages from ``stages``, tags from the raw
    line of each shard's newest Run line (a later shard's tag wins)."""
    runs: dict[str, RunInfo] = {}
    for ref, project, name, status, started, ended, dataset, failure in conn.execute(
        _q(
            f"SELECT run_ref, project_ref, name, status, {_time('started_at')}, "
            f"{_time('ended_at')}, dataset_ref, failure_reason FROM {{s}}.runs "
            "WHERE run_ref IS NOT NULL"
        )
    ):
        info = runs[ref] = RunInfo(ref)
        if name:
            info.name = name
        if project:
            info.project = components(project)
        info.status = status
        info.started_at = started
        info.ended_at = ended
        info.dataset_ref = dataset
        info.failure_reason = failure
    if runs:
        for (raw,) in conn.execute(
            _q(
                "SELECT c.raw FROM {s}.scope_shards sh JOIN {s}.context_lines c "
                "USING (workspace_id, byte_offset) WHERE sh.kind = 'run' "
                "ORDER BY sh.started_at NULLS LAST, sh.workspace_id"
            )
        ):
            try:
                line = _CONTEXT.decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            found = runs.get(line.payload.run_ref)
            if found is not None and line.payload.tags:
                found.tags.update(line.payload.tags)
    for run, stage_ref, stage_name, order in conn.execute(
        _q(
            "SELECT run_ref, stage_ref, name, order_index FROM {s}.stages "
            "WHERE run_ref IS NOT NULL ORDER BY run_ref, order_index, stage_ref"
        )
    ):
        found = runs.get(run)
        if found is None:
            found = runs[run] = RunInfo(run)  # a run known from its stages only
        stage = last_component(stage_ref) or stage_name or "?"
        found.stages.setdefault(stage, 0 if order is None else int(order))
    return runs


def _times(conn: Connection, scan: RecordScan, refs: list[str], ranks: Ranks) -> None:
    """First and last record time of runs without run metadata (Contexta 1.0.0 workspaces):
    the times as written in the first and the last line, in the order ``records`` streams."""
    if not refs:
        return
    ends: dict[str, list[tuple[int, int, str]]] = {}
    for run, workspace, low, high in conn.execute(
        _q(
            "SELECT run_ref, workspace_id, min(byte_offset), max(byte_offset) FROM {s}.records "
            "WHERE run_ref = ANY(%s) GROUP BY run_ref, workspace_id"
        ),
        (refs,),
    ):
        rank = ranks.get((run, workspace), 0)
        ends.setdefault(run, []).extend([(rank, int(low), workspace), (rank, int(high), workspace)])
    for run, places in ends.items():
        places.sort()
        ends_of_run = ((places[0], scan.first_time), (places[-1], scan.last_time))
        for (_, offset, workspace), into in ends_of_run:
            row = conn.execute(
                _q("SELECT raw FROM {s}.records WHERE workspace_id = %s AND byte_offset = %s"),
                (workspace, offset),
            ).fetchone()
            recorded = ""
            if row is not None:
                try:
                    recorded = _RECORD.decode(row[0]).payload.envelope.recorded_at
                except (msgspec.DecodeError, msgspec.ValidationError):
                    pass
            into[run] = recorded


def _values(conn: Connection, scan: RecordScan, ranks: Ranks) -> None:
    """The latest value per (subject, metric key) of the kept runs, chosen in SQL."""
    kept = sorted(scan.kept)
    shards = [(run, ws, rank) for (run, ws), rank in ranks.items() if run in scan.kept]
    heads: dict[str, ScopeRef | None] = {}
    samples = scan.samples
    others = scan.others
    # The latest row per (subject, key) by (shard rank, byte offset), and where the subject
    # and key first appear: the rows come back in that order, so each sample's place in its
    # column is the one it has in a folder's scan (first capture), as the pairing's float
    # sums see it. One sort serves the window and DISTINCT ON.
    query = _q(
        "SELECT subject, key, value FROM ("
        "  SELECT DISTINCT ON (subject, key) subject, key, value, min(pos) OVER w AS first"
        "  FROM (SELECT coalesce(r.subject_ref, r.sample_ref, r.batch_ref, r.stage_ref, "
        "               r.run_ref) AS subject, r.key, r.value, "
        "               (sh.rank::bigint << 48) | r.byte_offset AS pos"
        "        FROM {s}.records r"
        "        JOIN unnest(%s::text[], %s::uuid[], %s::int[]) AS sh(run_ref, workspace_id, rank)"
        "        ON r.run_ref = sh.run_ref AND r.workspace_id = sh.workspace_id"
        "        WHERE r.payload_type = 'MetricRecord' AND r.key IS NOT NULL"
        "        AND r.run_ref = ANY(%s)) latest"
        "  WINDOW w AS (PARTITION BY subject, key ORDER BY pos DESC"
        "               ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)"
        "  ORDER BY subject, key, pos DESC) chosen "
        "ORDER BY first"
    )
    params = ([s[0] for s in shards], [s[1] for s in shards], [s[2] for s in shards], kept)
    # (sample ref without its name, key) -> the column its samples go to: one dict lookup
    # per row once the stage or batch has been seen (a row per sample and key comes back).
    columns: dict[tuple[str, str], dict[str, float | None]] = {}
    with conn.cursor() as cursor:
        cursor.execute(query, params)
        while batch := cursor.fetchmany(50_000):
            for subject, key, value in batch:
                head, _, name = subject.rpartition(".")
                column = columns.get((head, key))
                if column is None:
                    if not subject.startswith("sample:"):
                        others[(subject, key)] = value  # a run, stage or batch metric
                        continue
                    if head in heads:
                        where = heads[head]
                    else:
                        where = heads[head] = parse_sample_head(head)
                    if where is None or where.parent_ref is None:
                        continue  # names no place (never written by capture)
                    column = samples.setdefault((where.parent_ref, key), {})
                    columns[(head, key)] = column
                if name:
                    column[name] = value


def _artifacts(
    conn: Connection, ranks: Ranks, refs: Iterable[str] | None
) -> dict[str, list[ArtifactInfo]]:
    """Artifacts per run, in each shard's capture order, shards in the order they started."""
    query = "SELECT workspace_id, byte_offset, raw FROM {s}.artifacts"
    params: tuple[Any, ...] = ()
    if refs is not None:
        query += " WHERE run_ref = ANY(%s)"
        params = (list(refs),)
    found: dict[str, list[tuple[int, str, int, ArtifactInfo]]] = {}
    for workspace, offset, raw in conn.execute(_q(query), params or None):
        try:
            line = _ARTIFACT.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        info = ArtifactInfo(line)
        rank = ranks.get((info.run_ref, workspace), len(ranks))
        found.setdefault(info.run_ref, []).append((rank, str(workspace), int(offset), info))
    out: dict[str, list[ArtifactInfo]] = {}
    for run, items in found.items():
        items.sort(key=lambda item: item[:3])
        out[run] = [item[3] for item in items]
    return out
