"""Rows decoded straight into events (``TableEncoder`` as the decoder's RowSink) are byte for byte the events of
the two passes (``MutationDecoder.decode`` then ``TableEncoder.encode``) and of the reference path."""

from __future__ import annotations

import random
import struct
import uuid

import pytest

from cdcpipe import avro
from cdcpipe.capture.encoder import TableEncoder, Unsupported
from cdcpipe.capture.mutation import MutationDecoder, SinkRefused
from cdcpipe.capture.registry import SchemaRegistry
from cdcpipe.capture.rows import DELETION_TIME_EPOCH, NO_TIMESTAMP, TIMESTAMP_EPOCH
from cdcpipe.capture.segment import Position
from cdcpipe.schema import TableSchema
from cdcpipe.schema_source import parse_cql_schema
from tests.support.eventkit import ORIGIN, random_value, reference_messages
from tests.support.segments import i32, names, uv

TID = uuid.UUID("55555555-2222-3333-4444-555555555555")
SCHEMA = f"""
CREATE KEYSPACE ks WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}};
CREATE TYPE ks.addr (street text, zip int);
CREATE TABLE ks.w (pk int, ck int, s text static, d double, fz frozen<list<int>>, t text, v int, l list<int>,
    m map<text, int>, st set<text>, u addr, PRIMARY KEY (pk, ck)) WITH id = {TID};
"""
MIN_TS, MIN_LDT, MIN_TTL = TIMESTAMP_EPOCH + 1000, DELETION_TIME_EPOCH + 10, 5
# header order: simple columns, then complex ones (as Cassandra writes them); (name, CQL type of a value or element,
# fixed length or -1)
SIMPLE = [("d", "double", 8), ("fz", "frozen<list<int>>", -1), ("t", "text", -1), ("v", "int", 4)]
COMPLEX = ["l", "m", "st", "u"]
POS = Position(12, 345)


def _ts(rng: random.Random) -> int:
    return MIN_TS + rng.choice([0, 1, 7, 10**6, rng.randint(0, 2**40)])


def _cell_head(rng: random.Random, row_ts: int | None, row_ttl: bool, deleted: bool) -> bytes:
    """Cell flags, timestamp, deletion time and TTL: deleted / expiring / live, sometimes taking the row's."""
    flags = 0x01 if deleted else 0
    out = b""
    if row_ts is not None and rng.random() < 0.6:
        flags |= 0x08  # USE_ROW_TIMESTAMP
    else:
        out += uv(_ts(rng) - MIN_TS)
    if not deleted and row_ttl and rng.random() < 0.5:
        flags |= 0x10  # USE_ROW_TTL
    elif deleted:
        out += uv(rng.randint(0, 2**20))
    elif rng.random() < 0.2:
        flags |= 0x02  # IS_EXPIRING: local expiry, then TTL
        out += uv(rng.randint(0, 2**20)) + uv(rng.randint(1, 10**5) - MIN_TTL)
    return bytes([flags]) + out


def _row(rng: random.Random) -> bytes:
    flags = 0
    head = uv(0) + i32(rng.randint(-5, 5))  # clustering: one present int
    row_ts: int | None = None
    row_ttl = False
    if rng.random() < 0.7:
        flags |= 0x04  # HAS_TIMESTAMP
        row_ts = _ts(rng)
        head += uv(row_ts - MIN_TS)
        if rng.random() < 0.2:
            flags |= 0x08  # HAS_TTL
            row_ttl = True
            head += uv(rng.randint(1, 10**5) - MIN_TTL) + uv(rng.randint(0, 2**20))
    if rng.random() < 0.2:
        flags |= 0x10  # HAS_DELETION
        head += uv(_ts(rng) - MIN_TS) + uv(rng.randint(0, 2**20))
    has_cd = rng.random() < 0.3
    if has_cd:
        flags |= 0x40  # HAS_COMPLEX_DELETION
    columns = [c for c, _, _ in SIMPLE] + COMPLEX
    present = [c for c in columns if rng.random() < 0.6]
    if len(present) == len(columns):
        flags |= 0x20  # HAS_ALL_COLUMNS
    else:
        head += uv(sum(1 << i for i, c in enumerate(columns) if c not in present))
    body = b""
    for name, cql, fixed in SIMPLE:
        if name not in present:
            continue
        deleted = rng.random() < 0.15
        value = b"" if deleted else random_value(rng, cql) if fixed < 0 else \
            random_value(rng, cql)[:fixed].rjust(fixed, b"\0")
        cell = bytearray(_cell_head(rng, row_ts, row_ttl, deleted))
        if not value:
            cell[0] |= 0x04  # HAS_EMPTY_VALUE
        elif fixed < 0:
            cell += uv(len(value)) + value
        else:
            cell += value
        body += bytes(cell)
    for name in COMPLEX:
        if name not in present:
            continue
        if has_cd:
            live = rng.random() < 0.6
            body += uv((NO_TIMESTAMP if live else _ts(rng)) - MIN_TS) + uv(
                (0x7FFFFFFF if live else MIN_LDT + rng.randint(0, 99)) - MIN_LDT)
        cells = []
        for _ in range(rng.randint(0, 3)):
            deleted = rng.random() < 0.15
            path = {"l": uuid.uuid1().bytes, "m": random_value(rng, "text"), "st": random_value(rng, "text"),
                    "u": rng.choice([b"\0\0", b"\0\1"])}[name]
            value = b"" if deleted or name == "st" else random_value(rng, "int" if name != "u" else "text")
            cell = bytearray(_cell_head(rng, row_ts, row_ttl, deleted)) + uv(len(path)) + path
            if value:
                cell += uv(len(value)) + value
            else:
                cell[0] |= 0x04
            cells.append(bytes(cell))
        body += uv(len(cells)) + b"".join(cells)
    return bytes([flags]) + head + body


