"""Offsets apply needs that are gone stop their partition, never a reset (issue 13, item 5).

While apply is stopped, records it has not read are deleted (``delete_records``: what retention does, moving the
log's start offset, but at once and exactly where the test says), or the topic is deleted and recreated.  Started
again, apply stops that partition: not ready with a ``gap:<topic>/<partition>`` condition saying which offsets are
gone and to re-snapshot the table, the gauge ``cdcpipe_apply_gap_offsets``, checkpoint and content unchanged.
After the operator's recovery (the checkpoint moved to the first offset Kafka has, as after a re-snapshot) the rest
applies.  A position that falls out of range while the consumer runs stops the partition the same way."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from prometheus_client import REGISTRY

from cdcpipe import avro
from cdcpipe.apply import pipeline
from cdcpipe.apply.consumer import EventConsumer
from cdcpipe.apply.tables import ident
from cdcpipe.config import Settings
from cdcpipe.errors import OffsetGapError
from cdcpipe.runtime import Health
from tests.support.applykit import TX, drop_run, encode_tx, event, run_settings

pytestmark = pytest.mark.timeout(240)


class Run:
    """Apply in the test's event loop: :meth:`start`, :meth:`stop`."""

    def __init__(self, cfg: Settings) -> None:
        self.cfg = cfg
        self.health = Health()
        self.stop_event = asyncio.Event()
        self.task: asyncio.Task[int] | None = None

    def start(self) -> Run:
        self.health = Health()
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(pipeline.run(self.cfg, self.health, self.stop_event))
        return self

    async def stop(self) -> None:
        self.stop_event.set()
        if self.task is not None:
            assert await asyncio.wait_for(self.task, 15) == 0
            self.task = None

    def alive(self) -> None:
        if self.task is not None and self.task.done():
            self.task.result()


@pytest.fixture
async def pg(settings: Settings) -> AsyncIterator[Any]:
    pool = await asyncpg.create_pool(settings.require("postgres.dsn").get_secret_value(), min_size=1, max_size=2)
    yield pool
    await pool.close()


def _create(admin: AdminClient, topic: str) -> None:
    deadline = time.monotonic() + 60
    while True:  # a topic just deleted may still be marked for deletion
        try:
            admin.create_topics([NewTopic(topic, 1, 1, config={"retention.ms": "600000"})])[topic].result(30)
            return
        except Exception:
            assert time.monotonic() < deadline, f"{topic} not created"
            time.sleep(0.5)


