"""A column dropped in Cassandra and added again with another (compatible) type, while PostgreSQL kept the old
column: records writing it are dead-lettered as ``SCHEMA_MISMATCH`` with a message naming the column and both
types; the table's other records flow (issue 16, item 5).  After the PostgreSQL column is altered to the mapped
type, the next records writing it are applied."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid

import asyncpg
import pytest

from cdcpipe import avro
from cdcpipe.apply import pipeline
from cdcpipe.apply.tables import ident
from cdcpipe.config import Settings
from cdcpipe.cql import CqlType
from cdcpipe.runtime import Health
from cdcpipe.schema import DroppedColumn
from cdcpipe.schema_source import parse_cql_schema
from tests.support.applykit import TX, drop_run, encode_tx, event, run_settings, tx_topics, wait_for

pytestmark = pytest.mark.timeout(180)


async def test_readded_column_of_another_type_dead_letters_schema_mismatch(settings: Settings) -> None:
    prefix = f"ism{uuid.uuid4().hex[:8]}"
    topic, schemas = f"{prefix}.ks.tx", f"{prefix}.schemas"
    kafka = settings.kafka.client_config()
    kadmin, producer, v1 = tx_topics(kafka, topic, schemas)
    # v dropped (int) at 1000 and added again as varint: Cassandra allows it (varint reads int values)
    (readded,) = parse_cql_schema(f"CREATE TABLE ks.tx (k text PRIMARY KEY, v varint, n text) WITH id = {TX.table_id};")
    v2_table = dataclasses.replace(readded, dropped=(DroppedColumn("v", CqlType("int"), 1000),))
    v2 = avro.table_schema(v2_table)
    producer.produce(schemas, key=v2.fingerprint, value=v2.to_json())
    producer.produce(topic, key=b"a", value=encode_tx(v1, event(TX, "a", 10, insert=True, v=1, n="one")))
    producer.produce(topic, key=b"b", value=encode_tx(v1, event(TX, "b", 11, insert=True, v=2, n="two")))
    producer.produce(topic, key=b"a", value=encode_tx(v2, event(v2_table, "a", 2000, v=2**40)))  # not an integer
    producer.produce(topic, key=b"b", value=encode_tx(v2, event(v2_table, "b", 2001, n="still flows")))
    assert producer.flush(30) == 0
    cfg = run_settings(settings, prefix, max_wait_ms=50)
    health, stop = Health(), asyncio.Event()
    task = asyncio.create_task(pipeline.run(cfg, health, stop))
    pool = await asyncpg.create_pool(settings.require("postgres.dsn").get_secret_value(), min_size=1, max_size=2)
    target = f"{ident(prefix + '_ks')}.{ident('tx')}"
    try:
        async def letters() -> list[asyncpg.Record]:
            with contextlib.suppress(asyncpg.UndefinedTableError):
                return list(await pool.fetch("SELECT kafka_offset, error_type, message FROM cdcpipe_dlq "
                                             "WHERE group_id = $1", prefix))
            return []

        async def settled() -> bool:
            if task.done():
                task.result()
            with contextlib.suppress(asyncpg.UndefinedTableError):
                done = await pool.fetchval("SELECT next_offset FROM cdcpipe_checkpoints WHERE group_id = $1", prefix)
                return done == 4 and len(await letters()) == 1
            return False
        await wait_for(settled, 90)
        (letter,) = await letters()
        assert letter["kafka_offset"] == 2 and letter["error_type"] == "SCHEMA_MISMATCH"
        assert "column v" in letter["message"] and "integer" in letter["message"] and "varint" in letter["message"]
        assert "numeric" in letter["message"]
        rows = {r["k"]: (r["v"], r["n"]) for r in await pool.fetch(f"SELECT k, v, n FROM {target}")}
        # a's old v (written before the drop) is hidden, as in Cassandra; b's other column flowed
        assert rows == {"a": (None, "one"), "b": (None, "still flows")}

        # the operator alters the column to the mapped type (a restarted apply sees it); the next value flows
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0
        await pool.execute(f"ALTER TABLE {target} ALTER COLUMN v TYPE numeric")
        producer.produce(topic, key=b"b", value=encode_tx(v2, event(v2_table, "b", 2002, v=2**41)))
        assert producer.flush(30) == 0
        stop = asyncio.Event()
        task = asyncio.create_task(pipeline.run(cfg, Health(), stop))

        async def applied() -> bool:
            if task.done():
                task.result()
            return await pool.fetchval(f"SELECT v FROM {target} WHERE k = 'b'") == 2**41
        await wait_for(applied, 60)
        assert len(await letters()) == 1
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
        await drop_run(pool, prefix)
        await pool.execute("DELETE FROM cdcpipe_dlq WHERE group_id = $1", prefix)
        await pool.close()
        for f in kadmin.delete_topics([topic, schemas, f"{prefix}.dlq"]).values():
            with contextlib.suppress(Exception):
                f.result(30)
