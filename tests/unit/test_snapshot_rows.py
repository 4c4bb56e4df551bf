"""Rows with WRITETIME/TTL per cell, as CQL returns them serialized, turned into capture's change events."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from cdcpipe.avro import SchemaCache, decode, encode, table_schema
from cdcpipe.cql import CqlType, driver_type
from cdcpipe.errors import SnapshotError
from cdcpipe.model import is_snapshot_path
from cdcpipe.schema import TableSchema
from cdcpipe.schema_source import parse_cql_schema
from cdcpipe.snapshot.rows import NO_MARKER_TIMESTAMP, RowConverter, layout, list_paths, source_of

CQL = """
CREATE TYPE ks.addr (street text, city text, zip int);
CREATE TABLE ks.t (k int, c int, s text STATIC, v text, l list<int>, st set<text>, m map<int, text>, u addr,
                   PRIMARY KEY (k, c)) WITH cdc = true AND id = 5a1c1d6e-0000-4000-8000-000000000001;
CREATE TABLE ks.n (k int PRIMARY KEY, n counter) WITH id = 5a1c1d6e-0000-4000-8000-000000000002;
"""
NOW = 1_800_000_000


def table(name: str = "t") -> TableSchema:
    return next(t for t in parse_cql_schema(CQL) if t.table == name)


def ser(t: CqlType, value: Any) -> bytes:
    return bytes(driver_type(t).serialize(value, 5))


def int32(v: int) -> bytes:
    return v.to_bytes(4, "big", signed=True)


def numbers(values: list[int | None], width: int) -> bytes:
    out = int32(len(values))
    for v in values:
        out += int32(-1) if v is None else int32(width) + v.to_bytes(width, "big", signed=True)
    return out


def col(t: TableSchema, name: str) -> CqlType:
    return next(c.type for c in (*t.static, *t.regular) if c.name == name)


def row(t: TableSchema, k: int, c: int | None, cells: dict[str, tuple[bytes, bytes, bytes | None]]
        ) -> list[bytes | None]:
    """Key values, then per static/regular column (value, writetime, ttl) as the snapshot query selects them."""
    out: list[bytes | None] = [int32(k), None if c is None else int32(c)]
    for column in (*t.static, *t.regular):
        value, wt, ttl = cells.get(column.name, (None, None, None))  # type: ignore[arg-type]
        out += [value, wt, ttl]
    return out


def ts(v: int) -> bytes:
    return v.to_bytes(8, "big", signed=True)


def convert(t: TableSchema, rows: list[list[bytes | None]]) -> list[Any]:
    return list(RowConverter(layout(t), source_of(t, "c", "dc")).convert(rows, NOW))


def test_the_query_selects_write_time_and_ttl_of_every_cell() -> None:
    q = layout(table()).select
    assert q.startswith('SELECT "k", "c", "s", WRITETIME("s"), TTL("s"), "v", WRITETIME("v"), TTL("v")')
    assert q.endswith('WHERE token("k") > ? AND token("k") <= ?')


def test_counter_tables_are_refused() -> None:
    with pytest.raises(SnapshotError, match="counter"):
        layout(table("n"))


def test_a_row_keeps_real_timestamps_and_gets_no_marker() -> None:
    t = table()
    v = (b"hello", ts(100), int32(60))
    out = convert(t, [row(t, 1, 7, {"v": v})])
    assert len(out) == 1
    ev = out[0].event
    assert ev.partition_key == (1,) and ev.clustering == (7,) and not ev.static
    (cell,) = ev.columns[0].cells
    assert (cell.value, cell.raw, cell.timestamp, cell.ttl, cell.expires_at) == ("hello", b"hello", 100, 60, NOW + 60)
    assert ev.liveness is None  # whether it has a marker is unknowable: it lives as long as its cells
    assert ev.source.segment_id == -1 and ev.source.node == "snapshot"


def test_a_primary_key_only_row_is_a_marker_without_ttl() -> None:
    t = table()
    (out,) = convert(t, [row(t, 1, 2, {})])
    assert out.event.columns == () and out.event.liveness.timestamp == NO_MARKER_TIMESTAMP
    assert out.event.liveness.expires_at is None


def test_static_cells_once_per_partition_and_static_only_partitions() -> None:
    t = table()
    s = (b"stat", ts(50), None)
    rows = [row(t, 1, 1, {"s": s}), row(t, 1, 2, {"s": s}), row(t, 2, None, {"s": s})]
    out = [e.event for e in convert(t, rows)]
    assert [(e.partition_key, e.clustering, e.static) for e in out] == [
        ((1,), (), True), ((1,), (1,), False), ((1,), (2,), False), ((2,), (), True)]
    assert out[0].liveness is None and out[0].columns[0].static


def test_collections_and_udts_per_element() -> None:
    t = table()
    st_t, m_t, _u_t = col(t, "st"), col(t, "m"), col(t, "u")
    cells = {
        "st": (ser(st_t.freeze(), ["a", "b"]), numbers([10, 11], 8), numbers([None, 5], 4)),
        "m": (ser(m_t.freeze(), {1: "one"}), numbers([12], 8), numbers([None], 4)),
        # a UDT lists one write time per field of its type, null where the field has no cell
        "u": (int32(1) + b"x" + int32(-1) + int32(4) + int32(9), numbers([13, None, 14], 8),
              numbers([None, None, None], 4)),
    }
    (out,) = convert(t, [row(t, 1, 1, cells)])
    by = {c.name: c for c in out.event.columns}
    assert [(c.path, c.raw_path, c.raw, c.timestamp, c.expires_at) for c in by["st"].cells] == [
        ("a", b"a", b"", 10, None), ("b", b"b", b"", 11, NOW + 5)]
    assert [(c.path, c.value, c.raw_path, c.raw) for c in by["m"].cells] == [(1, "one", int32(1), b"one")]
    assert [(c.path, c.raw_path, c.value, c.timestamp) for c in by["u"].cells] == [
        ("street", b"\0\0", "x", 13), ("zip", b"\0\2", 9, 14)]


def test_list_elements_get_made_up_paths_in_list_order() -> None:
    t = table()
    value = ser(col(t, "l").freeze(), [3, 1, 2])
    cells = {"l": (value, numbers([30, 10, 20], 8), numbers([None] * 3, 4))}
    (out,) = convert(t, [row(t, 1, 1, cells)])
    (change,) = out.event.columns
    assert change.complex_deletion is None
    assert [(c.value, c.timestamp) for c in change.cells] == [(3, 30), (1, 10), (2, 20)]
    paths = [c.raw_path for c in change.cells]
    assert paths == list_paths([30, 10, 20]) and all(is_snapshot_path(p) for p in paths)
    times = [uuid.UUID(bytes=p).time for p in paths]
    assert times == sorted(times) and len(set(times)) == 3  # list order, whatever the write times
    (again,) = convert(t, [row(t, 1, 1, cells)])
    assert again.event == out.event  # a range read again repeats itself exactly


def test_the_view_shows_an_element_read_by_cdc_and_by_the_snapshot_once() -> None:
    from cdcpipe.apply.merge import ComplexState, Version
    from cdcpipe.apply.view import _Acc, _complex_value

    t = col(table(), "l")
    one, two = int32(1), int32(2)
    at = 1_796_421_565_888_970  # µs
    prepended = uuid.UUID("3cdc23ff-fca3-11cb-b610-5d90242f9326").bytes  # a real prepend's path (time in 1994)
    gregorian = at * 10 + 0x01B21DD213814000
    real = uuid.UUID(fields=(gregorian & 0xFFFFFFFF, (gregorian >> 32) & 0xFFFF,
                             ((gregorian >> 48) & 0x0FFF) | 0x1000, 0x80, 7, 0x0123456789AB)).bytes
    snap_one, snap_two = list_paths([at, at + 10])
    elements = {prepended: Version(at + 20, value=two), real: Version(at, value=one),
                snap_one: Version(at, value=one), snap_two: Version(at + 10, value=two)}
    # 1 was read by both (same write time and value): once; 2 at +10 only by the snapshot; 2 at +20 only by CDC
    assert _complex_value(t, ComplexState(None, elements), NOW, _Acc()) == [2, 1, 2]


def test_events_encode_and_decode_as_capture_events() -> None:
    t = table()
    cells = {"v": (b"x", ts(5), None), "l": (ser(col(t, "l").freeze(), [1]), numbers([6], 8), numbers([None], 4)),
             "st": (ser(col(t, "st").freeze(), {"z"}), numbers([7], 8), numbers([None], 4))}
    schema = table_schema(t)
    cache = SchemaCache()
    cache.add(schema.to_json())
    for e in convert(t, [row(t, 4, 5, cells)]):
        data = encode(e.event, schema, e.raw_key, e.raw_clustering)
        assert decode(data, cache.get) == e.event
        assert e.key == int32(4)


def test_a_damaged_collection_is_a_clear_error() -> None:
    t = table()
    with pytest.raises(SnapshotError, match="'st'"):
        convert(t, [row(t, 1, 1, {"st": (int32(2) + int32(1) + b"a", numbers([1, 2], 8), None)})])


def test_the_kafka_key_is_the_stored_partition_key() -> None:
    """Capture keys events by the partition key as stored (CompositeType for several columns): the snapshot
    builds the same bytes, so a partition's snapshot and live events share a Kafka partition."""
    composite = next(t for t in parse_cql_schema(
        "CREATE TABLE ks.w (a int, b text, c int, v text, PRIMARY KEY ((a, b), c)) "
        "WITH id = 5a1c1d6e-0000-4000-8000-000000000003;") if t.table == "w")
    raws = (int32(7), b"x\x00y")
    stored = composite.partition_key_bytes(raws)
    assert stored == b"\x00\x04" + int32(7) + b"\x00" + b"\x00\x03x\x00y\x00"
    assert composite.partition_key_values(stored) == raws
    row_ = [*raws, int32(1), b"v", ts(3), None]
    (out,) = convert(composite, [row_])
    assert out.key == stored and out.event.partition_key == (7, "x\x00y")
