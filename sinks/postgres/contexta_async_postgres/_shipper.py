"""The shipper: forwards a workspace's whole lines to PostgreSQL, idempotently.

One transaction per batch of one file:

1. lock the file's row in ``positions`` (``SELECT ... FOR UPDATE``) and read the offset the
   store has shipped the file up to: a second shipper of the same workspace waits here, then
   starts where the first one stopped;
2. read whole lines (ending in ``\\n``) from that offset; an unterminated last line (a writer
   still writing, or one that died mid-write, whose fragment the next writer cuts off) waits;
3. binary COPY the rows straight into the family's table, keyed by (workspace_id,
   byte_offset), each row sent as soon as its line is parsed (the server stores the first
   rows while this process parses the next ones). The lines past the locked position cannot
   be in it: rows are only ever written by a transaction that also moves the position past
   them, under this same row lock, and a transaction that did not commit left neither.
   Should that not hold (a position reset by hand, a table restored from a backup), the
   primary key refuses the COPY, and the batch goes through a temporary staging table and
   ``INSERT ... ON CONFLICT DO NOTHING`` instead: a line can never be stored twice, whatever
   happens;
4. move the position past the batch (corrupt lines included: they are skipped, logged and
   counted, never shipped) and COMMIT. A line the parser let through but the server refuses
   (a data error, SQLSTATE class 22) is found by halving the batch, one savepoint per COPY
   into the staging table, and skipped as corrupt too, so that it cannot stop the file.

Before a batch from a position it did not commit itself, the shipper checks that the file is
the one the store's lines came from: the byte before the position must end a line, and the
last line the store holds below the position must be, byte for byte (compared by SHA-256),
the line at that offset in the file. A copy of a shipped workspace keeps its identity
(``cache/workspace-id``) but, once either copy captured more, not its lines: whichever ships
second is refused with ``ShipPositionError``, never shipped past silently. The check needs no
column of its own, so a store of any version is checked.

A crash or a dropped connection anywhere before the COMMIT leaves neither the rows nor the new
position; after it, both. So a retry, a rerun, a SIGKILL mid-batch, a server crash or a second
shipper never duplicates or loses a line.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog
from psycopg import sql

from contexta_async import ValidationError

from ._args import (
    MAX_BACKOFF,
    MIN_BACKOFF,
    check_count,
    check_poll_interval,
    check_seconds,
    check_url,
    check_workspace,
)
from ._errors import ShipPositionError, StoreError
from ._identity import FAMILY_FILES, capture_dir, display_path, workspace_id, workspace_root
from ._lines import COLUMNS, STAGING_CODES, STAGING_TYPES, Corrupt, LineParser, is_utf8
from ._schema import SCHEMA, ensure_schema
from ._target import APPLICATION_NAME, Target, parse_target

__all__ = ["ShipProgress", "ShipResult", "Shipper"]

logger = structlog.get_logger("contexta_async")

Connection = psycopg.Connection[tuple[Any, ...]]

_SCHEMA_GONE = (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName)
_KEEP_CORRUPT = 100  # corrupt lines kept in the result; all are counted and logged
_CHUNK = 1 << 20  # bytes read (whole lines) and parsed at a time within a batch


@dataclass(frozen=True, slots=True)
class ShipProgress:
    """Where a shipping pass stands, after each committed batch."""

    lines: int
    """Lines stored so far by this shipper."""
    bytes: int
    """Bytes of the workspace's files handled so far (shipped or skipped)."""
    skipped: int
    """Corrupt lines skipped so far."""
    remaining_bytes: int
    """Bytes of whole lines seen in the files and not yet handled (a lower bound)."""


@dataclass(slots=True)
class ShipResult:
    """What a call to :meth:`Shipper.ship` or :meth:`Shipper.follow` did."""

    workspace_id: str
    """The workspace's identity (``cache/workspace-id``)."""
    target: str
    """``host:port/database`` of the store (never the password)."""
    lines_shipped: int = 0
    """Lines this call stored."""
    lines_already_stored: int = 0
    """Lines this call found already stored (the conflict guard; 0 unless something else
    wrote them)."""
    lines_skipped: int = 0
    """Corrupt lines skipped (logged as ``contexta_async.ship_corrupt_line``)."""
    bytes_shipped: int = 0
    """Bytes handled (shipped or skipped)."""
    batches: int = 0
    """Transactions committed."""
    reconnects: int = 0
    """Times the connection dropped and was made again."""
    waiting_bytes: int = 0
    """Bytes of unterminated last lines left waiting at the end (a torn or unfinished line)."""
    positions: dict[str, int] = field(default_factory=dict)
    """File -> byte offset the store holds it up to, at the end."""
    corrupt: list[Corrupt] = field(default_factory=list)
    """The first corrupt lines skipped (at most 100)."""


