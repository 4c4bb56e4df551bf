"""Kafka topics that tests and benches create on the shared broker: a fresh topic, reading one back, and the
removal of those a run left (by the session fixture ``stack_env`` and by ``bench/``): a broker that keeps thousands
of leftover topics loads the machine at every start."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

if TYPE_CHECKING:
    from cdcpipe.config import Settings

TEST_TOPIC_PREFIXES = ("it", "e2e")  # every topic prefix, group and table name the tests make up starts so


def topics_with_prefix(kafka: dict[str, Any], prefixes: Iterable[str]) -> set[str]:
    """The broker's topics whose names start with one of ``prefixes`` (none for no prefix)."""
    wanted = tuple(prefixes)
    if not wanted:
        return set()
    return {t for t in AdminClient(kafka).list_topics(timeout=30).topics if t.startswith(wanted)}


def delete_topics(kafka: dict[str, Any], topics: Iterable[str]) -> int:
    """Delete ``topics`` and wait for it; one that is already gone is fine.  Returns how many were asked for."""
    names = sorted(set(topics))
    if not names:
        return 0
    admin = AdminClient(kafka)  # kept referenced until every future is done
    for topic, f in admin.delete_topics(names).items():
        try:
            f.result(60)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise RuntimeError(f"could not delete topic {topic}: {exc}") from exc
    return len(names)


def new_topic(settings: Settings, partitions: int = 3) -> str:
    """A new topic ``it-<hex>`` with ``partitions`` partitions."""
    admin = AdminClient(settings.kafka.client_config())
    name = f"it-{uuid.uuid4().hex[:10]}"
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    futures[name].result(timeout=30)
    return name


def consume(settings: Settings, topic: str, expect: int, isolation: str = "read_committed",
            limit_s: float = 30.0) -> list[bytes]:
    """The values of ``topic`` from its start: ``expect`` of them (or what came within ``limit_s``), and any that
    arrives in one more second."""
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
