"""Kafka topics that tests and benches create on the shared broker, and their removal (used by the integration
session fixture and by ``bench/``): a broker that keeps thousands of leftover topics loads the machine at every
start."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient


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
