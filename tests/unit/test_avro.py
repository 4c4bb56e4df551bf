"""Avro event schemas: generation from table schemas, single-object encoding, round trips, plain fastavro."""

from __future__ import annotations

import datetime
import io
import struct
import uuid

import fastavro
import pytest

from cdcpipe import avro
from cdcpipe.capture.events import from_mutation
from cdcpipe.capture.mutation import Mutation, PartitionUpdate
from cdcpipe.capture.rows import Cell, Liveness, Row
from cdcpipe.errors import EventDecodeError
from cdcpipe.schema_source import parse_cql_schema
from tests.support.eventkit import CQL, ORIGIN, TID, all_changes, table


def test_round_trip_every_kind_of_event() -> None:
    schema = avro.table_schema(table())
    cache = avro.SchemaCache()
    cache.add(schema.to_json())  # as a consumer would: from the published JSON only
    changes = all_changes()
    assert [c.event.op.value for c in changes] == ["partition_delete", "range_delete", "upsert", "upsert",
                                                   "row_delete"]
    for c in changes:
        data = avro.encode(c.event, schema, c.raw_key, c.raw_clustering, c.raw_bounds)
        assert data[:2] == b"\xc3\x01" and data[2:10] == schema.fingerprint
        assert avro.decode(data, cache.get) == c.event


def test_schema_metadata_for_consumers_without_cassandra() -> None:
    s = avro.table_schema(table()).schema
    assert s["cdcpipe.keyspace"] == "ks" and s["cdcpipe.table"] == "Things" and s["cdcpipe.table_id"] == str(TID)
    assert s["cdcpipe.partition_key"] == ["p", "q"]
    assert s["cdcpipe.clustering"] == [{"name": "c1", "order": "DESC"}, {"name": "c2", "order": "ASC"}]
    cols = {f["cdcpipe.column"]: f for f in next(f for f in s["fields"] if f["name"] == "columns")["type"]["fields"]}
    assert cols["t_fm"]["cdcpipe.cql_type"] == "frozen<map<text, frozen<list<int>>>>"
    assert cols["s"]["cdcpipe.kind"] == "static" and cols["m"]["cdcpipe.kind"] == "regular"
    assert s["cdcpipe.udts"]["ks.addr"] == {"fields": ["street", "No"], "types": ["text", "int"]}
    assert avro.EventSchema.from_json(avro.table_schema(table()).to_json()) == avro.table_schema(table())


def test_fingerprint_is_crc64_avro_of_canonical_form() -> None:
    s = avro.table_schema(table())
    canonical = fastavro.schema.to_parsing_canonical_form(fastavro.parse_schema(s.schema))
    assert s.fingerprint == int(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"), 16).to_bytes(8, "little")
    other = parse_cql_schema(CQL.replace("t_tiny tinyint,", "t_tiny tinyint, extra int,"))[0]
    assert avro.table_schema(other).fingerprint != s.fingerprint


def test_plain_fastavro_reads_typed_values() -> None:
    schema = avro.table_schema(table())
    upsert = all_changes()[3]
    data = avro.encode(upsert.event, schema, upsert.raw_key, upsert.raw_clustering)
    rec = fastavro.schemaless_reader(io.BytesIO(data[10:]), fastavro.parse_schema(schema.schema), None)
    assert rec["op"] == "upsert" and rec["partition_key"] == {"p": 1, "q": "q"}
    assert rec["clustering"]["c1"] == datetime.datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=datetime.UTC)
    cols = rec["columns"]
    assert cols["t_date"]["cells"][0]["value"] == datetime.date(1970, 1, 1) + datetime.timedelta(days=19000)
    assert cols["t_dec"]["cells"][0]["value"] == "1.50" and cols["t_vi"]["cells"][0]["value"] == str(10**30)
    assert cols["t_fm"]["cells"][0]["value"] == [{"key": "a", "value": [1]}]
    assert cols["t_fu"]["cells"][0]["value"] == {"street": "x", "No": 3}
    assert cols["l"]["cells"][0]["value"] == "e" and cols["l"]["complex_deletion"]["timestamp"] == 99
    assert cols["st"]["cells"][0]["path"] == 4 and cols["m"]["cells"][0]["deleted"]
    assert cols["t_bigint"]["cells"][0]["timestamp"] == 100 and cols["s"] is None


