"""Mutation decoding: a commit log entry -> PartitionUpdates with rows, cells and tombstones.

Messaging versions 10, 11, 12 (descriptors 6/7) and 13 (descriptor 8, Cassandra 5.0 with
``storage_compatibility_mode`` UPGRADING/NONE) share one byte layout; version 13 only reads local
deletion times as unsigned 32-bit seconds (checked against cassandra-5.0 ``Cell.decodeLocalDeletionTime``,
``UnfilteredSerializer.readComplexColumn``, ``EncodingStats.Serializer``). Reference §7.

Decoding needs the schema of every table an entry mentions; it is looked up by table id through a
``SchemaLookup`` (``cdcpipe.capture.registry.SchemaRegistry``). An unknown table id or column raises
``UnknownTableError`` (retriable: the schema may be refreshed); malformed bytes raise
``MutationDecodeError``. Nothing else escapes ``MutationDecoder.decode``.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from cdcpipe.capture.rows import (
    DELETION_TIME_EPOCH,
    END_OF_PARTITION,
    EXTENSION_FLAG,
    IS_MARKER,
    IS_STATIC,
    TIMESTAMP_EPOCH,
    VINT_EXTRA,
    VINT_MASK,
    Cell,
    ColumnSpec,
    DeletionTime,
    Header,
    Liveness,
    RangeTombstoneMarker,
    Row,
    RowReader,
    WireError,
    uvint,
)
from cdcpipe.capture.segment import Position
from cdcpipe.errors import MutationDecodeError, UnknownTableError
from cdcpipe.schema import Column, DroppedColumn, TableSchema

__all__ = [
    "Cell", "DeletionTime", "Liveness", "Mutation", "MutationDecoder", "PartitionUpdate",
    "RangeTombstoneMarker", "Row", "RowSink", "SchemaLookup", "SinkRefused", "first_table_id",
]

# PartitionUpdate flags (UnfilteredRowIteratorSerializer)
IS_EMPTY, IS_REVERSED, HAS_PARTITION_DELETION, HAS_STATIC_ROW, HAS_ROW_ESTIMATE = 1, 2, 4, 8, 16
TWO_63, TWO_64, _M32 = 1 << 63, 1 << 64, 0xFFFFFFFF
_MAX_HEADERS = 4096  # cached column headers per table
_RECENT_HEADERS = 4  # headers per table compared by prefix before walking a header
_new: Any = tuple.__new__


class PartitionUpdate(NamedTuple):
    """The changes to one partition of one table. ``key`` is the raw partition key (see
    ``TableSchema.partition_key_values``); ``rows`` and ``range_tombstones`` are in clustering order."""

    table: TableSchema
    key: bytes
    partition_deletion: DeletionTime | None
    static_row: Row | None
    rows: tuple[Row, ...]
    range_tombstones: tuple[RangeTombstoneMarker, ...] = ()

    @property
    def table_id(self) -> uuid.UUID:
        return self.table.table_id


class Mutation(NamedTuple):
    """One decoded commit log entry: all its PartitionUpdates (same keyspace and partition key)."""

    position: Position | None
    updates: tuple[PartitionUpdate, ...]


class RowSink(Protocol):
    """Takes the regular rows of a table's PartitionUpdate straight from the wire (``encoder.TableEncoder``
    writes their events without building Rows)."""

    def begin(self, key: bytes, position: Position) -> None:
        """A PartitionUpdate of partition ``key`` begins (in the entry that ends at ``position``)."""

    def row(self, r: RowReader, p: int, flags: int, ext: int, header: Header) -> int:
        """Consume the row at ``p`` (after its flags ``flags``/``ext``), read with ``r``; the offset after it."""


class SinkRefused(Exception):
    """An update for a RowSink has what a sink does not take (a partition deletion, a static row, a range
    tombstone marker): decode the entry without sinks."""


class SchemaLookup(Protocol):
    """Table id -> schema; may refresh when an id or a column is unknown (see SchemaRegistry.get)."""

    def get(self, table_id: uuid.UUID, missing_column: bytes | None = None) -> TableSchema | None: ...


def first_table_id(data: bytes) -> uuid.UUID | None:
    """Table id of the first PartitionUpdate of a serialized mutation (readable without a schema)."""
    try:
        _, p = uvint(data, 0)
        return uuid.UUID(bytes=bytes(data[p:p + 16])) if p + 16 <= len(data) else None
    except (IndexError, ValueError):
        return None


def raw_table_id(data: bytes) -> bytes:
    """The raw 16 bytes of the first PartitionUpdate's table id (b"" when unreadable)."""
    if data and data[0] < 0x80:  # a one-byte key length: the id follows at once
        return data[1:17]
    tid = first_table_id(data)
    return tid.bytes if tid is not None else b""


