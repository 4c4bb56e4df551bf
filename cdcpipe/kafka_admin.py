"""Creating the topics capture and the snapshot produce to, and reaching Kafka at start (blocking).

Every topic takes messages up to ``kafka.max_message_bytes`` (``KafkaSettings.topic_config``) and is replicated
``capture.topic_replication`` times, by default min(3, brokers) (:func:`cdcpipe.config.replication_factor`).
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from cdcpipe.config import KafkaSettings, replication_factor
from cdcpipe.errors import ConfigError, KafkaProduceError

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


def kafka_reachable(kafka: KafkaSettings, timeout_s: float = 5.0) -> str | None:
    """None when the cluster answers a metadata request, otherwise why not (an outage to wait out).  Raises
    ConfigError as soon as what is configured shows it cannot work: the TLS handshake refused (``kafka.tls``) or the
    SASL credentials rejected."""
    errors: list[KafkaError] = []
    conf: dict[str, Any] = {**kafka.client_config(), "error_cb": errors.append}
    admin = AdminClient(conf)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
            return None
        except KafkaException as exc:
            reason = exc.args[0].str() if exc.args else str(exc)
        admin.poll(0.1)  # serve the error callbacks: they say why
        for err in errors:
            if err.code() == KafkaError._SSL:
                raise ConfigError(f"TLS to Kafka at {kafka.bootstrap_servers}: {err.str()} (kafka.tls.ca_file, "
                                  "kafka.tls.verify_hostname, the client certificate)")
            if err.code() == KafkaError._AUTHENTICATION:
                raise ConfigError(f"SASL to Kafka at {kafka.bootstrap_servers}: {err.str()} (kafka.sasl_mechanism, "
                                  "kafka.sasl_username, kafka.sasl_password)")
        if time.monotonic() >= deadline:
            return f"{kafka.bootstrap_servers} unreachable: {reason}"
