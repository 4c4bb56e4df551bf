"""Cassandra's merge rules on the state of rows and partitions (``docs/reference/cassandra-merge-rules.md``).

Pure: no I/O, no clock.  The state kept per row and per partition is what §11 of the reference says a mirror must
keep: the winning version of every cell and collection element (ts, TTL, expiry or deletion time, tombstone flag,
serialized value bytes), the row marker, and the row, complex, range and partition deletions.

Every state forms a join-semilattice: :meth:`Changes.join` is commutative, associative and idempotent, and
:meth:`Changes.normalized` drops everything a deletion shadows (rule 13 allows deleting before or after
reconciling), giving one canonical form.  So the merged state of a set of events does not depend on their order,
their duplicates or how they were cut into batches: ``collapse(a + b) == collapse(a).join(collapse(b))`` after
normalizing.

Keys are bytes: a partition is Cassandra's partition key bytes, a clustering is :func:`clustering_bytes` of its
values; clustering order (for range tombstones) is decided on the serialized values by :func:`order_key`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cdcpipe.apply.keys import bound_bytes, clustering_bytes, clustering_keys, covers, partition_bytes, split_clustering
from cdcpipe.cql import CqlType
from cdcpipe.model import Cell, ChangeEvent, ColumnChange, Deletion, Liveness, Op
from cdcpipe.schema import Column, TableSchema
from cdcpipe.typemap import serialize

NO_DELETION = -(2**63)  # Long.MIN_VALUE: no write can carry it, so "ts <= NO_DELETION" never holds
UNSET: Any = object()


# Version, ComplexState, RowState and Delta are values written by hand (immutable: ``Final`` attributes, no
# setters) rather than frozen dataclasses: apply builds several per event, and the mypyc build compiles this
# module, where a hand-written ``__init__`` is a native call (~60 ns) while a dataclass's generated one stays
# interpreted (~800 ns, ``object.__setattr__`` per field).  Equality and ``repr`` are a dataclass's.

class Version:
    """One version of a cell, collection element or row marker.

    ``ldt`` is the expiry for an expiring cell or marker and the local deletion time for a tombstone; None for
    a plain live cell.  ``obj`` caches the typed value when it is known (not part of equality).
    """

    __slots__ = ("ldt", "obj", "tombstone", "ts", "ttl", "value")

    def __init__(self, ts: int, ldt: int | None = None, ttl: int = 0, tombstone: bool = False, value: bytes = b"",
                 obj: Any = UNSET) -> None:
        self.ts: Final = ts
        self.ldt: Final = ldt
        self.ttl: Final = ttl
        self.tombstone: Final = tombstone
        self.value: Final = value
        self.obj: Final = obj

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return (self.ts == other.ts and self.ldt == other.ldt and self.ttl == other.ttl
                and self.tombstone == other.tombstone and self.value == other.value)

    def __hash__(self) -> int:
        return hash((self.ts, self.ldt, self.ttl, self.tombstone, self.value))

    def __repr__(self) -> str:
        return (f"Version(ts={self.ts!r}, ldt={self.ldt!r}, ttl={self.ttl!r}, tombstone={self.tombstone!r}, "
                f"value={self.value!r})")

    @property
    def order(self) -> tuple[int, bool, bool, int, bytes]:
        """Rule 7's total order: ts; has an ldt; is a tombstone; ldt; value bytes (unsigned)."""
        return (self.ts, self.ldt is not None, self.tombstone, self.ldt if self.ldt is not None else 0, self.value)

    def live(self, now: int) -> bool:
        """Rule 20: live iff not a tombstone and (not expiring or ``now`` < expiry)."""
        return not self.tombstone and (self.ldt is None or now < self.ldt)


def newer(a: Version | None, b: Version | None) -> Version | None:
    """The reconciled version (rules 2–7, and rule 17 for markers)."""
    if a is None:
        return b
    if b is None:
        return a
    return a if a.order >= b.order else b


def later(a: Deletion | None, b: Deletion | None) -> Deletion | None:
    """Deletions of one scope merge by maximum (rule 9)."""
    if a is None:
        return b
    if b is None:
        return a
    return a if (a.timestamp, a.local_deletion_time) >= (b.timestamp, b.local_deletion_time) else b


def _dts(d: Deletion | None) -> int:
    return NO_DELETION if d is None else d.timestamp