class _TableState(NamedTuple):
    """Decoding state derived from one TableSchema object: its clustering value lengths and its column
    headers resolved so far (keyed by the header's serialized bytes)."""

    table: TableSchema
    clustering_fixed: tuple[int, ...]
    headers: dict[bytes, Header]
    recent: list[tuple[bytes, Header]]  # the last headers seen, tried first by prefix comparison


class MutationDecoder:
    """Decodes serialized mutations. Keeps per-table caches of resolved column headers; not
    thread-safe. If the lookup has a ``generation`` attribute (``SchemaRegistry``: it changes on every
    reload), the table found for an id is reused until the generation changes."""

    def __init__(self, schemas: SchemaLookup) -> None:
        self._schemas = schemas
        self._states: dict[int, _TableState] = {}
        self._ids: dict[bytes, uuid.UUID] = {}
        self._known: dict[bytes, tuple[object, uuid.UUID, _TableState]] = {}
        self._reader = RowReader(b"", 0, 0, 0, False, ())  # reset for every PartitionUpdate

    def decode(self, data: bytes, messaging_version: int, position: Position | None = None,
               segment: str = "", sinks: Callable[[TableSchema], RowSink | None] | None = None) -> Mutation:
        """Decode one entry written with ``messaging_version`` (10..13). Raises UnknownTableError or
        MutationDecodeError carrying ``segment``, ``position`` and the table id.

        With ``sinks`` (and a ``position``), the rows of an update whose table ``sinks`` gives a RowSink go to
        that sink instead, and the update comes back without rows; SinkRefused (nothing was lost: decode again
        without sinks) and whatever a sink raises escape as they are."""
        if not 10 <= messaging_version <= 13:
            raise MutationDecodeError(f"unsupported messaging version {messaging_version}",
                                      segment=segment, position=_offset(position))
        if type(data) is not bytes:
            data = bytes(data)
        table_id: uuid.UUID | None = None
        generation = getattr(self._schemas, "generation", None)
        known = self._known
        try:
            end = len(data)
            count = data[0]
            if count < 0x80:
                p = 1
            else:
                count, p = uvint(data, 0)
            if count == 0 or count > end:
                raise WireError(f"bad partition update count {count}")
            ldt_unsigned = messaging_version >= 13
            updates: list[PartitionUpdate] = []
            for _ in range(count):
                if p + 16 > end:
                    raise WireError("truncated table id")
                raw_id = data[p:p + 16]
                hit = known.get(raw_id)
                if hit is not None and hit[0] == generation and generation is not None:
                    table_id, state = hit[1], hit[2]
                else:
                    table_id = self._ids.get(raw_id)
                    if table_id is None:
                        table_id = uuid.UUID(bytes=raw_id)
                        if len(self._ids) < 65536:
                            self._ids[raw_id] = table_id
                    state = self._lookup(raw_id, table_id, generation, segment, position)
                update, p = self._partition_update(data, p + 16, state, ldt_unsigned, segment, position, sinks)
                if update is not None:
                    if count == 1:  # the common case: no list
                        if p != end:
                            break
                        single: Mutation = _new(Mutation, (position, (update,)))
                        return single
                    updates.append(update)
            if p != end:
                raise WireError(f"{end - p} trailing bytes after the last partition update")
            mutation: Mutation = _new(Mutation, (position, tuple(updates)))
            return mutation
        except MutationDecodeError:
            raise
        except (WireError, IndexError, ValueError, struct.error, OverflowError) as exc:
            raise MutationDecodeError(str(exc) or type(exc).__name__, segment=segment,
                                      position=_offset(position), table_id=table_id) from exc

    def _lookup(self, raw_id: bytes, table_id: uuid.UUID, generation: object, segment: str,
                position: Position | None) -> _TableState:
        table = self._schemas.get(table_id)
        if table is None:
            raise UnknownTableError(table_id, segment=segment, position=_offset(position))
        state = self._states.get(id(table))
        if state is None or state.table is not table:
            state = self._state(table)
        if generation is not None:
            if len(self._known) >= 65536:
                self._known.clear()
            self._known[raw_id] = (generation, table_id, state)
        return state

    def _partition_update(self, buf: bytes, p: int, state: _TableState, ldt_unsigned: bool, segment: str,
                          position: Position | None, sinks: Callable[[TableSchema], RowSink | None] | None,
                          ) -> tuple[PartitionUpdate | None, int]:
        n = buf[p]
        if n < 0x80:
            p += 1
        else:
            n, p = uvint(buf, p)
        e = p + n
        if e > len(buf):
            raise WireError(f"partition key of {n} bytes at {p} overruns the mutation")
        key = buf[p:e]
        flags = buf[e]
        p = e + 1
        if flags & IS_EMPTY:
            return None, p
        if flags & IS_REVERSED:
            raise WireError("reversed partition update")
        u = buf[p]
        if u < 0x80:
            p += 1
        else:  # uvint() inlined: the minimum timestamp is almost always several bytes
            n = VINT_EXTRA[u]
            e = p + 1 + n
            if e > len(buf):
                raise WireError(f"truncated vint at {p}")
            u = ((u & VINT_MASK[n]) << (8 * n)) | int.from_bytes(buf[p + 1:e], "big")
            p = e
        min_ts = u + TIMESTAMP_EPOCH
        if min_ts >= TWO_63:
            min_ts -= TWO_64
        u = buf[p]
        if u < 0x80:
            p += 1
        else:
            u, p = uvint(buf, p)
        min_ldt = (u + DELETION_TIME_EPOCH) & _M32
        u = buf[p]
        if u < 0x80:
            p += 1
        else:
            u, p = uvint(buf, p)
        min_ttl = u & _M32
        statics: Header | None = None
        if flags & HAS_STATIC_ROW:
            statics, state, p = self._columns(buf, p, state, segment, position)
        regulars, state, p = self._columns(buf, p, state, segment, position)
        reader = self._reader
        reader.buf = buf
        reader.end = len(buf)
        reader.min_ts = min_ts
        reader.min_ldt = min_ldt
        reader.min_ttl = min_ttl
        reader.ldt_unsigned = ldt_unsigned
        reader.clustering_fixed = state.clustering_fixed
        sink = sinks(state.table) if sinks is not None else None
        if sink is not None and (flags & (HAS_PARTITION_DELETION | HAS_STATIC_ROW) or position is None):
            raise SinkRefused  # a sink takes rows only
        partition_deletion = None
        if flags & HAS_PARTITION_DELETION:
            partition_deletion, p = reader.deletion_time(p)
        static_row = None
        if statics is not None:
            rflags = buf[p]
            ext = buf[p + 1] if rflags & EXTENSION_FLAG else 0
            if not ext & IS_STATIC or rflags & (IS_MARKER | END_OF_PARTITION):
                raise WireError("expected a static row")
            static_row, p = reader.row(p + 2, rflags, ext, statics, True)
        if flags & HAS_ROW_ESTIMATE:
            if buf[p] < 0x80:
                p += 1
            else:
                _, p = uvint(buf, p)
        if sink is not None:
            assert position is not None
            return self._sunk_rows(buf, p, state.table, key, position, sink, regulars)
        rows: list[Row] = []
        markers: list[RangeTombstoneMarker] = []
        row = reader.row
        while True:
            rflags = buf[p]
            p += 1
            if rflags & END_OF_PARTITION:
                break
            if rflags & IS_MARKER:
                marker, p = reader.marker(p)
                markers.append(marker)
                continue
            ext = 0
            if rflags & EXTENSION_FLAG:
                ext = buf[p]
                p += 1
                if ext & IS_STATIC:
                    raise WireError("static row in the middle of a partition")
            r, p = row(p, rflags, ext, regulars, False)
            rows.append(r)
        update: PartitionUpdate = _new(PartitionUpdate, (state.table, key, partition_deletion, static_row,
                                                         tuple(rows), tuple(markers) if markers else ()))
        return update, p

    def _sunk_rows(self, buf: bytes, p: int, table: TableSchema, key: bytes, position: Position, sink: RowSink,
                   regulars: Header) -> tuple[PartitionUpdate, int]:
        """The rows of an update handed to ``sink`` (the reader is set up); the update without them."""
        sink.begin(key, position)
        reader, row = self._reader, sink.row
        while True:
            rflags = buf[p]
            p += 1
            if rflags & END_OF_PARTITION:
                break
            if rflags & IS_MARKER:
                raise SinkRefused
            ext = 0
            if rflags & EXTENSION_FLAG:
                ext = buf[p]
                p += 1
                if ext & IS_STATIC:
                    raise WireError("static row in the middle of a partition")
            p = row(reader, p, rflags, ext, regulars)
        update: PartitionUpdate = _new(PartitionUpdate, (table, key, None, None, (), ()))
        return update, p

    def _state(self, table: TableSchema) -> _TableState:
        fixed = tuple(-1 if c.type.fixed_length is None else c.type.fixed_length for c in table.clustering)
        state = _TableState(table, fixed, {}, [])
        if len(self._states) >= 4096:  # schemas replaced by many refreshes
            self._states.clear()
        self._states[id(table)] = state
        return state

    def _columns(self, buf: bytes, p: int, state: _TableState, segment: str, position: Position | None,
                 ) -> tuple[Header, _TableState, int]:
        """The column header at ``p``, resolved against ``state.table`` (or a refreshed schema of the same
        table, whose state is returned) and cached by its serialized bytes."""
        start = p
        for raw, header in state.recent:
            if buf.startswith(raw, start):  # a header is self-delimiting: same bytes, same header
                return header, state, start + len(raw)
        count = buf[p]
        if count < 0x80:
            p += 1
        else:
            count, p = uvint(buf, p)
        if count > len(buf):
            raise WireError(f"bad column count {count}")
        for _ in range(count):
            n = buf[p]
            if n < 0x80:
                p += 1 + n
            else:
                n, p = uvint(buf, p)
                p += n
        if p > len(buf):
            raise WireError(f"column header at {start} overruns the mutation")
        raw = buf[start:p]
        found = state.headers.get(raw)
        if found is not None:
            _remember(state.recent, raw, found)
            return found, state, p
        q = start
        _, q = uvint(buf, q)
        names = []
        for _ in range(count):
            n, q = uvint(buf, q)
            names.append(buf[q:q + n])
            q += n
        specs, table = self._resolve(state.table, names, segment, position)
        if table is not state.table:
            known = self._states.get(id(table))
            state = known if known is not None and known.table is table else self._state(table)
        header = Header(specs)
        if len(state.headers) < _MAX_HEADERS:
            state.headers[raw] = header
        _remember(state.recent, raw, header)
        return header, state, p

    def _resolve(self, table: TableSchema, names: list[bytes], segment: str, position: Position | None,
                 ) -> tuple[tuple[ColumnSpec, ...], TableSchema]:
        specs = []
        for name in names:
            col = table.column(name)
            if col is None:
                newer = self._schemas.get(table.table_id, missing_column=name)
                if newer is None or newer is table or newer.column(name) is None:
                    raise UnknownTableError(table.table_id, segment=segment, position=_offset(position),
                                            column=name.decode("utf-8", "replace"))
                return self._resolve(newer, names, segment, position)
            specs.append(_spec(table, col))
        return tuple(specs), table


def _remember(recent: list[tuple[bytes, Header]], raw: bytes, header: Header) -> None:
    recent.insert(0, (raw, header))
    del recent[_RECENT_HEADERS:]


def _spec(table: TableSchema, col: Column | DroppedColumn) -> ColumnSpec:
    dropped = next((d.dropped_time for d in table.dropped if d.name == col.name), None)
    fixed = col.type.fixed_length
    return ColumnSpec(col.name, col.type, -1 if fixed is None else fixed, col.type.multi_cell, dropped)


def _offset(position: Position | None) -> int:
    return -1 if position is None else position.offset