def _entry(rng: random.Random) -> bytes:
    """A serialized mutation of one PartitionUpdate of ks.w (messaging 12): 0-4 rows, sometimes a partition
    deletion, a static row or a range tombstone (which a sink refuses)."""
    flags = 0
    extra = b""
    statics = b""
    if rng.random() < 0.05:
        flags |= 0x04  # HAS_PARTITION_DELETION
        extra += uv(7) + uv(3)
    if rng.random() < 0.05:
        flags |= 0x08  # HAS_STATIC_ROW
        statics = names("s")
        extra += bytes([0x80 | 0x04 | 0x20, 0x01]) + uv(7) + bytes([0x08]) + uv(2) + b"hi"
    rows = [_row(rng) for _ in range(rng.randint(0, 4))]
    if rng.random() < 0.05:  # an inclusive start bound at ck = 9
        rows.append(bytes([0x02, 1]) + struct.pack(">H", 1) + uv(0) + i32(9) + uv(300) + uv(70))
    key = i32(rng.randint(-9, 9))
    pu = TID.bytes + uv(len(key)) + key + bytes([flags]) + uv(1000) + uv(10) + uv(MIN_TTL)
    pu += statics + names(*[c for c, _, _ in SIMPLE], *COMPLEX) + extra + b"".join(rows) + b"\x01"
    return uv(1) + pu


@pytest.fixture(scope="module")
def setup() -> tuple[SchemaRegistry, TableSchema, avro.EventSchema]:
    registry = SchemaRegistry(tables=parse_cql_schema(SCHEMA))
    table = registry.get(TID)
    assert table is not None
    return registry, table, avro.table_schema(table)


def test_rows_decoded_into_events_equal_both_passes_and_the_reference(
        setup: tuple[SchemaRegistry, TableSchema, avro.EventSchema]) -> None:
    registry, table, schema = setup
    two_pass, fused = MutationDecoder(registry), MutationDecoder(registry)
    enc = TableEncoder(table, schema, ORIGIN)
    sink = TableEncoder(table, schema, ORIGIN)
    rng = random.Random(11)
    outcomes = {"fused": 0, "refused": 0, "unsupported": 0}
    for _ in range(3000):
        data = _entry(rng)
        (u,) = two_pass.decode(data, 12, POS, "seg").updates
        try:
            expected: list[tuple[str, int, bytes]] | None = enc.encode(u, POS.segment_id, POS.offset)
        except Unsupported:
            expected = None
        try:
            (su,) = fused.decode(data, 12, POS, "seg", lambda t: sink).updates
        except SinkRefused:
            outcomes["refused"] += 1
            assert u.partition_deletion is not None or u.static_row is not None or u.range_tombstones
            continue
        except Unsupported:
            outcomes["unsupported"] += 1
            assert expected is None  # the fast path would not take it either
            continue
        outcomes["fused"] += 1
        assert su.rows == () and su.key == u.key
        assert sink.out == expected
        assert [m for _, _, m in sink.out] == reference_messages(u, schema)
    assert outcomes["fused"] > 2000, outcomes
    assert outcomes["refused"] > 100, outcomes


def test_without_a_sink_an_update_decodes_as_before(
        setup: tuple[SchemaRegistry, TableSchema, avro.EventSchema]) -> None:
    registry, _, _ = setup
    rng = random.Random(4)
    for _ in range(50):
        data = _entry(rng)
        assert MutationDecoder(registry).decode(data, 12, POS, "seg", lambda t: None) == \
            MutationDecoder(registry).decode(data, 12, POS, "seg")