class ComplexState:
    """A non-frozen collection or UDT column: its complex deletion and its elements by path bytes."""

    __slots__ = ("deletion", "elements")

    def __init__(self, deletion: Deletion | None = None, elements: Mapping[bytes, Version] | None = None) -> None:
        self.deletion: Final = deletion
        self.elements: Final[Mapping[bytes, Version]] = {} if elements is None else elements

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ComplexState):
            return NotImplemented
        return self.deletion == other.deletion and self.elements == other.elements

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ComplexState(deletion={self.deletion!r}, elements={self.elements!r})"

    def join(self, other: ComplexState) -> ComplexState:
        elements = dict(self.elements)
        for path, v in other.elements.items():
            elements[path] = newer(elements.get(path), v)  # type: ignore[assignment]
        return ComplexState(later(self.deletion, other.deletion), elements)


class RowState:
    """One clustering row (or the static row, which never has a marker or a row deletion: rule 31)."""

    __slots__ = ("cells", "complex", "deletion", "marker")

    def __init__(self, marker: Version | None = None, deletion: Deletion | None = None,
                 cells: Mapping[str, Version] | None = None, complex: Mapping[str, ComplexState] | None = None
                 ) -> None:
        self.marker: Final = marker
        self.deletion: Final = deletion
        self.cells: Final[Mapping[str, Version]] = {} if cells is None else cells
        self.complex: Final[Mapping[str, ComplexState]] = {} if complex is None else complex

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RowState):
            return NotImplemented
        return (self.marker == other.marker and self.deletion == other.deletion and self.cells == other.cells
                and self.complex == other.complex)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"RowState(marker={self.marker!r}, deletion={self.deletion!r}, cells={self.cells!r}, "
                f"complex={self.complex!r})")

    def join(self, other: RowState) -> RowState:
        cells = dict(self.cells)
        for name, v in other.cells.items():
            cells[name] = newer(cells.get(name), v)  # type: ignore[assignment]
        complex_ = dict(self.complex)
        for name, c in other.complex.items():
            mine = complex_.get(name)
            complex_[name] = c if mine is None else mine.join(c)
        return RowState(newer(self.marker, other.marker), later(self.deletion, other.deletion), cells, complex_)

    def normalized(self, floor: int) -> RowState | None:
        """Drop what deletions shadow (rules 8 and 10); ``floor`` is the partition-level deletion covering the
        row.  None when nothing is left to remember."""
        if floor == NO_DELETION and self.deletion is None and not self.complex:
            # nothing can shadow anything (every write has ts > NO_DELETION): already normal
            return self if self.marker is not None or self.cells else None
        deletion = self.deletion if _dts(self.deletion) > floor else None
        d = max(floor, _dts(deletion))
        marker = self.marker if self.marker is not None and self.marker.ts > d else None
        cells = {n: v for n, v in self.cells.items() if v.ts > d}
        complex_: dict[str, ComplexState] = {}
        for name, c in self.complex.items():
            cdel = c.deletion if _dts(c.deletion) > d else None
            dc = max(d, _dts(cdel))
            elements = {p: v for p, v in c.elements.items() if v.ts > dc}
            if cdel is not None or elements:
                complex_[name] = ComplexState(cdel, elements)
        if marker is None and deletion is None and not cells and not complex_:
            return None
        return RowState(marker, deletion, cells, complex_)


@dataclass(frozen=True, slots=True)
class RangeTombstone:
    """A clustering-range deletion; bounds are serialized clustering prefixes (rule 12)."""

    start: tuple[bytes, ...]
    start_inclusive: bool
    end: tuple[bytes, ...]
    end_inclusive: bool
    deletion: Deletion

    @property
    def bounds(self) -> tuple[tuple[bytes, ...], bool, tuple[bytes, ...], bool]:
        return (self.start, self.start_inclusive, self.end, self.end_inclusive)


