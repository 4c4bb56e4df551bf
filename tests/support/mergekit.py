"""Builders of ChangeEvents as Cassandra's CQL statements write them (reference §2–§6), and a ``select`` that runs
``merge.collapse`` + ``view`` — shared by the merge unit tests and the apply integration tests."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from cdcpipe.apply import keys, merge, view
from cdcpipe.model import Bound, Cell, ChangeEvent, ColumnChange, Deletion, Liveness, Op, Source
from cdcpipe.schema import TableSchema
from cdcpipe.schema_source import parse_cql_schema

CQL = """
CREATE TABLE ks.kv  (k int PRIMARY KEY, v text, n int) WITH id = 00000000-0000-0000-0000-000000000001;
CREATE TABLE ks.t   (k int, c int, v text, w text, PRIMARY KEY (k, c)) WITH id = 00000000-0000-0000-0000-000000000002;
CREATE TABLE ks.r   (k int, c1 int, c2 int, v int, PRIMARY KEY (k, c1, c2))
  WITH id = 00000000-0000-0000-0000-000000000003;
CREATE TABLE ks.st  (k int, c int, s text STATIC, v text, PRIMARY KEY (k, c))
  WITH id = 00000000-0000-0000-0000-000000000004;
CREATE TABLE ks.col (k int PRIMARY KEY, s set<text>, l list<text>, m map<text,int>, fs frozen<set<text>>)
  WITH id = 00000000-0000-0000-0000-000000000005;
CREATE TABLE ks.d   (k int, c int, v int, PRIMARY KEY (k, c)) WITH CLUSTERING ORDER BY (c DESC)
  AND id = 00000000-0000-0000-0000-000000000006;
CREATE TABLE ks.p   (k int, c1 int, c2 int, s int STATIC, v int, w text, m map<int,int>, PRIMARY KEY (k, c1, c2))
  WITH id = 00000000-0000-0000-0000-000000000007;
