"""Dropped columns (Cassandra's ``system_schema.dropped_columns``): published with the event schema, and what
apply's merge forgets — every cell, element and complex deletion of the column at or before its drop time, also
after a column of that name was added again."""

from __future__ import annotations

import dataclasses

from cdcpipe import avro
from cdcpipe.apply import merge
from cdcpipe.apply.decode import table_of
from cdcpipe.apply.merge import ComplexState, RowState, Version
from cdcpipe.cql import CqlType
from cdcpipe.model import Deletion
from cdcpipe.schema import DroppedColumn
from tests.support.mergekit import TABLES


def test_drops_travel_with_the_event_schema_and_only_when_there_are_some() -> None:
    table = TABLES["kv"]
    plain = avro.table_schema(table)
    assert "cdcpipe.dropped" not in plain.schema  # tables without drops: the schema (and fingerprint) as before
    dropped = dataclasses.replace(table, dropped=(DroppedColumn("w", CqlType("int"), 1_000_000),))
    schema = avro.table_schema(dropped)
    assert schema.fingerprint != plain.fingerprint
    back = avro.EventSchema.from_json(schema.to_json())
    assert back.dropped == dropped.dropped and back.fingerprint == schema.fingerprint
    assert table_of(back).dropped == dropped.dropped


def test_merge_forgets_what_a_drop_hides() -> None:
    drop = 100
    table = dataclasses.replace(TABLES["kv"], dropped=(DroppedColumn("v", CqlType("text"), drop),
                                                       DroppedColumn("gone", CqlType("set<int>"), drop)))
    row = RowState(Version(90), None,
                   {"v": Version(drop, value=b"old"), "n": Version(50, value=b"\x00\x00\x00\x01")},
                   {"gone": ComplexState(Deletion(drop, 1), {b"a": Version(99), b"b": Version(101)})})
    changes = merge.Changes({}, {(b"p", b""): row}).normalized(table)
    assert changes.rows[(b"p", b"")] == RowState(
        Version(90), None, {"n": Version(50, value=b"\x00\x00\x00\x01")},
        {"gone": ComplexState(None, {b"b": Version(101)})})
    newer = RowState(None, None, {"v": Version(drop + 1, value=b"new")})  # written after the drop: kept
    assert merge.Changes({}, {(b"p", b""): newer}).normalized(table).rows[(b"p", b"")] == newer
    only_dropped = RowState(None, None, {"v": Version(drop, value=b"old")})
    assert merge.Changes({}, {(b"p", b""): only_dropped}).normalized(table).rows == {}
    untouched = RowState(Version(5), None, {"n": Version(5)})
    assert merge.without_dropped(untouched, {"v": drop}) is untouched
