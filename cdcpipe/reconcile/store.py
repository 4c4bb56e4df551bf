"""What a reconcile run found, kept in PostgreSQL: ``cdcpipe_reconcile_runs`` (one row per run) and
``cdcpipe_reconcile_mismatches`` (one row per differing row: its kind, key and both sides' canonical values)."""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Sequence
from typing import Any

from cdcpipe.reconcile.compare import TableResult

DDL = (
    "CREATE TABLE IF NOT EXISTS cdcpipe_reconcile_runs (run_id uuid PRIMARY KEY, started_at timestamptz NOT NULL, "
    "finished_at timestamptz, tables text[] NOT NULL, cassandra_rows bigint, postgres_rows bigint, mismatches "
    "bigint, drift_ratio double precision, repaired boolean NOT NULL DEFAULT false, status text NOT NULL)",
    "CREATE TABLE IF NOT EXISTS cdcpipe_reconcile_mismatches (run_id uuid NOT NULL REFERENCES "
    "cdcpipe_reconcile_runs ON DELETE CASCADE, table_name text NOT NULL, kind text NOT NULL, key jsonb NOT NULL, "
    "columns text[] NOT NULL, cassandra jsonb, postgres jsonb, partition_key bytea NOT NULL, clustering bytea)",
    "CREATE INDEX IF NOT EXISTS cdcpipe_reconcile_mismatches_run ON cdcpipe_reconcile_mismatches (run_id)",
)


def _json(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)


async def record(conn: Any, run_id: uuid.UUID, started: datetime.datetime, results: Sequence[TableResult],
                 status: str, repaired: bool = False) -> None:
    """Store one run and its mismatches (a run stored again replaces its mismatches)."""
    async with conn.transaction():
        for stmt in DDL:
            await conn.execute(stmt)
        await conn.execute(
            "INSERT INTO cdcpipe_reconcile_runs (run_id, started_at, finished_at, tables, cassandra_rows, "
            "postgres_rows, mismatches, drift_ratio, repaired, status) VALUES ($1, $2, now(), $3, $4, $5, $6, $7, "
            "$8, $9) ON CONFLICT (run_id) DO UPDATE SET finished_at = now(), cassandra_rows = EXCLUDED.cassandra_rows, "
            "postgres_rows = EXCLUDED.postgres_rows, mismatches = EXCLUDED.mismatches, drift_ratio = "
            "EXCLUDED.drift_ratio, repaired = EXCLUDED.repaired, status = EXCLUDED.status",
            run_id, started, [r.table for r in results], sum(r.cassandra_rows for r in results),
            sum(r.postgres_rows for r in results), sum(len(r.differences) for r in results),
            sum(len(r.differences) for r in results) / max(1, sum(max(r.cassandra_rows, r.postgres_rows)
                                                                  for r in results)), repaired, status)
        await conn.execute("DELETE FROM cdcpipe_reconcile_mismatches WHERE run_id = $1", run_id)
        rows = [(run_id, d.table, d.kind, _json(list(d.shown)), list(d.columns),
                 None if d.cassandra is None else _json(d.cassandra), None if d.postgres is None else _json(d.postgres),
                 d.key[0], d.key[1]) for r in results for d in r.differences]
        if rows:
            await conn.copy_records_to_table(
                "cdcpipe_reconcile_mismatches", records=rows,
                columns=["run_id", "table_name", "kind", "key", "columns", "cassandra", "postgres", "partition_key",
                         "clustering"])
