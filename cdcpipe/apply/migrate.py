"""``cdcpipe migrate-state``: stored merge states from format 1 (``_cdc_meta jsonb``) to format 2 (``bytea``,
:mod:`cdcpipe.apply.state`).

Format 1 is what cdcpipe before 0.2 wrote.  Apply refuses a table still in format 1 (the table is held, with a
readiness reason naming this command) rather than read or write it.  The command finds every relation of a
mirrored table whose ``_cdc_meta`` is ``jsonb`` (in every schema), and rewrites each in one transaction: a new
``bytea`` column filled from the decoded JSON, the old column dropped, the new one renamed.  It takes the same
advisory locks as apply's DDL and batches, so a stray apply process waits rather than write half-way.  It may be
run again: what is done already is skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cdcpipe.apply.merge import ComplexState, PartitionState, RangeTombstone, RowState, Version
from cdcpipe.apply.state import encode_partition, encode_row
from cdcpipe.apply.tables import DDL_LOCK, Layout, ident, lock_key
from cdcpipe.model import Deletion
from cdcpipe.tokens import token

_FIND = ("SELECT n.nspname AS schema, c.relname AS rel FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
         "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE a.attname = '_cdc_meta' AND NOT a.attisdropped "
         "AND a.atttypid = 'jsonb'::regtype AND c.relkind = 'r'")


# ---------------------------------------------------------------------------------------------- format 1

def _unv(x: list[Any]) -> Version:
    return Version(x[0], x[2], x[1], bool(x[3]), bytes.fromhex(x[4]))


def _und(x: list[int] | None) -> Deletion | None:
    return None if x is None else Deletion(x[0], x[1])


def row_v1(data: dict[str, Any]) -> RowState:
    """A row state from its format-1 JSON (``{"m": …, "d": …, "c": {…}, "x": {…}}``)."""
    m = data.get("m")
    marker = None if m is None else Version(m[0], m[2], m[1])
    cells = {k: _unv(v) for k, v in data.get("c", {}).items()}
    complex_ = {k: ComplexState(_und(c["d"]), {bytes.fromhex(e[0]): _unv(e[1:]) for e in c["e"]})
                for k, c in data.get("x", {}).items()}
    return RowState(marker, _und(data.get("d")), cells, complex_)


def partition_v1(data: dict[str, Any]) -> PartitionState:
    """A partition state from its format-1 JSON (``{"d": …, "r": […], "s": row}``)."""
    ranges = tuple(
        RangeTombstone(tuple(bytes.fromhex(b) for b in r[0]), bool(r[1]), tuple(bytes.fromhex(b) for b in r[2]),
                       bool(r[3]), Deletion(r[4], r[5]))
        for r in data.get("r", []))
    return PartitionState(_und(data.get("d")), ranges, row_v1(data.get("s", {})))


def convert(relation: str, text: str) -> bytes:
    """Format-1 JSON text of ``relation`` (a name ending in ``$partition`` holds partition states) as format 2."""
    data = json.loads(text)
    if relation.endswith("$partition"):
        return encode_partition(partition_v1(data))
    return encode_row(row_v1(data))


# ---------------------------------------------------------------------------------------------- the command

@dataclass(frozen=True, slots=True)
class Migrated:
    schema: str
    relation: str
    rows: int


async def old_format(conn: Any, lay: Layout) -> bool:
    """Whether any of ``lay``'s relations still stores format 1."""
    names = [lay.table.table, lay.table.table + "$shadow", lay.table.table + "$partition"]
    return bool(await conn.fetchval(f"SELECT EXISTS ({_FIND} AND n.nspname = $1 AND c.relname = ANY($2::text[]))",
                                    lay.schema, names))


async def migrate(conn: Any, chunk: int = 5000) -> list[Migrated]:
    """Rewrite every format-1 relation (see the module's text); returns what was rewritten."""
    done: list[Migrated] = []
    for found in await conn.fetch(_FIND + " ORDER BY 1, 2"):
        schema, rel = found["schema"], found["rel"]
        target_name = rel.removesuffix("$shadow").removesuffix("$partition")
        target = f"{ident(schema)}.{ident(target_name)}"
        name = f"{ident(schema)}.{ident(rel)}"
        keys = ["_cdc_partition"] if rel.endswith("$partition") else ["_cdc_partition", "_cdc_clustering"]
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1), pg_advisory_xact_lock($2)",
                               DDL_LOCK, lock_key(target))
            if not await conn.fetchval(f"SELECT EXISTS ({_FIND} AND n.nspname = $1 AND c.relname = $2)", schema, rel):
                continue  # another run did it while this one waited
            await conn.execute(f"ALTER TABLE {name} ADD COLUMN _cdc_meta_v2 bytea")
            cols = ", ".join(keys)
            where = " AND ".join(f"t.{k} = u.{k}" for k in keys)
            arrays = ", ".join(f"${j + 1}::bytea[]" for j in range(len(keys) + 1))
            update = f"UPDATE {name} t SET _cdc_meta_v2 = u.m FROM unnest({arrays}) AS u({cols}, m) WHERE {where}"
            count = 0
            part: list[Any] = []
            async for r in conn.cursor(f"SELECT {cols}, _cdc_meta::text AS m FROM {name}", prefetch=chunk):
                part.append(r)
                if len(part) == chunk:
                    count += await _update(conn, update, rel, keys, part)
                    part = []
            count += await _update(conn, update, rel, keys, part)
            await conn.execute(f"ALTER TABLE {name} DROP COLUMN _cdc_meta")
            await conn.execute(f"ALTER TABLE {name} RENAME COLUMN _cdc_meta_v2 TO _cdc_meta")
            await conn.execute(f"ALTER TABLE {name} ALTER COLUMN _cdc_meta SET NOT NULL")
            done.append(Migrated(schema, rel, count))
    return done


async def _update(conn: Any, update: str, relation: str, keys: list[str], rows: list[Any]) -> int:
    if rows:
        await conn.execute(update, *([r[k] for r in rows] for k in keys), [convert(relation, r["m"]) for r in rows])
    return len(rows)


# ---------------------------------------------------------------------------------------------- partition tokens

async def fill_tokens(pool: Any, lay: Layout, limit: int = 5000) -> int:
    """Give up to ``limit`` partitions of rows written before ``_cdc_token`` was kept their token; returns how many
    partitions (0: none left).  Safe beside batches: the value is a function of the row's key."""
    found = await pool.fetch(f"SELECT DISTINCT _cdc_partition FROM {lay.target} WHERE _cdc_token IS NULL LIMIT $1",
                             limit)
    if not found:
        return 0
    parts = [bytes(r[0]) for r in found]
    await pool.execute(f"UPDATE {lay.target} t SET _cdc_token = u.k FROM unnest($1::bytea[], $2::bigint[]) AS "
                       "u(p, k) WHERE t._cdc_partition = u.p AND t._cdc_token IS NULL", parts,
                       [token(p) for p in parts])
    return len(parts)
