"""Apply's Kafka consumer against the real broker: its rebalance callback waits for PostgreSQL's checkpoints,
which the pipeline loads on its event loop, so nothing the event loop calls on the consumer may block while a
rebalance callback runs (it did: an offset commit from the loop waited for the callback, which waited for the loop
— apply stalled for 60 s and exited, seen in test_kafka_restart)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from cdcpipe.apply.consumer import EventConsumer
from cdcpipe.config import Settings
from tests.support.applykit import run_settings

pytestmark = pytest.mark.timeout(120)


def test_commit_does_not_wait_for_a_rebalance_callback(settings: Settings) -> None:
    prefix = f"it{uuid.uuid4().hex[:8]}"
    topic = f"{prefix}.ks.tx"
    kafka = settings.kafka.client_config()
    admin = AdminClient(kafka)
    for f in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        f.result(30)
    producer = Producer(kafka)
    for i in range(5):
        producer.produce(topic, key=b"k", value=b"%d" % i)
    assert producer.flush(30) == 0
    in_callback, committed = threading.Event(), threading.Event()

    def load(topic: str, partitions: list[int]) -> dict[int, int]:
        # the pipeline's loader: runs on the polling thread and waits for the event loop (here: the test thread)
        in_callback.set()
        assert committed.wait(20), "the commit made while a rebalance callback ran did not return"
        return {}

    consumer = EventConsumer(run_settings(settings, prefix), load)
    poller = threading.Thread(target=lambda: [consumer.poll(100, 0.5) for _ in range(20)], daemon=True)
    poller.start()
    try:
        assert in_callback.wait(30), "no assignment"
        started = time.monotonic()
        consumer.commit(topic, 0, 3)  # the event loop committing a batch applied before the rebalance
        committed.set()
        assert time.monotonic() - started < 1.0
        poller.join(30)
        assert not poller.is_alive()
        probe = Consumer({**kafka, "group.id": prefix})  # reads the group's committed offsets only
        deadline, offset = time.monotonic() + 20, None
        while time.monotonic() < deadline and offset != 3:  # the commit reaches Kafka from the polling thread
            consumer.poll(10, 0.2)
            (tp,) = probe.committed([TopicPartition(topic, 0)], timeout=5)
            offset = tp.offset
        probe.close()
        assert offset == 3
    finally:
        committed.set()
        consumer.close()
        admin.delete_topics([topic])
