"""What ``SELECT *`` returns for a merged row at a given instant (reference rules 15, 20, 27, 29, 32).

Pure: the caller passes ``now`` (seconds since the epoch).  A row's view is its typed column values (the same
Python types cassandra-driver returns), whether Cassandra would return the row at all, when its content next
changes by expiry, and — for a row Cassandra no longer returns — until when its tombstones must be remembered.
With ``raw=True`` a simple (single-cell) column's value is its live :class:`Version` instead (its serialized
``value``; nothing is deserialized), for callers that write the bytes themselves; multi-cell columns stay typed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from cdcpipe.apply.keys import order_key, split_clustering
from cdcpipe.apply.merge import UNSET, ComplexState, PartitionState, RowState, Version
from cdcpipe.cql import CqlType
from cdcpipe.model import is_snapshot_path
from cdcpipe.schema import Column, TableSchema
from cdcpipe.typemap import deserialize, deserializer


class RowView:
    """``values`` maps every non-key column to its typed value (None = null; a simple column's live
    :class:`Version` in a ``raw`` view); ``visible`` is rule 15.

    ``expires_at``: the earliest expiry (seconds) among the row's live expiring data and its partition's live
    expiring static cells, None if nothing expires.  ``purge_after``: for an invisible row, the instant after
    which its tombstones may be forgotten (latest deletion time + grace, rule 38); None for a visible row.

    Like :class:`StaticView`, a value class written by hand, not a frozen dataclass (why: above
    :class:`cdcpipe.apply.merge.Version`).
    """

    __slots__ = ("expires_at", "purge_after", "values", "visible")

    def __init__(self, visible: bool, values: Mapping[str, Any], expires_at: int | None,
                 purge_after: int | None) -> None:
        self.visible: Final = visible
        self.values: Final = values
        self.expires_at: Final = expires_at
        self.purge_after: Final = purge_after

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RowView):
            return NotImplemented
        return (self.visible == other.visible and self.values == other.values
                and self.expires_at == other.expires_at and self.purge_after == other.purge_after)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"RowView(visible={self.visible!r}, values={self.values!r}, expires_at={self.expires_at!r}, "
                f"purge_after={self.purge_after!r})")


class StaticView:
    """The partition's live static values, their next expiry, and when the partition state may be forgotten."""

    __slots__ = ("expires_at", "live", "purge_after", "values")

    def __init__(self, values: Mapping[str, Any], live: bool, expires_at: int | None,
                 purge_after: int | None) -> None:
        self.values: Final = values
        self.live: Final = live
        self.expires_at: Final = expires_at
        self.purge_after: Final = purge_after

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StaticView):
            return NotImplemented
        return (self.values == other.values and self.live == other.live and self.expires_at == other.expires_at
                and self.purge_after == other.purge_after)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"StaticView(values={self.values!r}, live={self.live!r}, expires_at={self.expires_at!r}, "
                f"purge_after={self.purge_after!r})")


def _value(t: CqlType, v: Version) -> Any:
    return v.obj if v.obj is not UNSET else deserialize(t, v.value)


