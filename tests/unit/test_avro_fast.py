"""The fast encoder writes exactly the bytes of the reference path (events.from_mutation + avro.encode)."""

from __future__ import annotations

import decimal
import random
import struct
import uuid

import pytest
from cassandra.util import Duration

from cdcpipe import avro
from cdcpipe.avro_fast import TableEncoder, Unsupported
from cdcpipe.capture.events import from_mutation
from cdcpipe.capture.mutation import Mutation, PartitionUpdate
from cdcpipe.capture.rows import (
    EXCL_END_INCL_START_BOUNDARY,
    EXCL_START_BOUND,
    INCL_END_BOUND,
    INCL_START_BOUND,
    NO_TIMESTAMP,
    Cell,
    DeletionTime,
    Liveness,
    RangeTombstoneMarker,
    Row,
)
from cdcpipe.capture.schema import TableSchema
from tests.unit.test_avro import ORIGIN, composite, ser, table

_MS_MAX = (1 << 63) - 1


def _value(rng: random.Random, cql: str) -> bytes:
    """A serialized value of ``cql``, sometimes empty, malformed or at the edges of its range."""
    r = rng.random()
    if r < 0.04:
        return b""
    if r < 0.07:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 9)))
    edge = r < 0.25
    simple = {
        "int": lambda: ser("int", rng.choice([0, -1, 2**31 - 1, -2**31]) if edge else rng.randint(-999, 10**6)),
        "bigint": lambda: ser("bigint", rng.choice([2**63 - 1, -2**63, 0]) if edge else rng.getrandbits(40)),
        "smallint": lambda: ser("smallint", rng.randint(-2**15, 2**15 - 1)),
        "tinyint": lambda: ser("tinyint", rng.randint(-128, 127)),
        "text": lambda: (b"\xff\xfe" if edge else ser("text", "é" * rng.randint(0, 70))),
        "ascii": lambda: (b"\xc3\xa9" if edge else ser("ascii", "a" * rng.randint(0, 3))),
        "blob": lambda: bytes(rng.randint(0, 200)),
        "boolean": lambda: bytes([rng.choice([0, 1, 7])]),
        "double": lambda: struct.pack(">d", rng.choice([float("nan"), float("inf"), -0.0, rng.random()])),
        "float": lambda: (rng.choice([b"\x7f\xc0\x00\x01", b"\xff\x80\x00\x00", b"\x7f\x80\x00\x00"]) if edge
                          else struct.pack(">f", rng.random())),
        "uuid": lambda: uuid.uuid4().bytes, "timeuuid": lambda: uuid.uuid1().bytes,
        "timestamp": lambda: struct.pack(">q", rng.choice([_MS_MAX, -_MS_MAX, 253402300799999, 253402300800000,
                                                           -62135596800000, -62135596800001]) if edge
                                         else rng.randint(-2**40, 2**42)),
        "date": lambda: struct.pack(">I", rng.choice([0, 2**32 - 1, 2**31]) if edge else 2**31 + rng.randint(-9, 9)),
        "time": lambda: struct.pack(">q", rng.choice([-1, 86_400_000_000_000, 0]) if edge
                                    else rng.randint(0, 86_399_999_999_999)),
        "varint": lambda: ser("varint", rng.randint(-10**30, 10**30)),
        "decimal": lambda: ser("decimal", decimal.Decimal(rng.randint(-10**6, 10**6)).scaleb(-rng.randint(0, 9))),
        "inet": lambda: ser("inet", rng.choice(["10.0.0.1", "::1"])),
        "duration": lambda: ser("duration", Duration(rng.randint(0, 9), rng.randint(-9, 9), rng.randint(0, 10**12))),
        "frozen<list<int>>": lambda: ser("frozen<list<int>>", [rng.randint(0, 9)] * rng.randint(0, 3)),
        "frozen<map<text, frozen<list<int>>>>": lambda: ser("frozen<map<text, frozen<list<int>>>>", {"a": [1]}),
        "tuple<int, text>": lambda: ser("tuple<int, text>", (rng.randint(0, 9), rng.choice([None, "x"]))),
        "frozen<addr>": lambda: ser("frozen<addr>", (rng.choice([None, "st"]), rng.randint(0, 9))),
        "vector<float, 2>": lambda: ser("vector<float, 2>", [rng.random(), 1.0]),
    }
    return simple[cql]()


COLUMNS = {  # column -> CQL type of its (element) value
    "s": "int", "t_ascii": "ascii", "t_bigint": "bigint", "t_blob": "blob", "t_bool": "boolean", "t_date": "date",
    "t_dec": "decimal", "t_double": "double", "t_dur": "duration", "t_float": "float", "t_inet": "inet",
    "t_small": "smallint", "t_time": "time", "t_tiny": "tinyint", "t_tu": "timeuuid", "t_vi": "varint",
    "t_fl": "frozen<list<int>>", "t_fm": "frozen<map<text, frozen<list<int>>>>", "t_tup": "tuple<int, text>",
    "t_fu": "frozen<addr>", "t_vec": "vector<float, 2>",
}


