"""Creating the topics capture and the snapshot produce to (blocking).

Every topic takes messages up to ``kafka.max_message_bytes`` (``KafkaSettings.topic_config``) and is replicated
``capture.topic_replication`` times, by default min(3, brokers) (:func:`cdcpipe.config.replication_factor`).
"""

from __future__ import annotations

import structlog
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from cdcpipe.config import replication_factor
from cdcpipe.errors import KafkaProduceError

log = structlog.get_logger(__name__)
COMPACTED = {"cleanup.policy": "compact"}


def topic_replication(admin: AdminClient, configured: int | None, timeout_s: float) -> int:
    """``configured``, or chosen from the cluster's size (asks the brokers).  Raises KafkaProduceError."""
    if configured is not None:
        return configured
    try:
        brokers = len(admin.list_topics(timeout=timeout_s).brokers)
    except KafkaException as exc:
        err: KafkaError = exc.args[0]
        raise KafkaProduceError(f"list brokers: {err.str()}", retriable=err.retriable()) from exc
    chosen = replication_factor(None, brokers)
    log.info("topic replication factor chosen", replication=chosen, brokers=brokers)
    return chosen


def create_topic(admin: AdminClient, topic: str, *, partitions: int, replication: int, config: dict[str, str],
                 timeout_s: float) -> None:
    """Create ``topic`` unless it exists.  Raises KafkaProduceError."""
    new = NewTopic(topic, num_partitions=partitions, replication_factor=replication, config=config)
    try:
        admin.create_topics([new], operation_timeout=timeout_s)[topic].result(timeout=timeout_s)
        log.info("topic created", topic=topic)
    except KafkaException as exc:
        err: KafkaError = exc.args[0]
        if err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise KafkaProduceError(f"create topic: {err.str()}", topic=topic, retriable=err.retriable()) from exc
