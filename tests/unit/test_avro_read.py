"""Apply's compiled Avro reader gives exactly the Delta of the fastavro path, on random events of random tables,
and leaves to that path every message it must (other operations, non-canonical keys, malformed bodies)."""

from __future__ import annotations

import io
import random
import re
import uuid
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdcpipe import avro
from cdcpipe.apply import merge
from cdcpipe.apply.avro_read import compile_reader
from cdcpipe.apply.avro_skip import read_long
from cdcpipe.apply.decode import _Plan, decode_delta
from cdcpipe.capture.events import from_mutation
from cdcpipe.capture.mutation import Mutation, PartitionUpdate
from cdcpipe.capture.rows import (
    EXCL_END_INCL_START_BOUNDARY,
    INCL_END_BOUND,
    INCL_START_BOUND,
    NO_TIMESTAMP,
    Cell,
    DeletionTime,
    Liveness,
    RangeTombstoneMarker,
    Row,
)
from cdcpipe.errors import EventDecodeError
from cdcpipe.schema import TableSchema
from cdcpipe.schema_source import parse_cql_schema
from tests.support.eventkit import ORIGIN, composite, random_value

KEY_TYPES = ["int", "bigint", "smallint", "tinyint", "text", "ascii", "blob", "uuid", "timeuuid", "timestamp",
             "date", "time", "varint", "double", "boolean", "inet"]  # the last four have no canonical bytes
SIMPLE_TYPES = ["int", "bigint", "smallint", "tinyint", "text", "ascii", "blob", "boolean", "double", "float",
                "uuid", "timeuuid", "timestamp", "date", "time", "varint", "decimal", "inet", "duration",
                "frozen<list<int>>", "frozen<map<text, frozen<list<int>>>>", "tuple<int, text>", "frozen<addr>",
                "vector<float, 2>"]
MULTI_TYPES = {"list<text>": "text", "set<int>": "int", "map<int, text>": "text", "addr": "int"}
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def tables(draw: Any) -> TableSchema:
    """A random table: 1-2 partition key columns, 0-2 clustering columns, statics, simple and multi-cell
    columns of every kind the event format has."""
    pk = draw(st.lists(st.sampled_from(KEY_TYPES[:12] if draw(st.booleans()) else KEY_TYPES), min_size=1,
                       max_size=2))
    ck = draw(st.lists(st.sampled_from(KEY_TYPES), min_size=0, max_size=2))
    regular = draw(st.lists(st.sampled_from([*SIMPLE_TYPES, *MULTI_TYPES]), min_size=1, max_size=6))
    static = draw(st.lists(st.sampled_from(["int", "text", "set<int>"]), max_size=2)) if ck else []
    cols = [f"k{i} {t}" for i, t in enumerate(pk)] + [f"c{i} {t}" for i, t in enumerate(ck)]
    cols += [f"s{i} {t} STATIC" for i, t in enumerate(static)] + [f"r{i} {t}" for i, t in enumerate(regular)]
    keys = ", ".join(f"k{i}" for i in range(len(pk)))
    clustering = "".join(f", c{i}" for i in range(len(ck)))
    order = f" AND CLUSTERING ORDER BY (c0 {draw(st.sampled_from(['ASC', 'DESC']))})" if ck else ""
    tid = uuid.UUID(int=draw(st.integers(1, 2**64)))
    cql = (f'CREATE TYPE ks.addr (street text, "No" int);\nCREATE TABLE ks.t ({", ".join(cols)}, '
           f"PRIMARY KEY (({keys}){clustering})) WITH id = {tid}{order} AND cdc = true;")
    return parse_cql_schema(cql)[0]


def _cell(rng: random.Random, name: str, cql: str) -> Cell:
    ts = rng.choice([1_700_000_000_000_000 + rng.randint(0, 9), 5, -1, -(2**63) + 1, 2**63 - 1])
    deleted = rng.random() < 0.15
    ttl = 0 if deleted or rng.random() < 0.7 else rng.choice([1, 10**6, 2**31 - 1])
    ldt = rng.choice([0, 2**31 - 1, 2**40]) if deleted or ttl else None
    path = None
    if cql.startswith("list"):
        path, value = rng.choice([uuid.uuid1().bytes, b"\1\2"]), random_value(rng, "text")
    elif cql.startswith("set"):
        path, value = random_value(rng, "int"), b""
    elif cql.startswith("map"):
        path, value = random_value(rng, "int"), random_value(rng, "text")
    elif cql == "addr":
        path, value = rng.choice([b"\0\0", b"\0\1", b"\0\7"]), random_value(rng, "int")
    else:
        value = random_value(rng, cql)
    return Cell(name, b"" if deleted else value, ts, ttl, ldt, deleted, path)


