"""Rows as CQL returns them, with ``WRITETIME()`` and ``TTL()`` of every cell, turned into the change events capture
would have produced had it seen the writes (pure: no I/O).

The query selects the primary key, then per static and regular column its value, ``WRITETIME(c)`` and ``TTL(c)``.
Cassandra 5.0 answers the last two per element for a non-frozen collection or UDT (a list with one entry per
cell, in cell order; a UDT lists its non-null fields).  Values arrive serialized, exactly as the node stores them
(:mod:`cdcpipe.snapshot.reader` keeps the driver from decoding them), so the events carry the same ``raw`` bytes
as capture's and merge rule 6 (equal timestamps: the greater bytes win) holds between the two.

What CQL cannot tell, and what is chosen instead (``docs/delivery.md``, "Snapshot"):
  - Whether a row has a row marker (an INSERT writes one, an UPDATE does not), and its timestamp and TTL.  A row
    with live cells is sent without one: it lives as long as its cells do.  A row with none exists by its
    marker alone; that one is sent at :data:`NO_MARKER_TIMESTAMP`, older than any real write, so any deletion
    shadows it, and without a TTL.
  - A list element's cell path (a time-UUID).  Elements get made-up paths in list order (:func:`list_paths`),
    marked as the snapshot's; an element CDC also delivered (real path, same write timestamp and value) is shown
    once by apply's view.
  - A TTL's exact expiry second: ``TTL()`` is the remaining time at the node's clock when it served the page;
    the expiry is taken as the second the page was requested plus that (never later than the true expiry).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from cassandra.metadata import escape_name

from cdcpipe.cql import CqlType, decode_value
from cdcpipe.cql_raw import elements, int32, udt_fields
from cdcpipe.errors import SnapshotError
from cdcpipe.model import SNAPSHOT_PATH_NODE, Cell, ChangeEvent, ColumnChange, Liveness, Op, Source
from cdcpipe.schema import Column, TableSchema

NO_MARKER_TIMESTAMP = -(1 << 63) + 1  # older than every write: a row marker that can never shadow anything
SNAPSHOT_NODE = "snapshot"  # source.node of a snapshot event
SNAPSHOT_SEGMENT = -1  # source.segment_id of a snapshot event: read from no commit-log segment
_UUID_EPOCH = 0x01B21DD213814000  # 100 ns intervals from 1582-10-15 (time-UUID epoch) to 1970-01-01


@dataclass(frozen=True, slots=True)
class Layout:
    """The query of one table and how to read its rows: the key columns, then ``cells`` (static columns, then
    regular ones) as ``value, WRITETIME, TTL`` triples."""

    table: TableSchema
    cells: tuple[Column, ...]
    select: str  # the rows of one token range: bind (start, end)

    @property
    def key_width(self) -> int:
        return len(self.table.partition_key) + len(self.table.clustering)


def layout(table: TableSchema) -> Layout:
    """The snapshot query of ``table``.  Raises SnapshotError for a table it cannot read exactly."""
    cells = (*table.static, *table.regular)
    counters = [c.name for c in cells if c.type.name == "counter"]
    if counters:
        raise SnapshotError(f"counter columns {counters} have no write time CQL can select; counter tables cannot "
                            "be snapshotted (and CDC of counters is not supported)", table=table.name)
    keys = [escape_name(c.name) for c in (*table.partition_key, *table.clustering)]
    selected = [*keys]
    for c in cells:
        q = escape_name(c.name)
        selected += [q, f"WRITETIME({q})", f"TTL({q})"]
    token = f"token({', '.join(escape_name(c.name) for c in table.partition_key)})"
    select = (f"SELECT {', '.join(selected)} FROM {escape_name(table.keyspace)}.{escape_name(table.table)} "
              f"WHERE {token} > ? AND {token} <= ?")
    return Layout(table, cells, select)


@dataclass(frozen=True, slots=True)
class Emitted:
    """One change event to produce, with its Kafka key (the stored partition key) and serialized key values."""

    key: bytes
    event: ChangeEvent
    raw_key: tuple[bytes, ...]
    raw_clustering: tuple[bytes | None, ...]


def source_of(table: TableSchema, cluster: str, datacenter: str) -> Source:
    """The ``source`` of a snapshot event: node ``snapshot``, segment -1 (no commit-log segment)."""
    return Source(cluster, datacenter, SNAPSHOT_NODE, table.keyspace, table.table, table.table_id,
                  SNAPSHOT_SEGMENT, 0)


class RowConverter:
    """Turns the rows of one scan (pages in token order) into events.  Keeps the last partition key seen, so a
    partition's static cells become one event however many rows and pages it spans."""

    def __init__(self, lay: Layout, source: Source) -> None:
        self.layout = lay
        self.source = source
        self._last_key: bytes | None = None
        t = lay.table
        self._npk, self._nck = len(t.partition_key), len(t.clustering)
        self._statics = frozenset(c.name for c in t.static)

    def convert(self, rows: Sequence[Sequence[bytes | None]], now_s: int) -> Iterator[Emitted]:
        """The events of ``rows`` read at ``now_s`` (the second the page was requested)."""
        t, npk, nck = self.layout.table, self._npk, self._nck
        cells = self.layout.cells
        for row in rows:
            raw_key = tuple(v if v is not None else b"" for v in row[:npk])
            key = t.partition_key_bytes(raw_key)
            pk: tuple[Any, ...] | None = None
            if key != self._last_key:
                self._last_key = key
                if t.static:
                    static = self._columns(row, cells[:len(t.static)], npk + nck, now_s, static=True)
                    if static:
                        pk = self._decode(t.partition_key, raw_key)
                        yield self._event(key, raw_key, pk, (), (), static, None, static=True)
            raw_ck = tuple(row[npk:npk + nck])
            if nck and raw_ck[0] is None:  # a partition with static cells and no rows
                continue
            regular = self._columns(row, cells[len(t.static):], npk + nck + 3 * len(t.static), now_s, static=False)
            # a row without a live cell exists by its marker alone; whether a row with cells has one is unknowable
            marker = None if regular else Liveness(NO_MARKER_TIMESTAMP)
            pk = pk if pk is not None else self._decode(t.partition_key, raw_key)
            ck = self._decode(t.clustering, raw_ck)
            yield self._event(key, raw_key, pk, raw_ck, ck, regular, marker, static=False)

    @staticmethod
    def _decode(columns: Sequence[Column], raws: Sequence[bytes | None]) -> tuple[Any, ...]:
        return tuple(_value(c.type, r) for c, r in zip(columns, raws, strict=True))

    def _event(self, key: bytes, raw_key: tuple[bytes, ...], pk: tuple[Any, ...], raw_ck: tuple[bytes | None, ...],
               ck: tuple[Any, ...], columns: list[ColumnChange], marker: Liveness | None, *, static: bool) -> Emitted:
        newest = max((c.timestamp for ch in columns for c in ch.cells), default=NO_MARKER_TIMESTAMP)
        h = hashlib.blake2b(digest_size=16)
        h.update(b"snapshot\0" + self.source.table_id.bytes + key + (b"S" if static else b"R"))
        for r in raw_ck:
            h.update(b"\0" if r is None else len(r).to_bytes(4, "big") + r)
        h.update(newest.to_bytes(8, "big", signed=True))
        event = ChangeEvent(event_id=h.digest(), op=Op.UPSERT, timestamp_micros=newest, source=self.source,
                            partition_key=pk, clustering=ck, liveness=marker, columns=tuple(columns), static=static)
        return Emitted(key, event, raw_key, raw_ck)

    def _columns(self, row: Sequence[bytes | None], columns: Sequence[Column], at: int, now_s: int, *,
                 static: bool) -> list[ColumnChange]:
        out = []
        for i, col in enumerate(columns):
            value, wt, ttl = row[at + 3 * i], row[at + 3 * i + 1], row[at + 3 * i + 2]
            if value is None or wt is None:
                continue
            try:
                found = _cells(col.type, value, wt, ttl, now_s)
            except (ValueError, IndexError) as exc:
                raise SnapshotError(f"column {col.name!r}: cannot read its cells: {exc}",
                                    table=self.layout.table.name) from exc
            if found:
                out.append(ColumnChange(col.name, tuple(found), None, static))
        return out


