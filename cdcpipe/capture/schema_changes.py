"""Publishing this node's view of every schema change of the captured tables to ``<prefix>.schema-changes``.

Every ``capture.schema_recheck_s`` :class:`SchemaChangeWatch` asks the node for its schema version
(``system.local``) and, when it changed since the last look, loads the node's schema and compares each table
capture follows (``cdc = true`` and matching the include/exclude patterns, or published before) with the shape it
last published for it (:func:`cdcpipe.schema_changes.diff`).  Each difference becomes one
:class:`~cdcpipe.schema_changes.SchemaChangeRecord` (keyed ``<keyspace>.<table>@<node>``, kept forever: the topic
is a history, not compacted), and the table's new event schema is published to ``<prefix>.schemas`` at once (not
only with the first event that uses it).  Truncations come from :class:`cdcpipe.capture.truncation.TruncationWatch`
(:meth:`SchemaChangeWatch.truncated`).  At start the watch reads back what this node published, so a restart
publishes only what changed while it was down; until that read succeeds it publishes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from cdcpipe import avro, kafka_clients
from cdcpipe.capture import metrics
from cdcpipe.capture.batches import TableFilter
from cdcpipe.capture.checkpoint import read_to_end
from cdcpipe.errors import CassandraReadError, CheckpointError, KafkaProduceError
from cdcpipe.schema import TableSchema
from cdcpipe.schema_changes import SchemaChange, SchemaChangeRecord, Shape, diff, shape_of
from cdcpipe.topics import schema_changes_topic, schemas_topic

log = structlog.get_logger(__name__)
HISTORY = {"cleanup.policy": "delete", "retention.ms": "-1"}


class SchemaChangeWatch:
    """``session``: a driver session on this node; ``load``: the node's table schemas (blocking);
    ``captured``: capture's table filter; ``ensure_topic``: creates a topic (config given)."""

    def __init__(self, session: Any, kafka: dict[str, Any], prefix: str, node: str,
                 load: Callable[[], list[TableSchema]], captured: TableFilter,
                 ensure_topic: Callable[..., None]) -> None:
        self._session = session
        self._kafka = kafka
        self._producer = kafka_clients.producer({**kafka, "enable.idempotence": True, "linger.ms": 5})
        self._topic = schema_changes_topic(prefix)
        self._schemas = schemas_topic(prefix)
        self._node = node
        self._load = load
        self._captured = captured
        self._ensure_topic = ensure_topic
        self._last: dict[str, SchemaChangeRecord] | None = None  # per table: the last record published
        self._truncated: dict[str, int] = {}  # per table: the last truncation published (µs)
        self._polled_us = time.time_ns() // 1000  # the last look (a table created since is "created")
        self._schema_version: Any = None  # the node's system.local schema_version at the last complete look

    def restore(self, timeout_s: float = 30.0) -> None:
        """Read back what this node published (blocking); raises KafkaProduceError (retriable) on failure."""
        last: dict[str, SchemaChangeRecord] = {}
        try:
            for msg in read_to_end(self._kafka, self._topic, timeout_s):
                rec = SchemaChangeRecord.from_value(msg.value() or b"")
                if rec is None or rec.node != self._node:
                    continue
                if any(ch.change == "truncated" for ch in rec.changes) and rec.changed_at_us is not None:
                    self._truncated[rec.table] = max(self._truncated.get(rec.table, 0), rec.changed_at_us)
                last[rec.table] = rec
        except CheckpointError as exc:  # read again at the next round
            raise KafkaProduceError(f"reading {self._topic}: {exc}", topic=self._topic, retriable=True) from exc
        self._last = last
        for rec in last.values():
            metrics.SCHEMA_VERSION.labels(rec.table).set(rec.ordinal)

    def poll(self) -> int:
        """Publish the schema changes not published yet (blocking); returns how many records.  Raises
        CassandraReadError (retriable) when the node does not answer, KafkaProduceError when Kafka does not take
        them (the next round publishes them again)."""
        if self._last is None:
            self.restore()
        assert self._last is not None
        try:
            row = self._session.execute("SELECT schema_version FROM system.local WHERE key = 'local'",
                                        timeout=10).one()
            node_version = getattr(row, "schema_version", None)
            if node_version is not None and node_version == self._schema_version:
                return 0  # no DDL on this node since the last look: nothing to compare
            loaded = self._load()
            tables = {t.name: t for t in loaded if self._captured.patterns_match(t)}
            others = {t.name for t in loaded} - tables.keys()  # there, but not to be captured (settings changed)
        except Exception as exc:
            raise CassandraReadError(f"reading the schema for schema changes: {exc}", retriable=True) from exc
        first = not self._last  # nothing published by this node yet: what it finds is the initial state
        since_us, now_us = self._polled_us, time.time_ns() // 1000
        out: list[tuple[SchemaChangeRecord, TableSchema | None]] = []
        created: dict[str, int] | None = None
        for name in sorted(tables.keys() | (self._last.keys() - others)):
            t, before = tables.get(name), self._last.get(name)
            prev = before.shape if before is not None else None
            if prev is None and (t is None or not t.cdc):
                continue  # never captured, or dropped and not created again with cdc = true
            after: Shape | None = None
            if t is not None:
                created_us = prev.created_us if prev is not None and prev.table_id == str(t.table_id) else None
                if created_us is None:
                    created = self._created() if created is None else created
                    created_us = created.get(name)
                after = shape_of(t, created_us)
            if prev is None:
                assert after is not None
                kind = "initial" if first else "created" if before is not None or (
                    after.created_us is not None and after.created_us >= since_us) else "cdc_on"
                changes = [SchemaChange(kind, detail=after.table_id)]
            else:
                changes = diff(prev, after)
            if not changes:
                continue
            version = "" if t is None else avro.table_schema(t).fingerprint.hex()
            drops = dict(after.dropped) if after is not None else {}
            dropped_at = max((drops[c.subject] for c in changes
                              if c.change == "column_dropped" and c.subject in drops), default=None)
            table_id = str(t.table_id) if t is not None else before.table_id if before is not None else ""
            out.append((SchemaChangeRecord(name, table_id, self._node, version,
                                           (before.ordinal if before is not None else 0) + 1, tuple(changes), after,
                                           now_us // 1000, dropped_at), t))
        if out:
            self._publish(out)
        self._polled_us = now_us
        self._schema_version = node_version
        return len(out)

    def truncated(self, table: TableSchema, truncated_at_ms: int) -> None:
        """Publish the truncation of ``table`` (from the truncation watch) unless already published (blocking)."""
        at_us = truncated_at_ms * 1000
        if self._last is None or at_us <= self._truncated.get(table.name, -1):
            return
        before = self._last.get(table.name)
        rec = SchemaChangeRecord(table.name, str(table.table_id), self._node,
                                 before.version if before is not None else "",
                                 before.ordinal if before is not None else 0, (SchemaChange("truncated"),),
                                 before.shape if before is not None else shape_of(table), int(time.time() * 1000),
                                 at_us)
        self._publish([(rec, None)], remember=False)
        self._truncated[table.name] = at_us

    def _publish(self, out: list[tuple[SchemaChangeRecord, TableSchema | None]], remember: bool = True) -> None:
        self._ensure_topic(self._topic, partitions=1, config=HISTORY)
        for rec, t in out:
            if t is not None:
                s = avro.table_schema(t)
                self._producer.produce(self._schemas, key=s.fingerprint, value=s.to_json().encode())
            self._producer.produce(self._topic, key=rec.key, value=rec.to_value())
        if self._producer.flush(30) != 0:
            raise KafkaProduceError("schema change records not acknowledged within 30 s", topic=self._topic,
                                    retriable=True)
        for rec, _ in out:
            if remember and self._last is not None:
                self._last[rec.table] = rec
                metrics.SCHEMA_VERSION.labels(rec.table).set(rec.ordinal)
            for ch in rec.changes:
                metrics.SCHEMA_CHANGES.labels(rec.table, ch.change).inc()
            log.info("schema change published", table=rec.table, version=rec.version, ordinal=rec.ordinal,
                     changes=[f"{c.change} {c.subject}".strip() for c in rec.changes])

    def _created(self) -> dict[str, int]:
        """Each table's creation time (µs): the oldest write time of its ``system_schema.columns`` rows (an
        ``ALTER`` rewrites the table's row and the columns it adds, never the columns it keeps)."""
        try:
            rows = self._session.execute(
                "SELECT keyspace_name, table_name, writetime(type) AS w FROM system_schema.columns", timeout=10)
        except Exception as exc:
            raise CassandraReadError(f"reading system_schema.columns: {exc}", retriable=True) from exc
        out: dict[str, int] = {}
        for r in rows:
            name = f"{r.keyspace_name}.{r.table_name}"
            if r.w is not None and (name not in out or r.w < out[name]):
                out[name] = int(r.w)
        return out

    def close(self) -> None:
        self._producer.flush(10)
