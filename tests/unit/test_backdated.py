"""What a backdated write set that Cassandra no longer shows (``cdcpipe.capture.backdated._absent``), on
serialized values as the raw session returns them."""

from __future__ import annotations

from cdcpipe.capture.backdated import _absent
from cdcpipe.model import Cell
from cdcpipe.schema_source import parse_cql_schema

(T,) = parse_cql_schema("""
CREATE TYPE ks.addr (street text, zip int);
CREATE TABLE ks.t (k int PRIMARY KEY, v text, s set<int>, m map<text, int>, l list<int>, u addr)
    WITH id = 5a1c1d6e-0000-4000-8000-000000000021;
""")


def i32(v: int) -> bytes:
    return v.to_bytes(4, "big", signed=True)


def serialized(*items: bytes, pairs: bool = False) -> bytes:
    count = len(items) // 2 if pairs else len(items)
    return i32(count) + b"".join(i32(len(e)) + e for e in items)


def test_a_null_column_lacks_every_cell() -> None:
    assert _absent(T, "v", Cell("x", 5, raw=b"x"), None)
    assert not _absent(T, "v", Cell("x", 5, raw=b"x"), b"y")  # another value: newer, carried by its own event


def test_set_map_list_elements_by_their_bytes() -> None:
    s = serialized(i32(1), i32(3))
    assert not _absent(T, "s", Cell(None, 5, path=1, raw=b"", raw_path=i32(1)), s)
    assert _absent(T, "s", Cell(None, 5, path=2, raw=b"", raw_path=i32(2)), s)
    m = serialized(b"a", i32(1), b"b", i32(2), pairs=True)
    assert not _absent(T, "m", Cell(2, 5, path="b", raw=i32(2), raw_path=b"b"), m)
    assert _absent(T, "m", Cell(2, 5, path="c", raw=i32(2), raw_path=b"c"), m)
    lst = serialized(i32(7))
    assert not _absent(T, "l", Cell(7, 5, path=b"p" * 16, raw=i32(7), raw_path=b"p" * 16), lst)
    assert _absent(T, "l", Cell(8, 5, path=b"p" * 16, raw=i32(8), raw_path=b"p" * 16), lst)


def test_udt_fields_by_index() -> None:
    u = i32(3) + b"elm" + i32(-1)  # street set, zip null
    assert not _absent(T, "u", Cell("elm", 5, path="street", raw=b"elm", raw_path=(0).to_bytes(2, "big")), u)
    assert _absent(T, "u", Cell(1, 5, path="zip", raw=i32(1), raw_path=(1).to_bytes(2, "big")), u)


def test_an_unreadable_value_is_never_taken_for_absent() -> None:
    assert not _absent(T, "s", Cell(None, 5, path=1, raw=b"", raw_path=i32(1)), b"\x00\x00")


def test_a_list_element_of_equal_value_written_by_another_statement_does_not_count() -> None:
    lst = serialized(i32(4), i32(3))
    stamps = serialized((90).to_bytes(8, "big"), (90).to_bytes(8, "big"))  # WRITETIME(l): one per element
    mine = Cell(4, 50, path=b"p" * 16, raw=i32(4), raw_path=b"p" * 16)
    assert _absent(T, "l", mine, lst, stamps)  # the 4 shown was written at 90, not by this write at 50
    assert not _absent(T, "l", Cell(4, 90, path=b"q" * 16, raw=i32(4), raw_path=b"q" * 16), lst, stamps)
