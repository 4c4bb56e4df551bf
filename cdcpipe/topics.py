"""Every Kafka topic name cdcpipe uses, in one place (capture writes them, apply and the tools read them).

``<prefix>`` is ``kafka.topic_prefix``.  A name's characters outside ``[A-Za-z0-9._-]`` become ``_`` (Kafka's
legal set); Cassandra's keyspace and table names are ``[A-Za-z0-9_]``, so an event topic has exactly three dotted
parts after the prefix's own and :func:`events_pattern` matches those and nothing else.

| topic | written by | content |
|---|---|---|
| ``<prefix>.<keyspace>.<table>`` | capture | change events of one table, keyed by partition key |
| ``<prefix>.schemas`` | capture | event schemas by fingerprint (compacted) |
| ``<prefix>.capture-positions`` | capture | each node's committed commit-log position (compacted) |
| ``<prefix>.capture-dlq`` | capture | commit-log entries that could not be decoded |
| ``<prefix>.truncations`` | capture | each node's record of each table's latest ``TRUNCATE`` (compacted) |
| ``<prefix>.dlq`` | apply | events that could not be applied (``apply.dlq_topic`` overrides) |
"""

from __future__ import annotations

import re

_ILLEGAL = re.compile(r"[^A-Za-z0-9._-]")


def _legal(name: str) -> str:
    return _ILLEGAL.sub("_", name)


def table_topic(prefix: str, keyspace: str, table: str) -> str:
    """The change events of ``keyspace.table``."""
    return _legal(f"{prefix}.{keyspace}.{table}")


def events_pattern(prefix: str) -> str:
    """The subscription regex of every event topic of ``prefix`` (not its schemas, positions or DLQ topics)."""
    return "^" + re.escape(_legal(prefix)) + r"\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+$"


def table_of(prefix: str, topic: str) -> str:
    """``keyspace.table`` of an event topic of ``prefix`` (the inverse of :func:`table_topic`)."""
    return topic.removeprefix(_legal(prefix) + ".")


def schemas_topic(prefix: str) -> str:
    return _legal(f"{prefix}.schemas")


def positions_topic(prefix: str) -> str:
    return _legal(f"{prefix}.capture-positions")


def truncations_topic(prefix: str) -> str:
    """Each node's latest truncation of each table (``cdcpipe.apply.truncations``), compacted."""
    return _legal(f"{prefix}.truncations")


def schema_changes_topic(prefix: str) -> str:
    """Every node's schema changes of the captured tables (``cdcpipe.schema_changes``), kept forever."""
    return _legal(f"{prefix}.schema-changes")


def capture_dlq_topic(prefix: str) -> str:
    return _legal(f"{prefix}.capture-dlq")


def apply_dlq_topic(prefix: str, configured: str | None = None) -> str:
    """Apply's dead letters: ``apply.dlq_topic`` when set, else ``<prefix>.dlq``."""
    return configured or _legal(f"{prefix}.dlq")


def snapshot_progress_topic(prefix: str) -> str:
    """The compacted topic of snapshot runs and the token ranges they finished (``cdcpipe snapshot --resume``)."""
    return _legal(f"{prefix}.snapshot-progress")
