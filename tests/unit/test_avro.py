"""Avro event schemas: generation from table schemas, single-object encoding, round trips, plain fastavro."""

from __future__ import annotations

import datetime
import decimal
import io
import struct
import uuid

import fastavro
import pytest
from cassandra.util import Date, Duration, Time

from cdcpipe import avro
from cdcpipe.capture.events import Change, Origin, from_mutation
from cdcpipe.capture.mutation import Mutation, PartitionUpdate
from cdcpipe.capture.rows import (
    EXCL_START_BOUND,
    INCL_END_BOUND,
    Cell,
    DeletionTime,
    Liveness,
    RangeTombstoneMarker,
    Row,
)
from cdcpipe.capture.schema import TableSchema, parse_cql_schema
from cdcpipe.capture.values import driver_type, parse_cql_type
from cdcpipe.errors import EventDecodeError

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
    return parse_cql_schema(CQL)[0]


def ser(cql: str, value: object) -> bytes:
    t = parse_cql_type(cql, "ks", lambda k, n: (("street", "No"), ("text", "int")) if n == "addr" else None)
    data: bytes = driver_type(t).serialize(value, 4)
    return data


def composite(*parts: bytes) -> bytes:
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
    from cdcpipe.capture.values import TimestampMillis

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


def test_record_name_carries_the_metadata_hash() -> None:
    s = avro.table_schema(table())
    assert s.schema["namespace"] == "cdcpipe.ks" and s.schema["name"].startswith("Things_m")
    assert s.schema["cdcpipe.format"] == avro.FORMAT_VERSION
    assert avro.EventSchema.from_json(s.to_json()).fingerprint == s.fingerprint
    tampered = s.to_json().replace('"order": "DESC"', '"order": "ASC"')
    with pytest.raises(EventDecodeError):
        avro.EventSchema.from_json(tampered)
