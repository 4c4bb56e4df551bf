"""Mirrors written by cdcpipe 0.1 (merge state format 1, ``_cdc_meta jsonb``): apply holds them with a message
naming ``cdcpipe migrate-state``; the command rewrites them in format 2, and apply goes on from where they were."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cdcpipe.apply import merge, migrate
from cdcpipe.apply.state import decode_partition, decode_row
from cdcpipe.apply.tables import ident
from cdcpipe.apply.writer import BatchWriter
from cdcpipe.errors import TableFaultError
from cdcpipe.model import Deletion
from tests.integration.test_apply_writer import apply_all, workload
from tests.support.applykit import Clock, as_pg, content
from tests.support.mergekit import NOW, TABLES, insert, select, update

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parents[2]


def _v(v: merge.Version) -> list[Any]:
    return [v.ts, v.ttl, v.ldt, 1 if v.tombstone else 0, v.value.hex()]


def _d(d: Deletion | None) -> list[int] | None:
    return None if d is None else [d.timestamp, d.local_deletion_time]


def row_json(row: merge.RowState) -> dict[str, Any]:
    """A row state as cdcpipe 0.1 stored it (format 1)."""
    out: dict[str, Any] = {}
    if row.marker is not None:
        out["m"] = [row.marker.ts, row.marker.ttl, row.marker.ldt]
    if row.deletion is not None:
        out["d"] = _d(row.deletion)
    if row.cells:
        out["c"] = {k: _v(v) for k, v in row.cells.items()}
    if row.complex:
        out["x"] = {k: {"d": _d(c.deletion), "e": [[p.hex(), *_v(v)] for p, v in sorted(c.elements.items())]}
                    for k, c in row.complex.items()}
    return out


def partition_json(part: merge.PartitionState) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if part.deletion is not None:
        out["d"] = _d(part.deletion)
    if part.ranges:
        out["r"] = [[[b.hex() for b in r.start], r.start_inclusive, [b.hex() for b in r.end], r.end_inclusive,
                     *_d(r.deletion)] for r in part.ranges]  # type: ignore[misc]
    static = row_json(part.static)
    if static:
        out["s"] = static
    return out


async def to_format_1(pool: Any, schema: str, table: str) -> int:
    """Rewrite one mirrored table's three relations the way cdcpipe 0.1 stored them; returns rows rewritten."""
    total = 0
    for rel in (table, table + "$shadow", table + "$partition"):
        name = f"{ident(schema)}.{ident(rel)}"
        keys = ["_cdc_partition"] if rel.endswith("$partition") else ["_cdc_partition", "_cdc_clustering"]
        rows = await pool.fetch(f"SELECT {', '.join(keys)}, _cdc_meta FROM {name}")
        await pool.execute(f"ALTER TABLE {name} ADD COLUMN old jsonb")
        for r in rows:
            data = (partition_json(decode_partition(r["_cdc_meta"])) if rel.endswith("$partition")
                    else row_json(decode_row(r["_cdc_meta"])))
            where = " AND ".join(f"{k} = ${i + 2}" for i, k in enumerate(keys))
            await pool.execute(f"UPDATE {name} SET old = $1::jsonb WHERE {where}", json.dumps(data),
                               *(r[k] for k in keys))
        await pool.execute(f"ALTER TABLE {name} DROP COLUMN _cdc_meta")
        await pool.execute(f"ALTER TABLE {name} RENAME COLUMN old TO _cdc_meta")
        await pool.execute(f"ALTER TABLE {name} ALTER COLUMN _cdc_meta SET NOT NULL")
        total += len(rows)
    return total


async def test_a_format_1_mirror_is_held_then_migrated_and_applied_on(pool: Any, prefix: str, cleanup: None,
                                                                       settings: Any) -> None:
    rnd = random.Random(5)
    events = workload()
    writer = BatchWriter(pool, schema_prefix=prefix, clock=Clock(NOW + 1))
    await apply_all(writer, events, rnd, prefix)
    names = ("kv", "t", "st", "r", "col")
    before = {t: await content(pool, prefix, t) for t in names}
    for t in names:
        assert await to_format_1(pool, prefix + TABLES[t].keyspace, TABLES[t].table) > 0

    # apply (a fresh process: nothing cached) holds the table, naming the command; it retries a held table
    fresh = BatchWriter(pool, schema_prefix=prefix, clock=Clock(NOW + 1))
    with pytest.raises(TableFaultError, match="cdcpipe migrate-state"):
        await fresh.write(TABLES["kv"], [], None)

    # the command, as an operator runs it
    env = {**os.environ, "CDCPIPE_POSTGRES__SCHEMA_PREFIX": prefix}
    done = subprocess.run([sys.executable, "-m", "cdcpipe", "migrate-state"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    migrated = [line for line in done.stdout.splitlines() if line.startswith(prefix)]
    assert len(migrated) == 3 * len(names), done.stdout
    async with pool.acquire() as conn:
        assert await migrate.migrate(conn) == []  # run again: nothing left

    for t in names:
        assert await content(pool, prefix, t) == before[t], t
    # applied on by the same writer (the held table resumes): later events merge with the migrated state
    # exactly as with a state never migrated
    more = [update("kv", (1,), 9, v="older than the stored v"), update("kv", (1,), 13, v="newer"),
            insert("st", (1, 3), 16, v="z"), update("st", (1,), 14, s="older static"),
            update("t", (1, 1), 25, v="under the row deletion? no: after it")]
    await apply_all(fresh, more, rnd, prefix + "more")
    for t in names:
        assert await content(pool, prefix, t) == as_pg(t, select(t, events + more, now=NOW + 1)), t
