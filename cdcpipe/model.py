"""The change event: what capture produces for every row-level change and what apply merges.

One :class:`ChangeEvent` describes one row-level change of one Cassandra table as the commit log recorded it
— never a diff against earlier state, never the whole row.  It keeps everything Cassandra's own merge needs
(``docs/reference/cassandra-merge-rules.md`` §11): per cell the write timestamp, TTL, expiry and whether it is
a tombstone; the row marker (primary-key liveness) apart from the cells; row, partition, range and
collection deletions with their timestamps.  Columns a change did not write are absent from ``columns``,
which is different from a column set to null (a tombstone cell).

Values are typed Python values as the cassandra-driver decodes them (``int``, ``str``, ``bytes``,
``uuid.UUID``, ``Decimal``, ``datetime``, ``cassandra.util.Date``/``Time``/``Duration``, tuples, sorted lists of
pairs for maps, ...).  Timestamps are microseconds (signed 64-bit), TTLs seconds, expiry and local deletion
times seconds since the epoch (64-bit: Cassandra 5.0 allows expiries past 2038).

Invariants (checked by :meth:`ChangeEvent.__post_init__`):
- ``op`` UPSERT: ``columns`` or ``liveness`` non-empty; ``deletion`` may also be set (a row deletion written in
  the same mutation, which then shadows only older data).
- ``op`` ROW_DELETE: ``deletion`` set, full ``clustering``, no liveness.
- ``op`` PARTITION_DELETE: ``deletion`` set, empty ``clustering``, no columns.
- ``op`` RANGE_DELETE: ``deletion``, ``range_start`` and ``range_end`` set, empty ``clustering``, no columns.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from typing import Any

SNAPSHOT_PATH_NODE = b"cdcsnp"
"""The node field (last 6 bytes) of the time-UUID paths ``cdcpipe snapshot`` makes up for list elements (CQL does
not return their real paths).  Where an element with a real path has the same write timestamp and value, the two
are one element read twice (by CDC and by the snapshot), and the view shows it once."""


def is_snapshot_path(path: bytes) -> bool:
    return len(path) == 16 and path[10:] == SNAPSHOT_PATH_NODE


class Op(enum.StrEnum):
    UPSERT = "upsert"
    ROW_DELETE = "row_delete"
    PARTITION_DELETE = "partition_delete"
    RANGE_DELETE = "range_delete"


@dataclass(frozen=True, slots=True)
class Source:
    """Where a change was read: the node's identity and the change's commit-log position."""

    cluster: str
    datacenter: str
    node: str
    keyspace: str
    table: str
    table_id: uuid.UUID
    segment_id: int
    position: int


@dataclass(frozen=True, slots=True)
class Deletion:
    """A deletion: everything with a write timestamp <= ``timestamp`` is shadowed (rule 8).

    ``local_deletion_time`` is the coordinator's clock in seconds when the deletion was written; it only
    breaks ties that a reader cannot see and decides when Cassandra may purge.
    """

    timestamp: int
    local_deletion_time: int


@dataclass(frozen=True, slots=True)
class Liveness:
    """The row marker an INSERT writes (rule 16).  ``expires_at`` is set iff ``ttl`` > 0."""

    timestamp: int
    ttl: int = 0
    expires_at: int | None = None


@dataclass(frozen=True, slots=True)
class Cell:
    """One simple cell, or one element of a non-frozen collection or UDT (then ``path`` is set).

    ``path`` is the element's identity: a list's time-UUID, a set's element, a map's key, a UDT's field name.
    A tombstone has ``deleted`` True and ``value`` None; ``local_deletion_time`` then holds its deletion time.
    An expiring cell has ``ttl`` > 0 and ``expires_at``.
    ``raw`` is the value's serialized bytes (b"" for a tombstone or a set element) and ``raw_path`` the
    path's: merge rule 6 (equal timestamps: the greater value *bytes* win) needs them; capture always sets them.
    """

    value: Any
    timestamp: int
    ttl: int = 0
    expires_at: int | None = None
    deleted: bool = False
    local_deletion_time: int | None = None
    path: Any = None
    raw: bytes | None = None
    raw_path: bytes | None = None


@dataclass(frozen=True, slots=True)
class ColumnChange:
    """What one change wrote to one column.

    Simple column: exactly one cell without a path.  Non-frozen collection or UDT: ``complex_deletion``
    (a whole-collection overwrite or delete, at T-1 for an overwrite at T) and/or element cells.
    """

    name: str
    cells: tuple[Cell, ...]
    complex_deletion: Deletion | None = None
    static: bool = False


@dataclass(frozen=True, slots=True)
class Bound:
    """One end of a clustering range: a prefix of clustering values, inclusive or not."""

    values: tuple[Any, ...]
    inclusive: bool


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One row-level change (see the module docstring for the invariants)."""

    event_id: bytes
    op: Op
    timestamp_micros: int
    source: Source
    partition_key: tuple[Any, ...]
    clustering: tuple[Any, ...] = ()
    liveness: Liveness | None = None
    deletion: Deletion | None = None
    range_start: Bound | None = None
    range_end: Bound | None = None
    columns: tuple[ColumnChange, ...] = ()
    static: bool = False

    def __post_init__(self) -> None:
        if len(self.event_id) != 16:
            raise ValueError("event_id must be 16 bytes")
        if self.op is Op.UPSERT and not (self.columns or self.liveness):
            raise ValueError("an upsert writes columns or a row marker")
        if self.op is not Op.UPSERT and self.deletion is None:
            raise ValueError(f"{self.op} needs a deletion")
        if self.op in (Op.PARTITION_DELETE, Op.RANGE_DELETE) and (self.columns or self.clustering):
            raise ValueError(f"{self.op} carries neither columns nor a clustering")
        if self.op is Op.RANGE_DELETE and (self.range_start is None or self.range_end is None):
            raise ValueError("a range delete needs both bounds")
        if self.op is Op.ROW_DELETE and self.liveness is not None:
            raise ValueError("a row delete has no row marker")

    @property
    def primary_key(self) -> tuple[Any, ...]:
        return self.partition_key + self.clustering
