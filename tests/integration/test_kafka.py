"""Kafka 4.x in KRaft mode: topics, 1000 messages round trip, and transactions (commit and abort)."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from cdcpipe.config import Settings


def new_topic(settings: Settings, partitions: int = 3) -> str:
    admin = AdminClient(settings.kafka.client_config())
    name = f"it-{uuid.uuid4().hex[:10]}"
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    futures[name].result(timeout=30)
    return name


def consume(settings: Settings, topic: str, expect: int, isolation: str = "read_committed",
            limit_s: float = 30.0) -> list[bytes]:
    consumer = Consumer({**settings.kafka.client_config(), "group.id": f"it-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "isolation.level": isolation})
    consumer.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + limit_s
    try:
        while len(got) < expect and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                raise KafkaException(msg.error())
            got.append(msg.value())
        # read a little longer to see nothing unexpected arrives
        extra = consumer.poll(1.0)
        if extra is not None and not extra.error():
            got.append(extra.value())
        if got:
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return got


def test_produce_and_consume_1000_messages(settings: Settings) -> None:
    topic = new_topic(settings)
    producer = Producer({**settings.kafka.client_config(), "enable.idempotence": True, "linger.ms": 5})
    for i in range(1000):
        producer.produce(topic, key=str(i % 17).encode(), value=f"m{i}".encode())
    assert producer.flush(30) == 0
    got = consume(settings, topic, 1000)
    assert sorted(got) == sorted(f"m{i}".encode() for i in range(1000))


def test_transactions_commit_and_abort(settings: Settings) -> None:
    topic = new_topic(settings, partitions=1)
    producer = Producer({**settings.kafka.client_config(), "transactional.id": f"it-{uuid.uuid4().hex}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic, value=f"aborted{i}".encode())
    assert producer.flush(30) == 0  # on the broker, so the abort writes a marker rather than purging them
    producer.abort_transaction(30)
    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic, value=f"committed{i}".encode())
    producer.commit_transaction(30)

    committed = consume(settings, topic, 10, isolation="read_committed")
    assert committed == [f"committed{i}".encode() for i in range(10)]
    uncommitted = consume(settings, topic, 20, isolation="read_uncommitted")
    assert sorted(uncommitted) == sorted([f"aborted{i}".encode() for i in range(10)] + committed)
