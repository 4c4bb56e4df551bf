"""The CPU stage of capture: entries of a follower poll → decoded mutations → change events → Avro records.

:class:`BatchBuilder` owns the schema lookup, the mutation decoder and the Avro schema cache (all used from one
worker thread).  Each :meth:`BatchBuilder.next` returns a :class:`Batch`: the records to produce, the Avro
schemas they use, and the position to commit with them.  Entries of keyspaces without a captured table are
skipped before decoding (a mutation touches one keyspace).  An entry is decoded with the tables' fast encoders as row
sinks (rows straight to Avro, one pass); one the sinks refuse is decoded again into Rows for the fast encoder or
the reference path.  An entry that cannot be decoded becomes a dead-letter
record with its coordinates — it is never silently skipped.
"""

from __future__ import annotations

import fnmatch
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import structlog

from cdcpipe import avro
from cdcpipe.capture import metrics
from cdcpipe.capture.backdated import BackdatedCheck
from cdcpipe.capture.cdc_index import SegmentEnd, SegmentFollower, damage_record, scan
from cdcpipe.capture.cdc_switch import SCHEMA_RAW_IDS, CdcLog, entry_rows, scan_ahead
from cdcpipe.capture.encoder import TableEncoder, Unsupported
from cdcpipe.capture.events import Change, Origin, from_mutation
from cdcpipe.capture.mutation import Mutation, MutationDecoder, SinkRefused, first_table_id, raw_table_id
from cdcpipe.capture.producer import Record
from cdcpipe.capture.registry import SchemaRegistry
from cdcpipe.capture.schema_watch import SchemaWatcher
from cdcpipe.capture.segment import Position
from cdcpipe.errors import MutationDecodeError, UnknownTableError
from cdcpipe.model import Op
from cdcpipe.schema import TableSchema
from cdcpipe.topics import capture_dlq_topic, table_topic

log = structlog.get_logger(__name__)
_new: Any = tuple.__new__  # builds a NamedTuple without its Python-level __new__
# per table schema version: (table, captured?, topic, fast encoder, Avro schema, op -> metrics label tuple)
_Plan = tuple[TableSchema, bool, str, "TableEncoder | None", "avro.EventSchema | None", dict[str, tuple[str, str, str]]]


@dataclass(slots=True)
class Batch:
    """Records ready to produce and the position that covers them (None: nothing new was read)."""

    records: list[Record] = field(default_factory=list)
    schemas: dict[bytes, avro.EventSchema] = field(default_factory=dict)
    position: Position | None = None
    end: SegmentEnd | None = None
    newest_micros: int = 0
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    caught_up: bool = False  # the read reached everything durable: commit without waiting for more
    durable_ns: int = 0  # when the oldest data read was made durable (its idx written; 0: nothing read)
    read_ns: int = 0  # when the read of that data began
    cdc_log: dict[str, Any] | None = None  # what the log said of the tables' cdc flags at ``position``
    encoded_ns: int = 0  # ... and when its records were ready

    def extend(self, other: Batch) -> None:
        if other.durable_ns and (not self.durable_ns or other.durable_ns < self.durable_ns):
            self.durable_ns, self.read_ns, self.encoded_ns = other.durable_ns, other.read_ns, other.encoded_ns
        self.records += other.records
        self.schemas.update(other.schemas)
        self.position = other.position or self.position
        self.end = other.end or self.end
        self.newest_micros = max(self.newest_micros, other.newest_micros)
        self.counts.update(other.counts)
        self.caught_up = other.caught_up
        self.cdc_log = other.cdc_log or self.cdc_log


