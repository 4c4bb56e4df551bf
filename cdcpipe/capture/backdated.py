"""Backdated writes after a switch: a write logged after a table's CDC was switched on but carrying an older
timestamp than the switch (``USING TIMESTAMP`` in the past, a client clock behind) may be shadowed in Cassandra by a
deletion made *before* the switch, which no event carries and the snapshot cannot read (CQL returns no tombstone).

For each such write capture reads the row back from Cassandra (the write is applied there: it is in the log) and,
for what the write set that Cassandra does not show, produces the deletion that must exist there, at the write's
own timestamp: a cell (or element) tombstone, or a row deletion when an ``INSERT``'s row marker is gone.  A deletion
at that timestamp is always safe: whatever hides the write in Cassandra is at least as new, so it hides everything
the produced deletion hides.  The read is at ``ALL`` (every replica's tombstones), else at ``ONE`` on this node
(whose tombstones alone make it safe; a tombstone only another replica holds is then missed).

The events keep the write's ``source`` (node, segment, position); their ids derive from the write's.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from typing import Any

import structlog
from cassandra import ConsistencyLevel, InvalidRequest
from cassandra.query import BoundStatement, PreparedStatement, tuple_factory

from cdcpipe.capture import metrics
from cdcpipe.capture.events import Change
from cdcpipe.cql_raw import RawProtocolHandler, elements, int32, udt_fields
from cdcpipe.errors import CassandraReadError
from cdcpipe.model import Cell, ChangeEvent, ColumnChange, Deletion, Op
from cdcpipe.schema import TableSchema

log = structlog.get_logger(__name__)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _event_id(event_id: bytes, n: int) -> bytes:
    return hashlib.md5(event_id + b"backdated" + bytes([n]), usedforsecurity=False).digest()


class BackdatedCheck:
    """Reads back the writes older than their table's switch and says which deletions Cassandra must hold."""

    def __init__(self, session: Any, local_address: str | None = None, window_s: float = 3600.0) -> None:
        self.session = session  # the capture's session: its cluster opens the raw one
        self.local_address = local_address
        self.window_us = int(window_s * 1e6)
        self._raw: Any = None
        self._prepared: dict[tuple[Any, ...], PreparedStatement] = {}

    def _raw_session(self) -> Any:
        """A session of the same cluster whose rows stay serialized (``cql_raw``): values compare as bytes, and
        one the driver cannot decode (an out-of-range timestamp) is no error."""
        if self._raw is None:
            raw = self.session.cluster.connect()
            raw.client_protocol_handler = RawProtocolHandler
            raw.row_factory = tuple_factory
            self._raw = raw
        return self._raw

    def _statement(self, table: TableSchema, names: tuple[str, ...], static: bool) -> PreparedStatement:
        key = (table.table_id, id(table), names, static)
        stmt = self._prepared.get(key)
        if stmt is None:
            keys = table.partition_key if static else (*table.partition_key, *table.clustering)
            # a list's elements are told apart by value and write time (CQL shows no element paths)
            cols = ", ".join(f"{_quote(n)}, WRITETIME({_quote(n)})" if _kind(table, n) == "list" else _quote(n)
                             for n in names) or _quote(table.partition_key[0].name)
            where = " AND ".join(f"{_quote(c.name)} = ?" for c in keys)
            stmt = self._raw_session().prepare(f"SELECT {cols} FROM {_quote(table.keyspace)}.{_quote(table.table)} "
                                               f"WHERE {where}" + (" LIMIT 1" if static else ""))
            self._prepared[key] = stmt
        return stmt

    def _read(self, table: TableSchema, stmt: PreparedStatement, values: list[bytes | None]) -> Any:
        bound = BoundStatement(stmt)
        bound.values = values  # the key as the commit log holds it, already serialized
        session = self._raw_session()
        try:
            bound.consistency_level = ConsistencyLevel.ALL
            return session.execute(bound, timeout=10).one()
        except Exception as exc:  # a replica down: this node's own view is still safe
            host = self._local_host()
            if host is None:
                raise CassandraReadError(f"cannot read back a backdated write of {table.name}: {exc}",
                                         retriable=True) from exc
            log.info("backdated write read back at ONE on this node", error=str(exc))
        try:
            bound.consistency_level = ConsistencyLevel.ONE
            return session.execute(bound, timeout=10, host=host).one()
        except Exception as exc:
            raise CassandraReadError(f"cannot read back a backdated write of {table.name} on this node: {exc}",
                                     retriable=True) from exc

    def _local_host(self) -> Any:
        cluster = getattr(self.session, "cluster", None)
        if cluster is None or self.local_address is None:
            return None
        return next((h for h in cluster.metadata.all_hosts() if h.address == self.local_address), None)

    def check(self, changes: list[Change], switched_at: dict[str, int], logged_us: int) -> list[Change]:
        """The deletions for the writes of ``changes`` older than their table's switch (``switched_at``), when
        they were logged (``logged_us``: made durable) within ``window_s`` of it."""
        out: list[Change] = []
        for c in changes:
            floor = switched_at.get(c.table.name, 0)
            if floor and c.event.timestamp_micros < floor and logged_us - floor < self.window_us:
                out.extend(self.deletions(c, floor))
        return out

    def deletions(self, change: Change, floor: int) -> list[Change]:
        """The deletions Cassandra must hold for what ``change`` wrote with a timestamp below ``floor``."""
        ev, table = change.event, change.table
        if ev.op is not Op.UPSERT:
            return []
        columns = tuple(cc for cc in ev.columns if any(not c.deleted and c.timestamp < floor for c in cc.cells))
        marker = ev.liveness if ev.liveness is not None and ev.liveness.timestamp < floor else None
        if not columns and marker is None:
            return []
        names = tuple(cc.name for cc in columns)
        try:
            stmt = self._statement(table, names, ev.static)
        except InvalidRequest as exc:  # the table or a column is gone since: nothing left to read back
            log.warning("a backdated write cannot be read back", table=table.name, error=str(exc))
            return []
        except Exception as exc:
            raise CassandraReadError(f"cannot prepare the read back of {table.name}: {exc}", retriable=True) from exc
        row = self._read(table, stmt, [*change.raw_key, *(() if ev.static else change.raw_clustering)])
        now_s = int(time.time())
        out: list[ChangeEvent] = []
        if row is None and not ev.static and marker is not None and (
                marker.expires_at is None or marker.expires_at > now_s):
            op = Op.ROW_DELETE if table.clustering else Op.PARTITION_DELETE
            out.append(ChangeEvent(_event_id(ev.event_id, 0), op, marker.timestamp, ev.source, ev.partition_key,
                                   ev.clustering if table.clustering else (),
                                   deletion=Deletion(marker.timestamp, now_s)))
        else:
            gone, i = [], 0
            for cc in columns:
                value = None if row is None else row[i]
                stamps = None
                if _kind(table, cc.name) == "list":
                    i += 1
                    stamps = None if row is None else row[i]
                i += 1
                cells = tuple(_tombstone(c, now_s) for c in cc.cells if not c.deleted and c.timestamp < floor
                              and _absent(table, cc.name, c, value, stamps))
                if cells:
                    gone.append(ColumnChange(cc.name, cells, static=cc.static))
            if gone:
                out.append(replace(ev, event_id=_event_id(ev.event_id, 1), liveness=None, deletion=None,
                                   columns=tuple(gone), timestamp_micros=max(c.timestamp for g in gone
                                                                             for c in g.cells)))
        if out:
            metrics.BACKDATED_DELETIONS.inc(len(out))
            log.info("a backdated write is shadowed in Cassandra by a deletion no event carries: the deletion is "
                     "produced", table=table.name, key=str(ev.partition_key), events=len(out))
        return [Change(e, table, change.key, change.raw_key, change.raw_clustering) for e in out]


