"""BatchWriter against the real PostgreSQL: content equals the merge model's SELECT for any batching, the
checkpoint makes re-applying a batch a no-op, TTL expiry and grace purge, and permanent vs retriable errors."""

from __future__ import annotations

import itertools
import random
import uuid
from typing import Any

import pytest

from cdcpipe.apply.checkpoint import Checkpoint
from cdcpipe.apply.tables import ident
from cdcpipe.apply.writer import BatchWriter, Positioned
from cdcpipe.errors import ApplyError, UnsupportedTableError
from cdcpipe.model import Cell
from tests.support.applykit import Clock, as_pg, content
from tests.support.mergekit import (
    NOW,
    TABLES,
    delete_columns,
    delete_partition,
    delete_range,
    delete_row,
    elements,
    insert,
    list_path,
    select,
    update,
)

pytestmark = pytest.mark.timeout(120)


def workload() -> list[Any]:
    p1, p2 = list_path(), list_path()
    return [
        insert("kv", (1,), 10, v="a", n=1), update("kv", (1,), 12, n=-5), delete_columns("kv", (1,), 11, "v"),
        insert("kv", (2,), 10, ttl=100, v="ttl"), update("kv", (3,), 5, v="x"), delete_row("kv", (3,), 6),
        insert("t", (1, 1), 10, v="a", w="b"), insert("t", (1, 2), 10, v="c"), delete_row("t", (1, 1), 20),
        update("t", (1, 1), 30, w="late"), delete_partition("t", (2,), 50), insert("t", (2, 1), 40, v="gone"),
        insert("st", (1, 1), 10, s="S", v="x"), insert("st", (1, 2), 10, v="y"), update("st", (1,), 15, s="S2"),
        insert("r", (1, 1, 1), 10, v=0), insert("r", (1, 1, 5), 10, v=0), insert("r", (1, 2, 1), 10, v=0),
        delete_range("r", (1,), (1, 1), False, (1,), True, 20), insert("r", (1, 2, 8), 21, v=9),
        insert("col", (1,), 10, s=["b", "a"], l=["x"], m={"k": 1}, fs=["z"]),
        elements("col", (1,), 11, "l", (Cell("y", 11, path=p1), Cell("z", 11, path=p2))),
        elements("col", (1,), 12, "m", (Cell(None, 12, deleted=True, local_deletion_time=NOW, path="k"),)),
    ]


async def apply_all(writer: BatchWriter, events: list[Any], rnd: random.Random, group: str) -> None:
    by_table: dict[str, list[Any]] = {}
    for e in events:
        by_table.setdefault(e.source.table, []).append(e)
    for name, evs in by_table.items():
        offset = 0
        while offset < len(evs):
            size = rnd.randint(1, 4)
            chunk = [Positioned(e, offset + i) for i, e in enumerate(evs[offset:offset + size])]
            offset += len(chunk)
            await writer.write(TABLES[name], chunk, Checkpoint(group, f"topic.{name}", 0, offset))


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_content_equals_model_for_any_order_and_batching(pool: Any, prefix: str, cleanup: None,
                                                               seed: int) -> None:
    rnd = random.Random(seed)
    events = workload()
    shuffled = events + [rnd.choice(events) for _ in range(8)]
    rnd.shuffle(shuffled)
    writer = BatchWriter(pool, schema_prefix=prefix, clock=Clock(NOW + 1))
    await apply_all(writer, shuffled, rnd, prefix)
    for table in ("kv", "t", "st", "r", "col"):
        expected = as_pg(table, select(table, events, now=NOW + 1))
        assert await content(pool, prefix, table) == expected, table


