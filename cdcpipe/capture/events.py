"""Row-level change events from decoded mutations: ``from_mutation`` is a pure function.

One PartitionUpdate yields, in this order: a PARTITION_DELETE for its partition deletion, one RANGE_DELETE per range
tombstone (start and end bound paired from its markers), an UPSERT for its static row, and one UPSERT or ROW_DELETE
per row.  Columns a change did not write are absent; cells of dropped columns are left out.

``event_id`` is a 16-byte BLAKE2b hash of the change's content only — table id, op, serialized key and clustering,
row marker, deletions, and per cell column, path, value bytes, timestamp, TTL, local deletion/expiry time — never of
where it was read, so the copies of one write that different replicas log (or a retried write with the same
timestamps) get the same id.  ``timestamp_micros`` is the newest write or deletion timestamp in the change.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cdcpipe.capture.mutation import Mutation, PartitionUpdate
from cdcpipe.capture.rows import (
    EXCL_END_INCL_START_BOUNDARY,
    EXCL_START_BOUND,
    INCL_END_BOUND,
    INCL_END_EXCL_START_BOUNDARY,
    INCL_START_BOUND,
    NO_TIMESTAMP,
    DeletionTime,
    RangeTombstoneMarker,
    Row,
)
from cdcpipe.capture.rows import Cell as RawCell
from cdcpipe.cql import CqlType, decode_value, udt_field_index
from cdcpipe.model import Bound, Cell, ChangeEvent, ColumnChange, Deletion, Liveness, Op, Source
from cdcpipe.schema import TableSchema

_Q = struct.Struct(">q")
_START_INCLUSIVE = {INCL_START_BOUND: True, EXCL_START_BOUND: False, EXCL_END_INCL_START_BOUNDARY: True,
                    INCL_END_EXCL_START_BOUNDARY: False}
_END_INCLUSIVE = {INCL_END_BOUND: True, 0: False, EXCL_END_INCL_START_BOUNDARY: False,
                  INCL_END_EXCL_START_BOUNDARY: True}


@dataclass(frozen=True, slots=True)
class Origin:
    """The node a commit log belongs to (the first three fields of every event's ``Source``)."""

    cluster: str
    datacenter: str
    node: str


@dataclass(frozen=True, slots=True)
class Change:
    """An event with the serialized forms it was decoded from, as the Avro encoder and the producer need them.

    ``key`` is the serialized partition key (the Kafka message key), ``raw_key`` its per-column parts,
    ``raw_clustering`` the row's clustering values, ``raw_bounds`` (start, end) of a range delete.
    """

    event: ChangeEvent
    table: TableSchema
    key: bytes
    raw_key: tuple[bytes, ...]
    raw_clustering: tuple[bytes | None, ...] = ()
    raw_bounds: tuple[tuple[bytes | None, ...], ...] = ()


def value_of(t: CqlType | None, raw: bytes | None) -> Any:
    """Decode a serialized value; None for null, for no type, and for bytes the driver cannot decode (the raw
    bytes travel with the event, so nothing is lost; the Avro decoder makes the same choice)."""
    if t is None or raw is None:
        return None
    try:
        return decode_value(t, raw)
    except Exception:  # driver codecs raise assorted types
        return None


def from_mutation(mutation: Mutation, origin: Origin, segment_id: int, position: int,
                  include: Callable[[TableSchema], bool] = lambda t: True) -> list[Change]:
    """The row-level changes of ``mutation`` (read at ``segment_id``/``position``) for the tables ``include``
    accepts, in the order described in the module docstring."""
    out: list[Change] = []
    for update in mutation.updates:
        if include(update.table):
            out.extend(_changes(update, origin, segment_id, position))
    return out


def _changes(u: PartitionUpdate, origin: Origin, segment_id: int, position: int) -> Iterator[Change]:
    t = u.table
    raw_key = t.partition_key_values(u.key)
    pk = tuple(value_of(c.type, r) for c, r in zip(t.partition_key, raw_key, strict=True))
    source = Source(origin.cluster, origin.datacenter, origin.node, t.keyspace, t.table, t.table_id, segment_id,
                    position)
    base = _Hasher(t.table_id, u.key)

    def make(op: Op, ts: int, h: _Hasher, **kw: Any) -> ChangeEvent:
        return ChangeEvent(event_id=h.digest(), op=op, timestamp_micros=ts, source=source, partition_key=pk, **kw)

    if u.partition_deletion is not None:
        d = _deletion(u.partition_deletion)
        h = base.copy().text("P").deletion(d)
        yield Change(make(Op.PARTITION_DELETE, d.timestamp, h, deletion=d), t, u.key, raw_key)
    for start, end, dt in ranges(u.range_tombstones):
        d = _deletion(dt)
        h = base.copy().text("R").deletion(d)
        for kind, (raws, incl) in (("s", start), ("e", end)):
            h.text(kind).int(incl).prefix(raws)
        cols = t.clustering
        rs = Bound(tuple(value_of(c.type, r) for c, r in zip(cols, start[0], strict=False)), start[1])
        re_ = Bound(tuple(value_of(c.type, r) for c, r in zip(cols, end[0], strict=False)), end[1])
        ev = make(Op.RANGE_DELETE, d.timestamp, h, deletion=d, range_start=rs, range_end=re_)
        yield Change(ev, t, u.key, raw_key, (), (start[0], end[0]))
    rows = (u.static_row, *u.rows) if u.static_row is not None else u.rows
    for row in rows:
        change = _row_change(row, t, base, make)
        if change is not None:
            yield Change(change, t, u.key, raw_key, () if row.static else row.clustering)


def _row_change(row: Row, t: TableSchema, base: _Hasher,
                make: Callable[..., ChangeEvent]) -> ChangeEvent | None:
    columns, newest = _columns(row, t)
    liveness = None
    if row.liveness is not None and row.liveness.timestamp != NO_TIMESTAMP:
        lv = row.liveness
        liveness = Liveness(lv.timestamp, lv.ttl, lv.local_expiration_time if lv.ttl > 0 else None)
        newest = max(newest, lv.timestamp)
    deletion = _deletion(row.deletion) if row.deletion is not None else None
    if deletion is not None:
        newest = max(newest, deletion.timestamp)
    if not columns and liveness is None and deletion is None:
        return None
    h = base.copy().text("S" if row.static else "W").prefix(row.clustering)
    if liveness is not None:
        h.text("L").int(liveness.timestamp).int(liveness.ttl).int(liveness.expires_at)
    if deletion is not None:
        h.text("D").deletion(deletion)
    for col in columns:
        h.text("C").text(col.name).deletion(col.complex_deletion)
        for c in col.cells:
            h.prefix((c.raw_path,)).prefix((c.raw,)).int(c.timestamp).int(c.ttl).int(c.deleted)
            h.int(c.expires_at).int(c.local_deletion_time)
    clustering = () if row.static else tuple(value_of(c.type, r) for c, r in zip(t.clustering, row.clustering,
                                                                                   strict=False))
    op = Op.UPSERT if columns or liveness is not None else Op.ROW_DELETE
    return make(op, newest, h, clustering=clustering, liveness=liveness, deletion=deletion, columns=tuple(columns),
                static=row.static)


def _columns(row: Row, t: TableSchema) -> tuple[list[ColumnChange], int]:
    """Column changes in the row's header order, and the newest cell or complex-deletion timestamp."""
    current = {c.name: c for c in (t.static if row.static else t.regular)}
    cells: dict[str, list[Cell]] = {}
    newest = NO_TIMESTAMP
    for rc in row.cells:
        col = current.get(rc.column)
        if col is None:  # a dropped column's cell
            continue
        cells.setdefault(rc.column, []).append(_cell(rc, col.type))
        newest = max(newest, rc.timestamp)
    deletions: dict[str, Deletion] = {}
    for name, dt in row.complex_deletions:
        if name in current:
            deletions[name] = _deletion(dt)
            newest = max(newest, dt.marked_for_delete_at)
    names = list(cells) + [n for n in deletions if n not in cells]
    return [ColumnChange(n, tuple(cells.get(n, ())), deletions.get(n), row.static) for n in names], newest


def _cell(rc: RawCell, t: CqlType) -> Cell:
    path: Any = None
    value_t: CqlType | None = t
    if t.multi_cell:
        if t.name == "list":
            value_t = t.params[0]
            path = uuid.UUID(bytes=bytes(rc.path)) if rc.path is not None and len(rc.path) == 16 else None
        elif t.name == "set":
            value_t, path = None, value_of(t.params[0], rc.path)
        elif t.name == "map":
            value_t, path = t.params[1], value_of(t.params[0], rc.path)
        else:
            idx = udt_field_index(bytes(rc.path or b"\0\0"))
            value_t = t.params[idx] if idx < len(t.params) else None
            path = t.field_names[idx] if idx < len(t.field_names) else None
    ldt = rc.local_deletion_time
    return Cell(
        value=None if rc.deleted else value_of(value_t, rc.value), timestamp=rc.timestamp,
        ttl=rc.ttl if not rc.deleted else 0, expires_at=ldt if not rc.deleted and rc.ttl > 0 else None,
        deleted=rc.deleted, local_deletion_time=ldt if rc.deleted else None, path=path, raw=bytes(rc.value),
        raw_path=None if rc.path is None else bytes(rc.path))


def _deletion(d: DeletionTime) -> Deletion:
    return Deletion(d.marked_for_delete_at, d.local_deletion_time)


_Side = tuple[tuple[bytes | None, ...], bool]


def ranges(markers: tuple[RangeTombstoneMarker, ...]) -> Iterator[tuple[_Side, _Side, DeletionTime]]:
    """Pair open and close markers (bounds and boundaries) into (start, end, deletion) ranges."""
    open_: tuple[_Side, DeletionTime] | None = None
    for m in markers:
        if m.close_deletion is not None and open_ is not None:
            yield open_[0], (m.bound, _END_INCLUSIVE.get(m.kind, False)), m.close_deletion
            open_ = None
        if m.open_deletion is not None:
            open_ = ((m.bound, _START_INCLUSIVE.get(m.kind, True)), m.open_deletion)


class _Hasher:
    """Length-prefixed feed into BLAKE2b-128 (unambiguous: no two contents give the same byte stream)."""

    __slots__ = ("_h",)

    def __init__(self, table_id: uuid.UUID | None = None, key: bytes = b"", _h: Any = None) -> None:
        self._h = _h if _h is not None else hashlib.blake2b(digest_size=16)
        if _h is None and table_id is not None:
            self._h.update(table_id.bytes)
            self.prefix((key,))

    def copy(self) -> _Hasher:
        return _Hasher(_h=self._h.copy())

    def text(self, s: str) -> _Hasher:
        return self.prefix((s.encode(),))

    def int(self, v: int | bool | None) -> _Hasher:
        self._h.update(b"\0" if v is None else b"\1" + _Q.pack(int(v)))
        return self

    def prefix(self, values: tuple[bytes | None, ...]) -> _Hasher:
        self.int(len(values))
        for v in values:
            if v is None:
                self._h.update(b"\xff\xff\xff\xff")
            else:
                self._h.update(len(v).to_bytes(4, "big"))
                self._h.update(v)
        return self

    def deletion(self, d: Deletion | None) -> _Hasher:
        return self.int(None) if d is None else self.int(d.timestamp).int(d.local_deletion_time)

    def digest(self) -> bytes:
        return self._h.digest()