def _value(t: CqlType | None, raw: bytes | None) -> Any:
    if t is None or raw is None:
        return None
    try:
        return decode_value(t, raw)
    except Exception:  # driver codecs raise assorted types; the raw bytes travel with the event (as capture does)
        return None


def _numbers(raw: bytes | None) -> list[int | None]:
    """A serialized ``list<bigint>`` or ``list<int>`` whose elements may be null (the driver's codec refuses
    null elements, which ``TTL()`` of a collection has for elements without one)."""
    if raw is None:
        return []
    return [None if e is None else int32(e) for e in elements(raw)]


def list_paths(timestamps: Sequence[int]) -> list[bytes]:
    """Made-up version-1 time-UUID cell paths for list elements written at ``timestamps`` (µs), in list order:
    each at its element's write time, pushed forward where needed to stay strictly increasing, so the same list
    read again gets the same paths, elements appended later sort after them and prepended ones (time-UUIDs that
    run backwards from 2010) before them.  The node field is :data:`cdcpipe.model.SNAPSHOT_PATH_NODE`."""
    out, prev = [], -1
    node = int.from_bytes(SNAPSHOT_PATH_NODE, "big")
    for ts in timestamps:
        t = min(max(prev + 1, ts * 10 + _UUID_EPOCH, 0), (1 << 60) - 1)
        prev = t
        u = uuid.UUID(fields=(t & 0xFFFFFFFF, (t >> 32) & 0xFFFF, ((t >> 48) & 0x0FFF) | 0x1000, 0x80, 0, node))
        out.append(u.bytes)
    return out


