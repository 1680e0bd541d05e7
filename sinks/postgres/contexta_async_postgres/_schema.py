"""The store's schema (version 2), created on first use, and its version check.

Everything lives in the ``contexta`` schema. Lines are insert-only rows keyed by
(workspace_id, byte_offset) within their family's table, so shipping is idempotent by
construction; what a run, stage, batch or sample *is* gets derived by views:

- ``scope_shards``: each workspace's newest CONTEXT line per scope (the format's rule: the
  newest line for a ref is the scope's current state), one row per (scope, workspace);
- ``scopes``: the shards of one scope merged (started the earliest, ended the latest once no
  shard is open, status ``failed`` if any shard failed, else ``open`` while any is open, else
  ``completed`` when every shard completed, else ``cancelled``);
- ``runs``, ``stages``, ``batches``, ``samples``: ``scopes`` by kind (samples are the union of
  every shard's samples); ``metric_records``, ``event_records``: ``records`` by type.

Versions: 1 is the tables and views above; 2 adds the indexes a read of some runs goes
through (the lines of a run, by ``run_ref``), so that a read costs what the runs read hold,
not what the store holds. A new store is created at version 1 and migrated up at once; a
store of an older version is migrated by the first shipper of a newer client (under the
creation lock: one migrator, the others wait and see it done). Readers never migrate: they
read a version-1 store as it is (the same answers, without the indexes' help).
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from ._errors import SchemaVersionError
from ._lines import COLUMNS

__all__ = ["COLUMN_TYPES", "SCHEMA", "SCHEMA_VERSION", "ensure_schema", "store_version"]

SCHEMA = "contexta"
SCHEMA_VERSION = 2
"""The newest schema version this client creates and understands."""

# Any fixed 64-bit number: serialises concurrent first-time creators of the schema.
_CREATE_LOCK = 0x636F6E7465787461

COLUMN_TYPES = {
    "captured_at": "timestamptz",
    "order_index": "integer",
    "started_at": "timestamptz",
    "ended_at": "timestamptz",
    "value": "double precision",
    "observed_at": "timestamptz",
    "recorded_at": "timestamptz",
    "size_bytes": "bigint",
    "count": "bigint",
    "first_observed_at": "timestamptz",
    "last_observed_at": "timestamptz",
}

_FIXED = """
CREATE TABLE {s}.schema_version (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version integer NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE {s}.workspaces (
    workspace_id uuid PRIMARY KEY,
    first_shipped_at timestamptz NOT NULL DEFAULT now(),
    last_shipped_at timestamptz NOT NULL DEFAULT now(),
    hostname text,
    path text
);
CREATE TABLE {s}.positions (
    workspace_id uuid NOT NULL REFERENCES {s}.workspaces,
    file text NOT NULL,
    byte_offset bigint NOT NULL DEFAULT 0,
    lines_shipped bigint NOT NULL DEFAULT 0,
    lines_skipped bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, file)
);
"""

_VIEWS = """
CREATE VIEW {s}.scope_shards AS
SELECT DISTINCT ON (kind, ref, workspace_id)
    kind, ref, workspace_id, byte_offset, project_ref, run_ref, stage_ref, batch_ref, name,
    order_index, status, started_at, ended_at, dataset_ref, failure_reason
FROM {s}.context_lines
WHERE kind IS NOT NULL AND ref IS NOT NULL
ORDER BY kind, ref, workspace_id, byte_offset DESC;

CREATE VIEW {s}.scopes AS
SELECT
    kind,
    ref,
    min(project_ref) AS project_ref,
    min(run_ref) AS run_ref,
    min(stage_ref) AS stage_ref,
    min(batch_ref) AS batch_ref,
    min(name) AS name,
    min(order_index) AS order_index,
    CASE
        WHEN bool_or(status = 'failed') THEN 'failed'
        WHEN bool_or(status = 'open') THEN 'open'
        WHEN bool_and(status = 'completed') THEN 'completed'
        WHEN bool_or(status = 'cancelled') THEN 'cancelled'
        ELSE 'unknown'
    END AS status,
    min(started_at) AS started_at,
    CASE WHEN bool_or(status = 'open' OR ended_at IS NULL) THEN NULL ELSE max(ended_at) END
        AS ended_at,
    min(dataset_ref) AS dataset_ref,
    string_agg(DISTINCT failure_reason, '; ') AS failure_reason,
    count(*) AS shards
FROM {s}.scope_shards
GROUP BY kind, ref;

CREATE VIEW {s}.runs AS
SELECT ref AS run_ref, project_ref, name, status, started_at, ended_at, dataset_ref,
       failure_reason, shards
