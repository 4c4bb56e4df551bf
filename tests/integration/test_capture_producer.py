"""Capture's transactional producer against the real broker: a commit that times out (as while a broker
restarts) is retried by committing the same open transaction again — not by beginning another, which librdkafka
refuses and which used to stop capture — and every record lands once."""

from __future__ import annotations

import uuid

from cdcpipe.capture.producer import EventProducer, Record
from cdcpipe.capture.segment import Position
from cdcpipe.config import Settings
from tests.support.topics import consume, new_topic


def test_a_commit_that_times_out_is_committed_again_not_restarted(settings: Settings) -> None:
    topic = new_topic(settings, partitions=1)
    kafka = settings.kafka.model_copy(update={"topic_prefix": f"it{uuid.uuid4().hex[:8]}"})
    producer = EventProducer(kafka, "node-t", partitions=1, replication=1)
    producer.start()
    try:
        records = [Record(topic, b"k", b"v%d" % i) for i in range(50)]
        producer.timeout_s = 0.001  # commit_transaction cannot finish in time: a retriable _TIMED_OUT
        producer.commit(records, [], Position(1, 100))
        producer.timeout_s = 30.0
        producer.commit([Record(topic, b"k", b"after")], [], Position(1, 200))
    finally:
        producer.close()
    got = consume(settings, topic, expect=51)
    assert sorted(got) == sorted([b"v%d" % i for i in range(50)] + [b"after"])
