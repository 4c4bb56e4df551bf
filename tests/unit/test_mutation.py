"""Mutation decoding: the hash acceptance of Cassandra's own test segments, and hand-built mutations
covering statics, TTLs, tombstones, collections, UDTs, range tombstones, counters and subsets."""

from __future__ import annotations

import struct
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from cdcpipe.capture.dump import update_to_json
from cdcpipe.capture.mutation import MutationDecoder, first_table_id
from cdcpipe.capture.registry import SchemaRegistry
from cdcpipe.capture.rows import DELETION_TIME_EPOCH, NO_TIMESTAMP, TIMESTAMP_EPOCH, DeletionTime
from cdcpipe.capture.segment import Entry, Position, SegmentReader, StaticKeyProvider
from cdcpipe.errors import MutationDecodeError, UnknownTableError
from cdcpipe.schema import TableSchema
from cdcpipe.schema_source import parse_cql_schema
from tests.support.segments import i32, names, uv

KEY = bytes.fromhex("b7d96fb9b11d829179aeeb0b4e81f97a")
SYSTEM = {
    "7ad54392-bcdd-35a6-8417-4e047860b377": "system.local",
    "24101c25-a2ae-3af7-87c1-b40ee1aca33f": "system_schema.columns",
    "5a1ff267-ace0-3f12-8563-cfae6103c65e": "system.sstable_activity",
    "b4dbb7b4-dc49-3fb5-b3bf-ce6e434832ca": "system.compaction_history",
    "9f5c6374-d485-3229-9a0a-5094af9ad1e3": "system.IndexInfo",
}
# entries per table (README cross-check), and the number of empty Standard1 cells
DATASETS = {
    "3.0.13-encrypted": ({"Standard1": 1404, "system.sstable_activity": 40, "system.local": 10,
                          "system_schema.columns": 10, "system.compaction_history": 10, "system.IndexInfo": 6}, 5),
    "3.0.29-encrypted": ({"Standard1": 98, "system.sstable_activity": 41, "system.compaction_history": 11,
                          "system.local": 10, "system_schema.columns": 10, "system.IndexInfo": 6}, 0),
    "3.4-encrypted": ({"Standard1": 14561, "system_schema.columns": 1}, 53),
    "4.0.11-encrypted": ({"Standard1": 355, "system.local": 2, "system_schema.columns": 1}, 0),
}


def add_value(h: int, value: bytes) -> int:
    # the byte-wise sum of CommitLogUpgradeTest.hash(), vectorised over 4-byte little-endian words
    pad = value + bytes(-len(value) % 4)
    return (h + sum(struct.unpack(f"<{len(pad) // 4}I", pad))) & 0xFFFFFFFF


def test_add_value_matches_bytewise_definition() -> None:
    value = bytes(range(250, 256)) + b"name0 some text"
    h = 7
    for i, b in enumerate(value):
        h = (h + (b << (8 * (i % 4)))) & 0xFFFFFFFF
    assert add_value(7, value) == h


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_hash_acceptance(testdata: Path, hash_props: Callable[[Path], dict[str, str]], name: str) -> None:
    folder = testdata / name
    props = hash_props(folder / "hash.txt")
    cql = ('CREATE TABLE "Keyspace1"."Standard1" (key ascii, col ascii, val blob, val0 blob, '
           f'PRIMARY KEY (key, col)) WITH id = {props["cfid"]};')
    decoder = MutationDecoder(SchemaRegistry(tables=parse_cql_schema(cql)))
    keys = StaticKeyProvider({"testing:1": KEY})
    cells = h = empty = 0
    per_table: Counter[str] = Counter()
    for path in sorted(folder.glob("*.log")):
        reader = SegmentReader(path, keys=keys)
        for item in reader.read():
            assert isinstance(item, Entry), item
            version = reader.descriptor.messaging_version
            assert version is not None
            try:
                mutation = decoder.decode(item.data, version, item.position, str(path))
            except UnknownTableError as exc:
                assert exc.retriable and exc.table_id == first_table_id(item.data)
                per_table[SYSTEM[str(exc.table_id)]] += 1
                continue
            assert mutation.position == item.position
            for update in mutation.updates:
                per_table[update.table.table] += 1
                assert len(update.key) == 16 and update.static_row is None and not update.range_tombstones
                for row in update.rows:
                    first = row.clustering[0] if row.clustering else None
                    if first is None or not first.startswith(b"name"):
                        continue
                    assert first == b"name0" and len(row.cells) == 1 and row.cells[0].column == "val"
                    if name == "3.4-encrypted":
                        assert row.liveness is None  # dense-table style rows: no primary key liveness
                    else:
                        assert row.liveness is not None and row.cells[0].timestamp == row.liveness.timestamp
                    for cell in row.cells:
                        assert not cell.deleted and cell.ttl == 0 and cell.path is None
                        cells += 1
                        empty += not cell.value
                        h = add_value(h, cell.value)
    signed = h - (1 << 32) if h >= 1 << 31 else h
    assert (cells, signed) == (int(props["cells"]), int(props["hash"]))
    expected_tables, expected_empty = DATASETS[name]
    assert dict(per_table) == expected_tables
    assert empty == expected_empty


