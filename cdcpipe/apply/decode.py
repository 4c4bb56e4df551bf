"""Kafka records → change events: Avro single-object decoding with schemas from ``<prefix>.schemas``.

:class:`SchemaReader` keeps a fingerprint → schema cache filled from the compacted schemas topic (read from the
beginning with its own group-less consumer; :meth:`SchemaReader.catch_up` reads to the end, blocking: call it in a
thread).  :func:`table_of` turns an event schema into the table metadata merge and writer need.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import fastavro

from cdcpipe import kafka_clients
from cdcpipe.apply import merge
from cdcpipe.apply.avro_read import compile_reader, key_sizes
from cdcpipe.apply.merge import UNSET, ComplexState, RowState, Version, expiry, newer
from cdcpipe.avro import EventSchema, SchemaCache, fingerprint_of
from cdcpipe.cql import PROTOCOL_VERSION, CqlType, decode_value, driver_type, udt_field_index
from cdcpipe.errors import EventDecodeError, KafkaConsumeError
from cdcpipe.model import Bound, Cell, ChangeEvent, ColumnChange, Deletion, Liveness, Op, Source
from cdcpipe.schema import CLUSTERING, PARTITION_KEY, Column, TableSchema

_TABLES: dict[bytes, TableSchema] = {}
_T = TypeVar("_T")
_R = TypeVar("_R", bound="SchemaReader")


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
        dropped=schema.dropped,
    )
    _TABLES[schema.fingerprint] = table
    return table


class SchemaReader:
    """Reads ``<prefix>.schemas`` into a :class:`SchemaCache`.  ``consumer`` is a confluent-kafka Consumer with
    ``isolation.level`` ``read_uncommitted`` (:meth:`open` makes one): a schema record is content-addressed (its
    fingerprint is computed from its text), so one from a transaction still open or aborted is harmless, and a
    ``read_committed`` reader could be held back by another capture's open transaction and never see the end."""

    def __init__(self, consumer: Any, topic: str) -> None:
        self._consumer = consumer
        self._topic = topic
        self.cache = SchemaCache()
        self._lock = threading.Lock()
        self._partitions: list[int] = []

    @classmethod
    def open(cls: type[_R], kafka: dict[str, Any], topic: str) -> _R:
        """A reader of ``topic`` with a consumer of its own (no group offsets: it always starts at the
        beginning)."""

        return cls(kafka_clients.consumer({**kafka, "group.id": f"cdcpipe-schemas-{uuid.uuid4().hex[:8]}",
                             "enable.auto.commit": False, "isolation.level": "read_uncommitted"}), topic)

    def catch_up(self, timeout_s: float = 10.0) -> bool:
        """Read the schemas topic up to its end as of this call (blocking; one caller at a time).

        True when every partition's position reached the high watermark read at the start of the call: every
        schema written before the call is then in the cache.  False when the topic does not exist (yet) or
        ``timeout_s`` passed first.
        Raises :class:`KafkaConsumeError` (retriable) when the broker does not answer."""
        from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

        deadline = time.monotonic() + timeout_s
        with self._lock:
            try:
                if not self._partitions:
                    meta = self._consumer.list_topics(self._topic, timeout=timeout_s)
                    found = meta.topics.get(self._topic)
                    if found is None or found.error is not None or not found.partitions:
                        return False
                    self._partitions = sorted(found.partitions)
                    self._consumer.assign([TopicPartition(self._topic, p, OFFSET_BEGINNING)
                                           for p in self._partitions])
                ends = {p: self._consumer.get_watermark_offsets(
                    TopicPartition(self._topic, p), timeout=max(0.5, deadline - time.monotonic()), cached=False)
                    for p in self._partitions}
                while True:
                    at = self._consumer.position([TopicPartition(self._topic, p) for p in self._partitions])
                    if all(tp.offset >= ends[tp.partition][1] or (tp.offset < 0 and ends[tp.partition][0] >=
                                                                  ends[tp.partition][1]) for tp in at):
                        return True
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    for m in self._consumer.consume(1000, timeout=min(0.5, left)):
                        if m.error() is None and m.value():
                            self.take(m.key(), m.value())
            except KafkaException as exc:
                raise KafkaConsumeError(self._topic, f"reading schemas: {exc.args[0].str() if exc.args else exc}",
                                        retriable=True) from exc

    def take(self, key: bytes | None, value: bytes) -> None:
        """One record of the topic, as read (a subclass reading another compacted topic overrides it)."""
        with contextlib.suppress(EventDecodeError):  # not ours: a schema record of another format version
            self.cache.add(value)

    def close(self) -> None:
        """Close its consumer (blocking)."""
        self._consumer.close()

    def lookup(self, fingerprint: bytes) -> EventSchema | None:
        return self.cache.get(fingerprint)


