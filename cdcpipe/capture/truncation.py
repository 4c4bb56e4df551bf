"""Publishing this node's truncations (``TRUNCATE``), which Cassandra does not log in the commit log.

Each node records a table's truncation in ``system.local``'s ``truncated_at`` (table id → the commit-log position
and the time, in milliseconds, of the truncation: 8 + 4 + 8 bytes, big-endian).  :class:`TruncationWatch` reads it
every few seconds and publishes each new one of a captured table to the compacted ``<prefix>.truncations`` topic,
keyed ``<keyspace>.<table>@<node>`` (see :mod:`cdcpipe.apply.truncations` for what apply does with it).  At start it
publishes what the node holds (apply keeps the latest per table, so a repeat changes nothing).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from typing import Any

import structlog

from cdcpipe import kafka_clients
from cdcpipe.errors import CassandraReadError, KafkaProduceError
from cdcpipe.kafka_admin import COMPACTED
from cdcpipe.schema import TableSchema
from cdcpipe.topics import truncations_topic
from cdcpipe.truncated import TruncationRecord

log = structlog.get_logger(__name__)
_RECORD = struct.Struct(">qiq")  # segment id, position, truncated at (ms)


def parse_record(blob: bytes) -> tuple[int, int, int] | None:
    """(segment id, position, truncated at in ms) of one ``truncated_at`` value; None if it is not one."""
    if len(blob) < _RECORD.size:
        return None
    seg, pos, at = _RECORD.unpack_from(blob)
    return int(seg), int(pos), int(at)


class TruncationWatch:
    """``session``: a driver session on this node; ``tables``: the cluster's table schemas, read only when a
    truncation not seen yet shows (blocking); ``captured``: whether a table is captured; ``ensure_topic``: creates
    a topic (compacted config given)."""

    def __init__(self, session: Any, kafka: dict[str, Any], prefix: str, node: str,
                 tables: Callable[[], list[TableSchema]], captured: Callable[[TableSchema], bool],
                 ensure_topic: Callable[..., None],
                 on_truncation: Callable[[TableSchema, int], None] | None = None) -> None:
        self._session = session
        self._on_truncation = on_truncation  # (table, truncated at ms), after the record is published
        self._producer = kafka_clients.producer({**kafka, "enable.idempotence": True, "linger.ms": 5})
        self._topic = truncations_topic(prefix)
        self._node = node
        self._tables = tables
        self._captured = captured
        self._ensure_topic = ensure_topic
        self._seen: dict[uuid.UUID, int] = {}

    def _table_of(self, table_id: uuid.UUID, known: dict[uuid.UUID, TableSchema]) -> TableSchema | None:
        if not known:
            try:
                known.update({t.table_id: t for t in self._tables()})
            except Exception as exc:
                raise CassandraReadError(f"reading the schema for a truncation: {exc}", retriable=True) from exc
        table = known.get(table_id)
        return table if table is not None and self._captured(table) else None

    def poll(self) -> int:
        """Publish the truncations not published yet (blocking); returns how many.  Raises CassandraReadError
        (retriable) when the node does not answer, KafkaProduceError when Kafka does not take them."""
        try:
            row = self._session.execute("SELECT truncated_at FROM system.local WHERE key = 'local'",
                                        timeout=10).one()
        except Exception as exc:
            raise CassandraReadError(f"reading system.local truncated_at: {exc}", retriable=True) from exc
        found = getattr(row, "truncated_at", None) or {}
        new: list[tuple[uuid.UUID, TableSchema, tuple[int, int, int]]] = []
        known: dict[uuid.UUID, TableSchema] = {}
        for table_id, blob in found.items():
            parsed = parse_record(bytes(blob))
            if parsed is None or self._seen.get(table_id) == parsed[2]:
                continue
            table = self._table_of(table_id, known)
            if table is None:
                self._seen[table_id] = parsed[2]  # not a captured table
                continue
            new.append((table_id, table, parsed))
        if not new:
            return 0
        self._ensure_topic(self._topic, partitions=1, config=COMPACTED)
        for table_id, table, (seg, pos, at) in new:
            rec = TruncationRecord(table.name, str(table_id), self._node, at, seg, pos)
            self._producer.produce(self._topic, key=rec.key, value=rec.to_value())
        if self._producer.flush(30) != 0:
            raise KafkaProduceError("truncation records not acknowledged within 30 s", topic=self._topic,
                                    retriable=True)
        for table_id, table, (_, _, at) in new:
            if self._on_truncation is not None:
                self._on_truncation(table, at)  # raises like this (retried: the truncation is not seen yet)
            self._seen[table_id] = at
            log.info("truncation published", table=table.name, truncated_at_ms=at)
        return len(new)

    def close(self) -> None:
        self._producer.flush(10)
