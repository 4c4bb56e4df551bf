"""Change events and serialized CQL values for unit tests: the ``Things`` table (every CQL type) and its reference
events (``events.from_mutation`` + ``avro.encode``), random partition updates of it, and random serialized values
with their edge cases."""

from __future__ import annotations

import datetime
import decimal
import math
import random
import struct
import uuid

from cassandra.util import Date, Duration, Time

from cdcpipe import avro
from cdcpipe.capture.events import Change, Origin, from_mutation
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
from cdcpipe.cql import driver_type, parse_cql_type
from cdcpipe.schema import TableSchema
from cdcpipe.schema_source import parse_cql_schema

TID = uuid.UUID("0b0f6a50-1d7e-11ef-9a1b-0242ac120002")
CQL = f"""
CREATE TYPE ks.addr (street text, "No" int);
CREATE TABLE ks."Things" (p int, q text, c1 timestamp, c2 uuid, s int STATIC,
  t_ascii ascii, t_bigint bigint, t_blob blob, t_bool boolean, t_date date, t_dec decimal, t_double double,
  t_dur duration, t_float float, t_inet inet, t_small smallint, t_time time, t_tiny tinyint, t_tu timeuuid,
  t_vi varint, t_fl frozen<list<int>>, t_fm frozen<map<text, frozen<list<int>>>>, t_tup tuple<int, text>,
  t_fu frozen<addr>, t_vec vector<float, 2>, l list<text>, st set<int>, m map<int, text>, a addr,
  PRIMARY KEY ((p, q), c1, c2)) WITH CLUSTERING ORDER BY (c1 DESC, c2 ASC) AND id = {TID} AND cdc = true;
"""
ORIGIN = Origin("cluster", "dc1", "node-1")


def table() -> TableSchema:
    """``ks.Things``: every CQL type, a composite partition key, two clustering columns, a static."""
    return parse_cql_schema(CQL)[0]


def ser(cql: str, value: object) -> bytes:
    """The driver's serialization of ``value`` as ``cql`` (the UDT ``addr`` of :data:`CQL` known)."""
    t = parse_cql_type(cql, "ks", lambda k, n: (("street", "No"), ("text", "int")) if n == "addr" else None)
    data: bytes = driver_type(t).serialize(value, 4)
    return data


def composite(*parts: bytes) -> bytes:
    """A composite partition key of serialized ``parts``."""
    return b"".join(len(p).to_bytes(2, "big") + p + b"\0" for p in parts)


VALUES = {
    "t_ascii": ("ascii", "abc"), "t_bigint": ("bigint", -5), "t_blob": ("blob", b"\x00\xff"),
    "t_bool": ("boolean", True), "t_date": ("date", Date(19000)), "t_dec": ("decimal", decimal.Decimal("1.50")),
    "t_double": ("double", 2.5), "t_dur": ("duration", Duration(1, 2, 3000000001)), "t_float": ("float", 1.5),
    "t_inet": ("inet", "10.0.0.1"), "t_small": ("smallint", 7), "t_time": ("time", Time(3723000000001)),
    "t_tiny": ("tinyint", -2), "t_tu": ("timeuuid", uuid.uuid1()), "t_vi": ("varint", 10**30),
    "t_fl": ("frozen<list<int>>", [1, 2]), "t_fm": ("frozen<map<text, frozen<list<int>>>>", {"a": [1]}),
    "t_tup": ("tuple<int, text>", (1, None)), "t_fu": ("frozen<addr>", ("x", 3)),
    "t_vec": ("vector<float, 2>", [1.0, 2.0]),
}


def all_changes() -> list[Change]:
    """One mutation of ``Things`` with every kind of change: partition and range deletion, static and regular
    row (every type, collections, TTLs, a complex deletion), row deletion."""
    ts = datetime.datetime(2024, 5, 1, 12, 0, 0, 123000)
    ck = (ser("timestamp", ts), ser("uuid", uuid.UUID(int=5)))
    cells = [Cell(n, ser(cql, v), 100, 0, None) for n, (cql, v) in VALUES.items()]
    cells += [Cell("l", ser("text", "e"), 100, 30, 2000, path=uuid.uuid1().bytes),
              Cell("st", b"", 100, path=ser("int", 4)), Cell("m", b"", 101, 0, 1800000000, True, ser("int", 1)),
              Cell("a", ser("int", 9), 100, path=b"\0\1")]
    row = Row(ck, Liveness(100, 30, 2000), None, tuple(cells), (("l", DeletionTime(99, 1700000000)),))
    static = Row((), None, None, (Cell("s", ser("int", 1), 90),), static=True)
    d = DeletionTime(200, 1700000001)
    markers = (RangeTombstoneMarker(EXCL_START_BOUND, ck[:1], None, d),
               RangeTombstoneMarker(INCL_END_BOUND, (), d, None))
    deleted_row = Row(ck, None, DeletionTime(150, 1700000000), ())
    u = PartitionUpdate(table(), composite(ser("int", 1), ser("text", "q")), DeletionTime(50, 1700000000), static,
                        (row, deleted_row), markers)
    return from_mutation(Mutation(None, (u,)), ORIGIN, 12, 345)


# ---------------------------------------------------------------------------------------------- random updates

_MS_MAX = (1 << 63) - 1