def decode_record(data: bytes, reader: SchemaReader) -> tuple[ChangeEvent, TableSchema]:
    """One event and its table; raises EventDecodeError (retriable when the schema is not known yet).

    Gives the same event as :func:`cdcpipe.avro.decode` (checked by the unit tests), faster: the per-column
    value codecs of a schema are looked up once (:class:`_Plan`), not per cell."""
    return _decode(data, reader, lambda plan, rec: plan.event(rec))


def decode_delta(data: bytes, reader: SchemaReader) -> tuple[merge.Delta, TableSchema]:
    """What one record writes (:class:`cdcpipe.apply.merge.Delta`) and its table; raises as
    :func:`decode_record`.  Equal to ``merge.delta(table, decode_record(...)[0])`` (checked by the unit tests).
    Upserts and row deletions whose key columns have a canonical encoding are read by the schema's compiled
    :class:`cdcpipe.apply.avro_read.DeltaReader` straight from the bytes; whatever it leaves (other events,
    bodies not in canonical form) is read by fastavro and built by :meth:`_Plan.delta` or, failing that, from the
    decoded event."""
    plan = _plan_of(data, reader)
    if plan.reader is not None:
        found = plan.reader.delta(data)
        if found is not None:
            return found, plan.table

    def build(plan: _Plan, rec: Any) -> merge.Delta:
        found = plan.delta(rec)
        return found if found is not None else merge.delta(plan.table, plan.event(rec))
    return _decode(data, reader, build, plan)


def _plan_of(data: bytes, reader: SchemaReader) -> _Plan:
    """The plan of the record's schema; raises EventDecodeError (retriable when the schema is not known yet)."""
    fp = fingerprint_of(data)
    schema = reader.lookup(fp)
    if schema is None:
        raise EventDecodeError(f"unknown schema fingerprint {fp.hex()}", retriable=True)
    plan = _PLANS.get(fp)
    if plan is None or plan.schema is not schema:
        plan = _PLANS[fp] = _Plan(schema)
    return plan


def _decode(data: bytes, reader: SchemaReader, build: Callable[[_Plan, Any], _T], plan: _Plan | None = None
            ) -> tuple[_T, TableSchema]:
    """The schema and plan of a record, its Avro body read by fastavro, ``build`` applied; errors as
    EventDecodeError."""
    if plan is None:
        plan = _plan_of(data, reader)
    schema = plan.schema
    try:
        return build(plan, fastavro.schemaless_reader(io.BytesIO(data[10:]), schema.plain, None)), plan.table
    except EventDecodeError:
        raise
    except Exception as exc:  # fastavro raises assorted types on malformed bodies
        raise EventDecodeError(f"{schema.keyspace}.{schema.table}: cannot decode event: {exc}") from exc


Codec = Callable[[Any], Any]
_STRINGISH = frozenset({"ascii", "text", "varchar", "blob"})  # empty is a value, not null (as decode_value)
_TIMEUUID = CqlType("timeuuid")
_UUIDS: dict[str, uuid.UUID] = {}


def _codec(t: CqlType | None) -> Codec:
    """raw bytes (or None) → typed value, None where the value cannot be typed (as ``avro.decode`` does):
    :func:`decode_value` with its type dispatch done once."""
    if t is None:
        return lambda raw: None
    if t.name == "counter":
        def counter(raw: Any) -> Any:
            try:
                return None if raw is None else decode_value(t, raw)
            except Exception:  # a malformed counter context
                return None
        return counter
    decode = driver_type(t).deserialize
    stringish = t.name in _STRINGISH

    def codec(raw: Any) -> Any:
        if raw is None or (not raw and not stringish):
            return None
        try:
            return decode(bytes(raw), PROTOCOL_VERSION)
        except Exception:  # driver codecs raise assorted types
            return None
    return codec