async def test_checkpoint_makes_reapplying_a_no_op(pool: Any, prefix: str, cleanup: None) -> None:
    writer = BatchWriter(pool, schema_prefix=prefix, clock=Clock(NOW + 1))
    batch = [Positioned(update("kv", (1,), 10, n=1), 0), Positioned(update("kv", (1,), 11, n=2), 1)]
    first = await writer.write(TABLES["kv"], batch, Checkpoint(prefix, "tp", 3, 2))
    # a later event, then the same batch again (a redelivery after a crash before the Kafka commit)
    later = [Positioned(delete_columns("kv", (1,), 12, "n"), 2)]
    await writer.write(TABLES["kv"], later, Checkpoint(prefix, "tp", 3, 3))
    stamp = "SELECT updated_at FROM cdcpipe_checkpoints WHERE group_id=$1 AND topic='tp' AND partition=3"
    written = await pool.fetchval(stamp, prefix)
    again = await writer.write(TABLES["kv"], batch, Checkpoint(prefix, "tp", 3, 2))
    assert (first.applied, again.applied, again.already_applied) == (2, 0, 2)
    # the very batch that wrote the checkpoint, retried (its commit went through but the reply was lost): the
    # checkpoint is not written again, so each committed checkpoint write is one batch applied
    repeat = await writer.write(TABLES["kv"], later, Checkpoint(prefix, "tp", 3, 3))
    assert (repeat.applied, repeat.already_applied) == (0, 1)
    assert await pool.fetchval(stamp, prefix) == written
    assert await content(pool, prefix, "kv") == []
    assert await pool.fetchval("SELECT next_offset FROM cdcpipe_checkpoints WHERE group_id=$1 AND topic='tp' "
                               "AND partition=3", prefix) == 3
    shadow = await pool.fetchval(f"SELECT count(*) FROM {ident(prefix + 'ks')}.{ident('kv$shadow')}")
    assert shadow == 1  # the tombstone is remembered


async def test_expiry_and_purge(pool: Any, prefix: str, cleanup: None) -> None:
    clock = Clock(NOW + 1)
    writer = BatchWriter(pool, schema_prefix=prefix, clock=clock, grace_s=100)
    await writer.write(TABLES["kv"], [Positioned(insert("kv", (1,), 10, ttl=60, v="a"), 0),
                                      Positioned(insert("kv", (2,), 10, ttl=1000, v="b"), 1),
                                      Positioned(update("kv", (2,), 11, ttl=30, n=7), 2)], None)
    assert [r["k"] for r in await content(pool, prefix, "kv")] == [1, 2]
    clock.now = NOW + 61
    assert await writer.expire(TABLES["kv"]) == 2
    assert await content(pool, prefix, "kv") == [{"k": 2, "v": "b", "n": None}]
    # a late older write does not resurrect the expired cell (rule 21)
    await writer.write(TABLES["kv"], [Positioned(update("kv", (1,), 9, v="old"), 3)], None)
    assert [r["k"] for r in await content(pool, prefix, "kv")] == [2]
    clock.now = NOW + 10_000
    assert await writer.purge(TABLES["kv"]) == 1


async def test_errors_are_classified(pool: Any, prefix: str, cleanup: None) -> None:
    writer = BatchWriter(pool, schema_prefix=prefix, clock=Clock(NOW + 1))
    from cdcpipe.schema_source import parse_cql_schema

    (texty,) = parse_cql_schema("CREATE TABLE ks.tx (k text PRIMARY KEY, v int) WITH id = "
                                "00000000-0000-0000-0000-0000000000aa;")
    from cdcpipe.model import ChangeEvent, ColumnChange, Op, Source

    src = Source("c", "dc", "n", "ks", "tx", texty.table_id, 1, 0)
    bad = ChangeEvent(b"\x01" * 16, Op.UPSERT, 1, src, ("a\x00b",), columns=(ColumnChange("v", (Cell(1, 1),)),))
    with pytest.raises(ApplyError) as info:
        await writer.write(texty, [Positioned(bad, 7)], Checkpoint(prefix, "tx", 0, 8))
    assert not info.value.retriable and info.value.sqlstate == "23502" and info.value.table == "ks.tx"
    (counters,) = parse_cql_schema("CREATE TABLE ks.c (k int PRIMARY KEY, n counter) WITH id = "
                                   "00000000-0000-0000-0000-0000000000ab;")
    with pytest.raises(UnsupportedTableError, match="counter"):
        await writer.prepare(counters)