FROM {s}.scopes WHERE kind = 'run';

CREATE VIEW {s}.stages AS
SELECT ref AS stage_ref, run_ref, name, order_index, status, started_at, ended_at,
       failure_reason, shards
FROM {s}.scopes WHERE kind = 'stage';

CREATE VIEW {s}.batches AS
SELECT ref AS batch_ref, run_ref, stage_ref, name, order_index, status, started_at, ended_at,
       failure_reason, shards
FROM {s}.scopes WHERE kind = 'batch';

CREATE VIEW {s}.samples AS
SELECT ref AS sample_ref, run_ref, stage_ref, batch_ref, name, status,
       started_at AS observed_at, ended_at, failure_reason, shards
FROM {s}.scopes WHERE kind = 'sample';

CREATE VIEW {s}.metric_records AS SELECT * FROM {s}.records WHERE record_type = 'metric';
CREATE VIEW {s}.event_records AS SELECT * FROM {s}.records WHERE record_type = 'event';
"""


# version -> the statements that take a store of that version to the next one.
_MIGRATIONS: dict[int, str] = {
    # The reader's filters: a run's records (and the shard order within it, and every run
    # ref by a skip scan over the leading column), a run's sample/stage/run lines, a run's
    # artifacts.
    1: """
CREATE INDEX records_run ON {s}.records (run_ref, workspace_id, byte_offset);
CREATE INDEX context_lines_run ON {s}.context_lines (kind, run_ref);
CREATE INDEX artifacts_run ON {s}.artifacts (run_ref);
""",
}


def _line_tables() -> str:
    out = []
    for table, columns in COLUMNS.items():
        cols = ",\n    ".join(
            f"{name} {COLUMN_TYPES.get(name, 'text')}{' NOT NULL' if name == 'raw' else ''}"
            for name in columns
        )
        out.append(
            f"CREATE TABLE {{s}}.{table} (\n    workspace_id uuid NOT NULL,\n"
            f"    byte_offset bigint NOT NULL,\n    {cols},\n"
            "    PRIMARY KEY (workspace_id, byte_offset)\n);\n"
        )
    return "".join(out)


def ddl(version: int = SCHEMA_VERSION) -> str:
    """The statements that create schema ``version`` (``{s}`` stands for the schema): version
    1's tables and views, then each migration up to ``version``."""
    return _FIXED + _line_tables() + _VIEWS + "".join(_MIGRATIONS[v] for v in range(1, version))


def store_version(conn: psycopg.Connection[tuple[object, ...]]) -> int | None:
    """The store's schema version; None when it holds no schema (nothing shipped yet)."""
    # pg_class read through a fresh snapshot, not to_regclass(): name lookups go through a
    # cache that an advisory lock does not refresh, and would miss a concurrent creator's table.
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = 'schema_version')",
        (SCHEMA,),
    ).fetchone()
    if not row or not row[0]:
        return None
    found = conn.execute(
        sql.SQL("SELECT version FROM {}.schema_version").format(sql.Identifier(SCHEMA))
    ).fetchone()
    return None if found is None else int(str(found[0]))


def ensure_schema(conn: psycopg.Connection[tuple[object, ...]], target: str) -> int:
    """Create the schema on first use, migrate an older one; raise SchemaVersionError for a
    newer store.

    Returns the store's version (this client's, unless the store is newer). Runs in its own
    transaction(s) and leaves none open.
    """
    with conn.transaction():
        version = store_version(conn)
    if version is None or version < SCHEMA_VERSION:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CREATE_LOCK,))
            version = store_version(conn)  # another shipper may have just done it
            if version is None:
                conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA))
                )
                conn.execute(sql.SQL(ddl(1)).format(s=sql.Identifier(SCHEMA)))
                conn.execute(
                    sql.SQL("INSERT INTO {}.schema_version (version) VALUES (1)").format(
                        sql.Identifier(SCHEMA)
                    )
                )
                version = 1
            while version < SCHEMA_VERSION:
                # In the same transaction: a store is at one version or the next, never
                # between (CREATE INDEX holds off the shippers' inserts until the commit).
                conn.execute(sql.SQL(_MIGRATIONS[version]).format(s=sql.Identifier(SCHEMA)))
                version += 1
                conn.execute(
                    sql.SQL("UPDATE {}.schema_version SET version = %s, updated_at = now()").format(
                        sql.Identifier(SCHEMA)
                    ),
                    (version,),
                )
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(version, SCHEMA_VERSION, target)
    return version
