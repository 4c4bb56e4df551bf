"""Schema model, CQL parsing, system_schema rows, registry refresh, CQL type values and JSON."""

from __future__ import annotations

import datetime
import decimal
import ipaddress
import uuid
from typing import Any

import pytest
from cassandra import cqltypes
from cassandra.util import Duration

from cdcpipe.capture.registry import SchemaRegistry
from cdcpipe.cql import CqlType, decode_cells, decode_value, parse_cql_type, render, to_json
from cdcpipe.errors import SchemaError
from cdcpipe.schema import TableSchema, system_table_id
from cdcpipe.schema_source import parse_cql_schema, schema_from_rows

UDTS = {("ks", "addr"): (("street", "zip"), ("text", "int")),
        ("ks", "Person"): (("name", "home"), ("text", "frozen<addr>"))}


def resolve(ks: str, name: str) -> Any:
    return UDTS.get((ks, name))


@pytest.mark.parametrize(("text", "fixed", "multi"), [
    ("int", 4, False), ("bigint", 8, False), ("boolean", 1, False), ("timeuuid", 16, False),
    ("tinyint", None, False), ("smallint", None, False), ("date", None, False), ("time", None, False),
    ("text", None, False), ("list<int>", None, True), ("frozen<list<int>>", None, False),
    ("map<text, frozen<set<int>>>", None, True), ("tuple<int, text>", None, False),
    ("vector<float, 3>", 12, False), ("vector<text, 2>", None, False), ("addr", None, True),
    ("frozen<addr>", None, False), ('"Person"', None, True), ("ks.addr", None, True),
    ("'org.apache.cassandra.db.marshal.DateType'", 8, False),
    ("'org.apache.cassandra.db.marshal.ReversedType(org.apache.cassandra.db.marshal.Int32Type)'", 4, False),
])
def test_type_parsing(text: str, fixed: int | None, multi: bool) -> None:
    t = parse_cql_type(text, "ks", resolve)
    assert t.fixed_length == fixed
    assert t.multi_cell == multi
    assert parse_cql_type(t.cql(), "ks", resolve) == t


def test_type_errors() -> None:
    for bad in ("list<int", "map<int>", "nosuch", "vector<float, x>", "int int", "list<>"):
        with pytest.raises(SchemaError):
            parse_cql_type(bad, "ks", resolve)


def test_nested_udt_fields_are_frozen() -> None:
    person = parse_cql_type('"Person"', "ks", resolve)
    assert person.field_names == ("name", "home") and person.params[1].frozen and person.params[1].name == "udt"


def test_cql_schema() -> None:
    tables = parse_cql_schema("""
        CREATE KEYSPACE IF NOT EXISTS "MyKs" WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1};
        USE "MyKs";
        CREATE TYPE IF NOT EXISTS point (x double, y double);
        CREATE TABLE IF NOT EXISTS "Events" (
            "Tenant" text, day date, seq timeuuid, kind text STATIC, pos point, tags set<text>,
            PRIMARY KEY (("Tenant", day), seq, kind2)
        ) WITH CLUSTERING ORDER BY (seq DESC) AND id = 5a1ff267-ace0-3f12-8563-cfae6103c65e AND cdc = true;
        INSERT INTO x (a) VALUES (1);
    """.replace(", kind2", ""))
    (t,) = tables
    assert (t.keyspace, t.table, t.cdc) == ("MyKs", "Events", True)
    assert [c.name for c in t.partition_key] == ["Tenant", "day"]
    assert [(c.name, c.reversed, c.position) for c in t.clustering] == [("seq", True, 0)]
    assert [c.name for c in t.static] == ["kind"]
    assert [c.name for c in t.regular] == ["pos", "tags"]
    assert t.column(b"pos") is not None and t.column(b"pos").type.multi_cell  # type: ignore[union-attr]
    assert t.column(b"nope") is None


def test_cql_schema_errors() -> None:
    with pytest.raises(SchemaError, match="no table id"):
        parse_cql_schema("CREATE TABLE ks.t (a int PRIMARY KEY);")
    with pytest.raises(SchemaError, match="COMPACT"):
        parse_cql_schema("CREATE TABLE ks.t (a int PRIMARY KEY) WITH COMPACT STORAGE;")
    with pytest.raises(SchemaError, match="keyspace"):
        parse_cql_schema("CREATE TABLE t (a int PRIMARY KEY) WITH id = 5a1ff267-ace0-3f12-8563-cfae6103c65e;")
    with pytest.raises(SchemaError, match="not defined"):
        parse_cql_schema("CREATE TABLE ks.t (a int, PRIMARY KEY (b)) WITH id = 5a1ff267-ace0-3f12-8563-cfae6103c65e;")
    # system tables get their deterministic id
    (t,) = parse_cql_schema("CREATE TABLE system.local (key text PRIMARY KEY, data text);")
    assert str(t.table_id) == "7ad54392-bcdd-35a6-8417-4e047860b377"


