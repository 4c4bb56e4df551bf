"""Avro schema evolution (format 3): one record name per table across its versions, and every older version
read with the newest schema by Avro's own resolution rules (plain fastavro, no cdcpipe code on the reading side)."""

from __future__ import annotations

import io
import json
import uuid

import fastavro

from cdcpipe import avro
from cdcpipe.cql import driver_type, parse_cql_type
from cdcpipe.model import Cell, ChangeEvent, ColumnChange, Liveness, Op, Source
from cdcpipe.schema import DroppedColumn, TableSchema
from cdcpipe.schema_source import parse_cql_schema

TID = uuid.UUID(int=7)


def version(udt: str, columns: str, dropped: tuple[DroppedColumn, ...] = ()) -> TableSchema:
    t = parse_cql_schema(f"CREATE TYPE ks.addr ({udt}); CREATE TABLE ks.t (k int, c int, {columns}, "
                         f"PRIMARY KEY (k, c)) WITH id = {TID} AND cdc = true;")[0]
    return TableSchema(t.keyspace, t.table, t.table_id, t.partition_key, t.clustering, t.static, t.regular,
                       dropped, t.cdc) if dropped else t


def ser(cql: str, value: object, udt: tuple[str, ...] = ("street",)) -> bytes:
    t = parse_cql_type(cql, "ks", lambda k, n: (udt, ("text", "int")[:len(udt)]))
    data: bytes = driver_type(t).serialize(value, 4)
    return data


def event(columns: dict[str, tuple[str, object]], udt: tuple[str, ...] = ("street",)) -> ChangeEvent:
    changes = tuple(ColumnChange(n, (Cell(dict(zip(udt, v, strict=True)) if isinstance(v, tuple) else v, 10,
                                          raw=ser(cql, v, udt)),)) for n, (cql, v) in columns.items())
    src = Source("c", "dc", "n", "ks", "t", TID, 1, 2)
    return ChangeEvent(bytes(16), Op.UPSERT, 10, src, (1,), (0,), Liveness(10), None, None, None, changes)


def test_every_version_reads_with_the_newest_schema() -> None:
    v1 = version("street text", "a int, home frozen<addr>")
    v2 = version("street text, zip int", "a int, b text, home frozen<addr>")  # column added, UDT field added
    v3 = version("street text, zip int", "b text, home frozen<addr>",  # column a dropped
                 (DroppedColumn("a", parse_cql_type("int"), 20, "regular"),))
    schemas = [avro.table_schema(v) for v in (v1, v2, v3)]
    assert len({s.fingerprint for s in schemas}) == 3
    assert len({(s.schema["namespace"], s.schema["name"]) for s in schemas}) == 1  # one record name
    events = [
        (schemas[0], event({"a": ("int", 5), "home": ("frozen<addr>", ("x",))})),
        (schemas[1], event({"a": ("int", 6), "b": ("text", "hi"), "home": ("frozen<addr>", ("y", 7))},
                           ("street", "zip"))),
        (schemas[2], event({"b": ("text", "yo")})),
    ]
    newest = fastavro.parse_schema(json.loads(schemas[-1].to_json()))  # as a consumer gets it
    read = []
    for s, e in events:
        data = avro.encode(e, s, (ser("int", 1),), (ser("int", 0),))
        writer = fastavro.parse_schema(json.loads(s.to_json()))
        read.append(fastavro.schemaless_reader(io.BytesIO(data[10:]), writer, newest))
    cols = [r["columns"] for r in read]
    assert "a" not in cols[0]  # a dropped column: ignored by the reader
    assert cols[0]["b"] is None  # an added column: its default
    assert cols[0]["home"]["cells"][0]["value"] == {"street": "x", "zip": None}  # an added UDT field: its default
    assert cols[1]["b"]["cells"][0]["value"] == "hi"
    assert cols[1]["home"]["cells"][0]["value"] == {"street": "y", "zip": 7}
    assert cols[2]["b"]["cells"][0]["value"] == "yo" and cols[2]["home"] is None


def test_table_named_like_a_fixed_type_keeps_a_legal_stable_name() -> None:
    t = parse_cql_schema(f"CREATE TABLE ks.\"Op\" (k int PRIMARY KEY, v int) WITH id = {TID} AND cdc = true;")[0]
    s = avro.table_schema(t)
    assert s.schema["name"] == "Op_2" and avro.EventSchema.from_json(s.to_json()).fingerprint == s.fingerprint


def test_format_2_schemas_still_decode() -> None:
    """Schemas published by cdcpipe 0.2 (the hash in the record name) stay readable on the schemas topic."""
    s3 = avro.table_schema(version("street text", "a int"))
    old = json.loads(s3.to_json())
    old["fields"] = old["fields"][:-1]
    old["cdcpipe.format"] = 2
    old.pop("name")
    digest = avro._digest(old)
    old["name"] = f"t_m{digest}"
    s2 = avro.EventSchema.from_json(json.dumps(old))
    assert s2.columns == s3.columns and s2.fingerprint != s3.fingerprint
    tampered = json.dumps(old).replace('"cdcpipe.cql_type": "int"', '"cdcpipe.cql_type": "bigint"', 1)
    try:
        avro.EventSchema.from_json(tampered)
    except Exception as exc:  # EventDecodeError
        assert "does not match" in str(exc)
    else:
        raise AssertionError("a tampered format-2 schema was accepted")
