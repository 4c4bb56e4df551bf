"""Apply's schema reader against the real Kafka: it reads ``<prefix>.schemas`` to the end (past commit markers and
only as far as ``read_committed`` allows), says when it could not, and an event whose schema it cannot read yet is
retried until it can, never dead-lettered; only a fingerprint absent from the whole topic makes a dead letter."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from cdcpipe import avro
from cdcpipe.apply import pipeline
from cdcpipe.apply.decode import SchemaReader
from cdcpipe.apply.tables import ident
from cdcpipe.config import Settings
from cdcpipe.errors import KafkaConsumeError
from cdcpipe.runtime import Health
from cdcpipe.schema import TableSchema
from cdcpipe.schema_source import parse_cql_schema
from tests.support.applykit import TX, drop_run, encode_tx, event, next_offset, run_settings, wait_for

pytestmark = pytest.mark.timeout(120)


def tables(n: int) -> list[TableSchema]:
    return [parse_cql_schema(f"CREATE TABLE ks.t{i} (k text PRIMARY KEY, v int) "
                             f"WITH id = 00000000-0000-0000-0000-{i:012x};")[0] for i in range(n)]


def tx_producer(kafka: dict[str, Any]) -> Producer:
    p = Producer({**kafka, "transactional.id": f"it-schemas-{uuid.uuid4().hex[:10]}"})
    p.init_transactions(30)
    return p


def new_topic(kafka: dict[str, Any], partitions: int = 1) -> str:
    topic = f"it{uuid.uuid4().hex[:8]}.schemas"
    admin = AdminClient(kafka)
    for f in admin.create_topics([NewTopic(topic, partitions, 1, config={"cleanup.policy": "compact"})]).values():
        f.result(30)
    return topic


def test_catch_up_reads_to_the_end_past_commit_markers(settings: Settings) -> None:
    kafka = settings.kafka.client_config()
    topic = new_topic(kafka, partitions=2)
    schemas = [avro.table_schema(t) for t in tables(30)]
    p = tx_producer(kafka)
    for i in range(0, 30, 10):  # three transactions: records and commit markers interleaved
        p.begin_transaction()
        for s in schemas[i:i + 10]:
            p.produce(topic, key=s.fingerprint, value=s.to_json())
        p.commit_transaction(30)
    r = SchemaReader.open(kafka, topic)
    assert r.catch_up(20) is True
    assert all(r.lookup(s.fingerprint) is not None for s in schemas)
    assert r.catch_up(20) is True  # nothing new: at the end at once


def test_catch_up_reads_schemas_of_open_transactions(settings: Settings) -> None:
    """A schema committed behind another producer's open transaction would be out of reach of a read_committed
    reader until that transaction ends; the schema reader reads uncommitted records (a schema is content-addressed:
    an extra one is harmless), so it reaches the end at once."""
    kafka = settings.kafka.client_config()
    topic = new_topic(kafka)
    first, second = (avro.table_schema(t) for t in tables(2))
    a, b = tx_producer(kafka), tx_producer(kafka)
    a.begin_transaction()
    a.produce(topic, key=first.fingerprint, value=first.to_json())
    a.flush(30)
    b.begin_transaction()
    b.produce(topic, key=second.fingerprint, value=second.to_json())
    b.commit_transaction(30)
    r = SchemaReader.open(kafka, topic)
    assert r.catch_up(20) is True
    assert r.lookup(first.fingerprint) is not None and r.lookup(second.fingerprint) is not None
    a.abort_transaction(30)


def test_catch_up_without_a_broker_is_retriable() -> None:
    r = SchemaReader.open({"bootstrap.servers": "127.0.0.1:1"}, "nowhere.schemas")
    started = time.monotonic()
    with pytest.raises(KafkaConsumeError) as caught:
        r.catch_up(2)
    assert caught.value.retriable and caught.value.topic == "nowhere.schemas"
    assert time.monotonic() - started < 10


async def test_event_whose_schema_is_not_readable_yet_is_applied_not_dead_lettered(settings: Settings) -> None:
    """The schemas topic cannot be read to its end yet (here: it does not exist yet; in the field: the broker is
    restarting).  Apply retries until it can, then applies the event; only an event whose fingerprint is nowhere
    in the topic read to its end becomes a dead letter."""
    prefix = f"it{uuid.uuid4().hex[:8]}"
    topic, schemas_topic = f"{prefix}.ks.tx", f"{prefix}.schemas"
    kafka = settings.kafka.client_config()
    admin = AdminClient(kafka)
    for f in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        f.result(30)
    schema = avro.table_schema(TX)
    (stranger,) = parse_cql_schema("CREATE TABLE ks.tx (k text PRIMARY KEY, v int, n text, extra int) "
                                   "WITH id = 00000000-0000-0000-0000-0000000000cc;")
    producer = Producer(kafka)
    producer.produce(topic, key=b"k", value=encode_tx(schema, event(TX, "late", 10, insert=True, v=1)))
    assert producer.flush(30) == 0
    cfg = run_settings(settings, prefix, max_wait_ms=100)
    pool = await asyncpg.create_pool(settings.require("postgres.dsn").get_secret_value(), min_size=1, max_size=2)
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(cfg, Health(), stop))
    try:
        await asyncio.sleep(8)  # apply is up and has read the event, but found no schemas topic to read
        assert await next_offset(pool, prefix, task) is None
        assert await pool.fetchval("SELECT count(*) FROM cdcpipe_dlq WHERE group_id = $1", prefix) == 0
        for f in admin.create_topics([NewTopic(schemas_topic, 1, 1)]).values():
            f.result(30)
        producer.produce(schemas_topic, key=schema.fingerprint, value=schema.to_json())
        unknown = avro.table_schema(stranger)  # never published
        producer.produce(topic, key=b"k", value=avro.encode(event(TX, "lost", 10, insert=True, v=2), unknown,
                                                            (b"lost",)))
        assert producer.flush(30) == 0

        async def done() -> bool:
            return await next_offset(pool, prefix, task) == 2
        await wait_for(done, timeout=90)
        rows = await pool.fetch(f"SELECT k, v FROM {ident(prefix + '_ks')}.{ident('tx')} ORDER BY k")
        assert [tuple(r) for r in rows] == [("late", 1)]
        dlq = await pool.fetch("SELECT kafka_offset, error_type, message FROM cdcpipe_dlq WHERE group_id = $1",
                               prefix)
        assert [(r["kafka_offset"], r["error_type"]) for r in dlq] == [(1, "EventDecodeError")]
        assert "read to its end" in dlq[0]["message"]
        stop.set()
        assert await asyncio.wait_for(task, 10) == 0
    finally:
        stop.set()
        if not task.done():
            task.cancel()
        await drop_run(pool, prefix)
        await pool.close()