def _cell(rng: random.Random, name: str) -> Cell:
    ts = rng.choice([1_700_000_000_000_000 + rng.randint(0, 9), 5, -1])
    deleted = rng.random() < 0.15
    ttl = 0 if deleted or rng.random() < 0.7 else rng.randint(1, 10**6)
    ldt = rng.randint(0, 2**40) if deleted or ttl else None
    path = None
    if name == "l":
        path, value = rng.choice([uuid.uuid1().bytes, b"\1\2"]), _value(rng, "text")
    elif name == "st":
        path, value = _value(rng, "int"), b""
    elif name == "m":
        path, value = _value(rng, "int"), _value(rng, "text")
    elif name == "a":
        path, value = rng.choice([b"\0\0", b"\0\1", b"\0\7"]), _value(rng, "int")
    else:
        value = _value(rng, COLUMNS.get(name, "int"))
    return Cell(name, b"" if deleted else value, ts, ttl, ldt, deleted, path)


def _deletion(rng: random.Random) -> DeletionTime:
    return DeletionTime(rng.randint(-5, 2**60), rng.randint(0, 2**40))


def _clustering(rng: random.Random, n: int = 2) -> tuple[bytes | None, ...]:
    return tuple(rng.choice([_value(rng, "timestamp"), None]) if i == 0 else rng.choice([_value(rng, "uuid"), b""])
                 for i in range(n))


def _update(rng: random.Random, t: TableSchema) -> PartitionUpdate:
    regular = [*[*COLUMNS][1:], "l", "st", "m", "a", "gone"]
    rows = []
    for _ in range(rng.randint(0, 3)):
        names = rng.sample(regular, rng.randint(0, 6))
        cells = tuple(_cell(rng, n) for n in names for _ in range(1 if n not in ("l", "st", "m", "a") else 2))
        lv = rng.choice([None, Liveness(NO_TIMESTAMP), Liveness(rng.randint(0, 2**50), 0),
                         Liveness(7, rng.randint(1, 99), rng.choice([None, 2**33]))])
        cds = tuple((n, _deletion(rng)) for n in rng.sample(["l", "st", "m", "a", "gone"], rng.randint(0, 2)))
        rows.append(Row(_clustering(rng), lv, rng.choice([None, _deletion(rng)]), cells, cds))
    static = Row((), rng.choice([None, Liveness(3)]), None, (_cell(rng, "s"),), static=True) \
        if rng.random() < 0.3 else None
    markers: tuple[RangeTombstoneMarker, ...] = ()
    if rng.random() < 0.3:
        d1, d2 = _deletion(rng), _deletion(rng)
        start = rng.choice([INCL_START_BOUND, EXCL_START_BOUND])
        markers = (RangeTombstoneMarker(start, _clustering(rng, 1), None, d1),
                   RangeTombstoneMarker(EXCL_END_INCL_START_BOUNDARY, _clustering(rng, 2), d1, d2),
                   RangeTombstoneMarker(INCL_END_BOUND, _clustering(rng, rng.randint(1, 2)), d2, None))
    key = composite(_value(rng, "int") if rng.random() < 0.9 else b"\1\2", ser("text", "k"))
    return PartitionUpdate(t, key, rng.choice([None, None, _deletion(rng)]), static, tuple(rows), markers)


def _reference(u: PartitionUpdate, schema: avro.EventSchema) -> list[bytes] | str:
    try:
        return [avro.encode(c.event, schema, c.raw_key, c.raw_clustering, c.raw_bounds)
                for c in from_mutation(Mutation(None, (u,)), ORIGIN, 12, 345)]
    except ValueError as exc:
        return f"rejected: {exc}"


def test_fast_bytes_equal_reference_bytes_for_random_updates() -> None:
    t = table()
    schema = avro.table_schema(t)
    enc = TableEncoder(t, schema, ORIGIN)
    rng = random.Random(7)
    fast_paths = 0
    for _ in range(3000):
        u = _update(rng, t)
        expected = _reference(u, schema)
        try:
            got: list[bytes] | str = [m for _, _, m in enc.encode(u, 12, 345)]
            fast_paths += 1
        except Unsupported:
            continue  # the caller re-runs the reference path
        assert got == expected
    assert fast_paths > 2500


def test_op_and_timestamp_match_the_events() -> None:
    t = table()
    enc = TableEncoder(t, avro.table_schema(t), ORIGIN)
    rng = random.Random(3)
    for _ in range(300):
        u = _update(rng, t)
        try:
            got = [(op, ts) for op, ts, _ in enc.encode(u, 1, 2)]
        except Unsupported:
            continue
        events = [c.event for c in from_mutation(Mutation(None, (u,)), ORIGIN, 1, 2)]
        assert got == [(e.op.value, e.timestamp_micros) for e in events]


def test_undecodable_key_needs_the_reference_path() -> None:
    t = table()
    enc = TableEncoder(t, avro.table_schema(t), ORIGIN)
    u = PartitionUpdate(t, composite(b"\1\2", b"k"), DeletionTime(1, 2), None, ())
    with pytest.raises(Unsupported):
        enc.encode(u, 1, 2)




def test_zlong_is_avros_long_encoding_over_the_whole_range() -> None:
    import io

    import fastavro

    from cdcpipe.avro_fast import zlong

    rng = random.Random(5)
    edges = [0, -1, 1, 63, -64, 64, 8191, -8192, 8192, 2**27, -(2**27) - 1, 2**41, 2**55 - 1, 2**55, -(2**55) - 1,
             2**62, -(2**63), 2**63 - 1]
    for n in edges + [rng.randint(-(2**63), 2**63 - 1) >> rng.randint(0, 63) for _ in range(3000)]:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, "long", n)
        assert zlong(n) == buf.getvalue(), n
    for n in (2**63, -(2**63) - 1):
        with pytest.raises(Unsupported):
            zlong(n)