def _deletion(rng: random.Random) -> DeletionTime:
    return DeletionTime(rng.choice([rng.randint(-5, 2**60), 2**63 - 1]), rng.randint(0, 2**40))


def _key_value(rng: random.Random, cql: str) -> bytes:
    return random_value(rng, cql) if cql in ("int", "bigint", "text", "ascii", "blob", "uuid", "timeuuid", "timestamp",
                                       "date", "time", "varint", "double", "boolean", "inet") \
        else random_value(rng, "int")[:{"smallint": 2, "tinyint": 1}.get(cql, 4)]


def _update(rng: random.Random, t: TableSchema) -> PartitionUpdate:
    types = {c.name: c.type.cql() for c in (*t.static, *t.regular)}
    regular = [c.name for c in t.regular]
    multi = [c.name for c in t.regular if c.type.multi_cell]

    def clustering(n: int) -> tuple[bytes | None, ...]:
        return tuple(rng.choice([_key_value(rng, c.type.cql()), _key_value(rng, c.type.cql()), None, b""])
                     for c in t.clustering[:n])

    rows = []
    for _ in range(rng.randint(0, 3)):
        names = rng.sample(regular, rng.randint(0, len(regular)))
        cells = tuple(_cell(rng, n, types[n]) for n in names for _ in range(2 if n in multi else 1))
        lv = rng.choice([None, Liveness(NO_TIMESTAMP), Liveness(rng.randint(0, 2**50), 0),
                         Liveness(7, rng.randint(1, 99), rng.choice([None, 2**33]))])
        cds = tuple((n, _deletion(rng)) for n in rng.sample(multi, rng.randint(0, len(multi))))
        rows.append(Row(clustering(len(t.clustering)), lv, rng.choice([None, _deletion(rng)]), cells, cds))
    static = None
    if t.static and rng.random() < 0.4:
        static = Row((), rng.choice([None, Liveness(3)]), None,
                     tuple(_cell(rng, c.name, c.type.cql()) for c in t.static), static=True)
    markers: tuple[RangeTombstoneMarker, ...] = ()
    if t.clustering and rng.random() < 0.2:
        d1, d2 = _deletion(rng), _deletion(rng)
        markers = (RangeTombstoneMarker(INCL_START_BOUND, clustering(1), None, d1),
                   RangeTombstoneMarker(EXCL_END_INCL_START_BOUNDARY, clustering(2), d1, d2),
                   RangeTombstoneMarker(INCL_END_BOUND, clustering(2), d2, None))
    raw = [_key_value(rng, c.type.cql()) for c in t.partition_key]
    key = raw[0] if len(raw) == 1 else composite(*raw)
    return PartitionUpdate(t, key, rng.choice([None, None, None, _deletion(rng)]), static, tuple(rows), markers)


class _Reader:
    def __init__(self, schema: avro.EventSchema) -> None:
        self.cache = avro.SchemaCache()
        self.cache.add(schema.to_json())

    def lookup(self, fingerprint: bytes) -> avro.EventSchema | None:
        return self.cache.get(fingerprint)


def _messages(rng: random.Random, t: TableSchema, schema: avro.EventSchema, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        try:
            out += [avro.encode(c.event, schema, c.raw_key, c.raw_clustering, c.raw_bounds)
                    for c in from_mutation(Mutation(None, (_update(rng, t),)), ORIGIN, rng.randint(0, 2**40),
                                           rng.randint(0, 2**31))]
        except ValueError:
            continue  # an event the reference encoder rejects: capture dead-letters it
    return out


def _fastavro_path(plan: _Plan, data: bytes) -> tuple[str, merge.Delta | None]:
    """What apply did before the compiled reader: ('ok', plan.delta or None) or ('error', None)."""
    try:
        rec = fastavro.schemaless_reader(io.BytesIO(data[10:]), plan.schema.plain, None)
        return "ok", plan.delta(rec)
    except Exception:
        return "error", None


def _corrupt(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(10, len(data))
    kind = rng.random()
    if kind < 0.3:
        return data[:i]
    if kind < 0.4:
        return data + bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 4)))
    b = rng.choice([0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF, rng.getrandbits(8), data[i] ^ 1])
    return data[:i] + bytes([b]) + data[i + 1:]