class Shipper:
    """Ships one workspace to one PostgreSQL store. Not thread-safe: one thread uses it.

    ``retries`` bounds the reconnection attempts after a dropped connection (backoff from
    ``backoff`` seconds, doubling up to ``max_backoff``); the first connection is retried only
    when ``retry_first_connect`` is true (``--follow``), so a wrong URL fails at once.
    ValidationError at the call, naming the argument, unless ``batch_lines`` and
    ``batch_bytes`` are ints of at least 1, ``retries`` an int of at least 0, and
    0.01 <= ``backoff`` <= ``max_backoff`` <= 3600 (seconds).
    """

    def __init__(
        self,
        workspace: str | os.PathLike[str],
        url: str,
        *,
        batch_lines: int = 50_000,
        batch_bytes: int = 64 * 1024 * 1024,
        retries: int = 8,
        backoff: float = 0.25,
        max_backoff: float = 5.0,
        retry_first_connect: bool = False,
        progress: Callable[[ShipProgress], None] | None = None,
    ) -> None:
        check_workspace(workspace)
        check_url(url)
        check_count("batch_lines", batch_lines, 1)
        check_count("batch_bytes", batch_bytes, 1)
        check_count("retries", retries, 0)
        backoff = check_seconds("backoff", backoff, MIN_BACKOFF, MAX_BACKOFF)
        max_backoff = check_seconds("max_backoff", max_backoff, backoff, MAX_BACKOFF)
        if not isinstance(retry_first_connect, bool):
            raise ValidationError(
                "retry_first_connect", "must be True or False", retry_first_connect
            )
        if progress is not None and not callable(progress):
            raise ValidationError("progress", "must be a callable or None", progress)
        self.target: Target = parse_target(url)
        self.root = workspace_root(workspace)
        self.capture = capture_dir(self.root)
        self.workspace_id: uuid.UUID = workspace_id(self.root)
        self.batch_lines = batch_lines
        self.batch_bytes = batch_bytes
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.retry_first_connect = retry_first_connect
        self.progress = progress
        self._conn: Connection | None = None
        self._connected_once = False
        # file -> (size, mtime, bytes of an unfinished last line) when the store had it all:
        # a periodic pass (``cached``) makes no round trip for it until the file changes.
        # Dropped at each (re)connection: the store may have come back without its last
        # commits (a backup, a failover), and a pass that answers a waiter never uses it.
        self._caught_up: dict[str, tuple[int, int, int]] = {}
        # file -> a position known to match the file: checked, or committed by this shipper
        self._verified: dict[str, int] = {}
        self._parsers = {
            file: LineParser(self.workspace_id, file, family)
            for file, family in FAMILY_FILES.items()
        }

    # ---- connection ---------------------------------------------------------------------

    def _connect(self) -> Connection:
        conn: Connection = psycopg.connect(
            self.target.url, application_name=APPLICATION_NAME, connect_timeout=10
        )
        try:
            self._prepare(conn)
        except psycopg.OperationalError:
            conn.close()
            raise  # the connection went: retried like a refused one
        except psycopg.Error as exc:
            conn.close()
            raise StoreError(
                f"the store at {self.target.display} refused to set up the shipper's session: "
                + self.target.redact(_first_line(exc))
            ) from None
        except BaseException:
            conn.close()
            raise
        self._connected_once = True
        self._caught_up.clear()
        return conn

    def _prepare(self, conn: Connection) -> None:
        """Create the schema on first use, the session's staging tables, the workspace row."""
        ensure_schema(conn, self.target.display)
        with conn.transaction():
            # The staging tables hold one batch; keep it in memory (the default is 8 MB).
            # Must be set before the session's first temporary table.
            conn.execute("SET temp_buffers = '128MB'")
            for table, columns in COLUMNS.items():
                conn.execute(
                    sql.SQL(
                        "CREATE TEMP TABLE IF NOT EXISTS {} "
                        "(workspace_id uuid, byte_offset bigint, {}) ON COMMIT DELETE ROWS"
                    ).format(
                        sql.Identifier(f"stage_{table}"),
                        sql.SQL(", ").join(
                            sql.SQL("{} {}").format(
                                sql.Identifier(c),
                                sql.SQL(STAGING_TYPES[STAGING_CODES[c]]),
                            )
                            for c in columns
                        ),
                    )
                )
            conn.execute(
                sql.SQL(
                    "INSERT INTO {}.workspaces (workspace_id, hostname, path) "
                    "VALUES (%s, %s, %s) ON CONFLICT (workspace_id) DO UPDATE SET "
                    "last_shipped_at = now(), hostname = EXCLUDED.hostname, "
                    "path = EXCLUDED.path"
                ).format(sql.Identifier(SCHEMA)),
                # Text the server takes whatever the path's bytes: \\xNN for a non-UTF-8 byte.
                (self.workspace_id, socket.gethostname(), display_path(self.root.resolve())),
            )

    def _ensure_connection(self, stop: threading.Event | None, result: ShipResult) -> Connection:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        try:
            self._conn = self._connect()
            return self._conn
        except psycopg.OperationalError as exc:
            if not self._connected_once and not self.retry_first_connect:
                raise self.target.connection_error(exc) from None
            return self._reconnect(exc, stop, result)

    def _reconnect(
        self, exc: BaseException, stop: threading.Event | None, result: ShipResult
    ) -> Connection:
        self._drop()
        delay = self.backoff
        attempt = 0
        while True:
            if self.target.is_permanent(exc):
                raise self.target.connection_error(exc) from None
            if attempt >= self.retries:
                raise self.target.connection_error(exc, attempts=attempt + 1) from None
            attempt += 1
            logger.warning(
                "contexta_async.ship_retry",
                target=self.target.display,
                attempt=attempt,
                of=self.retries,
                delay=delay,
                error=self.target.redact(_first_line(exc)),
            )
            if stop is not None:
                if stop.wait(delay):
                    raise _Stopped  # a normal end: what is not shipped ships on the next run
            else:
                time.sleep(delay)
            delay = min(delay * 2, self.max_backoff)
            try:
                self._conn = self._connect()
            except psycopg.OperationalError as again:
                exc = again
                continue
            result.reconnects += 1
            logger.info(
                "contexta_async.ship_reconnected", target=self.target.display, attempt=attempt
            )
            return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken; nothing to save
                pass

    def close(self) -> None:
        """Close the connection (nothing is pending between batches)."""
        self._drop()

    def __enter__(self) -> Shipper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- shipping -----------------------------------------------------------------------

    def ship(self, stop: threading.Event | None = None, *, cached: bool = False) -> ShipResult:
        """Ship every whole line now in the workspace; return when caught up with what each
        file held when this pass reached it (or at ``stop``, also while reconnecting): lines
        appended meanwhile are the next call's, so a pass ends however fast capture appends.

        The store is asked where each file stands, unless ``cached``: then a file unchanged
        since this shipper last saw the store hold all of it is taken as still held (no round
        trip; for periodic passes, never for one that answers someone waiting). A
        (re)connection forgets what is cached."""
        if not cached:
            self._caught_up.clear()
        result = self._new_result()
        self._pass(stop, result)
        return result

    def follow(self, stop: threading.Event, poll_interval: float = 0.5) -> ShipResult:
        """Ship, then keep shipping new lines as they appear, until ``stop`` is set (a stop
        while reconnecting ends it normally too). Its passes are ``cached`` (see ``ship``)."""
        poll_interval = check_poll_interval(poll_interval)
        result = self._new_result()
        while not stop.is_set():
            if not self._pass(stop, result):
                stop.wait(poll_interval)
        return result

    def _new_result(self) -> ShipResult:
        return ShipResult(workspace_id=str(self.workspace_id), target=self.target.display)

    def _pass(self, stop: threading.Event | None, result: ShipResult) -> bool:
        """One pass over the files until each is caught up with what it held when the pass
        first looked at it; whether anything was shipped. The bound keeps a pass finite while
        capture appends faster than it ships (a waiter's pass would otherwise chase the tail
        for as long as capture goes on); what comes later is the next pass's."""
        did = False
        waiting = 0
        until: dict[str, int] = {}  # file -> its size when this pass first looked at it
        try:
            for file in FAMILY_FILES:
                while stop is None or not stop.is_set():
                    conn = self._ensure_connection(stop, result)
                    try:
                        handled, torn = self._batch(conn, file, result, until)
                    except (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected):
                        continue  # rolled back whole: the batch is simply tried again
                    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                        if not (conn.closed or conn.broken):
                            raise self._store_error(exc, file) from None
                        self._reconnect(exc, stop, result)
                        continue
                    except psycopg.Error as exc:
                        if isinstance(exc, _SCHEMA_GONE):
                            # Dropped under a live session (a store reset): the next
                            # connection creates it again, and the next pass ships all.
                            self._drop()
                        raise self._store_error(exc, file) from None
                    if handled == 0:
                        waiting += torn
                        break
                    did = True
        except _Stopped:
            pass  # stopped while reconnecting: committed batches stay committed
        result.waiting_bytes = waiting
        return did

    def _store_error(self, exc: psycopg.Error, file: str) -> StoreError:
        return StoreError(
            f"the store at {self.target.display} refused a batch of {file}: "
            + self.target.redact(_first_line(exc))
        )

    def _batch(
        self, conn: Connection, file: str, result: ShipResult, until: dict[str, int]
    ) -> tuple[int, int]:
        """Ship one batch of ``file``, of its whole lines below ``until[file]`` (set to its
        size when missing): (lines handled, bytes of an unterminated tail)."""
        path = self.capture / file
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return 0, 0
        except OSError as exc:  # a symlink (ELOOP), no permission...: one line, no traceback
            reason = exc.strerror or exc
            raise StoreError(f"{display_path(path)}: cannot be read: {reason}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StoreError(f"{display_path(path)}: cannot be read: not a regular file")
            size, mtime = _settled_size(fd)
            caught_up = self._caught_up.get(file)
            if caught_up is not None and caught_up[:2] == (size, mtime):
                return 0, caught_up[2]  # nothing appended since the store last had it all
            end = min(size, until.setdefault(file, size))
            schema = sql.Identifier(SCHEMA)
            with conn.transaction():
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {}.positions (workspace_id, file) VALUES (%s, %s) "
                        "ON CONFLICT DO NOTHING"
                    ).format(schema),
                    (self.workspace_id, file),
                )
                row = conn.execute(
                    sql.SQL(
                        "SELECT byte_offset FROM {}.positions "
                        "WHERE workspace_id = %s AND file = %s FOR UPDATE"
                    ).format(schema),
                    (self.workspace_id, file),
                ).fetchone()
                position = int(row[0]) if row else 0
                result.positions[file] = position
                _check_position(fd, file, position, size)
                if position > 0 and self._verified.get(file) != position:
                    self._check_lines(conn, fd, file, position)
                self._verified[file] = position
                first = whole_lines(fd, position, end, min(_CHUNK, self.batch_bytes))
                if not first:
                    if end == size:
                        self._caught_up[file] = (size, mtime, size - position)
                    return 0, max(0, end - position)
                batch = _Batch(
                    self._parsers[file],
                    fd,
                    position,
                    end,
                    first,
                    self.batch_lines,
                    self.batch_bytes,
                )
                inserted = self._store(conn, batch)
                rows, corrupt, used = batch.rows, batch.corrupt, batch.used
                conn.execute(
                    sql.SQL(
                        "UPDATE {}.positions SET byte_offset = %s, "
                        "lines_shipped = lines_shipped + %s, lines_skipped = lines_skipped + %s,"
                        " updated_at = now() WHERE workspace_id = %s AND file = %s"
                    ).format(schema),
                    (position + used, inserted, len(corrupt), self.workspace_id, file),
                )
        finally:
            os.close(fd)
        # Committed: only now does this call count it.
        result.positions[file] = position + used
        self._verified[file] = position + used
        result.lines_shipped += inserted
        result.lines_already_stored += rows - inserted
        result.lines_skipped += len(corrupt)
        result.bytes_shipped += used
        result.batches += 1
        for bad in corrupt:
            logger.warning(
                "contexta_async.ship_corrupt_line",
                file=bad.file,
                byte_offset=bad.byte_offset,
                reason=bad.reason,
                workspace=display_path(self.root),
            )
            if len(result.corrupt) < _KEEP_CORRUPT:
                result.corrupt.append(bad)
        if self.progress is not None:
            self.progress(
                ShipProgress(
                    lines=result.lines_shipped,
                    bytes=result.bytes_shipped,
                    skipped=result.lines_skipped,
                    remaining_bytes=max(0, size - position - used),
                )
            )
        return rows + len(corrupt), 0

    def _check_lines(self, conn: Connection, fd: int, file: str, position: int) -> None:
        """Refuse the file if the last line the store holds for it below ``position`` is not
        the file's line at that offset: the file is not the one the store's lines came from
        (a copy of this workspace that captured other lines, a file replaced)."""
        row = conn.execute(
            sql.SQL(
                "SELECT byte_offset, sha256(convert_to(raw, 'UTF8')) FROM {}.{} "
                "WHERE workspace_id = %s AND byte_offset < %s "
                "ORDER BY byte_offset DESC LIMIT 1"
            ).format(sql.Identifier(SCHEMA), sql.Identifier(self._parsers[file].table)),
            (self.workspace_id, position),
        ).fetchone()
        if row is None:
            return  # no line to compare (each one skipped as corrupt, or deleted by hand)
        offset, digest = int(row[0]), bytes(row[1])
        # The file's line at that offset: up to its newline, at or before the position.
        want = min(1 << 16, position - offset)
        while True:
            data = os.pread(fd, want, offset)
            end = data.find(b"\n")
            if end >= 0 or want >= position - offset or len(data) < want:
                break
            want = min(want * 2, position - offset)
        if end >= 0 and hashlib.sha256(data[:end]).digest() == digest:
            return
        raise ShipPositionError(
            file,
            position,
            f"the line at byte {offset} of {display_path(self.capture / file)} is not the one "
            f"the store holds there for workspace {self.workspace_id}: is "
            f"{display_path(self.root)} a copy of a workspace shipped before?",
        )

    def _store(self, conn: Connection, batch: _Batch) -> int:
        """Store the batch (past the locked position: new, see the module docstring); rows
        inserted."""
        table = batch.parser.table
        target = sql.SQL("{}.{}").format(sql.Identifier(SCHEMA), sql.Identifier(table))
        try:
            with conn.transaction():  # a savepoint: the fallback below starts from here
                self._copy(conn, target, batch)
            return batch.rows
        except psycopg.errors.UniqueViolation:
            logger.warning(
                "contexta_async.ship_lines_already_stored",
                target=self.target.display,
                table=table,
                byte_offset=batch.position,
                hint="the store holds lines past its position; only the new ones are inserted",
            )
        except psycopg.errors.DataError:
            return self._isolate(conn, batch, target)
        stage = sql.Identifier(f"stage_{table}")
        try:
            with conn.transaction():
                self._copy(conn, stage, batch)
        except psycopg.errors.DataError:
            return self._isolate(conn, batch, target)
        return self._insert_staged(conn, target, table)

    def _isolate(self, conn: Connection, batch: _Batch, target: sql.Composable) -> int:
        """The server refused a value of the batch (SQLSTATE class 22: bytes its encoding
        does not take, a character it cannot translate...) that the parser let through: find
        the refused lines by halving (a savepoint per COPY into the staging table), skip them
        as corrupt, store the others; rows inserted. Without this, the line would stop the
        file at the same position on every pass."""
        table = batch.parser.table
        stage = sql.Identifier(f"stage_{table}")
        rows: list[tuple[Any, ...]] = []
        batch.write(rows.append)
        refused: list[Corrupt] = []

        def store(part: list[tuple[Any, ...]]) -> None:
            try:
                with conn.transaction():
                    self._copy_rows(conn, stage, table, part)
                return
            except psycopg.errors.DataError as exc:
                if len(part) == 1:
                    offset = int.from_bytes(part[0][1], "big", signed=True)
                    reason = self.target.redact(_first_line(exc))
                    refused.append(
                        Corrupt(batch.parser.file, offset, f"refused by the store: {reason}")
                    )
                    return
            half = len(part) // 2
            store(part[:half])
            store(part[half:])

        half = len(rows) // 2  # the whole batch was refused already
        if half:
            store(rows[:half])
        store(rows[half:])
        batch.rows -= len(refused)
        batch.corrupt = sorted([*batch.corrupt, *refused], key=lambda c: c.byte_offset)
        return self._insert_staged(conn, target, table)

    def _insert_staged(self, conn: Connection, target: sql.Composable, table: str) -> int:
        stage = sql.Identifier(f"stage_{table}")
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in _names(table))
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT DO NOTHING").format(
                    target, columns, columns, stage
                )
            )
            return cur.rowcount

    def _copy(self, conn: Connection, into: sql.Composable, batch: _Batch) -> None:
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in _names(batch.parser.table))
        with conn.cursor() as cur:
            copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(into, columns)
            with cur.copy(copy_sql) as copy:
                batch.write(copy.write_row)

    def _copy_rows(
        self, conn: Connection, into: sql.Composable, table: str, rows: list[tuple[Any, ...]]
    ) -> None:
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in _names(table))
        with conn.cursor() as cur:
            copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(into, columns)
            with cur.copy(copy_sql) as copy:
                for row in rows:
                    copy.write_row(row)


