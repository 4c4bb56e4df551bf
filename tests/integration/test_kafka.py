"""Kafka 4.x in KRaft mode: topics, 1000 messages round trip, and transactions (commit and abort)."""

from __future__ import annotations

import uuid

from confluent_kafka import Producer

from cdcpipe.config import Settings
from tests.support.topics import consume, new_topic


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