@pytest.mark.parametrize(("ks", "table", "tid"), [
    ("system", "local", "7ad54392-bcdd-35a6-8417-4e047860b377"),
    ("system_schema", "columns", "24101c25-a2ae-3af7-87c1-b40ee1aca33f"),
    ("system", "IndexInfo", "9f5c6374-d485-3229-9a0a-5094af9ad1e3"),
    ("system", "paxos", "b7b7f0c2-fd0a-3410-8c05-3ef614bb7c2d"),
])
def test_system_table_ids(ks: str, table: str, tid: str) -> None:
    assert str(system_table_id(ks, table)) == tid


def test_schema_from_rows() -> None:
    tid = uuid.uuid4()
    cols = [
        {"keyspace_name": "ks", "table_name": "t", "column_name": "k", "kind": "partition_key", "position": 0,
         "type": "int", "clustering_order": "none"},
        {"keyspace_name": "ks", "table_name": "t", "column_name": "c", "kind": "clustering", "position": 0,
         "type": "text", "clustering_order": "desc"},
        {"keyspace_name": "ks", "table_name": "t", "column_name": "a", "kind": "regular", "position": -1,
         "type": "addr", "clustering_order": "none"},
    ]
    dropped = [{"keyspace_name": "ks", "table_name": "t", "column_name": "old", "kind": "regular",
                "type": "frozen<tuple<int, text>>",
                "dropped_time": datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)}]
    types = [{"keyspace_name": "ks", "type_name": "addr", "field_names": ["street", "zip"],
              "field_types": ["text", "int"]}]
    (t,) = schema_from_rows([{"keyspace_name": "ks", "table_name": "t", "id": tid, "cdc": None}], cols, types,
                            dropped)
    assert t.table_id == tid and not t.cdc and t.clustering[0].reversed
    assert t.regular[0].type.name == "udt" and t.regular[0].type.multi_cell
    assert t.dropped[0].dropped_time == 1704067200 * 1_000_000
    assert t.column(b"old") is t.dropped[0]


class _Source:
    def __init__(self, tables: list[TableSchema]) -> None:
        self.tables, self.loads = tables, 0

    def load(self) -> list[TableSchema]:
        self.loads += 1
        return self.tables


def test_registry_refresh_and_unknown_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    (t,) = parse_cql_schema("CREATE TABLE ks.t (a int PRIMARY KEY) WITH id = 5a1ff267-ace0-3f12-8563-cfae6103c65e;")
    now = [0.0]
    source = _Source([])
    reg = SchemaRegistry(source, min_refresh_interval=10, clock=lambda: now[0])
    assert source.loads == 1
    unknown = uuid.uuid4()
    for _ in range(5):
        assert reg.get(unknown) is None
    assert source.loads == 2 and set(reg.unknown) == {unknown}  # one reload at the first sighting only
    assert sum("unknown table id" in r.message for r in caplog.records) == 1
    source.tables = [t]
    now[0] = 1  # created and written within the refresh interval of the last reload: still found
    assert reg.get(t.table_id) is t and source.loads == 3
    assert reg.get(t.table_id, missing_column=b"a") is t and source.loads == 3
    assert reg.get(unknown) is None and source.loads == 3  # known-unknown: rechecked rarely
    now[0] = 30
    assert reg.get(unknown) is None and source.loads == 3
    now[0] = 70
    assert reg.get(unknown) is None and source.loads == 4
    assert reg.get(unknown) is None and source.loads == 4
    assert sum("unknown table id" in r.message for r in caplog.records) == 1