def random_value(rng: random.Random, cql: str) -> bytes:
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
        path, value = rng.choice([uuid.uuid1().bytes, b"\1\2"]), random_value(rng, "text")
    elif name == "st":
        path, value = random_value(rng, "int"), b""
    elif name == "m":
        path, value = random_value(rng, "int"), random_value(rng, "text")
    elif name == "a":
        path, value = rng.choice([b"\0\0", b"\0\1", b"\0\7"]), random_value(rng, "int")
    else:
        value = random_value(rng, COLUMNS.get(name, "int"))
    return Cell(name, b"" if deleted else value, ts, ttl, ldt, deleted, path)


def _deletion(rng: random.Random) -> DeletionTime:
    return DeletionTime(rng.randint(-5, 2**60), rng.randint(0, 2**40))


def _clustering(rng: random.Random, n: int = 2) -> tuple[bytes | None, ...]:
    return tuple(rng.choice([random_value(rng, "timestamp"), None]) if i == 0
                 else rng.choice([random_value(rng, "uuid"), b""]) for i in range(n))


def random_update(rng: random.Random, t: TableSchema) -> PartitionUpdate:
    """A random partition update of ``Things`` (``t``): rows, static row, range tombstones, deletions, malformed
    values, a cell of a dropped column (``gone``)."""
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
    key = composite(random_value(rng, "int") if rng.random() < 0.9 else b"\1\2", ser("text", "k"))
    return PartitionUpdate(t, key, rng.choice([None, None, _deletion(rng)]), static, tuple(rows), markers)


def reference_messages(u: PartitionUpdate, schema: avro.EventSchema) -> list[bytes] | str:
    """The Avro messages of the reference path (``events.from_mutation`` + ``avro.encode``) for ``u``, or why it
    rejected ``u``."""
    try:
        return [avro.encode(c.event, schema, c.raw_key, c.raw_clustering, c.raw_bounds)
                for c in from_mutation(Mutation(None, (u,)), ORIGIN, 12, 345)]
    except ValueError as exc:
        return f"rejected: {exc}"


# ---------------------------------------------------------------------------------------------- scalar values

DAY_NS = 86_400_000_000_000
MS_MIN, MS_MAX = -62_135_596_800_000, 253_402_300_799_999  # Python's datetime range, in ms since 1970
DAYS_MIN, DAYS_MAX = -719_162, 2_932_896  # date.min, date.max in days since 1970
_INTS = {"tinyint": (">b", 8), "smallint": (">h", 16), "int": (">i", 32), "bigint": (">q", 64)}
_TEXT = "aZ9 é€😀\x00\n\"\\'"


def raw_value(rng: random.Random, name: str) -> bytes:
    """A serialized value of the CQL scalar ``name``, edge values often (empty = null for fixed types)."""
    if name in _INTS:
        fmt, bits = _INTS[name]
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        return struct.pack(fmt, rng.choice([lo, hi, 0, -1, 1, rng.randint(lo, hi), rng.randint(lo, hi)]))
    if name in ("float", "double"):
        if name == "float" and rng.random() < 0.1:
            return rng.choice([b"\x7f\x80\x00\x01", b"\xff\xc0\x00\x00"])  # a signalling NaN, a negative NaN
        big, tiny = (3.4028234663852886e38, 1e-45) if name == "float" else (1.7976931348623157e308, 5e-324)
        v = rng.choice([math.nan, math.inf, -math.inf, -0.0, 0.0, big, -big, tiny,
                        rng.uniform(-1, 1) * 10 ** rng.randint(-30, 30)])
        return struct.pack(">f" if name == "float" else ">d", v)
    if name == "boolean":
        return rng.choice([b"\x00", b"\x01", b"\x02", b"\xff"])
    if name in ("uuid", "timeuuid"):
        return (uuid.uuid1(clock_seq=rng.getrandbits(14)) if name == "timeuuid"
                else uuid.UUID(int=rng.getrandbits(128), version=4)).bytes
    if name == "ascii":
        return "".join(rng.choice("abc XYZ~\x01" + ("\x00" if rng.random() < 0.2 else ""))
                       for _ in range(rng.randint(0, 12))).encode()
    if name in ("text", "varchar"):
        return "".join(rng.choice(_TEXT[:-5] if rng.random() < 0.7 else _TEXT)
                       for _ in range(rng.randint(0, 12))).encode()
    if name in ("blob", "custom"):
        return rng.randbytes(rng.randint(0, 20))
    if name == "timestamp":
        ms = rng.choice([MS_MIN - 1, MS_MIN, MS_MIN + 1, MS_MAX, MS_MAX + 1, -(1 << 63), (1 << 63) - 1, 0, -1,
                         rng.randint(-10**13, 10**13), rng.randint(MS_MIN, MS_MAX), rng.randint(MS_MIN, MS_MAX)])
        return struct.pack(">q", ms)
    if name == "date":
        days = rng.choice([DAYS_MIN - 1, DAYS_MIN, DAYS_MIN + 1, DAYS_MAX - 1, DAYS_MAX, DAYS_MAX + 1, 0, -1,
                           -(1 << 31), (1 << 31) - 1, rng.randint(-10**6, 10**6), rng.randint(DAYS_MIN, DAYS_MAX)])
        return struct.pack(">I", days + (1 << 31))
    if name == "time":
        ns = rng.choice([0, 1, 999, 1000, DAY_NS - 1, DAY_NS - 1000, rng.randrange(0, DAY_NS, 1000),
                         rng.randrange(0, DAY_NS)])
        return struct.pack(">q", ns)
    raise ValueError(name)

