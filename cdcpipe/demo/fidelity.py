"""Does PostgreSQL hold what Cassandra returns?  Every row of a table, value by value, after the type mapping.

:func:`compare` reads ``SELECT *`` from Cassandra as raw serialized bytes (so values outside the driver's or
Python's range are read too), decodes them with the CQL codec (:func:`cdcpipe.typemap.deserialize`), maps each
value with :func:`cdcpipe.typemap.to_pg` and compares it with the mirrored row in ``"<schema_prefix><ks>"."<t>"``:

- rows are matched on the key bytes (``_cdc_partition``, ``_cdc_clustering``); a row on one side only is a
  mismatch, and so is every column whose values differ (NaN equals NaN; numerics compare with their scale);
- ``_cdc_inexact`` must list exactly the columns ``to_pg`` says PostgreSQL cannot hold exactly, and for those
  (simple columns) the exact bytes in ``_cdc_meta`` must equal Cassandra's;
- documented divergence (ADR 0002): a partition with only static data is a row of Cassandra's ``SELECT *`` but not
  of the mirrored table; its statics are read from ``"<t>$partition"`` (the same view apply uses) and compared
  there.  Such partitions are counted in :attr:`TableReport.static_only`, never passed over silently;
- counter tables are refused by apply: they are reported as not compared (:attr:`TableReport.refused`).

A content checksum per side (sha256 of the canonical rows, sorted) lets a person see at a glance that both sides
hold the same thing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cdcpipe.apply.tables import ident
from cdcpipe.reconcile.canonical import (
    Mismatch,
    RawColumns,
    all_columns,
    canon,
    clustering_bytes,
    diff,
    partition_bytes,
    raw_session,
    read_cassandra,
    read_postgres,
)
from cdcpipe.schema import TableSchema
from cdcpipe.schema_source import SystemSchemaSource

__all__ = ["Mismatch", "RawColumns", "Report", "TableReport", "canon", "clustering_bytes", "compare", "diff",
           "drop_mirror", "load_tables", "partition_bytes", "raw_session", "read_cassandra", "read_postgres"]


@dataclass(frozen=True, slots=True)
class TableReport:
    table: str
    cassandra_rows: int
    postgres_rows: int
    static_only: int
    cassandra_checksum: str
    postgres_checksum: str
    mismatches: tuple[Mismatch, ...]
    refused: str | None = None

    @property
    def ok(self) -> bool:
        return self.refused is None and not self.mismatches and self.cassandra_checksum == self.postgres_checksum


@dataclass(frozen=True, slots=True)
class Report:
    tables: tuple[TableReport, ...]
    seconds: float = 0.0

    @property
    def mismatches(self) -> list[Mismatch]:
        return [m for t in self.tables for m in t.mismatches]

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tables)

    def lines(self, limit: int = 50) -> list[str]:
        out = []
        for t in self.tables:
            if t.refused:
                out.append(f"{t.table}: NOT COMPARED — {t.refused}")
                continue
            out.append(f"{t.table}: cassandra {t.cassandra_rows} rows sha256 {t.cassandra_checksum}, postgres "
                       f"{t.postgres_rows} rows sha256 {t.postgres_checksum}, static-only partitions "
                       f"{t.static_only} (compared in $partition, ADR 0002), mismatches {len(t.mismatches)}"
                       f" — {'MATCH' if t.ok else 'DIFFER'}")
        out += [f"  {m}" for m in self.mismatches[:limit]]
        if len(self.mismatches) > limit:
            out.append(f"  ... and {len(self.mismatches) - limit} more")
        return out


async def compare(cass_session: Any, pg_conn: Any, tables: Iterable[TableSchema], *, schema_prefix: str = "",
                  consistency: int | None = None) -> Report:
    """Compare each of ``tables`` (``cass_session`` from :func:`raw_session`, ``pg_conn`` an asyncpg
    connection)."""
    started = time.monotonic()
    reports = []
    for table in tables:
        counters = [c.name for c in all_columns(table) if c.type.name == "counter"]
        if counters:
            reports.append(TableReport(table.name, 0, 0, 0, "", "", (), refused=(
                f"counter columns {counters}: apply refuses counter tables (ADR 0002)")))
            continue
        cass = await asyncio.to_thread(read_cassandra, cass_session, table, consistency)
        pg = await read_postgres(pg_conn, table, schema_prefix)
        static_only = sum(1 for k in cass.rows if k[1] is None)
        reports.append(TableReport(table.name, len(cass.rows), len(pg.rows), static_only, cass.checksum(),
                                   pg.checksum(), tuple(diff(table, cass, pg))))
    return Report(tuple(reports), time.monotonic() - started)


def load_tables(session: Any, keyspace: str, names: Iterable[str] | None = None) -> list[TableSchema]:
    """Schemas of ``keyspace``'s tables (all, or ``names``) from ``system_schema``."""
    wanted = set(names) if names is not None else None
    return sorted((t for t in SystemSchemaSource(session).load()
                   if t.keyspace == keyspace and (wanted is None or t.table in wanted)), key=lambda t: t.table)


async def drop_mirror(dsn: str, schema: str) -> None:
    """Drop the PostgreSQL schema mirroring a keyspace (the tables apply made for it), if it exists."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {ident(schema)} CASCADE")
    finally:
        await conn.close()