def _cells(t: CqlType, value: bytes, wt: bytes, ttl: bytes | None, now_s: int) -> list[Cell]:
    if not t.multi_cell:
        remaining = None if ttl is None else int32(ttl)
        return [Cell(_value(t, value), int32(wt), remaining or 0,
                     now_s + remaining if remaining else None, raw=value)]
    stamps = _numbers(wt)
    ttls = _numbers(ttl)
    if t.name == "udt":  # one write time per field of the type, null where the field has no cell
        fields = udt_fields(value)
        fields += [None] * (len(stamps) - len(fields))
        if len(fields) != len(stamps):
            raise ValueError(f"{len(fields)} UDT fields but {len(stamps)} write times")
        kept = [i for i, v in enumerate(fields) if v is not None]
        parts: list[tuple[bytes, Any, bytes, Any]] = [
            (i.to_bytes(2, "big"), t.field_names[i] if i < len(t.field_names) else None, fields[i] or b"",
             _value(t.params[i] if i < len(t.params) else None, fields[i])) for i in kept]
        stamps = [stamps[i] for i in kept]
        ttls = [ttls[i] for i in kept] if ttls else []
    else:
        items = elements(value, 2 if t.name == "map" else 1)
        if t.name == "map":
            if len(items) % 2:
                raise ValueError("a map value with a key and no value")
            keys, vals = items[0::2], items[1::2]
            parts = [(k or b"", _value(t.params[0], k), v or b"", _value(t.params[1], v))
                     for k, v in zip(keys, vals, strict=True)]
        elif t.name == "set":
            parts = [(e or b"", _value(t.params[0], e), b"", None) for e in items]
        else:  # list: made-up paths (see list_paths)
            paths = list_paths([s if s is not None else 0 for s in stamps])
            parts = [(p, uuid.UUID(bytes=p), e or b"", _value(t.params[0], e))
                     for p, e in zip(paths, items, strict=False)]
    if len(stamps) != len(parts) or (ttls and len(ttls) != len(parts)):
        raise ValueError(f"{len(parts)} elements but {len(stamps)} write times and {len(ttls)} TTLs")
    cells = []
    for i, (raw_path, path, raw, val) in enumerate(parts):
        stamp = stamps[i]
        if stamp is None:
            raise ValueError("an element without a write time")
        remaining = ttls[i] if ttls else None
        cells.append(Cell(val, stamp, remaining or 0, now_s + remaining if remaining else None,
                          path=path, raw=raw, raw_path=raw_path))
    return cells
