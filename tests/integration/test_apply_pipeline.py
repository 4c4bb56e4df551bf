"""The apply pipeline end to end against the real Kafka and PostgreSQL: Avro events produced to
``<prefix>.<ks>.<table>`` land in PostgreSQL merged, poison events go to the dead-letter topic and table with their
coordinates while their batch-mates apply, the checkpoint row follows, and SIGTERM-style stop exits 0 quickly."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import pytest
from confluent_kafka import Consumer

from cdcpipe.apply import pipeline
from cdcpipe.apply.tables import ident
from cdcpipe.config import Settings
from cdcpipe.runtime import Health
from tests.support.applykit import TX, drop_run, encode_tx, event, next_offset, run_settings, tx_topics, wait_for

pytestmark = pytest.mark.timeout(120)


async def test_pipeline_applies_and_dead_letters(settings: Settings) -> None:
    prefix = f"it{uuid.uuid4().hex[:8]}"
    topic, schemas_topic, dlq_topic = f"{prefix}.ks.tx", f"{prefix}.schemas", f"{prefix}.dlq"
    kafka = settings.kafka.client_config()
    # the dead-letter topic is not created here: apply creates it when it starts
    _, producer, schema = tx_topics(kafka, topic, schemas_topic)
    events = [event(TX, "a", 10, insert=True, v=1, n="x"), event(TX, "b", 10, insert=True, v=2),
              event(TX, "a", 12, v=5), event(TX, "a", 11, v=4, n=None),  # older: v stays 5, n deleted at 11
              event(TX, "bad\x00key", 10, insert=True, v=9),               # PostgreSQL rejects this key
              event(TX, "b", 10, insert=True, v=2)]                        # a replica duplicate
    payloads = [encode_tx(schema, e) for e in events]
    payloads.insert(2, b"not an avro event")                               # undecodable
    for p in payloads:
        producer.produce(topic, key=b"k", value=p)
    assert producer.flush(30) == 0

    cfg = run_settings(settings, prefix, max_wait_ms=100)
    pool = await asyncpg.create_pool(settings.require("postgres.dsn").get_secret_value(), min_size=1, max_size=2)
    health = Health()
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(cfg, health, stop))
    target = f"{ident(prefix + '_ks')}.{ident('tx')}"
    try:
        async def done() -> bool:
            return await next_offset(pool, prefix, task) == len(payloads)
        await wait_for(done)
        rows = await pool.fetch(f"SELECT k, v, n FROM {target} ORDER BY k")
        assert [tuple(r) for r in rows] == [("a", 5, None), ("b", 2, None)]
        dlq = await pool.fetch("SELECT topic, partition, kafka_offset, error_type, value FROM cdcpipe_dlq "
                               "WHERE group_id = $1 ORDER BY kafka_offset", prefix)
        assert [(r["topic"], r["partition"], r["kafka_offset"]) for r in dlq] == [(topic, 0, 2), (topic, 0, 5)]
        assert dlq[0]["error_type"] == "EventDecodeError" and dlq[1]["error_type"] == "ApplyError"
        assert bytes(dlq[0]["value"]) == b"not an avro event"
        assert health.report()[0]
        stop.set()
        started = time.monotonic()
        assert await asyncio.wait_for(task, 10) == 0
        assert time.monotonic() - started < 10
    finally:
        stop.set()
        if not task.done():
            task.cancel()
        await drop_run(pool, prefix)
        await pool.close()
    reader = Consumer({**kafka, "group.id": prefix + "-check", "auto.offset.reset": "earliest"})
    reader.subscribe([dlq_topic])
    letters = []
    deadline = time.monotonic() + 20
    while len(letters) < 2 and time.monotonic() < deadline:
        m = reader.poll(0.5)
        if m is not None and m.error() is None:
            letters.append(dict(m.headers() or []))
    reader.close()
    assert [h["offset"] for h in letters] == [b"2", b"5"]
    assert letters[1]["table"] == b"ks.tx" and letters[1]["topic"] == topic.encode()
    assert letters[1]["partition"] == b"0" and letters[1]["retry_count"] == b"0"


async def test_batch_closes_once_caught_up(settings: Settings) -> None:
    """With ``max_wait_ms`` at 60 s and ``max_rows`` far away, each event still applies within seconds: a batch
    closes as soon as the consumer has read everything there was (waiting would only add latency)."""
    prefix = f"it{uuid.uuid4().hex[:8]}"
    topic, schemas_topic = f"{prefix}.ks.tx", f"{prefix}.schemas"
    kafka = settings.kafka.client_config()
    _, producer, schema = tx_topics(kafka, topic, schemas_topic)
    assert producer.flush(30) == 0
    cfg = run_settings(settings, prefix, max_wait_ms=60_000, max_rows=5000)
    pool = await asyncpg.create_pool(settings.require("postgres.dsn").get_secret_value(), min_size=1, max_size=2)
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(cfg, Health(), stop))
    try:
        async def applied(n: int) -> bool:
            return await next_offset(pool, prefix, task) == n
        for i in range(3):
            producer.produce(topic, key=b"k", value=encode_tx(schema, event(TX, f"k{i}", 10, insert=True, v=i)))
            assert producer.flush(30) == 0
            sent = time.monotonic()
            await wait_for(lambda n=i + 1: applied(n), timeout=45 if i == 0 else 15)  # the first one: start-up
            print(f"event {i} applied {time.monotonic() - sent:.2f} s after its produce")
        stop.set()
        assert await asyncio.wait_for(task, 10) == 0
    finally:
        stop.set()
        if not task.done():
            task.cancel()
        await drop_run(pool, prefix)
        await pool.close()
