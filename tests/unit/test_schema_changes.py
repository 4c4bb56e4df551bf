"""Schema change records (``cdcpipe.schema_changes``): shapes, what differs between two, the record's round trip,
and what apply derives from the records (``cdcpipe.apply.schema_history.HistoryReader``)."""

from __future__ import annotations

import dataclasses
import uuid

from cdcpipe.apply.schema_history import HistoryReader
from cdcpipe.cql import CqlType
from cdcpipe.schema import DroppedColumn
from cdcpipe.schema_changes import SchemaChange, SchemaChangeRecord, diff, shape_of
from cdcpipe.schema_source import parse_cql_schema

TID = uuid.UUID(int=3)


def shape(columns: str, udt: str = "a text", cdc: bool = True, tid: uuid.UUID = TID,
          dropped: tuple[DroppedColumn, ...] = (), created: int | None = 5):
    (t,) = parse_cql_schema(f"CREATE TYPE ks.u ({udt}); CREATE TABLE ks.t (k int PRIMARY KEY, {columns}) "
                            f"WITH id = {tid} AND cdc = {str(cdc).lower()};")
    return shape_of(dataclasses.replace(t, dropped=dropped), created)


def test_each_kind_of_change() -> None:
    base = shape("v int, home frozen<u>")
    assert diff(None, base, first=True) == [SchemaChange("initial")]
    assert diff(None, base) == [SchemaChange("created")]
    assert diff(base, None) == [SchemaChange("dropped")]
    assert diff(base, base) == []
    assert diff(base, shape("v int, w text, home frozen<u>")) == [SchemaChange("column_added", "w", "text")]
    drop = (DroppedColumn("v", CqlType("int"), 77),)
    assert diff(base, shape("home frozen<u>", dropped=drop)) == [SchemaChange("column_dropped", "v", "int")]
    assert diff(base, shape("v varint, home frozen<u>", dropped=drop)) == [
        SchemaChange("column_dropped", "v", "int"), SchemaChange("column_added", "v", "varint")]
    assert diff(base, shape("v int, home frozen<u>", udt="a text, b int")) == [
        SchemaChange("udt_field_added", "ks.u.b", "int")]
    assert diff(base, shape("v int, home frozen<u>", udt="z text"))[0].change == "udt_altered"
    assert diff(base, shape("v int, home frozen<u>", cdc=False)) == [SchemaChange("cdc_off")]
    assert diff(shape("v int, home frozen<u>", cdc=False), base) == [SchemaChange("cdc_on")]
    other = uuid.UUID(int=4)
    assert diff(base, shape("v int, home frozen<u>", tid=other)) == [
        SchemaChange("dropped", detail=str(TID)), SchemaChange("created", detail=str(other))]


def test_record_round_trip_and_garbage() -> None:
    rec = SchemaChangeRecord("ks.t", str(TID), "node-1", "00ff", 3, (SchemaChange("column_added", "w", "text"),),
                             shape("v int, w text, home frozen<u>"), 1_700_000_000_000, None)
    assert SchemaChangeRecord.from_value(rec.to_value()) == rec
    assert rec.key == b"ks.t@node-1"
    gone = dataclasses.replace(rec, shape=None, version="", changes=(SchemaChange("dropped"),))
    assert SchemaChangeRecord.from_value(gone.to_value()) == gone
    assert SchemaChangeRecord.from_value(b"{not json") is None
    assert SchemaChangeRecord.from_value(b'{"table": 1}') is None


def test_history_reader_derives_gone_ids_and_floors() -> None:
    r = HistoryReader(consumer=None, topic="t")
    first = shape("v int, home frozen<u>")
    r.take(None, SchemaChangeRecord("ks.t", str(TID), "n1", "aa", 1, (SchemaChange("initial"),), first, 1).to_value())
    assert r.gone == set() and r.floors == {}
    r.take(None, SchemaChangeRecord("ks.t", str(TID), "n1", "", 2, (SchemaChange("dropped"),), None, 2).to_value())
    assert r.gone == {TID} and r.floors == {}
    other = uuid.UUID(int=9)
    again = shape("v text", tid=other, created=1234)
    r.take(None, SchemaChangeRecord("ks.t", str(other), "n1", "bb", 3, (SchemaChange("created"),), again,
                                    3).to_value())
    assert r.gone == {TID} and r.floors == {"ks.t": 1234}
    r.take(None, b"garbage")
    assert len(r.take_pending()) == 3 and r.take_pending() == []