class TableFilter:
    """Which tables are captured: ``cdc = true``, matching ``include`` (if any) and no ``exclude`` pattern
    (``keyspace.table`` shell patterns, e.g. ``shop.*``)."""

    def __init__(self, include: list[str], exclude: list[str]) -> None:
        self.include, self.exclude = include, exclude

    def __call__(self, t: TableSchema) -> bool:
        return t.cdc and self.patterns_match(t)

    def patterns_match(self, t: TableSchema) -> bool:
        """Whether ``t`` would be captured with ``cdc = true`` (never a system keyspace: CDC is off there)."""
        name = f"{t.keyspace}.{t.table}"
        if t.keyspace.startswith("system") or any(fnmatch.fnmatchcase(name, p) for p in self.exclude):
            return False
        return not self.include or any(fnmatch.fnmatchcase(name, p) for p in self.include)


class BatchBuilder:
    """Reads and converts one chunk at a time (blocking; run it in a worker thread).

    ``schemas`` reloads once for each table id or column it has not seen yet, so a table created just before
    its first writes is decoded, not dropped (see ``SchemaRegistry``)."""

    def __init__(self, follower: SegmentFollower, schemas: SchemaRegistry, include: TableFilter, origin: Origin,
                 prefix: str, ensure_topic: object, *, watcher: SchemaWatcher | None = None,
                 recheck_s: float = 5.0, off_grace_s: float = 15.0, cdc_log: CdcLog | None = None,
                 backdated: BackdatedCheck | None = None) -> None:
        self.follower = follower
        self.schemas = schemas
        self.watcher = watcher
        self.recheck_s = recheck_s
        self.off_grace_s = off_grace_s
        # tables seen switched to cdc = false: still captured until the read passes what was durable
        # ``off_grace_s`` after the switch was seen (the writes made before it): id -> (deadline, that position)
        self._lingering: dict[uuid.UUID, tuple[float, Position | None]] = {}
        self._rechecked = 0.0  # monotonic time of the last re-check reload
        self._durable_ns = 0  # when the data of the chunk being converted was made durable
        self._recheck_ids: set[bytes] = set()  # raw ids of included tables held as cdc = false (this generation)
        self.include = include
        self.origin = origin
        self.prefix = prefix
        self.ensure_topic = ensure_topic
        self.decoder = MutationDecoder(schemas)
        self._avro: dict[int, tuple[TableSchema, avro.EventSchema]] = {}
        self._tables: dict[int, tuple[TableSchema, bool, str]] = {}
        self._plans: dict[int, _Plan] = {}
        self._keyspace_of: dict[bytes, bool] = {}  # raw table id -> its keyspace is captured (this generation)
        self._generation: object = None
        self.cdc_log = cdc_log or CdcLog()
        self._suppressed: frozenset[uuid.UUID] = frozenset()  # tables whose writes at the read precede their switch
        self._switch_dirty = True  # recompute ``_suppressed`` at the next entry
        self.backdated = backdated
        self._backdated_hit = False  # the entry just converted had a write older than a switch (``cdc_log.floor``)

    def _event_schema(self, t: TableSchema) -> avro.EventSchema:
        cached = self._avro.get(id(t))
        if cached is not None and cached[0] is t:
            return cached[1]
        s = avro.table_schema(t)
        ensure = self.ensure_topic
        assert callable(ensure)
        ensure(table_topic(self.prefix, t.keyspace, t.table))
        self._avro[id(t)] = (t, s)  # only once its topic exists: a failed creation is tried again
        return s

    def _table(self, t: TableSchema) -> tuple[TableSchema, bool, str]:
        """(t, captured?, topic), computed once per table schema version."""
        cached = self._tables.get(id(t))
        if cached is not None and cached[0] is t:
            return cached
        entry = (t, self._captures(t), table_topic(self.prefix, t.keyspace, t.table))
        self._tables[id(t)] = entry
        return entry

    def _plan(self, t: TableSchema) -> _Plan:
        """How the fast path ships ``t``'s updates, computed once per table schema version."""
        _, included, topic = self._table(t)
        encoder = schema = None
        counts: dict[str, tuple[str, str, str]] = {}
        if included:
            schema = self._event_schema(t)
            counts = {op.value: (t.keyspace, t.table, op.value) for op in Op}
            try:
                encoder = TableEncoder(t, schema, self.origin)
            except Exception as exc:
                log.warning("no fast encoder for table", table=t.name, error=str(exc))
        plan = (t, included, topic, encoder, schema, counts)
        self._plans[id(t)] = plan
        return plan

    def _fast(self, mutation: Mutation, pos: Position, batch: Batch) -> bool:
        """Encode ``mutation``'s events straight from its raw values into ``batch``; False (nothing added)
        when some update needs the reference path."""
        out: list[tuple[_Plan, bytes, list[tuple[str, int, bytes]]]] = []
        plans = self._plans
        for u in mutation.updates:
            t = u.table
            plan = plans.get(id(t))
            if plan is None or plan[0] is not t:
                plan = self._plan(t)
            if not plan[1]:
                continue
            encoder = plan[3]
            if encoder is None:
                return False
            try:
                out.append((plan, u.key, encoder.encode(u, pos.segment_id, pos.offset)))
            except Unsupported:
                return False
            except Exception as exc:
                log.warning("fast encoder failed, using the reference path", table=t.name, error=str(exc))
                return False
        records, counts, newest, floor = batch.records, batch.counts, batch.newest_micros, self.cdc_log.floor
        for (_, _, topic, _, schema, keys), key, events in out:
            assert schema is not None
            batch.schemas[schema.fingerprint] = schema
            for op, ts, value in events:
                records.append(_new(Record, (topic, key, value)))
                if ts > newest:
                    newest = ts
                if ts < floor:
                    self._backdated_hit = True
                counts[keys[op]] += 1
        batch.newest_micros = newest
        return True

    def _sink(self, t: TableSchema) -> TableEncoder | None:
        """``MutationDecoder.decode``'s sinks: the fast encoder of a captured table."""
        plan = self._plans.get(id(t))
        if plan is None or plan[0] is not t:
            plan = self._plan(t)
        return plan[3] if plan[1] else None

    def _fused(self, data: bytes, version: int, pos: Position, path: str, batch: Batch) -> bool:
        """Decode the entry with the fast encoders as row sinks (no Rows built) into ``batch``; False (nothing
        added) when it needs the separate passes (``decode`` then ``_fast`` or the reference path)."""
        try:
            mutation = self.decoder.decode(data, version, pos, path, self._sink)
        except (Unsupported, SinkRefused, MutationDecodeError):
            return False  # decoded again without sinks: the same verdict, or the reference path
        except Exception as exc:
            log.warning("fast encoder failed, using the reference path", error=str(exc))
            return False
        updates = mutation.updates
        if len(updates) == 1:  # the common case, without the lists below
            u = updates[0]
            plan = self._plans.get(id(u.table))
            if plan is None or plan[0] is not u.table:
                return False
            if plan[1]:
                _, _, topic, encoder, schema, keys = plan
                if encoder is None or schema is None:
                    return False
                batch.schemas[schema.fingerprint] = schema
                records, counts, newest, key = batch.records, batch.counts, batch.newest_micros, u.key
                floor = self.cdc_log.floor
                for op, ts, value in encoder.out:
                    records.append(_new(Record, (topic, key, value)))
                    if ts > newest:
                        newest = ts
                    if ts < floor:
                        self._backdated_hit = True
                    counts[keys[op]] += 1
                batch.newest_micros = newest
            return True
        if len({id(u.table) for u in updates}) < len(updates):
            return False  # one sink per table: never two updates of one table in an entry
        plans = self._plans
        shipped = []
        for u in updates:
            plan = plans.get(id(u.table))
            if plan is None or plan[0] is not u.table:
                return False
            if plan[1]:
                if plan[3] is None:
                    return False  # no fast encoder: its rows were decoded, the reference path ships them
                shipped.append((plan, u.key))
        records, counts, newest, floor = batch.records, batch.counts, batch.newest_micros, self.cdc_log.floor
        for (_, _, topic, encoder, schema, keys), key in shipped:
            assert encoder is not None and schema is not None
            batch.schemas[schema.fingerprint] = schema
            for op, ts, value in encoder.out:
                records.append(_new(Record, (topic, key, value)))
                if ts > newest:
                    newest = ts
                if ts < floor:
                    self._backdated_hit = True
                counts[keys[op]] += 1
        batch.newest_micros = newest
        return True

    def _captured_keyspace(self, data: bytes, keyspaces: set[str]) -> bool | None:
        """Whether the entry's keyspace (that of its first table) is captured; None when its table id is unknown
        even after a schema reload (the caller dead-letters it).  Cached by raw table id for one schema generation
        (an unknown id is looked up again, so a new table's schema gets loaded).  An entry of a table the cache
        holds as ``cdc = false`` first re-checks the schema when the cache may be older than the entry
        (:meth:`_recheck`): a table switched to ``cdc = true`` is captured from its first write after the switch."""
        raw = data[1:17] if data[0] < 0x80 else None
        if raw is not None and not (raw in self._recheck_ids and self._recheck(keyspaces)):  # reloaded: decide anew
            hit = self._keyspace_of.get(raw)
            if hit is not None:
                return hit
        tid = first_table_id(data)
        t = self.schemas.get(tid) if tid is not None else None
        if t is None:
            return True if tid is None else None  # unreadable id: the decoder reports it
        if not t.cdc and raw is not None and self.include.patterns_match(t) and self._recheck(keyspaces):
            t = self.schemas.get(t.table_id) or t
        if t.keyspace not in keyspaces and self._table(t)[1]:  # created since this batch began
            keyspaces.add(t.keyspace)
            self._keyspace_of.clear()
        captured = t.keyspace in keyspaces
        if raw is not None and self._generation == getattr(self.schemas, "generation", None):
            self._keyspace_of[raw] = captured
            if not t.cdc and self.include.patterns_match(t):
                self._recheck_ids.add(raw)
        return captured

    def _recheck(self, keyspaces: set[str]) -> bool:
        """Reload the schema if the cache may predate the chunk's data: always while schema change events are
        unavailable (exact), else at most every ``recheck_s`` (events are the fast path; this covers a lost one).
        True when it reloaded (``keyspaces`` and the caches are then rebuilt)."""
        if self.schemas.loaded_ns >= self._durable_ns:
            return False
        now = time.monotonic()
        if self.watcher is not None and self.watcher.healthy and now - self._rechecked < self.recheck_s:
            return False
        self._rechecked = now
        return self._reload("recheck", keyspaces)

    def _captures(self, t: TableSchema) -> bool:
        """The table filter, plus the tables switched off whose earlier writes are still being read, less the
        tables whose writes being read were logged before their CDC was switched on (``cdc_switch``)."""
        if t.table_id in self._suppressed:
            return False
        return self.include(t) or (t.table_id in self._lingering and self.include.patterns_match(t))

    def _suppress(self, offset: int) -> None:
        """Decide which tables' writes at ``offset`` of the current segment were logged before their switch."""
        self._switch_dirty = False
        log_ = self.cdc_log
        suppressed = frozenset(t.table_id for t in self.schemas.tables()
                               if t.cdc and self.include.patterns_match(t) and log_.pre_switch(t.name, offset))
        if suppressed != self._suppressed:
            for t in self.schemas.tables():
                if t.table_id in suppressed - self._suppressed:
                    metrics.PRE_SWITCH_WINDOWS.inc()
                    log.warning("writes logged before the table's CDC was switched on are not captured (a snapshot "
                                "brings its state over)", table=t.name, segment=log_.segment, offset=offset)
            self._suppressed = suppressed
            self._forget()

    def _switch_entry(self, data: bytes, version: int, pos: Position, path: str) -> None:
        """A ``system_schema`` entry read in order: what its ``tables`` rows say of the tables' cdc flags."""
        rows = entry_rows(self.decoder.decode, data, version, pos, path)
        if rows:
            self.cdc_log.apply(rows)
            self._switch_dirty = True

    def _check_backdated(self, data: bytes, version: int, pos: Position, path: str, batch: Batch) -> None:
        """The entry has writes older than a table's switch: add the deletions Cassandra holds for them
        (:mod:`cdcpipe.capture.backdated`).  A failed read fails the batch, which is read again."""
        if self.backdated is not None:
            changes = from_mutation(self.decoder.decode(data, version, pos, path), self.origin, pos.segment_id,
                                    pos.offset, self._captures)
            for d in self.backdated.check(changes, self.cdc_log.switched_at, self._durable_ns // 1000):
                self._add(d, batch)

    def _reload(self, trigger: str, keyspaces: set[str]) -> bool:
        captured = {t.table_id for t in self.schemas.tables() if self.include(t)}
        if not self.schemas.refresh():
            return False
        metrics.SCHEMA_RELOADS.labels(trigger).inc()
        now = time.monotonic()
        for t in self.schemas.tables():
            if t.table_id in captured and not t.cdc:
                log.warning("table switched to cdc = false: its writes made before the switch are still captured",
                            table=t.name, grace_s=self.off_grace_s)
                self._lingering[t.table_id] = (now + self.off_grace_s, None)
            elif t.cdc:
                self._lingering.pop(t.table_id, None)
        self._forget()
        self._generation = self.schemas.generation
        self.cdc_log.saw(self.schemas.tables())
        self._switch_dirty = True
        keyspaces.clear()
        keyspaces.update(t.keyspace for t in self.schemas.tables() if self._table(t)[1])
        return True

    def next(self, max_items: int) -> Batch:
        """Read up to ``max_items`` entries and convert them; ``position`` is set when the follower advanced.  When
        converting fails (Kafka cannot create a topic, Cassandra cannot reload the schema) the follower is put back
        where it was, so the next call reads the same entries again: nothing is skipped."""
        mark, switches = self.follower.mark(), self.cdc_log.mark()
        try:
            return self._next(max_items)
        except BaseException:
            self.follower.restore(mark)
            self.cdc_log.restore(switches)
            self._switch_dirty = True
            raise

    def _forget(self) -> None:
        """Drop what was decided per table (whether it is captured may have changed)."""
        self._avro.clear()
        self._tables.clear()
        self._plans.clear()
        self._keyspace_of.clear()
        self._recheck_ids.clear()

    def _expire_lingering(self) -> None:
        """Stop capturing a switched-off table once the read has passed everything durable ``off_grace_s`` after
        the switch was seen."""
        now, pos, done = time.monotonic(), self.follower.position, []
        for table_id, (deadline, frontier) in self._lingering.items():
            if frontier is None and now >= deadline:
                states = [s for s in scan(self.follower.cdc_raw) if s.offset is not None]
                frontier = Position(states[-1].segment_id, states[-1].offset or 0) if states else Position(0, 0)
                self._lingering[table_id] = (deadline, frontier)
            if frontier is not None and pos is not None and pos >= frontier:
                done.append(table_id)
        for table_id in done:
            del self._lingering[table_id]
        if done:
            self._forget()

    def _next(self, max_items: int) -> Batch:
        if self._lingering:
            self._expire_lingering()
        before = self.follower.position
        started = time.time_ns()
        chunk = self.follower.poll(max_items)
        after = self.follower.position
        batch = Batch(position=after if after != before else None, end=chunk.end, caught_up=not chunk.more,
                      durable_ns=chunk.durable_ns, read_ns=started if chunk.durable_ns else 0)
        self._durable_ns = chunk.durable_ns or time.time_ns()
        keyspaces = {t.keyspace for t in self.schemas.tables() if self._table(t)[1]}
        if self.watcher is not None:
            self.watcher.ensure()
        if self.schemas.stale and chunk.items:  # a schema change event arrived: decide with the new schema
            self._reload("event", keyspaces)
        generation = getattr(self.schemas, "generation", None)
        if generation != self._generation:
            self._keyspace_of.clear()
            self._recheck_ids.clear()
            self._generation = generation
            self.cdc_log.saw(self.schemas.tables())
        cdc_log = self.cdc_log
        for segment_id, (seg_path, seg_data, limit) in chunk.limits.items():
            scan_ahead(cdc_log, segment_id, seg_path, seg_data, limit, self.follower.keys, self.decoder.decode)
        self._switch_dirty = True
        read = decoded = 0
        decode, fast, fused, captured = self.decoder.decode, self._fast, self._fused, self._captured_keyspace
        for path, version, entry, error in chunk.items:
            if entry is None:
                assert error is not None
                batch.records.append(damage_record(self.prefix, path, error, version, self._origin_json))
                continue
            read += 1
            pos, _, data = entry
            if pos.segment_id != cdc_log.segment:
                cdc_log.enter(pos.segment_id)
                self._switch_dirty = True
            if self._switch_dirty:
                self._suppress(pos.offset)
            known = captured(data, keyspaces)
            if known is None:
                tid = first_table_id(data)
                batch.records.append(self._dead_letter(path, pos, data, UnknownTableError(
                    tid, segment=path, position=pos.offset) if tid is not None else ValueError("no table id"),
                    cause="unknown_table", version=version))
                continue
            if not known:
                if raw_table_id(data) in SCHEMA_RAW_IDS:
                    self._switch_entry(data, version, pos, path)
                continue
            decoded += 1
            if not fused(data, version, pos, path, batch):
                try:
                    mutation = decode(data, version, pos, path)
                    if not fast(mutation, pos, batch):
                        self._reference(mutation, pos, batch)
                except (MutationDecodeError, ValueError) as exc:
                    cause = "unknown_table" if isinstance(exc, UnknownTableError) else "undecodable"
                    batch.records.append(self._dead_letter(path, pos, data, exc, cause=cause, version=version))
            if self._backdated_hit:
                self._backdated_hit = False
                self._check_backdated(data, version, pos, path, batch)
        batch.cdc_log = self.cdc_log.saved()
        metrics.MUTATIONS_READ.inc(read)
        metrics.MUTATIONS_DECODED.inc(decoded)
        if batch.durable_ns:
            batch.encoded_ns = time.time_ns()
        return batch

    def _reference(self, mutation: Mutation, pos: Position, batch: Batch) -> None:
        """The specification path: ``events.from_mutation`` then ``avro.encode``."""
        for c in from_mutation(mutation, self.origin, pos.segment_id, pos.offset, self._captures):
            self._add(c, batch)
            if c.event.timestamp_micros < self.cdc_log.floor:
                self._backdated_hit = True

    def _add(self, c: Change, batch: Batch) -> None:
        schema = self._event_schema(c.table)
        value = avro.encode(c.event, schema, c.raw_key, c.raw_clustering, c.raw_bounds)
        batch.records.append(Record(table_topic(self.prefix, c.table.keyspace, c.table.table), c.key, value))
        batch.schemas[schema.fingerprint] = schema
        batch.newest_micros = max(batch.newest_micros, c.event.timestamp_micros)
        batch.counts[(c.table.keyspace, c.table.table, c.event.op.value)] += 1

    @property
    def _origin_json(self) -> dict[str, str]:
        return {"cluster": self.origin.cluster, "datacenter": self.origin.datacenter, "node": self.origin.node}

    def _dead_letter(self, path: str, pos: Position, data: bytes, exc: Exception, *, cause: str,
                     version: int) -> Record:
        metrics.DEAD_LETTERS.inc()
        metrics.DEAD_LETTERS_BY_CAUSE.labels(cause).inc()
        table_id = getattr(exc, "table_id", None)
        log.error("entry sent to the capture dead-letter topic", cause=cause, segment=path, position=str(pos),
                  table_id=str(table_id) if table_id else None, error=str(exc))
        value = json.dumps({"cause": cause, "segment": path, "position": str(pos),
                            "table_id": str(table_id) if table_id else None, "error": str(exc),
                            "entry_hex": data.hex(), "entry_position": str(pos), "messaging_version": version,
                            "origin": self._origin_json}).encode()
        return Record(capture_dlq_topic(self.prefix), str(pos).encode(), value)