_ALL_TYPES = (
    "CREATE TABLE ks.alltypes (k bigint, kt text, c1 date, c2 timeuuid, st text STATIC, "
    "ti tinyint, si smallint, i int, bi bigint, f float, d double, b boolean, u uuid, tu timeuuid, a ascii, t text, "
    "vc varchar, bl blob, cu 'org.example.OpaqueType', ts timestamp, dt date, tm time, "
    "du duration, tp tuple<int, text>, vf vector<float, 2>, vd vector<double, 2>, fm frozen<map<int, text>>, "
    "fl_ts frozen<list<timestamp>>, fl_dt frozen<list<date>>, fl_tm frozen<list<time>>, fs_b frozen<set<boolean>>, "
    "fl_u frozen<list<uuid>>, fl_bl frozen<list<blob>>, fl_ti frozen<list<tinyint>>, fl_f frozen<list<float>>, "
    "fl_d frozen<list<double>>, fl_bi frozen<list<bigint>>, fl_t frozen<list<text>>, "
    "s set<text>, m map<text, int>, l list<int>, PRIMARY KEY ((k, kt), c1, c2)) "
    "WITH id = 00000000-0000-0000-0000-0000000000f1;")


def _frozen(items: list[bytes]) -> bytes:
    return len(items).to_bytes(4, "big") + b"".join(len(x).to_bytes(4, "big") + x for x in items)