class _Column:
    __slots__ = ("complex_", "name", "path", "static", "udt", "value")

    def __init__(self, name: str, kind: str, t: CqlType) -> None:
        self.name = name
        self.static = kind == "static"
        self.complex_ = t.multi_cell
        self.udt: CqlType | None = t if t.multi_cell and t.name == "udt" else None
        value_t: CqlType | None = t
        path_t: CqlType | None = None
        if t.multi_cell:
            kinds = {"list": (t.params[0], _TIMEUUID), "set": (None, t.params[0]),
                     "map": (t.params[1] if len(t.params) > 1 else None, t.params[0])}
            value_t, path_t = kinds.get(t.name, (None, None))
        self.value = _codec(value_t)
        self.path = _codec(path_t)

    def value_of(self, raw: Any, path_raw: Any) -> Any:
        if self.udt is None:
            return self.value(raw)
        idx = udt_field_index(path_raw or b"\0\0")
        return _codec(self.udt.params[idx])(raw) if idx < len(self.udt.params) else None

    def path_of(self, path_raw: Any) -> Any:
        if self.udt is not None:
            return None if path_raw is None else self.udt.field_names[udt_field_index(path_raw)]
        return self.path(path_raw)


def _deletion(d: Any) -> Deletion | None:
    return None if d is None else Deletion(d["timestamp"], d["local_deletion_time"])


_OPS = {op.value: op for op in Op}


def _fits(sizes: tuple[int, ...], raws: Any) -> bool:
    return len(raws) == len(sizes) and all(
        r is not None and (n == -1 or len(r) == n) for n, r in zip(sizes, raws, strict=True))


def _fast_version(c: Any, is_set: bool) -> Version:
    """A cell's :class:`Version` from its Avro record (``merge._version`` without the typed value)."""
    if c["deleted"]:
        return Version(c["timestamp"], c["local_deletion_time"] or 0, 0, True)
    ttl = c["ttl"]
    ldt = expiry(c["timestamp"], ttl, c["expires_at"]) if ttl > 0 else None
    if is_set:
        return Version(c["timestamp"], ldt, ttl, False, b"", None)
    return Version(c["timestamp"], ldt, ttl, False, c["raw"], UNSET)


