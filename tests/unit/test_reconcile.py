"""Reconcile's pure parts: token ranges cover the ring exactly once, differences are classified by kind, and a
row state's newest timestamp (what a repair deletion uses, so it cannot shadow a later write)."""

from __future__ import annotations

import itertools

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
from cdcpipe.schema_source import parse_cql_schema
from cdcpipe.tokens import MAX_TOKEN, MIN_TOKEN

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