def test_decode_errors() -> None:
    with pytest.raises(EventDecodeError):
        avro.decode(b"xx", avro.SchemaCache().get)
    err = None
    try:
        avro.decode(b"\xc3\x01" + bytes(8) + b"\0", avro.SchemaCache().get)
    except EventDecodeError as exc:
        err = exc
    assert err is not None and err.retriable
    s = avro.table_schema(table())
    with pytest.raises(EventDecodeError):
        avro.decode(b"\xc3\x01" + s.fingerprint + b"\xff", {s.fingerprint: s}.get)
    assert struct.calcsize("<Q") == len(s.fingerprint)


def test_timestamp_outside_datetime_range_keeps_the_event() -> None:
    from cdcpipe.cql import TimestampMillis

    t = parse_cql_schema(f"CREATE TABLE ks.w (p int, c timestamp, ts timestamp, lt frozen<list<timestamp>>, "
                         f"PRIMARY KEY (p, c)) WITH id = {TID} AND cdc = true;")[0]
    schema = avro.table_schema(t)
    cache = avro.SchemaCache()
    cache.add(schema.to_json())
    for millis in (253402300800000, -(1 << 63)):
        raw = struct.pack(">q", millis)
        cells = (Cell("ts", raw, 100), Cell("lt", struct.pack(">ii", 1, 8) + raw, 100))
        u = PartitionUpdate(t, struct.pack(">i", 1), None, None, (Row((raw,), Liveness(100), None, cells),))
        (c,) = from_mutation(Mutation(None, (u,)), ORIGIN, 1, 2)
        assert c.event.clustering == (millis,) and isinstance(c.event.clustering[0], TimestampMillis)
        data = avro.encode(c.event, schema, c.raw_key, c.raw_clustering)
        assert avro.decode(data, cache.get) == c.event
        rec = fastavro.schemaless_reader(io.BytesIO(data[10:]), fastavro.parse_schema(schema.schema), None)
        assert isinstance(rec, dict) and rec["clustering"]["c"] is None  # typed form: null
        assert rec["clustering_raw"] == [raw]  # the raw bytes keep the value


def test_metadata_only_changes_change_the_fingerprint() -> None:
    base = avro.table_schema(table())
    variants = [
        CQL.replace("c2 uuid,", "c2 timeuuid,"),  # uuid -> timeuuid: same Avro type, other cdcpipe.cql_type
        CQL.replace("(c1 DESC, c2 ASC)", "(c1 ASC, c2 ASC)"),  # clustering order only
        CQL.replace(f"id = {TID}", f"id = {uuid.UUID(int=1)}"),  # a dropped and recreated table
        CQL.replace("t_ascii ascii,", "t_ascii text,"),  # both Avro strings
    ]
    prints = {base.fingerprint}
    for cql in variants:
        s = avro.table_schema(parse_cql_schema(cql)[0])
        canonical = fastavro.schema.to_parsing_canonical_form(fastavro.parse_schema(s.schema))
        assert s.fingerprint == int(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"), 16).to_bytes(8, "little")
        prints.add(s.fingerprint)
    assert len(prints) == len(variants) + 1
    assert avro.table_schema(table()).fingerprint == base.fingerprint  # deterministic


def test_version_mark_carries_the_metadata_hash() -> None:
    s = avro.table_schema(table())
    assert s.schema["namespace"] == "cdcpipe.ks" and s.schema["name"] == "Things"
    assert s.schema["fields"][-1] == {"name": avro.VERSION_FIELD + avro._digest(s.schema), "type": "null",
                                      "default": None}
    assert s.schema["cdcpipe.format"] == avro.FORMAT_VERSION
    assert avro.EventSchema.from_json(s.to_json()).fingerprint == s.fingerprint
    tampered = s.to_json().replace('"order": "DESC"', '"order": "ASC"')
    with pytest.raises(EventDecodeError):
        avro.EventSchema.from_json(tampered)