def test_registry_finds_a_column_added_right_after_a_reload() -> None:
    (t,) = parse_cql_schema("CREATE TABLE ks.t (a int PRIMARY KEY) WITH id = 5a1ff267-ace0-3f12-8563-cfae6103c65e;")
    (t2,) = parse_cql_schema("CREATE TABLE ks.t (a int PRIMARY KEY, b int) "
                             "WITH id = 5a1ff267-ace0-3f12-8563-cfae6103c65e;")
    now = [0.0]
    source = _Source([t])
    reg = SchemaRegistry(source, min_refresh_interval=10, clock=lambda: now[0])
    assert reg.get(t.table_id, missing_column=b"c") is t and source.loads == 2  # first sighting of t.c
    assert reg.get(t.table_id, missing_column=b"c") is t and source.loads == 2  # then rate limited
    source.tables = [t2]
    now[0] = 1
    assert reg.get(t.table_id, missing_column=b"b") is t2 and source.loads == 3
    assert reg.get(t.table_id, missing_column=b"b") is t2 and source.loads == 3
    now[0] = 12
    assert reg.get(t.table_id, missing_column=b"c") is t2 and source.loads == 4  # still missing: rechecked


def test_registry_without_source_reports_unknown_once(caplog: pytest.LogCaptureFixture) -> None:
    reg = SchemaRegistry(tables=[])
    unknown = uuid.uuid4()
    assert reg.get(unknown) is None and reg.get(unknown) is None and set(reg.unknown) == {unknown}
    assert sum("unknown table id" in r.message for r in caplog.records) == 1


# ---------------------------------------------------------------------------------------- values

def enc(type_text: str, value: Any) -> bytes:
    t = parse_cql_type(type_text, "ks", resolve)
    from cdcpipe.cql import driver_type

    return bytes(driver_type(t).serialize(value, 4))


U = uuid.UUID("5a1ff267-ace0-3f12-8563-cfae6103c65e")
TU = uuid.uuid1(node=5, clock_seq=1)


@pytest.mark.parametrize(("type_text", "value", "expected_json"), [
    ("ascii", "abc", "abc"), ("text", "żółw", "żółw"), ("varchar", "x", "x"), ("blob", b"\x00\xff", "00ff"),
    ("boolean", True, True), ("tinyint", -5, -5), ("smallint", 300, 300), ("int", -7, -7),
    ("bigint", 1 << 40, 1 << 40), ("varint", 1 << 80, str(1 << 80)), ("float", 1.5, 1.5), ("double", -2.25, -2.25),
    ("decimal", decimal.Decimal("-12.345"), "-12.345"), ("date", datetime.date(2024, 2, 29), "2024-02-29"),
    ("time", 3_723_000_000_123, "01:02:03.000000123"),
    ("timestamp", datetime.datetime(2024, 1, 2, 3, 4, 5, 678000), "2024-01-02T03:04:05.678000Z"),
    ("duration", Duration(1, 2, 3), {"months": 1, "days": 2, "nanoseconds": 3}),
    ("uuid", U, str(U)), ("timeuuid", TU, str(TU)), ("inet", "10.0.0.1", "10.0.0.1"), ("inet", "::1", "::1"),
    ("frozen<list<int>>", [1, 2], [1, 2]), ("frozen<set<text>>", {"a"}, ["a"]),
    ("frozen<map<text, int>>", {"a": 1}, [["a", 1]]), ("tuple<int, text>", (1, "x"), [1, "x"]),
    ("frozen<addr>", ("Main St", 12345), {"street": "Main St", "zip": 12345}),
    ("vector<float, 3>", [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]), ("vector<text, 2>", ["a", "bc"], ["a", "bc"]),
    ("double", float("nan"), "nan"),
])
def test_value_round_trip(type_text: str, value: Any, expected_json: Any) -> None:
    t = parse_cql_type(type_text, "ks", resolve)
    raw = enc(type_text, value)
    assert render(t, raw) == expected_json


def test_special_values() -> None:
    assert decode_value(CqlType("int"), b"") is None
    assert decode_value(CqlType("text"), b"") == ""
    assert render(CqlType("int"), b"\x01") == {"undecodable": "01"}
    assert to_json(CqlType("inet"), ipaddress.ip_address("::2")) == "::2"
    assert render(CqlType("timestamp"), (1 << 62).to_bytes(8, "big")) == str(1 << 62)  # TimestampMillis


def test_multi_cell_values() -> None:
    lst = parse_cql_type("list<int>")
    assert decode_cells(lst, [(TU.bytes, enc("int", 1)), (TU.bytes, enc("int", 2))]) == [1, 2]
    st = parse_cql_type("set<text>")
    assert decode_cells(st, [(b"a", b""), (b"b", b"")]) == ["a", "b"]
    mp = parse_cql_type("map<text, int>")
    assert decode_cells(mp, [(b"k", enc("int", 3))]) == [("k", 3)]
    udt = parse_cql_type("addr", "ks", resolve)
    assert decode_cells(udt, [(b"\x00\x01", enc("int", 9))]) == {"zip": 9}