@dataclass(frozen=True, slots=True)
class PartitionState:
    """Partition-level state: the partition deletion, range tombstones and the static row."""

    deletion: Deletion | None = None
    ranges: tuple[RangeTombstone, ...] = ()
    static: RowState = field(default_factory=RowState)

    def join(self, other: PartitionState) -> PartitionState:
        by_bounds = {r.bounds: r for r in self.ranges}
        for r in other.ranges:
            mine = by_bounds.get(r.bounds)
            if mine is None or later(mine.deletion, r.deletion) is r.deletion:
                by_bounds[r.bounds] = r
        return PartitionState(later(self.deletion, other.deletion), _sorted_ranges(by_bounds.values()),
                              self.static.join(other.static))

    def normalized(self) -> PartitionState | None:
        pd = _dts(self.deletion)
        ranges = _sorted_ranges(r for r in self.ranges if r.deletion.timestamp > pd)
        static = self.static.normalized(pd) or RowState()
        if self.deletion is None and not ranges and static == RowState():
            return None
        return PartitionState(self.deletion, ranges, static)

    def floor(self, table: TableSchema, clustering: tuple[bytes, ...]) -> int:
        """D for a clustering row before its own deletion: partition deletion and covering ranges (rule 10)."""
        d = _dts(self.deletion)
        if self.ranges:
            keys = clustering_keys(table.clustering, clustering)
            for r in self.ranges:
                if r.deletion.timestamp > d and covers(table.clustering, r.bounds, keys):
                    d = r.deletion.timestamp
        return d


def _sorted_ranges(ranges: Iterable[RangeTombstone]) -> tuple[RangeTombstone, ...]:
    return tuple(sorted(ranges, key=lambda r: (r.bounds, r.deletion.timestamp, r.deletion.local_deletion_time)))


RowKey = tuple[bytes, bytes]
"""(partition key bytes, clustering bytes)."""


@dataclass(frozen=True, slots=True)
class Changes:
    """Merged state of some rows and partitions of one table.

    ``wide`` names the partitions whose partition-level state changed in a way that reaches rows not listed in
    ``rows`` (a partition or range deletion, a static cell): the writer must revisit every row of those.
    ``redundant`` (not part of equality) counts the row-only events :func:`collapse` found to change nothing
    on top of the events before them: duplicates (replica copies, redeliveries) and stale writes.
    """

    partitions: Mapping[bytes, PartitionState] = field(default_factory=dict)
    rows: Mapping[RowKey, RowState] = field(default_factory=dict)
    wide: frozenset[bytes] = frozenset()
    redundant: int = field(default=0, compare=False)

    def join(self, other: Changes) -> Changes:
        partitions = dict(self.partitions)
        for key, p in other.partitions.items():
            mine = partitions.get(key)
            partitions[key] = p if mine is None else mine.join(p)
        rows = dict(self.rows)
        for row_key, r in other.rows.items():
            mine_r = rows.get(row_key)
            rows[row_key] = r if mine_r is None else mine_r.join(r)
        return Changes(partitions, rows, self.wide | other.wide)

    def normalized(self, table: TableSchema) -> Changes:
        """The canonical form: shadowed data dropped, empty states removed — and, for a table with dropped
        columns, every cell, element and complex deletion of a dropped column at or before its drop time (what
        Cassandra's reads skip, also once a column of that name is added again)."""
        drops = {d.name: d.dropped_time for d in table.dropped}
        partitions: dict[bytes, PartitionState] = {}
        for key, p in self.partitions.items():
            if drops:
                p = PartitionState(p.deletion, p.ranges, without_dropped(p.static, drops))
            np_ = p.normalized()
            if np_ is not None:
                partitions[key] = np_
        rows: dict[RowKey, RowState] = {}
        for (pk, ck), r in self.rows.items():
            part = partitions.get(pk)
            floor = part.floor(table, split_clustering(ck)) if part is not None else NO_DELETION
            nr = (without_dropped(r, drops) if drops else r).normalized(floor)
            if nr is not None:
                rows[(pk, ck)] = nr
        return Changes(partitions, rows, self.wide, self.redundant)


def without_dropped(row: RowState, drops: Mapping[str, int]) -> RowState:
    """``row`` less what belongs to dropped columns: cells, elements and complex deletions of a column in
    ``drops`` (name → drop time, µs) written at or before its drop time."""
    cells = {n: v for n, v in row.cells.items() if n not in drops or v.ts > drops[n]}
    complex_: dict[str, ComplexState] = {}
    for name, c in row.complex.items():
        dropped = drops.get(name)
        if dropped is None:
            complex_[name] = c
            continue
        cdel = c.deletion if c.deletion is not None and c.deletion.timestamp > dropped else None
        elements = {p: v for p, v in c.elements.items() if v.ts > dropped}
        if cdel is not None or elements:
            complex_[name] = ComplexState(cdel, elements)
    if len(cells) == len(row.cells) and len(complex_) == len(row.complex) \
            and all(complex_[n] is c for n, c in row.complex.items()):
        return row
    return RowState(row.marker, row.deletion, cells, complex_)