class _Stopped(Exception):
    """``stop`` was set while the shipper waited to reconnect."""


def _names(table: str) -> tuple[str, ...]:
    return ("workspace_id", "byte_offset", *COLUMNS[table])


class _Batch:
    """One batch of a file: its whole lines from ``position``, read a chunk at a time and
    parsed as they are written to a COPY, so that the server stores the first rows while this
    process reads and parses the next (once more, should the fallback need a second COPY:
    whole lines below the settled size never change)."""

    def __init__(
        self,
        parser: LineParser,
        fd: int,
        position: int,
        size: int,
        first: bytes,
        max_lines: int,
        max_bytes: int,
    ) -> None:
        self.parser = parser
        self.position = position
        self._fd = fd
        self._size = size
        self._first = first
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self.rows = 0
        self.corrupt: list[Corrupt] = []
        self.used = 0

    def write(self, write_row: Callable[[tuple[Any, ...]], object]) -> None:
        corrupt: list[Corrupt] = []
        rows = 0
        at = self.position
        lines_left = self._max_lines
        data = self._first
        while data:
            lines = data.split(b"\n")
            lines.pop()  # data ends with a newline: the last piece is empty
            if len(lines) > lines_left:
                del lines[lines_left:]
            # A backslash is rare (one memchr); "\\u" alone is searched much slower.
            escapes = b"\\" in data and b"\\u" in data
            written, at = self.parser.write(
                lines, at, write_row, corrupt, escapes, utf8=is_utf8(data)
            )
            rows += written
            lines_left -= len(lines)
            bytes_left = self._max_bytes - (at - self.position)
            if lines_left <= 0 or bytes_left <= 0:
                break
            data = whole_lines(self._fd, at, self._size, min(_CHUNK, bytes_left))
        self.rows, self.corrupt, self.used = rows, corrupt, at - self.position


def whole_lines(fd: int, position: int, size: int, batch_bytes: int) -> bytes:
    """The whole lines from ``position``: about ``batch_bytes`` of them (more if one line is
    longer), ending with a newline; empty if there is no whole line yet."""
    want = min(batch_bytes, size - position)
    while want > 0:
        data = os.pread(fd, want, position)
        end = data.rfind(b"\n")
        if end >= 0:
            return data[: end + 1]
        if position + len(data) >= size:
            return b""  # only an unterminated tail
        want = min(want * 2, size - position)
    return b""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _settled_size(fd: int) -> tuple[int, int]:
    """The file's size (and mtime) between two appends: writers append under an exclusive
    flock, so a shared one waits for a write in progress (or the cut of a torn tail)."""
    fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        st = os.fstat(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
    return st.st_size, st.st_mtime_ns


def _check_position(fd: int, file: str, position: int, size: int) -> None:
    if position > size:
        raise ShipPositionError(file, position, f"is {size} bytes long")
    if position > 0 and os.pread(fd, 1, position - 1) != b"\n":
        raise ShipPositionError(file, position, "the byte before the position is not a line end")
