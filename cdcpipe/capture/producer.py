"""The transactional Kafka producer of capture: events and the capture position in one transaction.

Contract
    - :meth:`EventProducer.start` creates the positions and schemas topics if missing and calls
      ``init_transactions``, which fences any earlier instance with the same ``transactional.id`` (one per topic
      prefix and node) and aborts its open transaction — so a checkpoint read *after* ``start`` with
      ``read_committed`` is final.
    - :meth:`EventProducer.commit` runs one transaction: the schemas not yet published by this process (to the
      compacted ``<prefix>.schemas``, keyed by fingerprint), the records, and the position record (compacted
      ``<prefix>.capture-positions``, keyed by node).  Either all of it becomes visible to ``read_committed``
      consumers or none; on an abortable error the transaction is aborted and retried with the same records; a
      ``commit_transaction`` that fails retriably (times out) is called again on the same transaction.  While
      Kafka stays unreachable it raises a retriable error and the caller calls it again (never gives up).
      Records carry no delivery callback (one Python call per event saved): a record that fails delivery makes
      ``commit_transaction`` fail with an abortable error, which is handled as above.
    - Table topics ``<prefix>.<keyspace>.<table>`` are created on first use (:meth:`ensure_topic`).  Every topic
      it creates takes messages up to ``kafka.max_message_bytes`` and is replicated ``capture.topic_replication``
      times, by default min(3, brokers) (:func:`cdcpipe.config.replication_factor`).
"""

from __future__ import annotations

import json
import time
from typing import Any, NamedTuple

import structlog
from confluent_kafka import KafkaError, KafkaException

from cdcpipe import kafka_clients
from cdcpipe.avro import EventSchema
from cdcpipe.capture import metrics
from cdcpipe.capture.segment import Position
from cdcpipe.config import KafkaSettings
from cdcpipe.errors import KafkaProduceError
from cdcpipe.kafka_admin import COMPACTED, create_topic, topic_replication
from cdcpipe.topics import capture_dlq_topic, positions_topic, schemas_topic

log = structlog.get_logger(__name__)
_ATTEMPTS = 5


class Record(NamedTuple):
    """One message to produce (a NamedTuple: one is built per event)."""

    topic: str
    key: bytes
    value: bytes


def position_value(node: str, position: Position, cdc_log: dict[str, Any] | None = None) -> bytes:
    """The position record; ``cdc_log``: what the log said of the tables' cdc flags there (``cdc_switch``)."""
    return json.dumps({"node": node, "segment_id": position.segment_id, "offset": position.offset,
                       "committed_at_ms": int(time.time() * 1000), "cdc_log": cdc_log}, sort_keys=True).encode()


