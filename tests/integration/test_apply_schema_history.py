"""Schema changes on apply's side, from records written by hand to ``<prefix>.schema-changes`` (issue 16):
every record lands in ``cdcpipe_schema_history``; a table dropped and created again under its name loses the old
table's rows (its creation time as a floor) and keeps the new one's; ``apply.on_table_drop = drop`` drops the
mirror and does not write the dropped table's late events; ``apply.on_column_drop = drop`` drops a column and a
re-added column comes back holding only what was written since."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from typing import Any

import asyncpg
import pytest
from confluent_kafka.admin import NewTopic
from prometheus_client import REGISTRY

from cdcpipe import avro
from cdcpipe.apply import pipeline
from cdcpipe.apply.tables import ident
from cdcpipe.config import Settings
from cdcpipe.cql import CqlType
from cdcpipe.runtime import Health
from cdcpipe.schema import DroppedColumn
from cdcpipe.schema_changes import SchemaChange, SchemaChangeRecord, shape_of
from cdcpipe.schema_source import parse_cql_schema
from tests.support.applykit import TX, drop_run, encode_tx, event, run_settings, tx_topics, wait_for

pytestmark = pytest.mark.timeout(180)


def change(table: Any, kind: str, seen_ms: int, ordinal: int, created_us: int | None = None) -> bytes:
    shape = None if kind == "dropped" else shape_of(table, created_us)
    return SchemaChangeRecord("ks.tx", str(table.table_id), "n1", "", ordinal, (SchemaChange(kind),), shape,
                              seen_ms).to_value()


async def run(settings: Settings, body: Any, **apply: Any) -> None:
    prefix = f"ish{uuid.uuid4().hex[:8]}"
    topic, schemas, history = f"{prefix}.ks.tx", f"{prefix}.schemas", f"{prefix}.schema-changes"
    kafka = settings.kafka.client_config()
    kadmin, producer, v1 = tx_topics(kafka, topic, schemas)
    for f in kadmin.create_topics([NewTopic(history, 1, 1)]).values():
        f.result(30)
    cfg = run_settings(settings, prefix, max_wait_ms=50)
    cfg = cfg.model_copy(update={"apply": cfg.apply.model_copy(update={"purge_interval_s": 0.3, **apply})})
    pool = await asyncpg.create_pool(settings.require("postgres.dsn").get_secret_value(), min_size=1, max_size=2)
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(cfg, Health(), stop))
    target = f"{ident(prefix + '_ks')}.{ident('tx')}"

    async def rows() -> dict[str, tuple[Any, ...]] | None:
        if task.done():
            task.result()
        if not await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", target):
            return None
        return {r[0]: tuple(r[1:]) for r in await pool.fetch(f"SELECT * FROM {target}")}
    try:
        await body(producer, topic, schemas, history, v1, pool, target, rows, prefix)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
        await drop_run(pool, prefix)
        await pool.execute("DELETE FROM cdcpipe_schema_history WHERE table_name = 'ks.tx' AND node = 'n1' "
                           "AND version = ''")
        await pool.close()
        for f in kadmin.delete_topics([topic, schemas, history, f"{prefix}.dlq"]).values():
            with contextlib.suppress(Exception):
                f.result(30)


async def test_table_created_again_loses_the_old_rows(settings: Settings) -> None:
    async def body(producer: Any, topic: str, schemas: str, history: str, v1: Any, pool: Any, target: str,
                   rows: Any, prefix: str) -> None:
        producer.produce(history, value=change(TX, "initial", 1000, 1))
        producer.produce(topic, key=b"a", value=encode_tx(v1, event(TX, "a", 10, insert=True, v=1, n="old")))
        producer.produce(topic, key=b"b", value=encode_tx(v1, event(TX, "b", 11, insert=True, v=2, n="old")))
        assert producer.flush(30) == 0

        async def two() -> bool:
            return len(await rows() or {}) == 2
        await wait_for(two)
        again = dataclasses.replace(TX, table_id=uuid.UUID(int=77))
        v2 = avro.table_schema(again)
        producer.produce(schemas, key=v2.fingerprint, value=v2.to_json())
        producer.produce(history, value=change(TX, "dropped", 2000, 2))
        producer.produce(history, value=SchemaChangeRecord(
            "ks.tx", str(again.table_id), "n1", "", 3, (SchemaChange("created"),), shape_of(again, 5000),
            3000).to_value())
        producer.produce(topic, key=b"c", value=encode_tx(v2, event(again, "c", 6000, insert=True, v=3, n="new")))
        assert producer.flush(30) == 0

        async def only_new() -> bool:
            return set(await rows() or {}) == {"c"}
        await wait_for(only_new, 60)
        comment = await pool.fetchval("SELECT obj_description($1::regclass)", target)
        assert "created again" in comment
        kinds = {r[0] for r in await pool.fetch(
            "SELECT change FROM cdcpipe_schema_history WHERE table_name = 'ks.tx' AND node = 'n1' AND "
            "seen_at >= to_timestamp(0) AND seen_at < to_timestamp(4)")}
        assert kinds == {"initial", "dropped", "created"}
    await run(settings, body)


async def test_drop_settings_drop_columns_and_tables(settings: Settings) -> None:
    async def body(producer: Any, topic: str, schemas: str, history: str, v1: Any, pool: Any, target: str,
                   rows: Any, prefix: str) -> None:
        producer.produce(topic, key=b"a", value=encode_tx(v1, event(TX, "a", 10, insert=True, v=1, n="old")))
        producer.produce(topic, key=b"b", value=encode_tx(v1, event(TX, "b", 11, insert=True, v=2, n="old")))
        assert producer.flush(30) == 0

        async def columns() -> list[str]:
            return [r[0] for r in await pool.fetch(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT "
                "attisdropped AND attname NOT LIKE '\\_cdc%' ORDER BY attnum", target)]

        async def two() -> bool:
            return len(await rows() or {}) == 2
        await wait_for(two)
        assert await columns() == ["k", "v", "n"]
        # n dropped in Cassandra at 100 µs: the PostgreSQL column goes
        (without,) = parse_cql_schema(f"CREATE TABLE ks.tx (k text PRIMARY KEY, v int) WITH id = {TX.table_id};")
        drop_n = (DroppedColumn("n", CqlType("text"), 100),)
        v2_table = dataclasses.replace(without, dropped=drop_n)
        v2 = avro.table_schema(v2_table)
        producer.produce(schemas, key=v2.fingerprint, value=v2.to_json())
        producer.produce(topic, key=b"a", value=encode_tx(v2, event(v2_table, "a", 200, v=5)))
        assert producer.flush(30) == 0

        async def dropped_n() -> bool:
            return "n" not in await columns() and await pool.fetchval(f"SELECT v FROM {target} WHERE k = 'a'") == 5
        await wait_for(dropped_n)
        # n added again: back, with only what was written since
        v3_table = dataclasses.replace(TX, dropped=drop_n)
        v3 = avro.table_schema(v3_table)
        producer.produce(schemas, key=v3.fingerprint, value=v3.to_json())
        producer.produce(topic, key=b"b", value=encode_tx(v3, event(v3_table, "b", 300, n="again")))
        assert producer.flush(30) == 0

        async def readded() -> bool:
            return "n" in await columns() and await pool.fetchval(f"SELECT n FROM {target} WHERE k = 'b'") == "again"
        await wait_for(readded)
        assert await pool.fetchval(f"SELECT n FROM {target} WHERE k = 'a'") is None  # written before the drop

        # the table dropped: its mirror goes, a late event of it is not written (and does not recreate it)
        producer.produce(history, value=change(TX, "dropped", 2000, 2))
        assert producer.flush(30) == 0

        async def gone() -> bool:
            return await rows() is None
        await wait_for(gone)
        producer.produce(topic, key=b"z", value=encode_tx(v3, event(v3_table, "z", 400, insert=True, v=9)))
        assert producer.flush(30) == 0

        async def skipped() -> bool:
            done = await pool.fetchval("SELECT next_offset FROM cdcpipe_checkpoints WHERE group_id = $1", prefix)
            return done == 5
        await wait_for(skipped)
        assert await rows() is None
        assert (REGISTRY.get_sample_value("cdcpipe_apply_dropped_table_events_total", {"table": "ks.tx"}) or 0) >= 1
    await run(settings, body, on_table_drop="drop", on_column_drop="drop")
