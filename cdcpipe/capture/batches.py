"""The CPU stage of capture: entries of a follower poll → decoded mutations → change events → Avro records.

:class:`BatchBuilder` owns the schema lookup, the mutation decoder and the Avro schema cache (all used from one
worker thread).  Each :meth:`BatchBuilder.next` returns a :class:`Batch`: the records to produce, the Avro
schemas they use, and the position to commit with them.  Entries of keyspaces without a captured table are
skipped before decoding (a mutation touches one keyspace).  An entry that cannot be decoded becomes a dead-letter
record with its coordinates — it is never silently skipped.
"""

from __future__ import annotations

import fnmatch
import json
from collections import Counter
from dataclasses import dataclass, field

import structlog

from cdcpipe import avro
from cdcpipe.avro_fast import TableEncoder, Unsupported
from cdcpipe.capture import metrics
from cdcpipe.capture.cdc_index import SegmentEnd, SegmentFollower
from cdcpipe.capture.events import Origin, from_mutation
from cdcpipe.capture.mutation import Mutation, MutationDecoder, first_table_id
from cdcpipe.capture.producer import Record, dead_letter_topic, table_topic
from cdcpipe.capture.schema import SchemaRegistry, TableSchema
from cdcpipe.capture.segment import Position
from cdcpipe.errors import MutationDecodeError

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Batch:
    """Records ready to produce and the position that covers them (None: nothing new was read)."""

    records: list[Record] = field(default_factory=list)
    schemas: dict[bytes, avro.EventSchema] = field(default_factory=dict)
    position: Position | None = None
    end: SegmentEnd | None = None
    newest_micros: int = 0
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def extend(self, other: Batch) -> None:
        self.records += other.records
        self.schemas.update(other.schemas)
        self.position = other.position or self.position
        self.end = other.end or self.end
        self.newest_micros = max(self.newest_micros, other.newest_micros)
        self.counts.update(other.counts)


class TableFilter:
    """Which tables are captured: ``cdc = true``, matching ``include`` (if any) and no ``exclude`` pattern
    (``keyspace.table`` shell patterns, e.g. ``shop.*``)."""

    def __init__(self, include: list[str], exclude: list[str]) -> None:
        self.include, self.exclude = include, exclude

    def __call__(self, t: TableSchema) -> bool:
        name = f"{t.keyspace}.{t.table}"
        if not t.cdc or any(fnmatch.fnmatchcase(name, p) for p in self.exclude):
            return False
        return not self.include or any(fnmatch.fnmatchcase(name, p) for p in self.include)