# ---------------------------------------------------------------------------------------------- from events


class Delta:
    """What one event writes, keyed: its operation, partition key bytes, clustering bytes
    (:func:`clustering_bytes`), partition-level delta and row delta (:func:`event_state`).  Apply's decoder
    builds it straight from the Avro record (``cdcpipe.apply.decode.decode_delta``); :func:`delta` builds the
    same from a :class:`ChangeEvent`."""

    __slots__ = ("clustering", "op", "part", "partition", "row")

    def __init__(self, op: Op, partition: bytes, clustering: bytes, part: PartitionState | None,
                 row: RowState | None) -> None:
        self.op: Final = op
        self.partition: Final = partition
        self.clustering: Final = clustering
        self.part: Final = part
        self.row: Final = row

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Delta):
            return NotImplemented
        return (self.op == other.op and self.partition == other.partition and self.clustering == other.clustering
                and self.part == other.part and self.row == other.row)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"Delta(op={self.op!r}, partition={self.partition!r}, clustering={self.clustering!r}, "
                f"part={self.part!r}, row={self.row!r})")


def delta(table: TableSchema, ev: ChangeEvent) -> Delta:
    part, row = event_state(table, ev)
    return Delta(ev.op, partition_bytes(table, ev.partition_key), clustering_bytes(table, ev.clustering), part, row)


def collapse(table: TableSchema, events: Iterable[ChangeEvent | Delta]) -> Changes:
    """The merged, normalized state of ``events`` (any order, any duplicates) of one table."""
    partitions: dict[bytes, PartitionState] = {}
    rows: dict[RowKey, RowState] = {}
    wide: set[bytes] = set()
    redundant = 0
    for ev in events:
        d = ev if isinstance(ev, Delta) else delta(table, ev)
        pk = d.partition
        if d.part is not None:
            mine = partitions.get(pk)
            partitions[pk] = d.part if mine is None else mine.join(d.part)
            wide.add(pk)
        if d.row is not None:
            key = (pk, d.clustering)
            mine_r = rows.get(key)
            if mine_r is None:
                rows[key] = d.row
            else:
                joined = rows[key] = mine_r.join(d.row)
                redundant += d.part is None and joined == mine_r
    return Changes(partitions, rows, frozenset(wide), redundant).normalized(table)


class _Plan:
    """Per table: columns by name with whether they are multi-cell, and the static column names."""

    __slots__ = ("columns", "static", "table")

    def __init__(self, table: TableSchema) -> None:
        self.table = table
        self.columns = {c.name: (c, c.type.multi_cell) for c in (*table.static, *table.regular)}
        self.static = frozenset(c.name for c in table.static)


_PLANS: dict[int, _Plan] = {}


def _plan(table: TableSchema) -> _Plan:
    plan = _PLANS.get(id(table))
    if plan is None or plan.table is not table:
        if len(_PLANS) > 1000:
            _PLANS.clear()
        plan = _PLANS[id(table)] = _Plan(table)
    return plan


def event_state(table: TableSchema, ev: ChangeEvent) -> tuple[PartitionState | None, RowState | None]:
    """What one event writes: a partition-level delta and/or a row delta."""
    if ev.op is Op.PARTITION_DELETE:
        return PartitionState(deletion=ev.deletion), None
    if ev.op is Op.RANGE_DELETE:
        assert ev.range_start is not None and ev.range_end is not None and ev.deletion is not None
        rt = RangeTombstone(bound_bytes(table, ev.range_start), ev.range_start.inclusive or not ev.range_start.values,
                            bound_bytes(table, ev.range_end), ev.range_end.inclusive or not ev.range_end.values,
                            ev.deletion)
        return PartitionState(ranges=(rt,)), None
    plan = _plan(table)
    columns = plan.columns
    static_changes: list[ColumnChange] = []
    regular_changes: Sequence[ColumnChange] = ev.columns
    if plan.static or any(c.static for c in ev.columns):
        static_changes = [c for c in ev.columns if c.static or c.name in plan.static]
        regular_changes = [c for c in ev.columns if not (c.static or c.name in plan.static)]
    part = None
    if static_changes:
        part = PartitionState(static=_row_from_columns(columns, static_changes, None, None))
    row = None
    table_has_clustering = bool(table.clustering)
    if ev.op is Op.ROW_DELETE or regular_changes or ev.deletion is not None or (
            ev.liveness is not None and not (ev.static and table_has_clustering)):
        marker = None if ev.static and table_has_clustering else ev.liveness
        row = _row_from_columns(columns, regular_changes, marker, ev.deletion)
    return part, row


