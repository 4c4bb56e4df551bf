"""Reconcile's pure parts: token ranges cover the ring exactly once, differences are classified by kind, and a
row state's newest timestamp (what a repair deletion uses, so it cannot shadow a later write)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from cdcpipe.apply.merge import ComplexState, RowState, Version
from cdcpipe.model import Deletion
from cdcpipe.reconcile.canonical import Side
from cdcpipe.reconcile.compare import (
    DATA_MISMATCH,
    MISSING_IN_CASSANDRA,
    MISSING_IN_POSTGRES,
    classify,
    newest_timestamp,
    token_ranges,
)
from cdcpipe.reconcile.digest import Tree, row_digest
from cdcpipe.schema_source import parse_cql_schema
from cdcpipe.tokens import MAX_TOKEN, MIN_TOKEN, token

(T,) = parse_cql_schema("CREATE TABLE ks.t (k int, c int, v text, PRIMARY KEY (k, c)) "
                        "WITH id = 00000000-0000-0000-0000-000000000071;")


def test_token_ranges_cover_the_ring_once() -> None:
    for n in (1, 2, 7, 64):
        ranges = token_ranges(n)
        assert len(ranges) == n and ranges[0][0] == MIN_TOKEN and ranges[-1][1] == MAX_TOKEN
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
        assert all(lo < hi for lo, hi in ranges)


def side(rows: dict[tuple[bytes, bytes | None], dict[str, str]]) -> Side:
    s = Side()
    for key, values in rows.items():
        s.rows[key] = values
        s.keys[key] = (key[0], key[1])
        s.inexact[key] = set()
    return s


def test_classify() -> None:
    a, b, c, d = ((bytes([i]), b"c") for i in range(4))
    cass = side({a: {"v": "1"}, b: {"v": "2"}, c: {"v": "3"}})
    pg = side({a: {"v": "1"}, b: {"v": "two"}, d: {"v": "4"}})
    found = {x.key: (x.kind, x.columns) for x in classify(T, cass, pg)}
    assert found == {b: (DATA_MISMATCH, ("v",)), c: (MISSING_IN_POSTGRES, ("<row>",)),
                     d: (MISSING_IN_CASSANDRA, ("<row>",))}
    assert classify(T, cass, side({a: {"v": "1"}, b: {"v": "2"}, c: {"v": "3"}})) == []


def test_newest_timestamp() -> None:
    row = RowState(Version(5), None, {"v": Version(9, value=b"x")},
                   {"l": ComplexState(Deletion(12, 0), {b"p": Version(11, value=b"e")})})
    assert newest_timestamp(row) == 12
    assert newest_timestamp(RowState(None, Deletion(30, 0))) == 30
    assert newest_timestamp(RowState()) == 0


@given(st.integers(MIN_TOKEN, MAX_TOKEN - 1), st.integers(1, 2**64 - 1), st.integers(1, 5000),
       st.lists(st.integers(0, 2**64), max_size=20))
def test_leaves_cover_a_range_once(lo: int, width: int, leaves: int, offsets: list[int]) -> None:
    hi = min(MAX_TOKEN, lo + width)
    tree = Tree(lo, hi, leaves)
    assert tree.bounds(0)[0] == lo and tree.bounds(tree.n - 1)[1] == hi
    assert all(tree.bounds(i)[1] == tree.bounds(i + 1)[0] for i in range(min(tree.n - 1, 50)))
    for off in offsets:
        tok = lo + 1 + off % (hi - lo)
        a, b = tree.bounds(tree.leaf(tok))
        assert a < tok <= b


def test_trees_agree_whatever_the_order_and_find_the_differing_leaf() -> None:
    rows = [(bytes([i]), f"{i}:{j}:v{i}.{j}") for i in range(50) for j in range(3)]
    a, b = Tree(MIN_TOKEN, MAX_TOKEN, 16), Tree(MIN_TOKEN, MAX_TOKEN, 16)
    for key, text in rows:
        a.add(token(key), *row_digest(text))
    for key, text in reversed(rows):
        b.add(token(key), *row_digest(text))
    assert a.differing(b) == [] and a.rows == b.rows == 150
    key, edited = rows[7]
    c = Tree(MIN_TOKEN, MAX_TOKEN, 16)
    for k, text in rows:
        c.add(token(k), *row_digest(text if text != edited else edited + "!"))
    assert c.differing(a) == [a.leaf(token(key))]
    b.taint(token(rows[90][0]))
    assert a.differing(b) == [a.leaf(token(rows[90][0]))]  # a dirty leaf is compared whatever its digests


D = parse_cql_schema("CREATE TABLE ks.d (k int, c timestamp, t text, u uuid, b blob, f double, m map<int, text>, "
                     "s set<text>, PRIMARY KEY (k, c)) WITH id = 00000000-0000-0000-0000-000000000072;")[0]


def test_row_text_dirty_and_separated() -> None:
    import datetime
    import uuid

    from cdcpipe.reconcile.canonical import Columns
    from cdcpipe.reconcile.rowtext import RowText

    text = RowText(Columns(D))
    u = uuid.uuid4()
    naive = datetime.datetime(2024, 5, 6, 7, 8, 9, 123000)
    row = [1, naive, "x", u, b"\x01", float("nan"), {2: "b", 1: "a"}, {"z", "y"}]
    assert text.cassandra(row) == text.cassandra([*row[:7], {"y", "z"}])  # a set's text is in order
    assert text.cassandra(row) != text.cassandra([*row[:2], "x~", *row[3:]])
    assert text.cassandra([1, naive, "nul\x00", u, None, None, None, None]) is None  # held inexactly: dirty
    assert text.cassandra([1, 253402300800001, "x", u, None, None, None, None]) is None  # beyond year 9999
    assert text.cassandra([1, None, None, None, None, None, None, None]) is None  # static data only