class BatchBuilder:
    """Reads and converts one chunk at a time (blocking; run it in a worker thread).

    ``schemas`` reloads once for each table id or column it has not seen yet, so a table created just before
    its first writes is decoded, not dropped (see ``SchemaRegistry``)."""

    def __init__(self, follower: SegmentFollower, schemas: SchemaRegistry, include: TableFilter, origin: Origin,
                 prefix: str, ensure_topic: object) -> None:
        self.follower = follower
        self.schemas = schemas
        self.include = include
        self.origin = origin
        self.prefix = prefix
        self.ensure_topic = ensure_topic
        self.decoder = MutationDecoder(schemas)
        self._avro: dict[int, tuple[TableSchema, avro.EventSchema]] = {}
        self._tables: dict[int, tuple[TableSchema, bool, str]] = {}
        self._encoders: dict[int, tuple[TableSchema, TableEncoder | None]] = {}

    def _event_schema(self, t: TableSchema) -> avro.EventSchema:
        cached = self._avro.get(id(t))
        if cached is not None and cached[0] is t:
            return cached[1]
        s = avro.table_schema(t)
        self._avro[id(t)] = (t, s)
        ensure = self.ensure_topic
        assert callable(ensure)
        ensure(table_topic(self.prefix, t.keyspace, t.table))
        return s

    def _table(self, t: TableSchema) -> tuple[TableSchema, bool, str]:
        """(t, captured?, topic), computed once per table schema version."""
        cached = self._tables.get(id(t))
        if cached is not None and cached[0] is t:
            return cached
        entry = (t, self.include(t), table_topic(self.prefix, t.keyspace, t.table))
        self._tables[id(t)] = entry
        return entry

    def _encoder(self, t: TableSchema) -> TableEncoder | None:
        cached = self._encoders.get(id(t))
        if cached is not None and cached[0] is t:
            return cached[1]
        encoder = None
        try:
            encoder = TableEncoder(t, self._event_schema(t), self.origin)
        except Exception as exc:
            log.warning("no fast encoder for table", table=t.name, error=str(exc))
        self._encoders[id(t)] = (t, encoder)
        return encoder

    def _fast(self, mutation: Mutation, pos: Position, batch: Batch) -> bool:
        """Encode ``mutation``'s events straight from its raw values into ``batch``; False (nothing added)
        when some update needs the reference path."""
        out: list[tuple[str, bytes, TableSchema, list[tuple[str, int, bytes]]]] = []
        for u in mutation.updates:
            t, included, topic = self._table(u.table)
            if not included:
                continue
            encoder = self._encoder(t)
            if encoder is None:
                return False
            try:
                out.append((topic, u.key, t, encoder.encode(u, pos.segment_id, pos.offset)))
            except Unsupported:
                return False
            except Exception as exc:
                log.warning("fast encoder failed, using the reference path", table=t.name, error=str(exc))
                return False
        for topic, key, t, events in out:
            schema = self._event_schema(t)
            batch.schemas[schema.fingerprint] = schema
            for op, ts, value in events:
                batch.records.append(Record(topic, key, value))
                if ts > batch.newest_micros:
                    batch.newest_micros = ts
                batch.counts[(t.keyspace, t.table, op)] += 1
        return True

    def _captured_keyspace(self, data: bytes, keyspaces: set[str]) -> bool:
        tid = first_table_id(data)
        t = self.schemas.get(tid) if tid is not None else None
        if t is None:
            return tid is None  # unreadable id: let the decoder report it; unknown after refresh: dropped table
        if t.keyspace not in keyspaces and self._table(t)[1]:  # created since this batch began
            keyspaces.add(t.keyspace)
        return t.keyspace in keyspaces

    def next(self, max_items: int) -> Batch:
        """Read up to ``max_items`` entries and convert them; ``position`` is set when the follower advanced."""
        before = self.follower.position
        chunk = self.follower.poll(max_items)
        after = self.follower.position
        batch = Batch(position=after if after != before else None, end=chunk.end)
        keyspaces = {t.keyspace for t in self.schemas.tables() if self._table(t)[1]}
        read = decoded = 0
        for item in chunk.items:
            if item.error is not None:
                metrics.SECTION_ERRORS.inc()
                log.error("damaged segment data", segment=item.path, offset=item.error.offset,
                          reason=item.error.reason)
                continue
            entry = item.entry
            assert entry is not None
            read += 1
            if not self._captured_keyspace(entry.data, keyspaces):
                continue
            decoded += 1
            pos = entry.position
            try:
                mutation = self.decoder.decode(entry.data, item.messaging_version, pos, item.path)
                if self._fast(mutation, pos, batch):
                    continue
                changes = from_mutation(mutation, self.origin, pos.segment_id, pos.offset, self.include)
                for c in changes:
                    schema = self._event_schema(c.table)
                    value = avro.encode(c.event, schema, c.raw_key, c.raw_clustering, c.raw_bounds)
                    batch.records.append(Record(table_topic(self.prefix, c.table.keyspace, c.table.table), c.key,
                                                value))
                    batch.schemas[schema.fingerprint] = schema
                    batch.newest_micros = max(batch.newest_micros, c.event.timestamp_micros)
                    batch.counts[(c.table.keyspace, c.table.table, c.event.op.value)] += 1
            except (MutationDecodeError, ValueError) as exc:
                batch.records.append(self._dead_letter(item.path, pos, entry.data, exc))
        metrics.MUTATIONS_READ.inc(read)
        metrics.MUTATIONS_DECODED.inc(decoded)
        return batch

    def _dead_letter(self, path: str, pos: Position, data: bytes, exc: Exception) -> Record:
        metrics.DEAD_LETTERS.inc()
        table_id = getattr(exc, "table_id", None)
        log.error("undecodable entry sent to the dead-letter topic", segment=path, position=str(pos),
                  table_id=str(table_id) if table_id else None, error=str(exc))
        value = json.dumps({"segment": path, "position": str(pos), "table_id": str(table_id) if table_id else None,
                            "error": str(exc), "entry_hex": data.hex()}).encode()
        return Record(dead_letter_topic(self.prefix), str(pos).encode(), value)