def test_timestamps_outside_datetime_range_decode_losslessly() -> None:
    import struct

    from cdcpipe.cql import TimestampMillis

    for millis in (253402300800000, -62135596800001, -(1 << 63), (1 << 63) - 1):
        raw = struct.pack(">q", millis)
        v = decode_value(parse_cql_type("timestamp"), raw)
        assert isinstance(v, TimestampMillis) and int(v) == millis
        assert render(parse_cql_type("timestamp"), raw) == str(millis)
        nested = decode_value(parse_cql_type("frozen<map<int, frozen<list<timestamp>>>>"),
                              struct.pack(">iii", 1, 4, 7) + struct.pack(">iii", 16, 1, 8) + raw)
        assert nested == {7: [millis]} and isinstance(nested[7][0], TimestampMillis)
        assert decode_value(parse_cql_type("tuple<timestamp>"), struct.pack(">i", 8) + raw) == (millis,)
        assert decode_value(parse_cql_type("'org.apache.cassandra.db.marshal.DateType'"), raw) == millis
    in_range = decode_value(parse_cql_type("timestamp"), struct.pack(">q", 1_700_000_000_123))
    assert in_range == datetime.datetime(2023, 11, 14, 22, 13, 20, 123000)
    assert cqltypes._cqltypes["timestamp"] is cqltypes.TimestampType  # the driver's registry is untouched
    for days in (0, 0xFFFFFFFF):  # dates: the driver's Date keeps the day count
        d = decode_value(parse_cql_type("date"), struct.pack(">I", days))
        assert d.days_from_epoch == days - (1 << 31)
        assert render(parse_cql_type("date"), struct.pack(">I", days)) == str(days - (1 << 31))


def test_driver_has_vector_type() -> None:
    assert hasattr(cqltypes, "VectorType")


# ---------------------------------------------------------------------------------------- connection

def test_cluster_options_use_credentials_timeout_and_local_dc() -> None:
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import EXEC_PROFILE_DEFAULT
    from cassandra.policies import DCAwareRoundRobinPolicy

    from cdcpipe.config import CassandraSettings
    from cdcpipe.schema_source import cluster_options

    cfg = CassandraSettings(hosts=["db1:9142", "db2"], username="cdc", password="s3cret",  # type: ignore[arg-type]
                            local_dc="dc2", connect_timeout_s=3)
    opts = cluster_options(cfg)
    assert opts["contact_points"] == ["db1", "db2"] and opts["port"] == 9142 and opts["connect_timeout"] == 3
    auth = opts["auth_provider"]
    assert isinstance(auth, PlainTextAuthProvider) and (auth.username, auth.password) == ("cdc", "s3cret")
    policy = opts["execution_profiles"][EXEC_PROFILE_DEFAULT].load_balancing_policy
    assert isinstance(policy, DCAwareRoundRobinPolicy) and policy.local_dc == "dc2"
    plain = cluster_options(CassandraSettings(hosts=["db1"]))
    assert "auth_provider" not in plain and "execution_profiles" not in plain and plain["port"] == 9042


def test_connect_system_schema_takes_settings_or_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    import cassandra.cluster

    from cdcpipe.config import CassandraSettings
    from cdcpipe.schema_source import SystemSchemaSource, connect_system_schema

    seen: list[dict[str, Any]] = []
    session = object()

    class FakeCluster:
        def __init__(self, **kwargs: Any) -> None:
            seen.append(kwargs)

        def connect(self) -> object:
            return session

    monkeypatch.setattr(cassandra.cluster, "Cluster", FakeCluster)
    src = connect_system_schema(CassandraSettings(hosts=["h1:9043"], local_dc="east"))
    assert isinstance(src, SystemSchemaSource) and src.session is session
    assert seen[-1]["contact_points"] == ["h1"] and seen[-1]["port"] == 9043 and "execution_profiles" in seen[-1]
    connect_system_schema("h2:9044, h3")  # the hosts string of `cdcpipe dump`
    assert seen[-1]["contact_points"] == ["h2", "h3"] and seen[-1]["port"] == 9044
    assert "execution_profiles" not in seen[-1] and "auth_provider" not in seen[-1]
