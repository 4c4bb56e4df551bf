"""events.from_mutation on hand-built partition updates: ops, values, cells, ranges, ids."""

from __future__ import annotations

import struct
import uuid

from cdcpipe.capture.events import Change, Origin, from_mutation
from cdcpipe.capture.mutation import Mutation, PartitionUpdate
from cdcpipe.capture.rows import (
    EXCL_START_BOUND,
    INCL_END_BOUND,
    INCL_END_EXCL_START_BOUNDARY,
    INCL_START_BOUND,
    Cell,
    DeletionTime,
    Liveness,
    RangeTombstoneMarker,
    Row,
)
from cdcpipe.model import Op
from cdcpipe.schema import TableSchema
from cdcpipe.schema_source import parse_cql_schema

TID = uuid.UUID("5a1ff267-ace0-3f12-8563-cfae6103c65e")
CQL = f"""
CREATE TYPE ks.addr (street text, no int);
CREATE TABLE ks.t (k int, c text, s int STATIC, v text, l list<int>, m map<text, int>, st set<text>,
  a addr, fl frozen<list<int>>, PRIMARY KEY (k, c)) WITH CLUSTERING ORDER BY (c DESC) AND id = {TID} AND cdc = true;
"""
ORIGIN = Origin("cl", "dc1", "n1")


def table() -> TableSchema:
    return parse_cql_schema(CQL)[0]


def i32(v: int) -> bytes:
    return struct.pack(">i", v)


def changes(*rows: Row, static: Row | None = None, pdel: DeletionTime | None = None,
            markers: tuple[RangeTombstoneMarker, ...] = (), key: int = 1) -> list[Change]:
    u = PartitionUpdate(table(), i32(key), pdel, static, rows, markers)
    return from_mutation(Mutation(None, (u,)), ORIGIN, 7, 100)


def test_insert_with_marker_ttl_and_collections() -> None:
    tu = uuid.uuid1()
    row = Row((b"x",), Liveness(10, 60, 1000), None, (
        Cell("v", b"hello", 10, 60, 1000),
        Cell("l", i32(5), 10, path=tu.bytes),
        Cell("m", i32(3), 11, path=b"key"),
        Cell("st", b"", 12, path=b"elem"),
        Cell("a", b"Main", 10, path=b"\0\0"),
        Cell("fl", b"\0\0\0\1\0\0\0\4" + i32(9), 10),
    ), (("l", DeletionTime(9, 500)),))
    [c] = changes(row)
    e = c.event
    assert e.op is Op.UPSERT and e.partition_key == (1,) and e.clustering == ("x",)
    assert e.timestamp_micros == 12
    assert e.liveness is not None and e.liveness.ttl == 60 and e.liveness.expires_at == 1000
    cols = {col.name: col for col in e.columns}
    assert cols["v"].cells[0].value == "hello" and cols["v"].cells[0].expires_at == 1000
    assert cols["l"].cells[0].path == tu and cols["l"].cells[0].value == 5
    assert cols["l"].complex_deletion is not None and cols["l"].complex_deletion.timestamp == 9
    assert cols["m"].cells[0].path == "key" and cols["m"].cells[0].value == 3
    assert cols["st"].cells[0].path == "elem" and cols["st"].cells[0].value is None
    assert cols["a"].cells[0].path == "street" and cols["a"].cells[0].value == "Main"
    assert cols["fl"].cells[0].value == [9]
    assert c.key == i32(1) and c.raw_clustering == (b"x",)
    assert e.source.segment_id == 7 and e.source.position == 100 and e.source.node == "n1"


def test_update_without_marker_and_cell_tombstone() -> None:
    row = Row((b"x",), None, None, (Cell("v", b"", 20, local_deletion_time=1700000000, deleted=True),))
    [c] = changes(row)
    cell = c.event.columns[0].cells[0]
    assert c.event.op is Op.UPSERT and c.event.liveness is None
    assert cell.deleted and cell.value is None and cell.local_deletion_time == 1700000000 and cell.raw == b""


def test_row_partition_and_range_deletes() -> None:
    row = Row((b"x",), None, DeletionTime(30, 99), ())
    [rd] = changes(row)
    assert rd.event.op is Op.ROW_DELETE and rd.event.deletion is not None and rd.event.deletion.timestamp == 30
    [pd] = changes(pdel=DeletionTime(40, 99))
    assert pd.event.op is Op.PARTITION_DELETE and pd.event.timestamp_micros == 40 and pd.event.clustering == ()
    d = DeletionTime(50, 99)
    markers = (RangeTombstoneMarker(EXCL_START_BOUND, (b"a",), None, d),
               RangeTombstoneMarker(INCL_END_EXCL_START_BOUNDARY, (b"f",), d, DeletionTime(51, 99)),
               RangeTombstoneMarker(INCL_END_BOUND, (), DeletionTime(51, 99), None))
    r1, r2 = changes(markers=markers)
    assert r1.event.op is Op.RANGE_DELETE
    assert r1.event.range_start is not None and r1.event.range_start.values == ("a",)
    assert not r1.event.range_start.inclusive
    assert r1.event.range_end is not None and r1.event.range_end.values == ("f",) and r1.event.range_end.inclusive
    assert r2.event.range_start is not None and not r2.event.range_start.inclusive
    assert r2.event.range_end is not None and r2.event.range_end.values == () and r2.event.timestamp_micros == 51
    assert r1.raw_bounds == ((b"a",), (b"f",))
    markers2 = (RangeTombstoneMarker(INCL_START_BOUND, (b"a",), None, d),
                RangeTombstoneMarker(INCL_END_BOUND, (b"b",), d, None))
    [r3] = changes(markers=markers2)
    assert r3.event.range_start is not None and r3.event.range_start.inclusive


def test_static_row_is_marked() -> None:
    static = Row((), None, None, (Cell("s", i32(4), 5),), static=True)
    [c] = changes(static=static)
    assert c.event.static and c.event.clustering == () and c.event.columns[0].static
    assert c.event.columns[0].cells[0].value == 4


def test_event_id_depends_on_content_not_position() -> None:
    row = Row((b"x",), Liveness(10), None, (Cell("v", b"a", 10),))
    u = PartitionUpdate(table(), i32(1), None, None, (row,))
    a = from_mutation(Mutation(None, (u,)), ORIGIN, 7, 100)[0].event
    b = from_mutation(Mutation(None, (u,)), Origin("cl", "dc2", "n2"), 9, 5)[0].event
    assert a.event_id == b.event_id and len(a.event_id) == 16
    other = Row((b"x",), Liveness(11), None, (Cell("v", b"a", 11),))
    c = changes(other)[0].event
    assert c.event_id != a.event_id
    assert changes(row, key=2)[0].event.event_id != a.event_id


def test_include_filter_and_dropped_columns() -> None:
    row = Row((b"x",), Liveness(10), None, (Cell("gone", b"a", 10),))
    u = PartitionUpdate(table(), i32(1), None, None, (row,))
    assert from_mutation(Mutation(None, (u,)), ORIGIN, 1, 1, include=lambda t: False) == []
    [c] = from_mutation(Mutation(None, (u,)), ORIGIN, 1, 1)
    assert c.event.columns == () and c.event.liveness is not None
