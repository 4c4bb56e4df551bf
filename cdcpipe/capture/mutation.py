"""Mutation decoding: a commit log entry -> PartitionUpdates with rows, cells and tombstones.

Messaging versions 10, 11, 12 (descriptors 6/7) and 13 (descriptor 8, Cassandra 5.0 with
``storage_compatibility_mode`` UPGRADING/NONE) share one byte layout; version 13 only reads local
deletion times as unsigned 32-bit seconds (checked against cassandra-5.0 ``Cell.decodeLocalDeletionTime``,
``UnfilteredSerializer.readComplexColumn``, ``EncodingStats.Serializer``). Reference §7.

Decoding needs the schema of every table an entry mentions; it is looked up by table id through a
``SchemaLookup`` (``cdcpipe.capture.schema.SchemaRegistry``). An unknown table id or column raises
``UnknownTableError`` (retriable: the schema may be refreshed); malformed bytes raise
``MutationDecodeError``. Nothing else escapes ``MutationDecoder.decode``.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from typing import Protocol

from cdcpipe.capture.rows import (
    DELETION_TIME_EPOCH,
    END_OF_PARTITION,
    EXTENSION_FLAG,
    IS_MARKER,
    IS_STATIC,
    TIMESTAMP_EPOCH,
    Cell,
    ColumnSpec,
    DeletionTime,
    Liveness,
    RangeTombstoneMarker,
    Row,
    RowReader,
    WireError,
    take,
    uvint,
)
from cdcpipe.capture.schema import Column, DroppedColumn, TableSchema
from cdcpipe.capture.segment import Position
from cdcpipe.errors import MutationDecodeError, UnknownTableError

__all__ = [
    "Cell", "DeletionTime", "Liveness", "Mutation", "MutationDecoder", "PartitionUpdate",
    "RangeTombstoneMarker", "Row", "SchemaLookup", "first_table_id",
]

# PartitionUpdate flags (UnfilteredRowIteratorSerializer)
IS_EMPTY, IS_REVERSED, HAS_PARTITION_DELETION, HAS_STATIC_ROW, HAS_ROW_ESTIMATE = 1, 2, 4, 8, 16
_2_63, _2_64, _M32 = 1 << 63, 1 << 64, 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class PartitionUpdate:
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


@dataclass(frozen=True, slots=True)
class Mutation:
    """One decoded commit log entry: all its PartitionUpdates (same keyspace and partition key)."""

    position: Position | None
    updates: tuple[PartitionUpdate, ...]


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


class MutationDecoder:
    """Decodes serialized mutations. Keeps per-table caches of resolved column headers; not
    thread-safe."""

    def __init__(self, schemas: SchemaLookup) -> None:
        self._schemas = schemas
        self._headers: dict[tuple[int, tuple[bytes, ...]], tuple[TableSchema, tuple[ColumnSpec, ...]]] = {}
        self._clusterings: dict[int, tuple[TableSchema, tuple[int, ...]]] = {}
        self._ids: dict[bytes, uuid.UUID] = {}

    def decode(self, data: bytes, messaging_version: int, position: Position | None = None,
               segment: str = "") -> Mutation:
        """Decode one entry written with ``messaging_version`` (10..13). Raises UnknownTableError or
        MutationDecodeError carrying ``segment``, ``position`` and the table id."""
        if not 10 <= messaging_version <= 13:
            raise MutationDecodeError(f"unsupported messaging version {messaging_version}",
                                      segment=segment, position=_offset(position))
        table_id: uuid.UUID | None = None
        try:
            count, p = uvint(data, 0)
            if count == 0 or count > len(data):
                raise WireError(f"bad partition update count {count}")
            updates: list[PartitionUpdate] = []
            for _ in range(count):
                if p + 16 > len(data):
                    raise WireError("truncated table id")
                raw_id = data[p:p + 16]
                table_id = self._ids.get(raw_id)
                if table_id is None:
                    table_id = uuid.UUID(bytes=bytes(raw_id))
                    if len(self._ids) < 65536:
                        self._ids[raw_id] = table_id
                table = self._schemas.get(table_id)
                if table is None:
                    raise UnknownTableError(table_id, segment=segment, position=_offset(position))
                update, p = self._partition_update(data, p + 16, table, messaging_version >= 13, segment,
                                                   position)
                if update is not None:
                    updates.append(update)
            if p != len(data):
                raise WireError(f"{len(data) - p} trailing bytes after the last partition update")
            return Mutation(position, tuple(updates))
        except MutationDecodeError:
            raise
        except (WireError, IndexError, ValueError, struct.error, OverflowError) as exc:
            raise MutationDecodeError(str(exc) or type(exc).__name__, segment=segment,
                                      position=_offset(position), table_id=table_id) from exc

    def _partition_update(self, buf: bytes, p: int, table: TableSchema, ldt_unsigned: bool, segment: str,
                          position: Position | None) -> tuple[PartitionUpdate | None, int]:
        n, p = uvint(buf, p)
        key, p = take(buf, p, n)
        flags = buf[p]
        p += 1
        if flags & IS_EMPTY:
            return None, p
        if flags & IS_REVERSED:
            raise WireError("reversed partition update")
        u, p = uvint(buf, p)
        min_ts = u + TIMESTAMP_EPOCH
        if min_ts >= _2_63:
            min_ts -= _2_64
        u, p = uvint(buf, p)
        min_ldt = (u + DELETION_TIME_EPOCH) & _M32
        u, p = uvint(buf, p)
        min_ttl = u & _M32
        statics: tuple[ColumnSpec, ...] = ()
        if flags & HAS_STATIC_ROW:
            statics, table, p = self._columns(buf, p, table, segment, position)
        regulars, table, p = self._columns(buf, p, table, segment, position)
        reader = RowReader(buf, min_ts, min_ldt, min_ttl, ldt_unsigned, self._clustering_fixed(table))
        partition_deletion = None
        if flags & HAS_PARTITION_DELETION:
            partition_deletion, p = reader.deletion_time(p)
        static_row = None
        if flags & HAS_STATIC_ROW:
            rflags = buf[p]
            ext = buf[p + 1] if rflags & EXTENSION_FLAG else 0
            if not ext & IS_STATIC or rflags & (IS_MARKER | END_OF_PARTITION):
                raise WireError("expected a static row")
            static_row, p = reader.row(p + 2, rflags, ext, statics, True)
        if flags & HAS_ROW_ESTIMATE:
            _, p = uvint(buf, p)
        rows: list[Row] = []
        markers: list[RangeTombstoneMarker] = []
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
            row, p = reader.row(p, rflags, ext, regulars, False)
            rows.append(row)
        return PartitionUpdate(table, bytes(key), partition_deletion, static_row, tuple(rows), tuple(markers)), p

    def _columns(self, buf: bytes, p: int, table: TableSchema, segment: str, position: Position | None,
                 ) -> tuple[tuple[ColumnSpec, ...], TableSchema, int]:
        count, p = uvint(buf, p)
        if count > len(buf):
            raise WireError(f"bad column count {count}")
        names = []
        for _ in range(count):
            n, p = uvint(buf, p)
            name, p = take(buf, p, n)
            names.append(bytes(name))
        specs, table = self._resolve(table, tuple(names), segment, position)
        return specs, table, p

    def _resolve(self, table: TableSchema, names: tuple[bytes, ...], segment: str, position: Position | None,
                 ) -> tuple[tuple[ColumnSpec, ...], TableSchema]:
        cached = self._headers.get((id(table), names))
        if cached is not None and cached[0] is table:
            return cached[1], table
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
        result = tuple(specs)
        self._headers[(id(table), names)] = (table, result)
        return result, table

    def _clustering_fixed(self, table: TableSchema) -> tuple[int, ...]:
        cached = self._clusterings.get(id(table))
        if cached is not None and cached[0] is table:
            return cached[1]
        fixed = tuple(-1 if c.type.fixed_length is None else c.type.fixed_length for c in table.clustering)
        self._clusterings[id(table)] = (table, fixed)
        return fixed


def _spec(table: TableSchema, col: Column | DroppedColumn) -> ColumnSpec:
    dropped = next((d.dropped_time for d in table.dropped if d.name == col.name), None)
    fixed = col.type.fixed_length
    return ColumnSpec(col.name, col.type, -1 if fixed is None else fixed, col.type.multi_cell, dropped)


def _offset(position: Position | None) -> int:
    return -1 if position is None else position.offset
