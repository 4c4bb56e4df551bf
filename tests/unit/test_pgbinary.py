"""cdcpipe.apply.pgbinary: fields against PostgreSQL's binary forms written out by hand, and the direct writers
against the typed route (deserialize → convert → typed writer) on random serialized values with their edge cases.
The random values (``raw_value``, tests/support/eventkit.py) are shared with the integration test that compares the
stored rows with asyncpg's COPY."""

from __future__ import annotations

import datetime
import math
import random
import struct
import uuid

import pytest

from cdcpipe.apply.merge import Version
from cdcpipe.apply.pgbinary import NULL, instant_field, raw_writer, record_writer, typed_writer
from cdcpipe.apply.tables import instant, layout
from cdcpipe.cql import CqlType
from cdcpipe.schema_source import parse_cql_schema
from cdcpipe.tokens import token
from cdcpipe.typemap import converter, deserializer, pg_type
from tests.support.eventkit import DAY_NS, DAYS_MIN, MS_MAX, MS_MIN, raw_value

UTC = datetime.UTC
DIRECT = ("tinyint", "smallint", "int", "bigint", "float", "double", "boolean", "uuid", "timeuuid", "ascii", "text",
          "varchar", "blob", "timestamp", "date", "time")


def field(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def maybe_empty(rng: random.Random, name: str) -> bytes:
    return b"" if rng.random() < 0.05 else raw_value(rng, name)


def typed_route(t: CqlType, raw: bytes) -> tuple[bytes, bool]:
    """What the typed route writes for ``raw``: the field and whether it is exact."""
    value = deserializer(t)(raw)
    conv = converter(t)
    exact = True
    if conv is not None:
        value, exact = conv(value)
    writer = typed_writer(pg_type(t))
    assert writer is not None
    return writer(value), exact


@pytest.mark.parametrize("name", DIRECT)
def test_direct_writers_equal_the_typed_route(name: str) -> None:
    t = CqlType(name)
    write = raw_writer(t)
    assert write is not None
    rng = random.Random(name)
    taken = 0
    for _ in range(3000):
        raw = maybe_empty(rng, name)
        out = bytearray(b"x")
        try:
            expected, exact = typed_route(t, raw)
        except (ValueError, UnicodeDecodeError):
            continue  # the direct writer declines (or raises) too: see test_bad_values_take_the_typed_route
        if write(out, raw):
            taken += 1
            assert exact, raw  # an inexact value always takes the typed route
            if name == "float" and raw and math.isnan(struct.unpack(">f", raw)[0]):
                assert out[5:] == raw  # the payload bits are kept; the typed route may quiet a signalling NaN
            else:
                assert bytes(out[1:]) == expected, raw
        else:
            assert out == b"x"
    assert taken > 1000


def test_known_fields() -> None:
    def direct(name: str, raw: bytes) -> bytes | None:
        out = bytearray()
        write = raw_writer(CqlType(name))
        assert write is not None
        return bytes(out) if write(out, raw) else None

    assert direct("int", b"\x00\x00\x00\x2a") == field(b"\x00\x00\x00\x2a")
    assert direct("int", b"") == NULL
    assert direct("int", b"\x00\x2a") is None  # a wrong length: the typed route raises
    assert direct("tinyint", b"\xfe") == field(b"\xff\xfe")
    assert direct("tinyint", b"\x7f") == field(b"\x00\x7f")
    assert direct("boolean", b"\x02") == field(b"\x01")
    assert direct("text", b"") == field(b"")
    assert direct("text", "é".encode()) == field(b"\xc3\xa9")
    assert direct("text", b"a\x00") is None
    assert direct("ascii", "é".encode()) is None
    assert direct("blob", b"") == field(b"")
    # timestamptz: µs since 2000-01-01 UTC
    assert direct("timestamp", struct.pack(">q", 946_684_800_000)) == field(bytes(8))
    assert direct("timestamp", struct.pack(">q", 0)) == field(struct.pack(">q", -946_684_800_000_000))
    assert direct("timestamp", struct.pack(">q", MS_MIN)) is None  # datetime.min: asyncpg sends -infinity
    assert direct("timestamp", struct.pack(">q", MS_MAX + 1)) is None
    # date: days since 2000-01-01; Cassandra's is unsigned with 2^31 = 1970-01-01
    assert direct("date", struct.pack(">I", 1 << 31)) == field(struct.pack(">i", -10_957))
    assert direct("date", struct.pack(">I", (1 << 31) + 10_957)) == field(bytes(4))
    assert direct("date", struct.pack(">I", (1 << 31) + DAYS_MIN)) is None
    # time: µs since midnight
    assert direct("time", struct.pack(">q", 1000)) == field(struct.pack(">q", 1))
    assert direct("time", struct.pack(">q", 1001)) is None  # truncated: inexact
    with pytest.raises(UnicodeDecodeError):
        direct("text", b"\xff")


def test_bad_values_take_the_typed_route() -> None:
    for name, raw in (("int", b"\x01\x02\x03"), ("uuid", b"\x01"), ("time", struct.pack(">q", DAY_NS)),
                      ("time", struct.pack(">q", -1000)), ("ascii", "é".encode())):
        write = raw_writer(CqlType(name))
        assert write is not None
        out = bytearray()
        assert not write(out, raw) and not out
        with pytest.raises((ValueError, struct.error, UnicodeDecodeError)):
            typed_route(CqlType(name), raw)


def test_typed_writers() -> None:
    def typed(pg: str, v: object) -> bytes:
        w = typed_writer(pg)
        assert w is not None
        return w(v)

    inf, minus_inf = field(b"\x7f" + b"\xff" * 7), field(b"\x80" + bytes(7))
    assert typed("timestamptz", datetime.datetime.max.replace(tzinfo=UTC)) == inf
    assert typed("timestamptz", datetime.datetime.min.replace(tzinfo=UTC)) == minus_inf
    assert typed("timestamptz", datetime.datetime(2000, 1, 1, 0, 0, 1, tzinfo=UTC)) == field(struct.pack(">q", 10**6))
    assert typed("date", datetime.date.max) == field(b"\x7f\xff\xff\xff")
    assert typed("date", datetime.date.min) == field(b"\x80\x00\x00\x00")
    assert typed("date", datetime.date(1999, 12, 31)) == field(struct.pack(">i", -1))
    assert typed("time", datetime.time(0, 0, 1, 5)) == field(struct.pack(">q", 1_000_005))
    assert typed("jsonb", '{"a":1}') == field(b'\x01{"a":1}')
    assert typed("boolean", True) == field(b"\x01")
    assert typed("real", 1.5) == field(struct.pack(">f", 1.5))
    assert typed("uuid", uuid.UUID(int=1)) == field(uuid.UUID(int=1).bytes)
    assert typed("text", None) == NULL
    # array_send: ndim, has-null flag (asyncpg always writes 0), element OID, (size, lower bound) per dimension
    assert typed("text[]", ["a", None]) == field(struct.pack(">iiiii", 1, 0, 25, 2, 1) + field(b"a") + NULL)
    assert typed("integer[]", []) == field(struct.pack(">iiiii", 1, 0, 23, 0, 1))
    assert typed_writer("numeric") is None and typed_writer("inet[]") is None


def test_instant_field_is_tables_instant_as_asyncpg_sends_it() -> None:
    w = typed_writer("timestamptz")
    assert w is not None
    for s in (None, 0, 946_684_800, -1, -62_135_596_800, -62_135_596_801, 253_402_300_799, 253_402_300_800,
              -(1 << 62), 1 << 62):
        assert instant_field(s) == w(instant(s)), s
    assert instant_field(-62_135_596_801) == field(b"\x7f" + b"\xff" * 7)  # instant() clamps both ways to max


def test_record_writer_only_for_types_it_writes() -> None:
    ok, numeric, inet = parse_cql_schema(
        "CREATE TABLE ks.ok (k int, c text, s int STATIC, l list<date>, m map<int, text>, d duration, "
        "PRIMARY KEY (k, c)) WITH id = 00000000-0000-0000-0000-0000000000e1;"
        "CREATE TABLE ks.n (k int PRIMARY KEY, v decimal) WITH id = 00000000-0000-0000-0000-0000000000e2;"
        "CREATE TABLE ks.i (k int PRIMARY KEY, v set<inet>) WITH id = 00000000-0000-0000-0000-0000000000e3;")
    assert record_writer(ok, layout(ok).columns) is not None
    assert record_writer(numeric, layout(numeric).columns) is None
    assert record_writer(inet, layout(inet).columns) is None


def test_record_layout() -> None:
    (t,) = parse_cql_schema("CREATE TABLE ks.r (k int, c text, v text, PRIMARY KEY (k, c)) "
                            "WITH id = 00000000-0000-0000-0000-0000000000e4;")
    w = record_writer(t, layout(t).columns)
    assert w is not None
    clustering = (2).to_bytes(4, "big") + b"cc"
    v = Version(1, value=b"a\x00")  # NUL: NULL and listed as inexact
    out = bytearray()
    w.write(out, b"\x00\x00\x00\x07", clustering, {"v": v}, b"\x02meta", None, instant_field(0))
    assert bytes(out) == (
        struct.pack(">h", 10) + field(b"\x00\x00\x00\x07") + field(b"cc") + NULL
        + field(b"\x00\x00\x00\x07") + field(clustering) + field(b"\x02meta")
        + field(struct.pack(">iiiii", 1, 0, 25, 1, 1) + field(b"v")) + NULL + instant_field(0)
        + field(struct.pack(">q", token(b"\x00\x00\x00\x07"))))