async def until(what: str, predicate: Any, run: Run | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if run is not None:
            run.alive()
        assert time.monotonic() < deadline, f"{what}: not reached; health {run.health.report() if run else ''}"
        await asyncio.sleep(0.3)


async def test_gone_offsets_stop_the_partition(settings: Settings, pg: Any) -> None:
    prefix = f"itg{uuid.uuid4().hex[:8]}"
    topic, schemas_topic = f"{prefix}.ks.tx", f"{prefix}.schemas"
    kafka = settings.kafka.client_config()
    admin = AdminClient(kafka)
    _create(admin, topic)
    _create(admin, schemas_topic)
    schema = avro.table_schema(TX)
    producer = Producer(kafka)
    producer.produce(schemas_topic, key=schema.fingerprint, value=schema.to_json())
    expected: dict[str, tuple[int, str]] = {}
    ts = iter(range(10, 10**6))

    def send(keys: list[str], record: bool = True) -> None:
        failed: list[Any] = []
        for i, key in enumerate(keys):
            v = next(ts)
            producer.produce(topic, key=key.encode(), value=encode_tx(
                schema, event(TX, key, v, insert=True, v=v, n=f"n{i}")),
                on_delivery=lambda err, msg: failed.append(err) if err is not None else None)
            if record:
                expected[key] = (v, f"n{i}")
        assert producer.flush(30) == 0 and not failed, failed

    cfg = run_settings(settings, prefix, max_wait_ms=50)
    target = f"{ident(prefix + '_ks')}.{ident('tx')}"

    async def stored() -> int | None:
        try:
            found = await pg.fetchval("SELECT next_offset FROM cdcpipe_checkpoints WHERE group_id = $1 "
                                      "AND topic = $2", prefix, topic)
        except asyncpg.UndefinedTableError:
            return None
        return None if found is None else int(found)

    async def content() -> dict[str, tuple[int, str]]:
        return {r["k"]: (r["v"], r["n"]) for r in await pg.fetch(f"SELECT k, v, n FROM {target}")}

    def gap(run: Run) -> str:
        return run.health.report()[1].get(f"gap:{topic}/0", "ok")

    run = Run(cfg).start()
    try:
        send([f"a{i}" for i in range(10)])

        async def applied(n: int) -> bool:
            return await stored() == n
        await until("first events", lambda: applied(10), run, timeout=90)
        await run.stop()

        # 1. while apply is stopped: 10 more events, and offsets 10..14 deleted (the log now starts at 15)
        send([f"b{i}" for i in range(5)], record=False)
        send([f"c{i}" for i in range(5)])
        admin.delete_records([TopicPartition(topic, 0, 15)])[TopicPartition(topic, 0, 15)].result(30)
        run.start()

        async def stopped() -> bool:
            return gap(run) != "ok"
        await until("gap reported", stopped, run)
        reason = gap(run)
        print(f"health with offsets gone: {reason}")
        assert f"offsets 10–14 of {topic}/0 are gone" in reason and "re-snapshot table ks.tx" in reason
        assert not run.health.report()[0]
        assert REGISTRY.get_sample_value("cdcpipe_apply_gap_offsets", {"topic": topic, "partition": "0"}) == 5
        await asyncio.sleep(3)  # the partition stays stopped: no reset to the earliest offset
        assert await stored() == 10 and await content() == {k: v for k, v in expected.items() if k[0] == "a"}
        await run.stop()

        # recovery: offsets 10..14 are accounted for (a re-snapshot would bring b0..b4); the checkpoint moves on
        await pg.execute("UPDATE cdcpipe_checkpoints SET next_offset = 15 WHERE group_id = $1 AND topic = $2",
                         prefix, topic)
        run.start()
        await until("applied after recovery", lambda: applied(20), run)
        assert await content() == expected and gap(run) == "ok"
        await run.stop()

        # 2. while apply is stopped: the topic is deleted and recreated, with 3 events (offsets 0..2 < 20)
        admin.delete_topics([topic])[topic].result(30)
        _create(admin, topic)
        producer = Producer(kafka)  # not one that knows the old topic's metadata
        send([f"d{i}" for i in range(3)])
        run.start()
        await until("recreated topic reported", stopped, run)
        reason = gap(run)
        print(f"health with the topic recreated: {reason}")
        assert f"offsets from 20 on of {topic}/0 are gone" in reason and "deleted and recreated" in reason
        assert "re-snapshot table ks.tx" in reason
        assert REGISTRY.get_sample_value("cdcpipe_apply_gap_offsets", {"topic": topic, "partition": "0"}) == -1
        await asyncio.sleep(3)
        assert await stored() == 20 and await content() == {k: v for k, v in expected.items() if k[0] != "d"}
        await run.stop()

        # 3. the same without a recorded topic id (a checkpoint of an earlier version): the partition ends below it
        await pg.execute("UPDATE cdcpipe_checkpoints SET topic_id = NULL WHERE group_id = $1", prefix)
        run.start()
        await until("truncated partition reported", stopped, run)
        reason = gap(run)
        print(f"health with the partition ending below the checkpoint: {reason}")
        assert f"offsets from 20 on of {topic}/0 are gone" in reason and "ends at 3, below the checkpoint" in reason
        await asyncio.sleep(2)
        assert await stored() == 20
        await run.stop()

        # recovery: the new topic is read from its start
        await pg.execute("UPDATE cdcpipe_checkpoints SET next_offset = 0, topic_id = NULL WHERE group_id = $1 "
                         "AND topic = $2", prefix, topic)
        run.start()
        await until("applied after the topic was recreated", lambda: applied(3), run)
        assert await content() == expected and gap(run) == "ok"
        await run.stop()
    finally:
        if run.task is not None:
            run.stop_event.set()
            await asyncio.wait_for(run.task, 15)
        await drop_run(pg, prefix)
        for f in admin.delete_topics([topic, schemas_topic, f"{prefix}.dlq"]).values():
            with contextlib.suppress(Exception):  # not created
                f.result(30)


def test_position_out_of_range_while_running_stops_the_partition(settings: Settings) -> None:
    """The consumer's position falls below the log start while it runs (retention outran it): the partition is
    paused and reported, never reset to the earliest offset."""
    prefix = f"itg{uuid.uuid4().hex[:8]}"
    topic = f"{prefix}.ks.tx"
    kafka = settings.kafka.client_config()
    admin = AdminClient(kafka)
    _create(admin, topic)
    producer = Producer(kafka)
    for i in range(5):
        producer.produce(topic, key=b"k", value=b"%d" % i)
    assert producer.flush(30) == 0
    gaps: list[OffsetGapError] = []
    lock = threading.Lock()

    def on_gap(g: OffsetGapError) -> None:
        with lock:
            gaps.append(g)

    consumer = EventConsumer(run_settings(settings, prefix), lambda t, ps: {}, on_gap=on_gap)
    try:
        got: list[int] = []
        deadline = time.monotonic() + 30
        while len(got) < 5:
            assert time.monotonic() < deadline, got
            got += [r.offset for r in consumer.poll(100, 0.3)]
        tp = TopicPartition(topic, 0)
        consumer._consumer.pause([tp])  # the consumer falls behind: nothing fetched while 10 more arrive
        for i in range(10):
            producer.produce(topic, key=b"k", value=b"%d" % i)
        assert producer.flush(30) == 0
        admin.delete_records([TopicPartition(topic, 0, 12)])[TopicPartition(topic, 0, 12)].result(30)
        consumer._consumer.resume([tp])
        deadline = time.monotonic() + 30
        after: list[int] = []
        while not gaps:
            assert time.monotonic() < deadline, "no gap reported"
            after += [r.offset for r in consumer.poll(100, 0.3)]
        for _ in range(5):
            after += [r.offset for r in consumer.poll(100, 0.3)]
        print(f"gap: {gaps[0]}")
        assert after == [], after  # nothing from offset 12 on was handed over: no reset
        assert (gaps[0].topic, gaps[0].partition, gaps[0].first, gaps[0].last) == (topic, 0, 5, 11)
    finally:
        consumer.close()
        for f in admin.delete_topics([topic]).values():
            with contextlib.suppress(Exception):  # already gone
                f.result(30)
