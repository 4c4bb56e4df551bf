"""Schema changes mid-stream, under a steady write load, on the shared stack: a column added (its values reach
PostgreSQL), a field added to a UDT, a column dropped, capture and apply killed (-9), a table truncated, the
dropped column added again (values written before the drop stay hidden, as Cassandra hides them), a new table
created with ``cdc = true``, then switched to ``cdc = false``, a table dropped.  Ends with PostgreSQL equal to
Cassandra (the fidelity comparison), every change in ``cdcpipe_schema_history``, the mirror tables of the switched-off
and the dropped table kept and marked, and every version of the table's events readable with its newest schema."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import fastavro
import pytest
from cassandra import ConsistencyLevel
from cassandra.query import SimpleStatement
from confluent_kafka import Consumer, TopicPartition

from cdcpipe.topics import table_topic
from tests.support.harness import (
    Pipeline,
    connect,
    dlq_messages,
    drop_keyspace,
    read_range,
    wait_for,
    wait_until_equal,
)
from tests.support.processes import metric_sum, unique
from tests.support.stack import StackEnv

pytestmark = pytest.mark.timeout(600)


SC = "sc (k int, c int, v text, w int, PRIMARY KEY (k, c))"
SC_UDT = "sc (k int, c int, v text, w int, home frozen<addr>, PRIMARY KEY (k, c))"


class Writer(threading.Thread):
    """Random inserts, updates and deletes over the columns the table has now (``columns``, changed by the
    test), at about ``rate`` statements a second, into ``tables``; a statement Cassandra refuses because the
    schema changed under it is counted and skipped (it wrote nothing)."""

    def __init__(self, session: Any, keyspace: str, rate: float, consistency: int = ConsistencyLevel.ONE) -> None:
        super().__init__(name="writer", daemon=True)
        self.session, self.keyspace, self.rate = session, keyspace, rate
        self.consistency = consistency
        self.lock = threading.Lock()
        self.columns = {"sc": ["v", "w"]}
        self.written = {"sc": 0}
        self.udt = ["street"]  # the fields of ``addr`` the writer sets (column ``home``)
        self.refused = 0
        self.stop = threading.Event()
        self.rng = random.Random(7)

    def set_columns(self, table: str, columns: list[str]) -> None:
        with self.lock:
            self.columns[table] = columns
            self.written.setdefault(table, 0)

    def remove(self, table: str) -> None:
        with self.lock:
            self.columns.pop(table, None)

    def statement(self, table: str, cols: list[str]) -> tuple[str, list[Any]]:
        rng = self.rng
        k, c = rng.randrange(40), rng.randrange(8)
        key = ["k", "c"] if table == "sc" else ["k"]
        keys = [k, c] if table == "sc" else [k]
        where = " AND ".join(f"{n} = %s" for n in key)

        def value(n: str) -> tuple[str, list[Any]]:  # (CQL, parameters): a UDT value as a literal
            if n == "home":
                fields = ", ".join(f"{f}: " + (f"'{f}-{rng.randrange(100)}'" if f == "street" else
                                               str(rng.randrange(100))) for f in self.udt)
                return "{" + fields + "}", []
            return "%s", [f"{n}-{rng.randrange(1000)}" if n == "v" else rng.randrange(1000)]
        roll = rng.random()
        if roll < 0.5 or not cols:
            names = [*key, *cols]
            values = [value(n) for n in cols]
            return (f"INSERT INTO {self.keyspace}.{table} ({', '.join(names)}) VALUES "
                    f"({', '.join(['%s'] * len(key) + [v[0] for v in values])})",
                    [*keys, *(p for v in values for p in v[1])])
        if roll < 0.85:
            n = rng.choice(cols)
            sql, params = value(n)
            return f"UPDATE {self.keyspace}.{table} SET {n} = {sql} WHERE {where}", [*params, *keys]
        if roll < 0.93:
            n = rng.choice(cols)
            return f"DELETE {n} FROM {self.keyspace}.{table} WHERE {where}", keys
        return f"DELETE FROM {self.keyspace}.{table} WHERE {where}", keys

    def run(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                table = self.rng.choice(sorted(self.columns))
                cols = list(self.columns[table])
            query, params = self.statement(table, cols)
            try:
                self.session.execute(SimpleStatement(query, consistency_level=self.consistency), params, timeout=30)
                with self.lock:
                    self.written[table] += 1
            except Exception:  # e.g. "Undefined column name" while the schema changes under the statement
                self.refused += 1
            time.sleep(1 / self.rate)


@contextlib.contextmanager
def running(stack_env: dict[str, str], tmp_path: Path, name: str, *tables: str, types: tuple[str, ...] = (),
            rf: int = 1, extra: dict[str, str] | None = None) -> Iterator[tuple[StackEnv, str, Any, Pipeline]]:
    """A keyspace of its own with ``types`` and ``tables`` (``CREATE TYPE``/``CREATE TABLE`` bodies after
    ``<keyspace>.``), capture and apply started on it; afterwards everything stopped and dropped."""
    stack = StackEnv(stack_env)
    keyspace = unique(name, 8)
    cluster, session = connect(stack)
    pipeline = Pipeline(stack, keyspace, tmp_path, extra=extra)
    try:
        session.execute(f"CREATE KEYSPACE {keyspace} WITH replication = {{'class': 'SimpleStrategy', "
                        f"'replication_factor': {rf}}}", timeout=60)
        for body in types:
            session.execute(f"CREATE TYPE {keyspace}.{body}", timeout=60)
        for body in tables:
            session.execute(f"CREATE TABLE {keyspace}.{body} WITH cdc = true", timeout=60)
        pipeline.start()
        yield stack, keyspace, session, pipeline
    finally:
        pipeline.stop()
        drop_keyspace(session, stack.dsn, keyspace)
        cluster.shutdown()


def wait_for_rows(stack: StackEnv, pipeline: Pipeline, target: str, more_than: int) -> None:
    """Until the mirrored table ``target`` exists and holds more than ``more_than`` rows."""
    def enough() -> bool:
        exists = asyncio.run(_pg(stack.dsn, "SELECT to_regclass($1) IS NOT NULL", target))
        return bool(exists) and asyncio.run(_pg(stack.dsn, f"SELECT count(*) FROM {target}")) > more_than
    wait_for(f"more than {more_than} rows in {target}", enough, 90, pipeline)


async def _pg(dsn: str, query: str, *args: Any) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


def test_schema_changes_mid_stream_under_load(stack_env: dict[str, str], tmp_path: Path) -> None:
    schema_sequence(stack_env, tmp_path)


def schema_sequence(stack_env: dict[str, str], tmp_path: Path, rf: int = 1) -> None:
    """The whole sequence (the module's docstring) on the cluster of ``stack_env``, keyspace at ``rf``."""
    with running(stack_env, tmp_path, "e2esc", SC_UDT, "gone (k int PRIMARY KEY, v text)",
                 types=("addr (street text)",), rf=rf) as (stack, keyspace, session, pipeline):
        writer = Writer(session, keyspace, rate=150, consistency=ConsistencyLevel.ALL if rf > 1 else
                        ConsistencyLevel.ONE)
        writer.set_columns("sc", ["v", "w", "home"])
        writer.set_columns("gone", ["v"])
        target = f'"{keyspace}"."sc"'
        try:
            writer.start()
            wait_for_rows(stack, pipeline, target, 0)

            # a column added: its values reach PostgreSQL
            session.execute(f"ALTER TABLE {keyspace}.sc ADD x int", timeout=60)
            added = time.monotonic()
            writer.set_columns("sc", ["v", "w", "x", "home"])
            wait_for("values of the added column in PostgreSQL", lambda: asyncio.run(_pg(
                stack.dsn, "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = $1 AND "
                "table_name = 'sc' AND column_name = 'x')", keyspace)) and asyncio.run(_pg(
                    stack.dsn, f"SELECT count(x) FROM {target}")) > 0, 60, pipeline)
            print(f"added column: values in PostgreSQL {time.monotonic() - added:.1f} s after the ALTER")

            # a field added to the UDT of a column
            session.execute(f"ALTER TYPE {keyspace}.addr ADD zip int", timeout=60)
            with writer.lock:
                writer.udt = ["street", "zip"]

            # a column dropped, under load; then capture and apply killed and restarted
            time.sleep(3)
            writer.set_columns("sc", ["v", "x", "home"])
            session.execute(f"ALTER TABLE {keyspace}.sc DROP w", timeout=60)
            time.sleep(4)
            for p in pipeline.procs:
                p.kill()
            time.sleep(1)
            for p in pipeline.procs:
                p.start()

            # the same column added again: what was written before the drop stays hidden
            time.sleep(2)
            session.execute(f"ALTER TABLE {keyspace}.sc ADD w int", timeout=60)
            writer.set_columns("sc", ["v", "w", "x", "home"])

            # a table created with cdc = true while everything runs, later switched off (its writes stopped first:
            # what is written after the switch is not captured, by design)
            time.sleep(3)
            session.execute(f"CREATE TABLE {keyspace}.sc2 (k int PRIMARY KEY, v text, n int) WITH cdc = true",
                            timeout=60)
            writer.set_columns("sc2", ["v", "n"])
            time.sleep(4)

            # that table truncated: what was written before goes, what is written after stays.  Writes pause around
            # the statement (Cassandra drops what reached the node before it, the mirror what was written before its
            # time: a write racing it may differ, docs/delivery.md)
            writer.remove("sc2")
            time.sleep(1)
            session.execute(f"TRUNCATE {keyspace}.sc2", timeout=120)
            time.sleep(1)
            writer.set_columns("sc2", ["v", "n"])
            time.sleep(4)
            writer.remove("sc2")
            time.sleep(1)
            session.execute(f"ALTER TABLE {keyspace}.sc2 WITH cdc = false", timeout=60)

            # a table dropped (its writes stopped first)
            writer.remove("gone")
            time.sleep(1)
            session.execute(f"DROP TABLE {keyspace}.gone", timeout=60)
            time.sleep(6)
        finally:
            writer.stop.set()
        writer.join(30)
        assert writer.written["sc2"] > 0 and writer.written["sc"] > 500, writer.written

        report = wait_until_equal(session, keyspace, stack.hosts, stack.dsn, pipeline.procs, 180)
        assert {t.table for t in report.tables} == {f"{keyspace}.sc", f"{keyspace}.sc2"}
        assert all(t.cassandra_rows > 0 for t in report.tables), [(t.table, t.cassandra_rows) for t in report.tables]
        comment = asyncio.run(_pg(stack.dsn, "SELECT col_description($1::regclass, "
                                  "(SELECT attnum FROM pg_attribute WHERE attrelid = $1::regclass AND attname = 'w'))",
                                  target))
        assert comment and "added again" in comment, comment
        print(f"schema changes: written {writer.written}, refused while the schema changed {writer.refused}")

        # every change recorded, from the node's view; the switched-off and the dropped table kept and marked
        expected = {("sc", "initial", ""), ("gone", "initial", ""), ("sc", "column_added", "x"),
                    ("sc", "udt_field_added", f"{keyspace}.addr.zip"), ("sc", "column_dropped", "w"),
                    ("sc", "column_added", "w"), ("sc2", "truncated", ""), ("sc2", "created", ""),
                    ("sc2", "cdc_off", ""), ("gone", "dropped", "")}

        def recorded() -> set[tuple[str, str, str]]:
            async def rows() -> list[Any]:
                conn = await asyncpg.connect(stack.dsn)
                try:
                    return list(await conn.fetch(
                        "SELECT table_name, change, subject FROM cdcpipe_schema_history WHERE table_name LIKE $1",
                        keyspace + ".%"))
                finally:
                    await conn.close()
            with contextlib.suppress(asyncpg.UndefinedTableError):
                return {(r[0].split(".", 1)[1], r[1], r[2]) for r in asyncio.run(rows())}
            return set()
        wait_for("every schema change in cdcpipe_schema_history", lambda: expected <= recorded(), 60, pipeline)
        assert "cdc = false" in asyncio.run(_pg(stack.dsn, "SELECT obj_description($1::regclass)",
                                                f'"{keyspace}"."sc2"'))
        assert "dropped in Cassandra" in asyncio.run(_pg(stack.dsn, "SELECT obj_description($1::regclass)",
                                                         f'"{keyspace}"."gone"'))
        assert asyncio.run(_pg(stack.dsn, f'SELECT count(*) FROM "{keyspace}"."gone"')) > 0  # kept, as it was
        capture_metrics = pipeline.captures[0].metrics()
        # counted since capture's restart: the column added again
        assert metric_sum(capture_metrics, "cdcpipe_schema_changes_total", table=f"{keyspace}.sc") >= 1
        last = asyncio.run(_pg(stack.dsn, "SELECT max(ordinal) FROM cdcpipe_schema_history WHERE table_name = $1",
                               f"{keyspace}.sc"))
        assert last >= 3 and metric_sum(capture_metrics, "cdcpipe_schema_version", table=f"{keyspace}.sc") == last
        assert metric_sum(pipeline.apply.metrics(), "cdcpipe_apply_truncations_total", table=f"{keyspace}.sc2") >= 1
        newest = asyncio.run(_pg(stack.dsn, "SELECT version FROM cdcpipe_schema_history WHERE table_name = $1 "
                                 "ORDER BY ordinal DESC LIMIT 1", f"{keyspace}.sc"))
        versions = read_with_newest_schema(stack.bootstrap, pipeline.prefix, keyspace, bytes.fromhex(newest))
        assert versions >= 4, versions


def read_with_newest_schema(bootstrap: str, prefix: str, keyspace: str, newest: bytes) -> int:
    """Read every event of ``sc`` in Kafka with the newest version of its schema (fingerprint ``newest``) as the
    reader schema, by Avro's resolution rules (plain fastavro); returns how many versions were read."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("e2e-versions", 8), "enable.auto.commit": False,
                  "isolation.level": "read_committed"})
    try:
        schemas: dict[bytes, dict[str, Any]] = {}
        topic = f"{prefix}.schemas"
        for p in c.list_topics(topic, timeout=10).topics[topic].partitions:
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            for value in read_range(c, topic, p, low, high):
                schema = json.loads(value)
                if schema.get("cdcpipe.keyspace") == keyspace and schema.get("cdcpipe.table") == "sc":
                    parsed = fastavro.parse_schema(schema)
                    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
                    fp = int(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"), 16).to_bytes(8, "little")
                    schemas[fp] = schema
        events = []
        topic = table_topic(prefix, keyspace, "sc")
        for p in c.list_topics(topic, timeout=10).topics[topic].partitions:
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            events += read_range(c, topic, p, low, high)
    finally:
        c.close()
    used = {e[2:10] for e in events}
    assert used <= schemas.keys() and newest in schemas
    reader = fastavro.parse_schema(schemas[newest])
    for e in events:
        record = fastavro.schemaless_reader(io.BytesIO(e[10:]), fastavro.parse_schema(schemas[e[2:10]]), reader)
        assert set(record["columns"]) >= {"v", "w", "x", "home"}
    return len(used)


def test_capture_restarted_decodes_segments_written_before_a_drop(stack_env: dict[str, str],
                                                                  tmp_path: Path) -> None:
    """Capture stopped while a column is written, then dropped: the segments in cdc_raw hold cells of a column the
    schema no longer has.  Restarted, capture decodes them with the dropped column's type (Cassandra's
    ``system_schema.dropped_columns``) and leaves those cells out, as Cassandra's reads do."""
    with running(stack_env, tmp_path, "e2esd", SC) as (stack, keyspace, session, pipeline):
        writer = Writer(session, keyspace, rate=150)
        try:
            writer.start()
            wait_for_rows(stack, pipeline, f'"{keyspace}"."sc"', 20)
            capture = pipeline.captures[0]
            capture.stop()
            written = writer.written["sc"]
            time.sleep(4)  # writes of v and w that only cdc_raw holds
            writer.set_columns("sc", ["v"])
            session.execute(f"ALTER TABLE {keyspace}.sc DROP w", timeout=60)
            time.sleep(2)
            assert writer.written["sc"] - written > 100
            capture.start()
            time.sleep(4)
        finally:
            writer.stop.set()
        writer.join(30)
        report = wait_until_equal(session, keyspace, stack.hosts, stack.dsn, pipeline.procs, 180)
        assert [t.cassandra_rows > 0 for t in report.tables] == [True]
        assert dlq_messages(stack.bootstrap, pipeline.prefix) == {f"{pipeline.prefix}.dlq": 0,
                                                                  f"{pipeline.prefix}.capture-dlq": 0}