"""
TABLES: dict[str, TableSchema] = {t.table: t for t in parse_cql_schema(CQL)}
NOW = 1_700_000_000  # the wall clock (seconds) of the tests' writes
_ids = itertools.count(1)
_list_clock = itertools.count(1)


def _source(table: TableSchema) -> Source:
    return Source("c", "dc1", "n1", table.keyspace, table.table, table.table_id, 1, 0)


def _event(table: TableSchema, op: Op, pk: tuple[Any, ...], ck: tuple[Any, ...] = (), ts: int = 0,
           **kw: Any) -> ChangeEvent:
    return ChangeEvent(next(_ids).to_bytes(16, "big"), op, ts, _source(table), pk, ck, **kw)


def list_path() -> uuid.UUID:
    """A fresh time-UUID (increasing), as the coordinator makes for each appended element."""
    return uuid.UUID(fields=(next(_list_clock), 0, 0x1000, 0x80, 0, 1))


def _cells(table: TableSchema, name: str, value: Any, ts: int, ttl: int, now: int, whole: bool) -> ColumnChange:
    col = next(c for c in (*table.regular, *table.static) if c.name == name)
    static = col.kind == "static"
    exp = now + ttl if ttl else None
    if not col.type.multi_cell:
        if value is None:
            return ColumnChange(name, (Cell(None, ts, deleted=True, local_deletion_time=now),), static=static)
        return ColumnChange(name, (Cell(value, ts, ttl, exp),), static=static)
    deletion = Deletion(ts - 1, now) if whole else None
    if value is None:
        return ColumnChange(name, (), deletion, static=static)
    if col.type.name == "list":
        cells = tuple(Cell(v, ts, ttl, exp, path=list_path()) for v in value)
    elif col.type.name == "set":
        cells = tuple(Cell(None, ts, ttl, exp, path=v) for v in value)
    else:
        cells = tuple(Cell(v, ts, ttl, exp, path=k) for k, v in dict(value).items())
    return ColumnChange(name, cells, deletion, static=static)


def insert(table: str, key: tuple[Any, ...], ts: int, ttl: int = 0, now: int = NOW, **cols: Any) -> ChangeEvent:
    """INSERT ... USING TIMESTAMP ts [AND TTL ttl]: row marker + listed columns (rules 16, 23, 25)."""
    t = TABLES[table]
    npk = len(t.partition_key)
    only_static = all(any(c.name == n for c in t.static) for n in cols) and cols
    liveness = None if only_static and t.clustering else Liveness(ts, ttl, now + ttl if ttl else None)
    changes = tuple(_cells(t, n, v, ts, ttl, now, True) for n, v in cols.items())
    return _event(t, Op.UPSERT, key[:npk], key[npk:], ts, liveness=liveness, columns=changes,
                  static=bool(only_static))


def update(table: str, key: tuple[Any, ...], ts: int, ttl: int = 0, now: int = NOW, whole: bool = True,
           **cols: Any) -> ChangeEvent:
    """UPDATE ... SET col = value: columns only, no marker; ``whole=False`` for ``col = col + ...``."""
    t = TABLES[table]
    npk = len(t.partition_key)
    changes = tuple(_cells(t, n, v, ts, ttl, now, whole) for n, v in cols.items())
    static = all(c.static for c in changes)
    return _event(t, Op.UPSERT, key[:npk], key[npk:], ts, columns=changes, static=static)


def elements(table: str, key: tuple[Any, ...], ts: int, column: str, cells: tuple[Cell, ...],
             deletion: Deletion | None = None) -> ChangeEvent:
    """Element-level writes or tombstones on one collection column."""
    t = TABLES[table]
    npk = len(t.partition_key)
    return _event(t, Op.UPSERT, key[:npk], key[npk:], ts, columns=(ColumnChange(column, cells, deletion),))


def delete_columns(table: str, key: tuple[Any, ...], ts: int, *names: str, now: int = NOW) -> ChangeEvent:
    """DELETE col, ... : cell tombstones at ts; complex deletion at ts for collections (rules 11 and 26)."""
    t = TABLES[table]
    npk = len(t.partition_key)
    changes = []
    for n in names:
        col = next(c for c in (*t.regular, *t.static) if c.name == n)
        if col.type.multi_cell:
            changes.append(ColumnChange(n, (), Deletion(ts, now), static=col.kind == "static"))
        else:
            changes.append(ColumnChange(n, (Cell(None, ts, deleted=True, local_deletion_time=now),),
                                        static=col.kind == "static"))
    return _event(t, Op.UPSERT, key[:npk], key[npk:], ts, columns=tuple(changes),
                  static=all(c.static for c in changes))


def delete_row(table: str, key: tuple[Any, ...], ts: int, now: int = NOW) -> ChangeEvent:
    t = TABLES[table]
    npk = len(t.partition_key)
    if not t.clustering:
        return delete_partition(table, key, ts, now)
    return _event(t, Op.ROW_DELETE, key[:npk], key[npk:], ts, deletion=Deletion(ts, now))


def delete_partition(table: str, pk: tuple[Any, ...], ts: int, now: int = NOW) -> ChangeEvent:
    return _event(TABLES[table], Op.PARTITION_DELETE, pk, (), ts, deletion=Deletion(ts, now))


def delete_range(table: str, pk: tuple[Any, ...], start: tuple[Any, ...], start_incl: bool, end: tuple[Any, ...],
                 end_incl: bool, ts: int, now: int = NOW) -> ChangeEvent:
    return _event(TABLES[table], Op.RANGE_DELETE, pk, (), ts, deletion=Deletion(ts, now),
                  range_start=Bound(start, start_incl), range_end=Bound(end, end_incl))


def state(table: str, events: list[ChangeEvent]) -> merge.Changes:
    return merge.collapse(TABLES[table], events)


def select(table: str, events: list[ChangeEvent] | merge.Changes, now: int = NOW + 1,
           grace: int = 864_000) -> list[dict[str, Any]]:
    """``SELECT *`` over the merged events at ``now``: clustering rows in key order (static-only partitions
    are not listed: the mirror keeps them in its partition store)."""
    t = TABLES[table]
    if not isinstance(events, merge.Changes):
        events = [e for e in events if e.source.table == table]
    changes = events if isinstance(events, merge.Changes) else merge.collapse(t, events)
    out = []
    for (pk, ck), row in changes.rows.items():
        statics = view.static_view(t, changes.partitions.get(pk), now, grace)
        rv = view.row_view(t, row, statics, now, grace)
        if rv.visible:
            out.append({**view.key_values(t, pk, ck), **rv.values})
    keys = [c.name for c in (*t.partition_key, *t.clustering)]
    return sorted(out, key=lambda r: tuple(r[k] for k in keys))


def statics(table: str, events: list[ChangeEvent], pk: tuple[Any, ...], now: int = NOW + 1) -> dict[str, Any]:
    t = TABLES[table]
    changes = merge.collapse(t, [e for e in events if e.source.table == table])
    sv = view.static_view(t, changes.partitions.get(keys.partition_bytes(t, pk)), now, 864_000)
    return dict(sv.values) if sv.live else {}