class _Plan:
    """What decoding the events of one schema needs, computed once."""

    def __init__(self, schema: EventSchema) -> None:
        self.schema = schema
        self.table = table_of(schema)
        self.fields = {c.field: _Column(c.name, c.kind, c.type) for c in schema.columns}
        self.keys = [_codec(c.type) for c in schema.partition_key]
        self.clustering = [_codec(c.type) for c in schema.clustering]
        # delta: per Avro field, (column name, multi-cell, static, set); key sizes (None: no fast path)
        self.flat = {c.field: (c.name, c.type.multi_cell, c.kind == "static", c.type.name == "set")
                     for c in schema.columns}
        self.pk_sizes = key_sizes(schema.partition_key)
        self.ck_sizes = key_sizes(schema.clustering)
        self.reader = compile_reader(schema)

    def delta(self, rec: Any) -> merge.Delta | None:
        """The event's :class:`merge.Delta` (as :func:`merge.event_state`), None when the fast path does not
        apply (partition and range deletions, keys of non-canonical types, a collection cell without path)."""
        op = _OPS[rec["op"]]
        if (op is not Op.UPSERT and op is not Op.ROW_DELETE) or self.pk_sizes is None or self.ck_sizes is None:
            return None
        key_raw, ck_raw = rec["key_raw"], rec["clustering_raw"]
        if not _fits(self.pk_sizes, key_raw):
            return None
        pk = key_raw[0] if len(key_raw) == 1 else b"".join(len(r).to_bytes(2, "big") + r + b"\x00" for r in key_raw)
        if ck_raw:
            if not _fits(self.ck_sizes[:len(ck_raw)], ck_raw):
                return None
            ck = b"".join(len(r).to_bytes(4, "big") + r for r in ck_raw)
        else:
            ck = b""
        cells: dict[str, Version] = {}
        complex_: dict[str, ComplexState] = {}
        s_cells: dict[str, Version] = {}
        s_complex: dict[str, ComplexState] = {}
        has_static = has_regular = False
        for field_name, change in rec["columns"].items():
            if change is None:
                continue
            name, multi, static, is_set = self.flat[field_name]
            if static:
                has_static = True
                into, into_complex = s_cells, s_complex
            else:
                has_regular = True
                into, into_complex = cells, complex_
            if multi:
                elements: dict[bytes, Version] = {}
                for c in change["cells"]:
                    path = c.get("path_raw")
                    if path is None:
                        return None
                    v = _fast_version(c, is_set)
                    old = elements.get(path)
                    elements[path] = v if old is None else newer(old, v)  # type: ignore[assignment]
                into_complex[name] = ComplexState(_deletion(change["complex_deletion"]), elements)
            else:
                for c in change["cells"]:
                    v = _fast_version(c, False)
                    old = into.get(name)
                    into[name] = v if old is None else newer(old, v)  # type: ignore[assignment]
        deletion = _deletion(rec["deletion"])
        static_only = rec["static"] and bool(self.table.clustering)
        lv = rec["liveness"]
        part = merge.PartitionState(static=RowState(None, None, s_cells, s_complex)) if has_static else None
        row = None
        if op is Op.ROW_DELETE or has_regular or deletion is not None or (lv is not None and not static_only):
            marker = None
            if lv is not None and not static_only:
                marker = Version(lv["timestamp"], expiry(lv["timestamp"], lv["ttl"], lv["expires_at"]), lv["ttl"])
            row = RowState(marker, deletion, cells, complex_)
        return merge.Delta(op, pk, ck, part, row)

    def event(self, rec: Any) -> ChangeEvent:
        columns = []
        for name, change in rec["columns"].items():
            if change is None:
                continue
            col = self.fields[name]
            cells = []
            if col.complex_:
                for c in change["cells"]:
                    path_raw = c.get("path_raw")
                    raw = c["raw"]
                    cells.append(Cell(None if c["deleted"] else col.value_of(raw, path_raw), c["timestamp"],
                                      c["ttl"], c["expires_at"], c["deleted"], c["local_deletion_time"],
                                      col.path_of(path_raw), raw, path_raw))
            else:
                value = col.value
                for c in change["cells"]:
                    raw = c["raw"]
                    cells.append(Cell(None if c["deleted"] else value(raw), c["timestamp"], c["ttl"],
                                      c["expires_at"], c["deleted"], c["local_deletion_time"], None, raw, None))
            columns.append(ColumnChange(col.name, tuple(cells), _deletion(change["complex_deletion"]), col.static))
        src = rec["source"]
        table_id = _UUIDS.get(src["table_id"])
        if table_id is None:
            table_id = _UUIDS[src["table_id"]] = uuid.UUID(src["table_id"])
        lv = rec["liveness"]
        return ChangeEvent(
            event_id=rec["event_id"], op=Op(rec["op"]), timestamp_micros=rec["timestamp_micros"],
            source=Source(src["cluster"], src["datacenter"], src["node"], src["keyspace"], src["table"],
                          table_id, src["segment_id"], src["position"]),
            partition_key=tuple(f(r) for f, r in zip(self.keys, rec["key_raw"], strict=True)),
            clustering=tuple(f(r) for f, r in zip(self.clustering, rec["clustering_raw"], strict=False)),
            liveness=None if lv is None else Liveness(lv["timestamp"], lv["ttl"], lv["expires_at"]),
            deletion=_deletion(rec["deletion"]), range_start=self._bound(rec["range_start"]),
            range_end=self._bound(rec["range_end"]), columns=tuple(columns), static=rec["static"])

    def _bound(self, b: Any) -> Bound | None:
        if b is None:
            return None
        return Bound(tuple(f(r) for f, r in zip(self.clustering, b["values_raw"], strict=False)), b["inclusive"])


_PLANS: dict[bytes, _Plan] = {}