class EventProducer:
    """One transactional producer per capture process (not thread-safe: one transaction at a time)."""

    def __init__(self, kafka: KafkaSettings, node: str, *, partitions: int, replication: int | None,
                 timeout_s: float = 30.0) -> None:
        self.prefix = kafka.topic_prefix
        self.node = node
        self.partitions = partitions
        self._replication = replication  # None: chosen from the cluster's size on first use
        self._topic_config = kafka.topic_config()
        self.timeout_s = timeout_s
        base = kafka.client_config()
        self._admin = kafka_clients.admin(base)
        conf: dict[str, Any] = {
            **base, "transactional.id": f"cdcpipe-capture.{self.prefix}.{node}", "enable.idempotence": True,
            "linger.ms": 5, "compression.type": "lz4", "transaction.timeout.ms": 60000,
            "partitioner": "murmur2_random",
        }
        self._producer = kafka_clients.producer(conf)
        self._topics: set[str] = set()
        self._published: set[bytes] = set()
        self._delivery_error: KafkaProduceError | None = None
        self._committing: Position | None = None  # a transaction produced and being committed (commit resumes it)
        self._needs_abort = False  # an abort failed: the next commit aborts first

    def start(self) -> None:
        """Create the bookkeeping topics and fence earlier instances (blocking)."""
        self.ensure_topic(positions_topic(self.prefix), partitions=1, config=COMPACTED)
        self.ensure_topic(schemas_topic(self.prefix), partitions=1, config=COMPACTED)
        self.ensure_topic(capture_dlq_topic(self.prefix), partitions=1)
        try:
            self._producer.init_transactions(self.timeout_s)
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            raise KafkaProduceError(f"init_transactions: {err.str()}", retriable=err.retriable()) from exc

    def ensure_topic(self, topic: str, *, partitions: int | None = None, config: dict[str, str] | None = None) -> None:
        """Create ``topic`` unless it exists (blocking; cached)."""
        if topic in self._topics:
            return
        create_topic(self._admin, topic, partitions=partitions or self.partitions, replication=self.replication,
                     config={**self._topic_config, **(config or {})}, timeout_s=self.timeout_s)
        self._topics.add(topic)

    @property
    def replication(self) -> int:
        """The replication factor of the topics it creates (asks the cluster its size once when not set)."""
        if self._replication is None:
            self._replication = topic_replication(self._admin, None, self.timeout_s)
        return self._replication

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None and self._delivery_error is None:
            self._delivery_error = KafkaProduceError(err.str(), topic=msg.topic(), partition=msg.partition(),
                                                     retriable=err.retriable())

    # --- transaction retries (a Kafka outage is waited out by the caller, never given up on) -------------------

    def commit(self, records: list[Record], schemas: list[EventSchema], position: Position,
               cdc_log: dict[str, Any] | None = None) -> None:
        """Produce ``schemas`` (those not yet published), ``records`` and ``position`` in one transaction.

        An abortable failure aborts the transaction and produces the same content again; a retriable failure of
        ``commit_transaction`` itself (a timeout while a broker restarts) calls it again on the same open
        transaction, as librdkafka requires.  After ``_ATTEMPTS`` such failures it raises a *retriable*
        KafkaProduceError and keeps its state: calling ``commit`` again with the same batch resumes (commits the
        open transaction, or aborts the one left to abort first), so the caller can wait out an outage of any
        length.  Raises a non-retriable KafkaProduceError when the producer is fenced or fatally failed."""
        committing = self._committing == position  # a previous call left this transaction being committed
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                if self._needs_abort:
                    self._abort()
                    committing = False
                if not committing:
                    self._produce(records, schemas, position, cdc_log)
                    committing = True
                    self._committing = position
                self._producer.commit_transaction(self.timeout_s)
                self._committing = None
                if self._delivery_error is not None:  # cannot happen after a successful commit; kept as a guard
                    raise self._delivery_error
                for s in schemas:
                    self._published.add(s.fingerprint)
                metrics.TRANSACTIONS.labels("committed").inc()
                return
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                metrics.TRANSACTIONS.labels("failed").inc()
                log.warning("transaction failed", position=str(position), error=err.str(), attempt=attempt,
                            abortable=err.txn_requires_abort(), retriable=err.retriable(), fatal=err.fatal(),
                            committing=committing)
                if err.fatal() or not (err.txn_requires_abort() or err.retriable()):
                    self._committing = None
                    raise KafkaProduceError(err.str(), position=str(position), retriable=False) from exc
                if err.txn_requires_abort():
                    self._committing = None
                    committing = False
                    self._abort()
                if attempt == _ATTEMPTS:
                    raise KafkaProduceError(err.str(), position=str(position), retriable=True) from exc
                time.sleep(min(2.0, 0.1 * 2 ** attempt))
        raise AssertionError("unreachable")

    def _produce(self, records: list[Record], schemas: list[EventSchema], position: Position,
                 cdc_log: dict[str, Any] | None) -> None:
        """Begin a transaction and produce its content: new schemas, the records, the position record."""
        p = self._producer
        self._delivery_error = None
        p.begin_transaction()
        try:
            for s in schemas:
                if s.fingerprint not in self._published:
                    p.produce(schemas_topic(self.prefix), key=s.fingerprint, value=s.to_json().encode(),
                              on_delivery=self._on_delivery)
            produce = p.produce
            for topic, key, value in records:  # no delivery callback: commit_transaction fails if any delivery did
                try:
                    produce(topic, value, key)
                except BufferError:  # local queue full: let it drain
                    self._produce_blocking(topic, key, value)
            p.produce(positions_topic(self.prefix), key=self.node.encode(),
                      value=position_value(self.node, position, cdc_log), on_delivery=self._on_delivery)
        except KafkaException as exc:
            if not exc.args[0].txn_requires_abort():  # a produce refused outright: abort, start over next attempt
                self._abort()
            raise

    def _produce_blocking(self, topic: str, key: bytes, value: bytes) -> None:
        while True:
            self._producer.poll(0.05)
            try:
                self._producer.produce(topic, value, key)
                return
            except BufferError:
                continue

    def _abort(self) -> None:
        """Abort the open transaction; when that fails retriably (Kafka unreachable), the next ``commit`` aborts
        first (``_needs_abort``)."""
        self._needs_abort = True
        try:
            self._producer.abort_transaction(self.timeout_s)
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            raise KafkaProduceError(f"abort_transaction: {err.str()}",
                                    retriable=err.retriable() and not err.fatal()) from exc
        self._needs_abort = False

    def close(self) -> None:
        """Deliver what is queued (nothing outside a transaction is ever queued) and release the client."""
        self._producer.flush(self.timeout_s)
