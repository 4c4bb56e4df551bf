"""Kafka records → change events: Avro single-object decoding with schemas from ``<prefix>.schemas``.

:class:`SchemaReader` keeps a fingerprint → schema cache filled from the compacted schemas topic (read from the
beginning with its own group-less consumer; :meth:`SchemaReader.catch_up` reads to the end, blocking: call it in a
thread).  :func:`table_of` turns an event schema into the table metadata merge and writer need.
"""

from __future__ import annotations

import threading
from typing import Any

from cdcpipe.avro import EventSchema, SchemaCache, decode, fingerprint_of
from cdcpipe.capture.schema import CLUSTERING, PARTITION_KEY, Column, TableSchema
from cdcpipe.errors import EventDecodeError
from cdcpipe.model import ChangeEvent

_TABLES: dict[bytes, TableSchema] = {}


def table_of(schema: EventSchema) -> TableSchema:
    """The TableSchema an event schema describes (clustering order from its ``cdcpipe.clustering``)."""
    found = _TABLES.get(schema.fingerprint)
    if found is not None:
        return found
    desc = {c["name"] for c in schema.schema.get("cdcpipe.clustering", []) if c.get("order") == "DESC"}
    table = TableSchema(
        keyspace=schema.keyspace, table=schema.table, table_id=schema.table_id,
        partition_key=tuple(Column(c.name, c.type, PARTITION_KEY, i) for i, c in enumerate(schema.partition_key)),
        clustering=tuple(Column(c.name, c.type, CLUSTERING, i, c.name in desc)
                         for i, c in enumerate(schema.clustering)),
        static=tuple(Column(c.name, c.type, c.kind) for c in schema.columns if c.kind == "static"),
        regular=tuple(Column(c.name, c.type, c.kind) for c in schema.columns if c.kind != "static"),
    )
    _TABLES[schema.fingerprint] = table
    return table


class SchemaReader:
    """Reads ``<prefix>.schemas`` into a :class:`SchemaCache`.  ``consumer`` is a confluent-kafka Consumer."""

    def __init__(self, consumer: Any, topic: str) -> None:
        self._consumer = consumer
        self._topic = topic
        self.cache = SchemaCache()
        self._lock = threading.Lock()
        self._assigned = False

    def catch_up(self, timeout_s: float = 10.0) -> int:
        """Read every schema record up to the topic's current end; returns how many were added (blocking)."""
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        with self._lock:
            if not self._assigned:
                meta = self._consumer.list_topics(self._topic, timeout=timeout_s)
                parts = meta.topics[self._topic].partitions if self._topic in meta.topics else {}
                self._consumer.assign([TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in parts])
                self._assigned = bool(parts)
            added = 0
            while True:
                msgs = self._consumer.consume(1000, timeout=0.5)
                if not msgs:
                    return added
                for m in msgs:
                    if m.error() is None and m.value():
                        try:
                            self.cache.add(m.value())
                            added += 1
                        except EventDecodeError:
                            continue  # not ours: a schema record of another format version

    def lookup(self, fingerprint: bytes) -> EventSchema | None:
        return self.cache.get(fingerprint)


def decode_record(data: bytes, reader: SchemaReader) -> tuple[ChangeEvent, TableSchema]:
    """One event and its table; raises EventDecodeError (retriable when the schema is not known yet)."""
    event = decode(data, reader.lookup)
    schema = reader.lookup(fingerprint_of(data))
    assert schema is not None
    return event, table_of(schema)
