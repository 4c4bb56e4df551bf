"""The type table: PostgreSQL types, converters (exact and inexact values), the CQL wire codec, the generated doc."""

from __future__ import annotations

import datetime
import decimal
import ipaddress
import json
from pathlib import Path

import pytest
from cassandra.util import Date, Duration, Time

from cdcpipe import typemap
from cdcpipe.cql import parse_cql_type

DOC = Path(__file__).resolve().parents[2] / "docs" / "type-mapping.md"


@pytest.mark.parametrize(("cql", "pg"), [
    ("ascii", "text"), ("text", "text"), ("varchar", "text"), ("tinyint", "smallint"), ("smallint", "smallint"),
    ("int", "integer"), ("bigint", "bigint"), ("counter", "bigint"), ("varint", "numeric"), ("decimal", "numeric"),
    ("float", "real"), ("double", "double precision"), ("boolean", "boolean"), ("uuid", "uuid"),
    ("timeuuid", "uuid"), ("timestamp", "timestamptz"), ("date", "date"), ("time", "time"), ("inet", "inet"),
    ("blob", "bytea"), ("duration", "jsonb"), ("list<int>", "integer[]"), ("set<text>", "text[]"),
    ("frozen<list<timestamp>>", "timestamptz[]"), ("map<text, int>", "jsonb"), ("tuple<int, text>", "jsonb"),
    ("list<frozen<list<int>>>", "jsonb"), ("list<duration>", "jsonb"), ("vector<float, 3>", "real[]"),
    ("vector<double, 2>", "double precision[]"), ("vector<int, 2>", "jsonb"),
])
def test_pg_types(cql: str, pg: str) -> None:
    assert typemap.pg_type(parse_cql_type(cql)) == pg


def conv(cql: str, value: object) -> tuple[object, bool]:
    return typemap.to_pg(parse_cql_type(cql), value)


def test_exact_values() -> None:
    assert conv("text", "hé") == ("hé", True)
    assert conv("decimal", decimal.Decimal("1.00")) == (decimal.Decimal("1.00"), True)
    assert conv("varint", 10**40) == (decimal.Decimal(10**40), True)
    assert conv("timestamp", datetime.datetime(2020, 1, 1)) == (
        datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC), True)
    assert conv("date", Date(0)) == (datetime.date(1970, 1, 1), True)
    assert conv("time", Time(3_600_000_001_000)) == (datetime.time(1, 0, 0, 1), True)
    assert conv("inet", "10.0.0.1") == (ipaddress.ip_address("10.0.0.1"), True)
    assert conv("set<int>", [3, 1, 2]) == ([1, 2, 3], True)
    assert json.loads(conv("duration", Duration(1, 2, 3))[0]) == {"months": 1, "days": 2, "nanoseconds": 3}  # type: ignore[arg-type]
    assert json.loads(conv("map<text, int>", [("a", 1)])[0]) == [["a", 1]]  # type: ignore[arg-type]
    assert conv("float", float("nan"))[1] is True


def test_inexact_values_are_flagged() -> None:
    assert conv("text", "a\x00b") == (None, False)
    assert conv("timestamp", 2**62) == (typemap._TS_MAX, False)
    assert conv("timestamp", -(2**62)) == (typemap._TS_MIN, False)
    assert conv("date", Date(2**31 - 1)) == (datetime.date.max, False)
    assert conv("time", Time(1)) == (datetime.time(0), False)
    assert conv("decimal", decimal.Decimal("1E-20000")) == (None, False)
    assert conv("list<text>", ["a", "\x00"]) == (["a", None], False)
    assert conv("map<text, text>", [("a", "\x00")]) == (None, False)


@pytest.mark.parametrize(("cql", "value"), [
    ("int", -1), ("text", "x"), ("timestamp", 2**62), ("timestamp", datetime.datetime(2001, 2, 3, 4, 5, 6, 7000)),
    ("map<text, int>", [("a", 1), ("b", 2)]), ("set<int>", [1, 2]), ("frozen<tuple<int, text>>", (1, "a")),
    ("decimal", decimal.Decimal("1.50")), ("blob", b"\x00\xff"),
])
def test_serialize_round_trip(cql: str, value: object) -> None:
    t = parse_cql_type(cql)
    back = typemap.deserialize(t, typemap.serialize(t, value))
    if cql.startswith("map"):
        back = list(back.items())
    elif cql.startswith("set"):
        back = sorted(back)
    assert back == value


def test_serialized_bytes_order_is_unsigned() -> None:
    t = parse_cql_type("int")
    assert typemap.serialize(t, -1) > typemap.serialize(t, 1)


def test_committed_doc_is_up_to_date() -> None:
    assert DOC.read_text() == typemap.render_doc(), "run: python -m cdcpipe.typemap > docs/type-mapping.md"


@pytest.mark.parametrize("row", typemap.MAPPING, ids=lambda r: r.cql)
def test_every_mapping_row_is_what_the_code_does(row: typemap.TypeRow) -> None:
    """The doc's table is the code's: each example of a row gets the row's PostgreSQL type (S = the element's)."""
    for cql in row.examples:
        t = parse_cql_type(cql)
        element = t.params[0] if t.name in ("list", "set") else None
        expected = row.pg.replace("S", typemap.pg_type(element)) if element is not None else row.pg
        assert typemap.pg_type(t) == expected, cql