@SETTINGS
@given(t=tables(), seed=st.integers(0, 2**32))
def test_compiled_reader_gives_the_delta_of_the_fastavro_path(t: TableSchema, seed: int) -> None:
    rng = random.Random(seed)
    schema = avro.table_schema(t)
    plan = _Plan(schema)
    reader = compile_reader(schema)
    canonical = all(c.type.name in ("int", "bigint", "smallint", "tinyint", "uuid", "timeuuid", "timestamp",
                                    "date", "time", "text", "varchar", "ascii", "blob")
                    for c in (*t.partition_key, *t.clustering))
    assert (reader is not None) == canonical
    schemas = _Reader(schema)
    for data in _messages(rng, t, schema, 8):
        status, expected = _fastavro_path(plan, data)
        assert status == "ok"
        if reader is not None:
            assert reader.delta(data) == expected  # the same Delta, or None exactly where fastavro is needed
        # the whole decoder: what the fastavro path and the event path give
        try:
            full = expected if expected is not None else merge.delta(plan.table, plan.event(
                fastavro.schemaless_reader(io.BytesIO(data[10:]), schema.plain, None)))
        except Exception:  # e.g. a key value that does not decode: no bytes to key the row by
            with pytest.raises(EventDecodeError):
                decode_delta(data, schemas)  # type: ignore[arg-type]
            continue
        assert decode_delta(data, schemas)[0] == full  # type: ignore[arg-type]
        # malformed bodies: the reader answers only where the fastavro path answers the same
        if reader is not None:
            for _ in range(4):
                bad = _corrupt(rng, data)
                got = reader.delta(bad)
                if got is not None:
                    assert _fastavro_path(plan, bad) == ("ok", got)


def test_typical_events_take_the_compiled_path() -> None:
    """Upserts and row deletions fall back only when a key value does not have its type's size (the random keys
    here are sometimes empty or malformed); partition and range deletions always do."""
    t = parse_cql_schema('CREATE TYPE ks.addr (street text, "No" int);\nCREATE TABLE ks.t (k int, c text, '
                         "s int STATIC, a text, b list<text>, m map<int, text>, u addr, PRIMARY KEY (k, c)) "
                         f"WITH id = {uuid.UUID(int=9)} AND cdc = true;")[0]
    schema = avro.table_schema(t)
    reader = compile_reader(schema)
    assert reader is not None
    rng = random.Random(3)
    rows = fast = 0
    for data in _messages(rng, t, schema, 300):
        got = reader.delta(data)
        if data[26] in (0, 2):  # upsert, row_delete
            rows += 1
            fast += got is not None
            assert got is not None or _fastavro_path(_Plan(schema), data)[1] is None
        else:
            assert got is None
    assert rows > 300 and fast > rows * 0.8, (fast, rows)


def test_long_is_avros_long_over_the_whole_range() -> None:
    rng = random.Random(5)
    for n in [0, -1, 1, 63, -64, 64, 2**62, -(2**63), 2**63 - 1] + [rng.randint(-(2**63), 2**63 - 1)
                                                                     >> rng.randint(0, 63) for _ in range(2000)]:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, "long", n)
        assert read_long(buf.getvalue() + b"\x00", 0) == (n, len(buf.getvalue()))


def test_a_version_with_its_typed_value_cached_equals_one_without() -> None:
    v = merge.Version(5, None, 0, False, b"x", merge.UNSET)
    assert v == merge.Version(5, None, 0, False, b"x") and v.obj is merge.UNSET
    assert hash(v) == hash(merge.Version(5, None, 0, False, b"x"))


def test_a_block_count_beyond_the_body_is_left_to_fastavro() -> None:
    """A corrupted count of fixed-size items (a vector's floats) would never read past the body: refused."""
    t = parse_cql_schema(f"CREATE TABLE ks.v (k int PRIMARY KEY, v vector<float, 2>) WITH id = {uuid.UUID(int=3)} "
                         "AND cdc = true;")[0]
    schema = avro.table_schema(t)
    reader = compile_reader(schema)
    assert reader is not None
    rng = random.Random(1)
    data = next(d for d in _messages(rng, t, schema, 50)
                if d[26] == 0 and re.search(rb"\x02\x04.{8}\x00\x10", d, re.DOTALL))
    assert reader.delta(data) is not None
    found = re.search(rb"\x02\x04.{8}\x00\x10", data, re.DOTALL)  # the typed vector (two floats), its raw
    assert found is not None
    i = found.start() + 1
    huge = b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f"  # 2**62 - 1 items
    assert reader.delta(data[:i] + huge + data[i + 1:]) is None