def _all_types_events(seed: int, rows: int) -> list[Any]:
    """INSERTs and UPDATEs of random rows of every type (serialized values only, as apply's decoder gives them):
    edge values, nulls, tombstones, expiring and expired cells, U+0000 in text."""
    import datetime
    import struct

    from cdcpipe.cql import CqlType
    from cdcpipe.model import ChangeEvent, ColumnChange, Liveness, Op, Source
    from cdcpipe.schema_source import parse_cql_schema
    from cdcpipe.typemap import serialize
    from tests.support.eventkit import raw_value

    (t,) = parse_cql_schema(_ALL_TYPES)
    rng = random.Random(seed)
    src = Source("c", "dc1", "n1", t.keyspace, t.table, t.table_id, 1, 0)
    keys = []
    for _ in range(rows // 3):
        pk = (rng.getrandbits(63) - (1 << 62), "p\u00e9" + str(rng.getrandbits(20)))
        for _ in range(rng.randint(1, 5)):
            day = rng.choice([datetime.date.min, datetime.date.max, datetime.date(1970, 1, 1),
                              datetime.date(1, 1, 1) + datetime.timedelta(days=rng.randrange(3_652_058))])
            keys.append((pk, (day, uuid.uuid1(clock_seq=rng.getrandbits(14)))))

    def value(col: Any) -> bytes:
        ct: CqlType = col.type
        if ct.name == "duration":
            from cassandra.util import Duration

            return serialize(ct, Duration(rng.randint(-5, 5), rng.randint(-5, 5), rng.getrandbits(40)))
        if ct.name == "tuple":
            return serialize(ct, (rng.randint(-9, 9), rng.choice(["x", "a\x00b", ""])))
        if ct.name == "vector":
            return b"".join(raw_value(rng, ct.params[0].name) for _ in range(ct.size))
        if ct.name == "map":
            return serialize(ct, {rng.randint(-5, 5): rng.choice(["v", "w\x00"]) for _ in range(rng.randint(0, 3))})
        if ct.name in ("list", "set"):
            return _frozen([raw_value(rng, ct.params[0].name) for _ in range(rng.randint(0, 4))])
        return raw_value(rng, ct.name)

    events: list[Any] = []
    ts = 1_000
    for n in range(rows * 3):
        pk, ck = keys[n % len(keys)] if n < len(keys) else rng.choice(keys)
        ts += 1
        changes = []
        for col in (*t.static, *t.regular):
            r = rng.random()
            if r < 0.15:
                continue
            static = col.kind == "static"
            if col.type.multi_cell:
                if col.type.name == "set":
                    cells = tuple(Cell(None, ts, path=e, raw=b"", raw_path=e.encode())
                                  for e in {rng.choice(["a", "b", "c\x00", "é"]) for _ in range(rng.randint(1, 3))})
                else:
                    cells = tuple(Cell(None, ts, path=p, raw=struct.pack(">i", rng.randint(-9, 9)), raw_path=(
                        p.encode() if isinstance(p, str) else p.bytes))
                        for p in ([rng.choice(["k", "k\x00"])] if col.type.name == "map" else [uuid.uuid1()]))
                changes.append(ColumnChange(col.name, cells, static=static))
            elif r < 0.2:
                changes.append(ColumnChange(col.name, (Cell(None, ts, deleted=True, local_deletion_time=NOW),),
                                            static=static))
            elif r < 0.3:  # expiring: still live, or already expired at the writer's clock
                ttl = rng.choice([1, 100_000])
                changes.append(ColumnChange(col.name, (Cell(None, ts, ttl, NOW - 1 + ttl, raw=value(col)),),
                                            static=static))
            else:
                changes.append(ColumnChange(col.name, (Cell(None, ts, raw=value(col)),), static=static))
        marker = Liveness(ts) if rng.random() < 0.7 else None
        if not changes and marker is None:
            marker = Liveness(ts)
        events.append(ChangeEvent(n.to_bytes(16, "big"), Op.UPSERT, ts, src, pk, ck, liveness=marker,
                                  columns=tuple(changes)))
    return events


@pytest.mark.parametrize("seed", [11, 12])
async def test_binary_copy_stores_what_typed_records_store(pool: Any, prefix: str, cleanup: None,
                                                           seed: int) -> None:
    """The same rows of every type through binary COPY and through asyncpg's COPY of typed records (the route
    binary replaced): every column's text, the inexact lists and the metadata are equal."""
    from cdcpipe.apply import pgbinary
    from cdcpipe.apply.tables import layout
    from cdcpipe.schema_source import parse_cql_schema

    (table,) = parse_cql_schema(_ALL_TYPES)
    lay = layout(table)
    assert pgbinary.record_writer(table, lay.columns) is not None
    events = _all_types_events(seed, 240)
    rnd = random.Random(seed)
    cuts = [0]
    while cuts[-1] < len(events):
        cuts.append(cuts[-1] + rnd.randint(1, 60))
    results = []
    for binary, schema_prefix in ((True, prefix + "b_"), (False, prefix + "r_")):
        writer = BatchWriter(pool, schema_prefix=schema_prefix, clock=Clock(NOW), binary=binary)
        for start, end in itertools.pairwise(cuts):
            await writer.write(table, [Positioned(e, start + i) for i, e in enumerate(events[start:end])], None)
        cols = ", ".join(f"{ident(c)}::text" for c in lay.record_columns)
        target = f"{ident(schema_prefix + table.keyspace)}.{ident(table.table)}"
        rows = await pool.fetch(f"SELECT {cols} FROM {target} ORDER BY _cdc_partition, _cdc_clustering")
        shadow = await pool.fetch(f"SELECT *, _cdc_meta::text FROM {target[:-1]}$shadow\" "
                                  "ORDER BY _cdc_partition, _cdc_clustering")
        results.append(([tuple(r) for r in rows], [tuple(r) for r in shadow]))
    (rows_b, shadow_b), (rows_r, shadow_r) = results
    assert len(rows_b) == len(rows_r) > 100
    for got, want in zip(rows_b, rows_r, strict=True):
        assert dict(zip(lay.record_columns, got, strict=True)) == dict(zip(lay.record_columns, want, strict=True))
    assert shadow_b == shadow_r
    # the edge cases were there: inexact values of each kind, infinities, NaN, NULLs
    at = lay.record_columns.index("_cdc_inexact")
    inexact = {name for r in rows_b if r[at] for name in r[at].strip("{}").split(",")}
    assert {"a", "t", "vc", "ts", "dt", "tm", "tp", "fm", "fl_ts", "fl_dt", "fl_tm", "fl_t", "s", "st"} <= inexact
    text = {v for r in rows_b for v in r}
    assert {"infinity", "-infinity", "NaN", None} <= text