def _tombstone(cell: Cell, now_s: int) -> Cell:
    return Cell(None, cell.timestamp, deleted=True, local_deletion_time=now_s, path=cell.path, raw=b"",
                raw_path=cell.raw_path)


def _kind(table: TableSchema, name: str) -> str:
    return str(getattr(getattr(table.column(name.encode()), "type", None), "name", ""))


def _absent(table: TableSchema, name: str, cell: Cell, value: bytes | None, stamps: bytes | None = None) -> bool:
    """Whether Cassandra's serialized ``value`` of column ``name`` lacks what ``cell`` wrote (unsure: not absent).
    ``stamps``: a list's element write times (``WRITETIME`` of the column, serialized), which tell apart equal values
    written by different statements."""
    if value is None:
        return True
    if cell.path is None:
        return False
    kind = _kind(table, name)
    try:
        if kind == "set":
            return cell.raw_path is not None and cell.raw_path not in elements(value)
        if kind == "map":
            return cell.raw_path is not None and cell.raw_path not in elements(value, 2)[0::2]
        if kind == "list":
            times = [None if t is None else int32(t) for t in elements(stamps)] if stamps is not None else None
            return cell.raw is not None and not any(
                v == cell.raw and (times is None or times[j] == cell.timestamp)
                for j, v in enumerate(elements(value)))
        if kind == "udt" and cell.raw_path is not None:
            fields = udt_fields(value)
            index = int.from_bytes(cell.raw_path, "big")
            return index >= len(fields) or fields[index] is None
    except (ValueError, IndexError):
        return False
    return False
