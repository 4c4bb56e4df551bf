"""The PostgreSQL side of one mirrored table: names, DDL and the column layout of its rows (ADR 0002).

For Cassandra table ``ks.t`` (schema ``<postgres.schema_prefix>ks``):

- ``"ks"."t"`` — the rows ``SELECT *`` returns: the primary key (partition key then clustering columns, Cassandra's
  names), static and regular columns (types from :mod:`cdcpipe.typemap`), and ``_cdc_*`` metadata;
- ``"ks"."t$shadow"`` — rows Cassandra no longer returns whose tombstones must be remembered (grace period);
- ``"ks"."t$partition"`` — per partition: partition deletion, range tombstones and the static row.

Every statement here is idempotent (``IF NOT EXISTS``), so any number of apply processes may run it; a new
schema version adds its new columns with ``ADD COLUMN IF NOT EXISTS``.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cdcpipe.cql import CqlType
from cdcpipe.errors import UnsupportedTableError
from cdcpipe.schema import Column, TableSchema
from cdcpipe.typemap import pg_type, to_pg

META_COLUMNS = ("_cdc_partition", "_cdc_clustering", "_cdc_meta", "_cdc_inexact", "_cdc_expires_at",
                "_cdc_updated_at", "_cdc_token")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
STATE_FORMAT = 2  # of _cdc_meta (cdcpipe.apply.state)
DDL_LOCK = 0x63646370  # advisory lock key serializing DDL between apply processes (and cdcpipe migrate-state)


def ident(name: str) -> str:
    """A quoted PostgreSQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def instant(seconds: int | None) -> datetime.datetime | None:
    """Seconds since the epoch as a timestamptz value (clamped to Python's range)."""
    if seconds is None:
        return None
    try:
        return _EPOCH + datetime.timedelta(seconds=seconds)
    except OverflowError:
        return datetime.datetime.max.replace(tzinfo=datetime.UTC)


