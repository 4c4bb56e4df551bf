"""Producing snapshot events to Kafka (blocking, thread-safe).

Contract
    - Event topics are the table topics capture uses, created when missing with capture's settings
      (``capture.topic_partitions``, ``capture.topic_replication`` or min(3, brokers), ``kafka`` topic config).
    - :meth:`Emitter.publish_schema` produces an event schema to the compacted ``<prefix>.schemas`` topic (keyed
      by fingerprint, as capture does) and waits for it, before any event that uses it.
    - :meth:`Emitter.produce` is idempotent-producer delivery with ``acks=all``, keyed by the stored partition key
      with capture's partitioner, so a partition's snapshot events land in the partition its live events do.
      Every message carries the header ``cdcpipe-snapshot: 1``.  Deliveries are counted per :class:`Batch`;
      :meth:`Emitter.wait` returns when all of a batch's are acknowledged and raises the first failure.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from cdcpipe import kafka_clients
from cdcpipe.avro import EventSchema
from cdcpipe.config import CaptureSettings, KafkaSettings
from cdcpipe.errors import KafkaProduceError
from cdcpipe.kafka_admin import COMPACTED, create_topic, topic_replication
from cdcpipe.snapshot import metrics
from cdcpipe.topics import schemas_topic

HEADERS: list[tuple[str, str | bytes | None]] = [("cdcpipe-snapshot", b"1")]


class Batch:
    """The deliveries of one token range: outstanding count and the first error."""

    def __init__(self) -> None:
        self.pending = 0
        self.error: KafkaProduceError | None = None
        self.done = threading.Condition()

    def delivered(self, err: KafkaError | None, msg: Any) -> None:
        with self.done:
            self.pending -= 1
            if err is not None and self.error is None:
                self.error = KafkaProduceError(err.str(), topic=msg.topic(), partition=msg.partition(),
                                               retriable=err.retriable())
            if self.pending == 0 or err is not None:
                self.done.notify_all()


class Emitter:
    def __init__(self, kafka: KafkaSettings, capture: CaptureSettings, *, timeout_s: float = 60.0) -> None:
        self.kafka = kafka
        self.capture = capture
        self.timeout_s = timeout_s
        base = kafka.client_config()
        self._admin = kafka_clients.admin(base)
        self._producer = kafka_clients.producer({**base, "enable.idempotence": True, "acks": "all", "linger.ms": 20,
                                   "compression.type": "lz4", "partitioner": "murmur2_random",
                                   "queue.buffering.max.kbytes": 65536})
        self._topics: set[str] = set()
        self._replication: int | None = capture.topic_replication
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="snapshot-delivery", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    def ensure_topic(self, topic: str, *, partitions: int | None = None, config: dict[str, str] | None = None) -> None:
        """Create ``topic`` unless it exists (cached)."""
        with self._lock:
            if topic in self._topics:
                return
            self._replication = topic_replication(self._admin, self._replication, self.timeout_s)
            create_topic(self._admin, topic, partitions=partitions or self.capture.topic_partitions,
                         replication=self._replication, config={**self.kafka.topic_config(), **(config or {})},
                         timeout_s=self.timeout_s)
            self._topics.add(topic)

    def publish_schema(self, schema: EventSchema) -> None:
        topic = schemas_topic(self.kafka.topic_prefix)
        self.ensure_topic(topic, partitions=1, config=COMPACTED)
        batch = Batch()
        self.produce(topic, schema.fingerprint, schema.to_json().encode(), batch, headers=None)
        self.wait(batch)

    def produce(self, topic: str, key: bytes, value: bytes, batch: Batch,
                headers: list[tuple[str, str | bytes | None]] | None = HEADERS) -> None:
        with batch.done:
            batch.pending += 1
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers, on_delivery=batch.delivered)
                return
            except BufferError:  # the local queue is full (bounded memory): wait for deliveries
                time.sleep(0.01)
            except KafkaException as exc:
                with batch.done:
                    batch.pending -= 1
                err: KafkaError = exc.args[0]
                raise KafkaProduceError(err.str(), topic=topic, retriable=err.retriable()) from exc

    def wait(self, batch: Batch) -> None:
        """Until every message of ``batch`` is acknowledged (librdkafka retries within ``delivery.timeout.ms``);
        raises the first delivery failure."""
        with batch.done:
            while batch.pending > 0 and batch.error is None:
                batch.done.wait(1.0)
        if batch.error is not None:
            metrics.ERRORS.labels("kafka_delivery").inc()
            raise batch.error

    def close(self) -> None:
        self._producer.flush(self.timeout_s)
        self._stop.set()
        self._poller.join(5.0)
