"""Columns dropped in Cassandra, on the PostgreSQL side.

Cassandra keeps a dropped column's name and drop time (``system_schema.dropped_columns``) and from then on skips
every cell of that name written at or before the drop time — also once a column of that name is added again.
Capture publishes those drops with each event schema (``cdcpipe.dropped``); merge forgets such cells
(:func:`cdcpipe.apply.merge.without_dropped`).  What this module adds, while apply prepares a table version:

- a column dropped in Cassandra keeps its PostgreSQL column (its values as they were; apply stops writing it),
  marked by a comment ``cdcpipe: dropped in Cassandra at …``;
- a column missing from PostgreSQL while stored states hold its values was dropped *by hand* (:func:`by_hand`);
- a column added again after a drop, whose PostgreSQL column still holds values from before the drop, is
  *refilled*: every row is re-written from its stored state (which forgets the dropped cells), then the column's
  comment records that drop time as handled, so a restart does not refill again;
- a column added again with another type (Cassandra allows a compatible one: ``int`` → ``varint``, ``text`` →
  ``blob``) whose kept PostgreSQL column has the old type is *mismatched* (:func:`mismatched`): records writing
  it are dead-lettered as ``SCHEMA_MISMATCH`` until someone alters the PostgreSQL column to the mapped type.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from typing import Any

from cdcpipe.apply import state
from cdcpipe.apply.tables import Layout, ident
from cdcpipe.errors import SchemaMismatchError, TableFaultError
from cdcpipe.model import ChangeEvent
from cdcpipe.schema import DroppedColumn
from cdcpipe.typemap import pg_type

_HANDLED = "dropped_time={}"


def _when(d: DroppedColumn) -> str:
    at = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(microseconds=d.dropped_time)
    return at.isoformat(timespec="milliseconds")


def dropped_comment(d: DroppedColumn) -> str:
    return (f"cdcpipe: dropped in Cassandra at {_when(d)} ({_HANDLED.format(d.dropped_time)}); no longer written, "
            "the values are as they were then")


def readded_comment(d: DroppedColumn) -> str:
    return (f"cdcpipe: added again after a drop at {_when(d)} ({_HANDLED.format(d.dropped_time)}); values written "
            "before the drop are hidden, as in Cassandra")


async def mark(conn: Any, lay: Layout, existing: frozenset[str], drop: bool = False) -> list[DroppedColumn]:
    """Comment the target table's columns dropped in Cassandra, or with ``drop`` (``apply.on_column_drop``) drop
    them (``existing``: its columns before this version's DDL); returns the columns added again whose rows must be
    refilled (then :func:`refilled`)."""
    table = lay.table
    if not table.dropped:
        return []
    current = {c.name for c in (*table.static, *table.regular)}
    comments = {r[0]: r[1] or "" for r in await conn.fetch(
        "SELECT a.attname::text, col_description(a.attrelid, a.attnum) FROM pg_attribute a "
        "WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped", lay.target)}
    pending: list[DroppedColumn] = []
    for d in table.dropped:
        if d.name not in comments:
            continue  # never mirrored, or dropped by hand (handled as such)
        handled = _HANDLED.format(d.dropped_time) in comments[d.name]
        if d.name not in current:
            if drop:
                await conn.execute(f"ALTER TABLE {lay.target} DROP COLUMN IF EXISTS {ident(d.name)}")
            elif not handled:
                await _comment(conn, lay, d.name, dropped_comment(d))
        elif not handled or "added again" not in comments[d.name] or d.name not in existing:
            # values from before the drop may be in the column, or values written since the re-add missing from it
            # (a column added back empty): refill from the stored state first
            pending.append(d)
    return pending


async def refilled(conn: Any, lay: Layout, columns: list[DroppedColumn]) -> None:
    """Record that the rows of ``columns`` (added again) were re-written without their values from before the
    drop."""
    for d in columns:
        await _comment(conn, lay, d.name, readded_comment(d))


async def _comment(conn: Any, lay: Layout, column: str, text: str) -> None:
    await conn.execute(f"COMMENT ON COLUMN {lay.target}.{ident(column)} IS {_literal(text)}")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def by_hand(conn: Any, lay: Layout, stmts: list[str], existing: frozenset[str]) -> None:
    """Raise :class:`TableFaultError` (42703) if a column missing from the target table has values in the stored
    state of its rows: it was dropped by hand, and adding it back empty would mirror NULLs.  A column new in the
    schema has none."""
    if not stmts:
        return
    readded = {d.name for d in lay.table.dropped}  # dropped in Cassandra (and maybe by apply): added back empty
    for c in lay.columns:
        if c.kind in ("partition_key", "clustering") or c.name in existing or c.name in readded:
            continue
        # the column's stored name is a byte string in the state of rows that have its values: search for it,
        # then decode the candidates
        candidates = await conn.fetch(f"SELECT _cdc_meta FROM {lay.target} WHERE position($1::bytea in _cdc_meta) > 0",
                                      state.stored_name(c.name))
        if any(c.name in state.columns_of(r[0]) for r in candidates):
            raise TableFaultError(
                f"column {c.name} of {lay.target} was dropped by hand: its rows' values are kept in _cdc_meta; add "
                f"it back (ALTER TABLE … ADD COLUMN {c.name} …) and apply refills it", table=lay.table.name,
                sqlstate="42703")


async def mismatched(conn: Any, lay: Layout) -> dict[str, str]:
    """The target table's non-key columns whose PostgreSQL type is not the one their CQL type maps to, each with
    a message naming both types."""
    cols = [c for c in (*lay.table.static, *lay.table.regular)]
    if not cols:  # a column of another type: dropped and added again, or a table dropped and created again
        return {}
    rows = await conn.fetch(
        "SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS has, x.want, "
        "to_regtype(x.want) = a.atttypid::regtype AS same FROM pg_attribute a "
        "JOIN unnest($2::text[], $3::text[]) AS x(name, want) ON a.attname = x.name "
        "WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped",
        lay.target, [c.name for c in cols], [pg_type(c.type) for c in cols])
    types = {c.name: c.type.cql() for c in cols}
    return {r["name"]: (f"column {r['name']} of {lay.target} is PostgreSQL {r['has']}, but Cassandra's type is now "
                        f"{types[r['name']]} (PostgreSQL {r['want']}): the column was dropped and added again with "
                        f"another type; ALTER the PostgreSQL column to {r['want']}, then replay this dead letter")
            for r in rows if not r["same"]}


def refuse(events: Sequence[Any], bad: dict[str, str], coords: dict[str, Any]) -> None:
    """Raise :class:`SchemaMismatchError` for the first of ``events`` (``Positioned``) writing a column of ``bad``."""
    for p in events:
        e = p.event
        if isinstance(e, ChangeEvent):
            written: Iterable[str] = (c.name for c in e.columns)
        else:
            rows = [r for r in (e.row, e.part.static if e.part is not None else None) if r is not None]
            written = [n for r in rows for n in (*r.cells, *r.complex)]
        column = next((n for n in written if n in bad), None)
        if column is not None:
            raise SchemaMismatchError(bad[column], offset=p.offset, **coords)