def _row_from_columns(columns: Mapping[str, tuple[Column, bool]], changes: Sequence[ColumnChange],
                      liveness: Liveness | None, deletion: Deletion | None) -> RowState:
    cells: dict[str, Version] = {}
    complex_: dict[str, ComplexState] = {}
    for change in changes:
        found = columns.get(change.name)
        if found is None:
            raise ValueError(f"unknown column {change.name!r}")
        col, multi = found
        if multi:
            elements: dict[bytes, Version] = {}
            for cell in change.cells:
                path = cell.raw_path if cell.raw_path is not None else path_bytes(col.type, cell.path)
                elements[path] = newer(elements.get(path), _version(_element_type(col.type, cell.path), cell,
                                                                    element_of=col.type))  # type: ignore[assignment]
            old = complex_.get(change.name)
            new = ComplexState(change.complex_deletion, elements)
            complex_[change.name] = new if old is None else old.join(new)
        else:
            for cell in change.cells:
                if (not cell.deleted and cell.ttl <= 0 and cell.raw is not None and cell.value is not None
                        and change.name not in cells):
                    # the common case: the first plain live cell of the column, its bytes as capture read them
                    cells[change.name] = Version(cell.timestamp, None, cell.ttl, False, cell.raw, cell.value)
                else:
                    cells[change.name] = newer(cells.get(change.name),
                                               _version(col.type, cell))  # type: ignore[assignment]
    marker = None
    if liveness is not None:
        marker = Version(liveness.timestamp, expiry(liveness.timestamp, liveness.ttl, liveness.expires_at),
                         liveness.ttl)
    return RowState(marker, deletion, cells, complex_)


def expiry(ts: int, ttl: int, expires_at: int | None) -> int | None:
    """The expiry (seconds) of a cell or marker written at ``ts`` (µs) with ``ttl``: its recorded expiry, or
    ``ts`` + ``ttl`` when none was recorded; None when it does not expire (``ttl`` <= 0)."""
    if ttl <= 0:
        return None
    return expires_at if expires_at is not None else ts // 1_000_000 + ttl


def _version(t: CqlType | None, cell: Cell, element_of: CqlType | None = None) -> Version:
    if cell.deleted:
        return Version(cell.timestamp, cell.local_deletion_time or 0, 0, True)
    ldt = expiry(cell.timestamp, cell.ttl, cell.expires_at)
    if element_of is not None and element_of.name == "set":
        return Version(cell.timestamp, ldt, cell.ttl, False, b"", None)
    assert t is not None
    value = cell.raw if cell.raw is not None else b"" if cell.value is None else serialize(t, cell.value)
    # a value the decoder could not type (None with raw bytes) is re-read from the bytes when viewed
    return Version(cell.timestamp, ldt, cell.ttl, False, value, UNSET if cell.value is None else cell.value)


def _element_type(t: CqlType, path: Any) -> CqlType | None:
    if t.name == "list":
        return t.params[0]
    if t.name == "set":
        return None
    if t.name == "map":
        return t.params[1]
    return t.params[_field_index(t, path)]


def _field_index(t: CqlType, path: Any) -> int:
    if isinstance(path, int):
        return path
    if isinstance(path, bytes | bytearray):
        return int.from_bytes(path, "big")
    return t.field_names.index(path)


def path_bytes(t: CqlType, path: Any) -> bytes:
    """The cell path of a collection element or UDT field (rule 24), as Cassandra stores it."""
    if t.name == "list":
        return path.bytes if isinstance(path, uuid.UUID) else bytes(path)
    if t.name in ("set", "map"):
        return serialize(t.params[0], path)
    return _field_index(t, path).to_bytes(2, "big")