def lock_key(*parts: object) -> int:
    """An advisory lock key: a signed 64-bit hash of ``parts`` (a mirrored table's name; a group, topic and
    partition)."""
    text = "\x00".join(map(str, parts)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big", signed=True)


@dataclass(frozen=True, slots=True)
class Layout:
    """Names and column order of one table version's PostgreSQL tables."""

    table: TableSchema
    schema: str
    columns: tuple[Column, ...]  # primary key, static, regular: the order of records for COPY

    @property
    def target(self) -> str:
        return f"{ident(self.schema)}.{ident(self.table.table)}"

    @property
    def shadow(self) -> str:
        return f"{ident(self.schema)}.{ident(self.table.table + '$shadow')}"

    @property
    def partitions(self) -> str:
        return f"{ident(self.schema)}.{ident(self.table.table + '$partition')}"

    @property
    def record_columns(self) -> tuple[str, ...]:
        return (*(c.name for c in self.columns), *META_COLUMNS)

    @property
    def staging(self) -> str:
        digest = hashlib.sha1(repr((self.schema, self.table.table, self.record_columns, STATE_FORMAT,
                                    [pg_type(c.type) for c in self.columns])).encode()).hexdigest()[:20]
        return f"cdc_stg_{digest}"

    @property
    def key_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in (*self.table.partition_key, *self.table.clustering))

    def ddl(self, existing: frozenset[str] | None = None) -> list[str]:
        """Statements creating the schema and the three tables and adding missing columns.  ``existing``: the
        target table's current columns when it exists (then only the missing ones are added; ``ALTER TABLE``
        takes an exclusive lock even when the column exists)."""
        cols = [f"{ident(c.name)} {pg_type(c.type)}" + (" NOT NULL" if c.kind in ("partition_key", "clustering")
                                                           else "") for c in self.columns]
        pk = ", ".join(ident(n) for n in self.key_columns)
        name = self.table.table
        stmts = [
            f"CREATE SCHEMA IF NOT EXISTS {ident(self.schema)}",
            f"CREATE TABLE IF NOT EXISTS {self.target} ({', '.join(cols)}, "
            "_cdc_partition bytea NOT NULL, _cdc_clustering bytea NOT NULL, _cdc_meta bytea NOT NULL, "
            "_cdc_inexact text[], _cdc_expires_at timestamptz, _cdc_updated_at timestamptz NOT NULL DEFAULT now(), "
            f"_cdc_token bigint, PRIMARY KEY ({pk}))",
            f"CREATE UNIQUE INDEX IF NOT EXISTS {ident(name + '$key')} ON {self.target} "
            "(_cdc_partition, _cdc_clustering)",
            f"CREATE INDEX IF NOT EXISTS {ident(name + '$expires')} ON {self.target} (_cdc_expires_at) "
            "WHERE _cdc_expires_at IS NOT NULL",
            f"CREATE TABLE IF NOT EXISTS {self.shadow} (_cdc_partition bytea NOT NULL, _cdc_clustering bytea NOT NULL, "
            "_cdc_meta bytea NOT NULL, _cdc_purge_after timestamptz, PRIMARY KEY (_cdc_partition, _cdc_clustering))",
            f"CREATE TABLE IF NOT EXISTS {self.partitions} (_cdc_partition bytea PRIMARY KEY, "
            "_cdc_meta bytea NOT NULL, _cdc_purge_after timestamptz)",
        ]
        return [*stmts, *self.column_ddl(existing)]

    def column_ddl(self, existing: frozenset[str] | None = None) -> list[str]:
        """``ALTER TABLE`` adding the non-key columns missing from ``existing`` (None: every column), and the
        partition token (``_cdc_token``, with its index) to a table made before it was kept."""
        stmts = [f"ALTER TABLE {self.target} ADD COLUMN IF NOT EXISTS {ident(c.name)} {pg_type(c.type)}"
                 for c in self.columns if c.kind not in ("partition_key", "clustering")
                 and (existing is None or c.name not in existing)]
        if existing is None or "_cdc_token" not in existing:
            stmts += [f"ALTER TABLE {self.target} ADD COLUMN IF NOT EXISTS _cdc_token bigint",
                      f"CREATE INDEX IF NOT EXISTS {ident(self.table.table + '$token')} ON {self.target} (_cdc_token)"]
        return stmts

    def staging_ddl(self) -> str:
        cols = ", ".join(ident(c) for c in self.record_columns)
        return (f"CREATE TEMP TABLE IF NOT EXISTS {ident(self.staging)} ON COMMIT DELETE ROWS AS "
                f"SELECT {cols} FROM {self.target} WITH NO DATA")

    def upsert_sql(self) -> str:
        cols = ", ".join(ident(c) for c in self.record_columns)
        updates = ", ".join(f"{ident(c)} = EXCLUDED.{ident(c)}" for c in self.record_columns
                            if c not in self.key_columns)
        return (f"INSERT INTO {self.target} ({cols}) SELECT {cols} FROM {ident(self.staging)} "
                f"ON CONFLICT ({', '.join(ident(n) for n in self.key_columns)}) DO UPDATE SET {updates}")

    def read_sql(self) -> str:
        """$1-$3: checkpoint coordinates; $4: partitions; $5: clusterings of listed rows; $6: partitions whose
        every row is needed."""
        rows_where = ("WHERE _cdc_partition = ANY($4::bytea[]) AND (_cdc_clustering = ANY($5::bytea[]) "
                      "OR _cdc_partition = ANY($6::bytea[])) FOR UPDATE")
        return (
            "WITH k AS (SELECT next_offset FROM cdcpipe_checkpoints WHERE group_id = $1 AND topic = $2 "
            "AND partition = $3 FOR UPDATE), "
            f"t AS (SELECT _cdc_partition, _cdc_clustering, _cdc_meta AS m FROM {self.target} {rows_where}), "
            f"s AS (SELECT _cdc_partition, _cdc_clustering, _cdc_meta AS m FROM {self.shadow} {rows_where}), "
            f"q AS (SELECT _cdc_partition, _cdc_meta AS m FROM {self.partitions} "
            "WHERE _cdc_partition = ANY($4::bytea[]) FOR UPDATE) "
            "SELECT 'K' AS src, NULL::bytea AS p, NULL::bytea AS c, NULL::bytea AS m, next_offset AS k FROM k "
            "UNION ALL SELECT 'T', _cdc_partition, _cdc_clustering, m, NULL FROM t "
            "UNION ALL SELECT 'S', _cdc_partition, _cdc_clustering, m, NULL FROM s "
            "UNION ALL SELECT 'P', _cdc_partition, NULL, m, NULL FROM q"
        )

    def converters(self) -> list[Callable[[Any], tuple[Any, bool]]]:
        return [_converter(c.type) for c in self.columns]


def _converter(t: CqlType) -> Callable[[Any], tuple[Any, bool]]:
    return lambda value: to_pg(t, value)


def layout(table: TableSchema, schema_prefix: str = "") -> Layout:
    """The layout of ``table``; raises :class:`UnsupportedTableError` for counter tables (reference rule 33:
    a mirror must merge counter shards per counter id, which the events do not carry in a usable form)."""
    cols: Sequence[Column] = (*table.partition_key, *table.clustering, *table.static, *table.regular)
    counters = [c.name for c in cols if c.type.name == "counter"]
    if counters:
        raise UnsupportedTableError(
            f"{table.name}: counter columns ({', '.join(counters)}) are not supported; cdcpipe refuses counter "
            "tables rather than mirror a wrong number (see docs/adr/0002)", table=table.name)
    return Layout(table, schema_prefix + table.keyspace, tuple(cols))
