"""The table schema model: what decoding a table's PartitionUpdates needs (columns, types, dropped columns).

Built by ``cdcpipe.schema_source`` from a CQL file or ``system_schema``; see reference §9.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field

from cdcpipe.cql import CqlType

PARTITION_KEY, CLUSTERING, STATIC, REGULAR = "partition_key", "clustering", "static", "regular"


@dataclass(frozen=True, slots=True)
class Column:
    """A column of a table. ``position`` is the index within the partition key or clustering
    (-1 otherwise); ``reversed`` is True for a DESC clustering column."""

    name: str
    type: CqlType
    kind: str
    position: int = -1
    reversed: bool = False


@dataclass(frozen=True, slots=True)
class DroppedColumn:
    """A dropped column: still needed to decode older data. Cells with a timestamp at or before
    ``dropped_time`` (microseconds) belong to the dropped column and are obsolete."""

    name: str
    type: CqlType
    dropped_time: int
    kind: str = REGULAR


@dataclass(frozen=True, slots=True)
class TableSchema:
    """Schema of one table (or materialized view), as needed to decode its PartitionUpdates."""

    keyspace: str
    table: str
    table_id: uuid.UUID
    partition_key: tuple[Column, ...]
    clustering: tuple[Column, ...] = ()
    static: tuple[Column, ...] = ()
    regular: tuple[Column, ...] = ()
    dropped: tuple[DroppedColumn, ...] = ()
    cdc: bool = False
    _by_name: dict[bytes, Column | DroppedColumn] = field(
        init=False, repr=False, compare=False, hash=False, default_factory=dict)

    def __post_init__(self) -> None:
        by_name: dict[bytes, Column | DroppedColumn] = {d.name.encode(): d for d in self.dropped}
        for col in (*self.partition_key, *self.clustering, *self.static, *self.regular):
            by_name[col.name.encode()] = col
        object.__setattr__(self, "_by_name", by_name)

    @property
    def name(self) -> str:
        return f"{self.keyspace}.{self.table}"

    def column(self, name: bytes) -> Column | DroppedColumn | None:
        """Look a column up by its UTF-8 name as written in a PartitionUpdate header: current columns
        first, then dropped ones (as Cassandra does)."""
        return self._by_name.get(name)

    def partition_key_values(self, key: bytes) -> tuple[bytes, ...]:
        """Split raw partition key bytes into per-column values (CompositeType for several columns).
        Raises ValueError."""
        if len(self.partition_key) == 1:
            return (key,)
        out: list[bytes] = []
        p = 0
        for _ in self.partition_key:
            if p + 2 > len(key):
                raise ValueError("truncated composite partition key")
            n = int.from_bytes(key[p:p + 2], "big")
            if p + 2 + n + 1 > len(key):
                raise ValueError("truncated composite partition key")
            out.append(key[p + 2:p + 2 + n])
            p += 3 + n
        if p != len(key):
            raise ValueError("trailing bytes in composite partition key")
        return tuple(out)

    def partition_key_bytes(self, values: tuple[bytes, ...]) -> bytes:
        """The stored partition key of serialized per-column ``values`` (the inverse of
        :meth:`partition_key_values`): the value itself for one column, CompositeType for several."""
        if len(values) != len(self.partition_key):
            raise ValueError(f"{self.name}: {len(values)} partition key values for {len(self.partition_key)} columns")
        if len(values) == 1:
            return values[0]
        return b"".join(len(v).to_bytes(2, "big") + v + b"\0" for v in values)


def system_table_id(keyspace: str, table: str) -> uuid.UUID:
    """Deterministic id of a system table: Java ``UUID.nameUUIDFromBytes(keyspace ++ table)``."""
    return uuid.UUID(bytes=hashlib.md5((keyspace + table).encode(), usedforsecurity=False).digest(), version=3)