# ------------------------------------------------------------------------------------ hand-built data

def test_uvint_examples() -> None:
    from cdcpipe.capture.rows import uvint

    for value, enc in [(0, "00"), (127, "7f"), (128, "8080"), (300, "812c"), (1 << 14, "c04000"),
                       ((1 << 64) - 1, "ff" * 9), (1 << 56, "ff0100000000000000"), ((1 << 56) - 1, "fe" + "ff" * 7)]:
        assert uv(value).hex() == enc
        assert uvint(bytes.fromhex(enc) + b"\x99", 0) == (value, len(enc) // 2)


TID = uuid.UUID("11111111-2222-3333-4444-555555555555")
SCHEMA = f"""
-- a comment
CREATE KEYSPACE ks WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}} AND durable_writes = true;
CREATE TYPE ks.addr (street text, zip int);
/* block
   comment */
CREATE TABLE ks.t (
    pk int, ck int, s text static, v int, l list<int>, m map<text, int>, st set<text>, u addr,
    fz frozen<list<int>>,
    PRIMARY KEY (pk, ck)
) WITH CLUSTERING ORDER BY (ck DESC) AND id = {TID} AND comment = 'x;y' AND caching = {{'keys': 'ALL'}};
CREATE TABLE ks.c (pk int PRIMARY KEY, n counter) WITH id = 22222222-2222-3333-4444-555555555555;
CREATE TABLE ks.wide (pk int PRIMARY KEY, {", ".join(f"c{i:02d} int" for i in range(70))})
    WITH id = 33333333-2222-3333-4444-555555555555;
CREATE TABLE ks.comp (a int, b text, v int, PRIMARY KEY ((a, b))) WITH id = 44444444-2222-3333-4444-555555555555;
"""
MIN_TS = TIMESTAMP_EPOCH + 1000
MIN_LDT = DELETION_TIME_EPOCH + 10
TUUID = [uuid.uuid1(node=1, clock_seq=i) for i in range(2)]


def registry() -> SchemaRegistry:
    return SchemaRegistry(tables=parse_cql_schema(SCHEMA))


def pu_header(table_id: uuid.UUID, key: bytes, flags: int) -> bytes:
    return table_id.bytes + uv(len(key)) + key + bytes([flags]) + uv(1000) + uv(10) + uv(0)


def full_mutation() -> bytes:
    live_ts = (NO_TIMESTAMP - MIN_TS)
    live_ldt = 0x7FFFFFFF - MIN_LDT
    pu = pu_header(TID, i32(7), 0x04 | 0x08 | 0x10)
    pu += names("s") + names("fz", "v", "l", "m", "st", "u")
    pu += uv(5) + uv(20)  # partition deletion
    pu += bytes([0x80 | 0x04 | 0x20, 0x01]) + uv(7) + bytes([0x08]) + uv(2) + b"hi"  # static row
    pu += uv(2)  # row estimate
    # row 1: liveness with TTL, complex deletion, subset without fz
    pu += bytes([0x04 | 0x08 | 0x40]) + uv(0) + i32(5) + uv(100) + uv(3600) + uv(50) + uv(1)
    pu += bytes([0x18]) + i32(42)  # v: row timestamp and TTL
    pu += uv(99) + uv(0) + uv(2)  # l: complex deletion, 2 cells
    for n, t in enumerate(TUUID):
        pu += bytes([0x08]) + uv(16) + t.bytes + uv(4) + i32(n + 1)
    pu += uv(live_ts) + uv(live_ldt) + uv(1) + bytes([0x08]) + uv(1) + b"a" + uv(4) + i32(9)  # m
    pu += uv(live_ts) + uv(live_ldt) + uv(1) + bytes([0x01 | 0x04 | 0x08]) + uv(30) + uv(1) + b"x"  # st
    pu += uv(live_ts) + uv(live_ldt) + uv(1) + bytes([0x08]) + uv(2) + b"\x00\x01" + uv(4) + i32(12345)  # u
    # range tombstone boundary at ck = 4
    pu += bytes([0x02, 2]) + struct.pack(">H", 1) + uv(0) + i32(4) + uv(300) + uv(70) + uv(301) + uv(71)
    # row 2: row deletion, all columns
    frozen = i32(3) + b"".join(i32(4) + i32(x) for x in (1, 2, 3))
    pu += bytes([0x10 | 0x20]) + uv(0) + i32(3) + uv(200) + uv(60)
    pu += bytes([0x00]) + uv(1) + uv(len(frozen)) + frozen  # fz
    pu += bytes([0x01 | 0x04]) + uv(2) + uv(3)  # v tombstone
    pu += uv(0) * 4
    pu += b"\x01"
    return uv(1) + pu


def test_full_partition_update() -> None:
    mutation = MutationDecoder(registry()).decode(full_mutation(), 12, Position(9, 123), "seg")
    (pu,) = mutation.updates
    assert pu.table.name == "ks.t" and pu.key == i32(7)
    assert pu.partition_deletion == DeletionTime(MIN_TS + 5, MIN_LDT + 20)
    assert pu.static_row is not None and pu.static_row.static
    assert [(c.column, c.value, c.timestamp) for c in pu.static_row.cells] == [("s", b"hi", MIN_TS + 7)]
    row1, row2 = pu.rows
    assert row1.clustering == (i32(5),)
    assert row1.liveness is not None and row1.liveness.ttl == 3600
    assert row1.liveness.local_expiration_time == MIN_LDT + 50
    assert row1.complex_deletions == (("l", DeletionTime(MIN_TS + 99, MIN_LDT)),)  # LIVE ones dropped
    assert [c.column for c in row1.cells] == ["v", "l", "l", "m", "st", "u"]
    v = row1.cells[0]
    assert (v.value, v.timestamp, v.ttl, v.local_deletion_time) == (i32(42), MIN_TS + 100, 3600, MIN_LDT + 50)
    st = row1.cells[4]
    assert st.deleted and st.path == b"x" and st.local_deletion_time == MIN_LDT + 30
    assert row2.deletion == DeletionTime(MIN_TS + 200, MIN_LDT + 60)
    assert [(c.column, c.deleted) for c in row2.cells] == [("fz", False), ("v", True)]
    (marker,) = pu.range_tombstones
    assert marker.kind_name == "EXCL_END_INCL_START_BOUNDARY" and marker.bound == (i32(4),)
    assert marker.close_deletion == DeletionTime(MIN_TS + 300, MIN_LDT + 70)
    assert marker.open_deletion == DeletionTime(MIN_TS + 301, MIN_LDT + 71)

    js = update_to_json(pu, mutation.position)
    assert js["partition_key"] == {"pk": 7} and js["position"] == "9:123"
    assert js["static_row"]["cells"][0]["value"] == "hi"
    cells = js["rows"][0]["cells"]
    assert [c.get("path") for c in cells] == [None, str(TUUID[0]), str(TUUID[1]), "a", "x", "zip"]
    assert [c["value"] for c in cells] == [42, 1, 2, 9, None, 12345]
    assert cells[0]["ttl"] == 3600 and cells[0]["local_expiry"] == MIN_LDT + 50
    assert js["rows"][1]["clustering"] == {"ck": 3}
    assert js["rows"][1]["cells"][0]["value"] == [1, 2, 3]
    assert js["rows"][1]["cells"][1]["deleted"] is True
    assert js["range_tombstones"][0]["bound"] == {"ck": 4}


def test_messaging_13_unsigned_deletion_time() -> None:
    ldt = 0x90000000  # after 2038: negative as a signed int
    pu = pu_header(uuid.UUID("44444444-2222-3333-4444-555555555555"),
                   b"\x00\x04" + i32(1) + b"\x00\x00\x01x\x00", 0x10)
    pu += names("v") + uv(1)
    pu += bytes([0x20]) + bytes([0x02]) + uv(0) + uv(ldt - MIN_LDT) + uv(60) + i32(5) + b"\x01"
    data = uv(1) + pu
    decoder = MutationDecoder(registry())
    cell12 = decoder.decode(data, 12).updates[0].rows[0].cells[0]
    cell13 = decoder.decode(data, 13).updates[0].rows[0].cells[0]
    assert cell13.local_deletion_time == ldt and cell12.local_deletion_time == ldt - (1 << 32)
    assert cell13.ttl == 60
    js = update_to_json(decoder.decode(data, 13).updates[0], None)
    assert js["partition_key"] == {"a": 1, "b": "x"}


@pytest.mark.parametrize("present", [[1, 10, 69], [i for i in range(70) if i not in (0, 5, 68)]])
def test_large_column_subset(present: list[int]) -> None:
    cols = [f"c{i:02d}" for i in range(70)]
    pu = pu_header(uuid.UUID("33333333-2222-3333-4444-555555555555"), i32(1), 0x10) + names(*cols) + uv(1)
    pu += bytes([0x04]) + uv(0) + uv(70 - len(present))
    listed = present if len(present) < 35 else [i for i in range(70) if i not in present]
    pu += b"".join(uv(i) for i in listed)
    pu += b"".join(bytes([0x08]) + i32(i) for i in present) + b"\x01"
    row = MutationDecoder(registry()).decode(uv(1) + pu, 12).updates[0].rows[0]
    assert [c.column for c in row.cells] == [cols[i] for i in present]
    assert [c.value for c in row.cells] == [i32(i) for i in present]


def test_counter_cell() -> None:
    shard_id = uuid.uuid4()
    context = struct.pack(">hh", 1, -0x8000) + shard_id.bytes + struct.pack(">qq", 3, 42)
    pu = pu_header(uuid.UUID("22222222-2222-3333-4444-555555555555"), i32(1), 0x10) + names("n") + uv(1)
    pu += bytes([0x04 | 0x20]) + uv(0) + bytes([0x08]) + uv(len(context)) + context + b"\x01"
    update = MutationDecoder(registry()).decode(uv(1) + pu, 12).updates[0]
    assert update_to_json(update, None)["rows"][0]["cells"][0]["value"] == 42


def test_errors_carry_coordinates() -> None:
    decoder = MutationDecoder(registry())
    data = full_mutation()
    with pytest.raises(MutationDecodeError) as info:
        decoder.decode(data[:-3], 12, Position(9, 77), "seg")
    assert info.value.table_id == TID and info.value.position == 77 and info.value.segment == "seg"
    assert not info.value.retriable
    with pytest.raises(MutationDecodeError, match="trailing"):
        decoder.decode(data + b"\x00", 12)
    unknown = uuid.uuid4()
    with pytest.raises(UnknownTableError) as unk:
        decoder.decode(uv(1) + unknown.bytes + data[17:], 12, Position(9, 5))
    assert unk.value.table_id == unknown and unk.value.retriable
    with pytest.raises(MutationDecodeError, match="messaging"):
        decoder.decode(data, 14)


class _ChangingSource:
    def __init__(self, *schemas: str) -> None:
        self.schemas = list(schemas)
        self.loads = 0

    def load(self) -> list[TableSchema]:
        self.loads += 1
        return parse_cql_schema(self.schemas[min(self.loads - 1, len(self.schemas) - 1)])


def test_unknown_column_refreshes_schema() -> None:
    old = "CREATE TABLE ks.x (pk int PRIMARY KEY, a int) WITH id = 55555555-2222-3333-4444-555555555555;"
    new = old.replace("a int)", "a int, b text)")
    source = _ChangingSource(old, new)
    reg = SchemaRegistry(source, min_refresh_interval=0)
    pu = pu_header(uuid.UUID("55555555-2222-3333-4444-555555555555"), i32(1), 0x10) + names("b") + uv(1)
    pu += bytes([0x04 | 0x20]) + uv(0) + bytes([0x08]) + uv(2) + b"hi" + b"\x01"
    update = MutationDecoder(reg).decode(uv(1) + pu, 12).updates[0]
    assert source.loads == 2 and update.rows[0].cells[0].value == b"hi"
    stale = SchemaRegistry(_ChangingSource(old), min_refresh_interval=0)
    with pytest.raises(UnknownTableError) as info:
        MutationDecoder(stale).decode(uv(1) + pu, 12)
    assert info.value.column == "b"


def test_dropped_column_cells_are_filtered() -> None:
    tables = parse_cql_schema(
        "CREATE TABLE ks.d (pk int PRIMARY KEY, a int) WITH id = 66666666-2222-3333-4444-555555555555;")
    from dataclasses import replace

    from cdcpipe.cql import CqlType
    from cdcpipe.schema import DroppedColumn

    table = replace(tables[0], dropped=(DroppedColumn("gone", CqlType("text"), MIN_TS + 50),))
    pu = pu_header(table.table_id, i32(1), 0x10) + names("gone") + uv(2)
    for ts in (40, 60):
        pu += bytes([0x20]) + bytes([0x00]) + uv(ts) + uv(1) + b"z"
    pu += b"\x01"
    rows = MutationDecoder(SchemaRegistry(tables=[table])).decode(uv(1) + pu, 12).updates[0].rows
    assert [len(r.cells) for r in rows] == [0, 1] and rows[1].cells[0].timestamp == MIN_TS + 60