def _min(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _dead_time(v: Version) -> int:
    """When a non-live version died: a tombstone's deletion time, an expired cell's write time (rule 38)."""
    if v.tombstone:
        return v.ldt or 0
    return (v.ldt or 0) - v.ttl


class _Acc:
    __slots__ = ("expires", "last_death", "live")

    def __init__(self) -> None:
        self.live = False
        self.expires: int | None = None
        self.last_death = 0

    def see(self, v: Version, now: int) -> bool:
        if v.live(now):
            self.live = True
            if v.ldt is not None:
                self.expires = _min(self.expires, v.ldt)
            return True
        self.last_death = max(self.last_death, _dead_time(v))
        return False


_Kind = tuple[str, CqlType, bool, Callable[[bytes], Any]]
_MULTI: dict[int, tuple[tuple[Column, ...], tuple[_Kind, ...]]] = {}


def _kinds(columns: tuple[Column, ...]) -> tuple[_Kind, ...]:
    """(name, type, multi-cell, :func:`deserializer`) of ``columns``, computed once per columns tuple."""
    found = _MULTI.get(id(columns))
    if found is None or found[0] is not columns:
        if len(_MULTI) > 1000:
            _MULTI.clear()
        found = _MULTI[id(columns)] = (columns, tuple((c.name, c.type, c.type.multi_cell, deserializer(c.type))
                                                      for c in columns))
    return found[1]


def _columns_view(columns: tuple[Column, ...], row: RowState, now: int, acc: _Acc, raw: bool) -> dict[str, Any]:
    values: dict[str, Any] = {}
    cells = row.cells
    for name, t, multi, read in _kinds(columns):
        if multi:
            c = row.complex.get(name)
            values[name] = None if c is None else _complex_value(t, c, now, acc)
            if c is not None and c.deletion is not None:
                acc.last_death = max(acc.last_death, c.deletion.local_deletion_time)
            continue
        v = cells.get(name)
        if v is None:
            values[name] = None
        elif not v.tombstone and v.ldt is None:  # a plain live cell (acc.see, inlined)
            acc.live = True
            values[name] = v if raw else v.obj if v.obj is not UNSET else read(v.value)
        elif acc.see(v, now):
            values[name] = v if raw else _value(t, v)
        else:
            values[name] = None
    return values


def _complex_value(t: CqlType, c: ComplexState, now: int, acc: _Acc) -> Any:
    live = [(p, v) for p, v in c.elements.items() if acc.see(v, now)]
    if not live:
        return None  # rule 27: no live element reads as null
    if t.name == "list":
        if any(is_snapshot_path(p) for p, _ in live):
            live = _without_snapshot_twins(live)
        live.sort(key=lambda pv: order_key(_TIMEUUID, pv[0]))
        return [_value(t.params[0], v) for _, v in live]
    if t.name == "set":
        live.sort(key=lambda pv: order_key(t.params[0], pv[0]))
        return [deserialize(t.params[0], p) for p, _ in live]
    if t.name == "map":
        live.sort(key=lambda pv: order_key(t.params[0], pv[0]))
        return [(deserialize(t.params[0], p), _value(t.params[1], v)) for p, v in live]
    out: dict[str, Any] = dict.fromkeys(t.field_names)  # every field, as Cassandra and frozen UDTs render it
    for p, v in sorted(live):
        idx = int.from_bytes(p, "big")
        if idx < len(t.params):
            out[t.field_names[idx]] = _value(t.params[idx], v)
    return out


_TIMEUUID = CqlType("timeuuid")


def _without_snapshot_twins(live: list[tuple[bytes, Version]]) -> list[tuple[bytes, Version]]:
    """A list element copied by ``cdcpipe snapshot`` (a made-up path) that CDC also delivered (a real path, the
    same write timestamp and value) is one element: keep the real one."""
    real = {(v.ts, v.value) for p, v in live if not is_snapshot_path(p)}
    return [(p, v) for p, v in live if not is_snapshot_path(p) or (v.ts, v.value) not in real]


def static_view(table: TableSchema, part: PartitionState | None, now: int, grace: int,
                raw: bool = False) -> StaticView:
    """Live static values (rules 31 and 32) of a normalized partition state (``raw``: see the module)."""
    if part is None:
        return StaticView({c.name: None for c in table.static}, False, None, None)
    acc = _Acc()
    values = _columns_view(table.static, part.static, now, acc, raw)
    deaths = [acc.last_death]
    if part.deletion is not None:
        deaths.append(part.deletion.local_deletion_time)
    deaths += [r.deletion.local_deletion_time for r in part.ranges]
    purge = None if acc.live else max(deaths) + grace
    return StaticView(values, acc.live, acc.expires, purge)


def row_view(table: TableSchema, row: RowState, statics: StaticView, now: int, grace: int,
             raw: bool = False) -> RowView:
    """The view of a normalized row (its partition's :func:`static_view` given, built with the same ``raw``)."""
    acc = _Acc()
    values = _columns_view(table.regular, row, now, acc, raw)
    if row.marker is not None:
        acc.see(row.marker, now)
    if row.deletion is not None:
        acc.last_death = max(acc.last_death, row.deletion.local_deletion_time)
    values.update(statics.values)
    if acc.live:
        return RowView(True, values, _min(acc.expires, statics.expires_at), None)
    return RowView(False, values, None, acc.last_death + grace)


def plain_cells(row: RowState) -> Mapping[str, Version] | None:
    """``row.cells`` when they are the whole raw view of a row of a table with only simple regular columns and no
    static ones (see :func:`simple_table`): no row deletion, no complex column, a marker (if any) and every cell
    plain and live (no TTL, not a tombstone).  Such a row is visible, nothing in it expires, and its raw values
    are its cells (a column without a cell is null) — what :func:`row_view` would say, without building it.
    None: ask :func:`row_view`."""
    if row.deletion is not None or row.complex:
        return None
    m = row.marker
    if m is not None and m.ldt is not None:
        return None
    cells = row.cells
    if m is None and not cells:
        return None
    for v in cells.values():
        if v.tombstone or v.ldt is not None:
            return None
    return cells


def simple_table(table: TableSchema) -> bool:
    """Whether the table's rows may take :func:`plain_cells`: no static column, no multi-cell column."""
    return not table.static and not any(c.type.multi_cell for c in table.regular)


def key_values(table: TableSchema, partition: bytes, clustering: bytes) -> dict[str, Any]:
    """Typed primary key values from the key bytes."""
    out: dict[str, Any] = {}
    codecs = _key_codecs(table)
    parts = table.partition_key_values(partition)
    for (name, codec), raw in zip(codecs[0], parts, strict=True):
        out[name] = codec(raw)
    if codecs[1]:
        for (name, codec), raw in zip(codecs[1], split_clustering(clustering), strict=False):
            out[name] = codec(raw)
    return out


_KEY_CODECS: dict[int, tuple[TableSchema, Any]] = {}


def _key_codecs(table: TableSchema) -> tuple[list[tuple[str, Callable[[bytes], Any]]],
                                             list[tuple[str, Callable[[bytes], Any]]]]:
    found = _KEY_CODECS.get(id(table))
    if found is None or found[0] is not table:
        if len(_KEY_CODECS) > 1000:
            _KEY_CODECS.clear()
        found = _KEY_CODECS[id(table)] = (table, (
            [(c.name, deserializer(c.type)) for c in table.partition_key],
            [(c.name, deserializer(c.type)) for c in table.clustering]))
    return found[1]
