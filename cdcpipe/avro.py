"""Avro form of :class:`cdcpipe.model.ChangeEvent`: one record schema per table schema version, single-object
encoding, and the decoder the apply side uses.  The format is specified in ``docs/events.md``.

Contract
    - :func:`table_schema` turns a Cassandra ``TableSchema`` into an :class:`EventSchema` (the Avro record plus the
      table metadata a consumer without Cassandra access needs, embedded as ``cdcpipe.*`` schema attributes).
    - :func:`encode` writes the Avro single-object encoding: ``C3 01`` + 8-byte little-endian CRC-64-AVRO
      fingerprint of the schema's parsing canonical form + the binary body.
    - :func:`decode` reverses it given a fingerprint → :class:`EventSchema` lookup (built from the compacted
      ``<prefix>.schemas`` topic with :meth:`EventSchema.from_json`).  ``decode(encode(e, s), ...) == e`` for
      every event capture produces: every value also travels as its serialized Cassandra bytes (``raw``), and
      decode rebuilds typed values from those with the same codecs capture uses, so no precision is lost in the
      Avro typed fields (``decimal``, ``varint``, ``time`` nanoseconds, out-of-range dates).
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import fastavro

from cdcpipe.avro_values import (
    SIMPLE,
    Namer,
    avro_name,
    avro_type,
    converter,
    element_cql,
    element_types,
    nullable,
    safe_avro,
)
from cdcpipe.avro_values import to_avro as to_avro  # public API, re-exported
from cdcpipe.cql import CqlType, decode_value, parse_cql_type, udt_field_index
from cdcpipe.errors import EventDecodeError
from cdcpipe.model import Bound, Cell, ChangeEvent, ColumnChange, Deletion, Liveness, Op, Source
from cdcpipe.schema import DroppedColumn, TableSchema

MAGIC = b"\xc3\x01"
FORMAT_VERSION = 3  # 3: stable record name, the metadata hash in a null field; 2: in the record name
VERSION_FIELD = "cdcpipe_version_"  # + 16 hex: the last field, type null (no bytes), default null
NAMESPACE = "cdcpipe"


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    """A column as the Avro schema carries it: its Avro field name, CQL name, kind and type."""

    field: str
    name: str
    kind: str
    type: CqlType


@dataclass(frozen=True, slots=True)
class EventSchema:
    """The Avro schema of one table schema version.  ``schema`` is the JSON-able schema (with attributes),
    ``parsed`` the fastavro-parsed form, ``fingerprint`` the 8-byte little-endian CRC-64-AVRO."""

    keyspace: str
    table: str
    table_id: uuid.UUID
    partition_key: tuple[ColumnInfo, ...]
    clustering: tuple[ColumnInfo, ...]
    columns: tuple[ColumnInfo, ...]
    schema: dict[str, Any] = field(compare=False, repr=False)
    parsed: Any = field(compare=False, repr=False)
    plain: Any = field(compare=False, repr=False)  # parsed without logical types: what decode reads with
    fingerprint: bytes = b""
    dropped: tuple[DroppedColumn, ...] = ()  # the table's dropped columns (``cdcpipe.dropped``)
    _by_name: dict[str, ColumnInfo] = field(default_factory=dict, compare=False, repr=False)
    # what encode needs per event, computed once: value converters and the full names of the record branches
    # of unions (fastavro's tuple notation picks a branch by name instead of validating every candidate)
    _convert: dict[int, Callable[[Any], Any]] = field(default_factory=dict, compare=False, repr=False)
    _branch: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    _tail: dict[str, None] = field(default_factory=dict, compare=False, repr=False)  # null fields after ``columns``

    def __post_init__(self) -> None:
        self._by_name.update({c.name: c for c in self.columns})
        for c in (*self.partition_key, *self.clustering, *self.columns):
            self._convert[id(c)] = converter(c.type)
        if self.schema:
            ns = self.schema["namespace"]
            fields = {f["name"]: f for f in self.schema["fields"]}
            self._branch.update({n: f"{ns}.{n}" for n in ("Clustering", "Liveness", "Deletion", "Bound")})
            for f in fields["columns"]["type"]["fields"]:
                self._branch[f["name"]] = f"{ns}.{f['type'][1]['name']}"
            self._tail.update((f["name"], None) for f in self.schema["fields"] if f["name"].startswith(VERSION_FIELD))

    def column(self, name: str) -> ColumnInfo | None:
        return self._by_name.get(name)

    @property
    def column_fields(self) -> list[str]:
        return [c.field for c in self.columns]

    def to_json(self) -> str:
        """The schema as published to ``<prefix>.schemas`` (keys sorted, attributes kept)."""
        return json.dumps(self.schema, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> EventSchema:
        """Rebuild from a published schema (raises EventDecodeError when it is not a cdcpipe event schema)."""
        try:
            schema = json.loads(text)
            udts = {tuple(k.split(".", 1)): (tuple(v["fields"]), tuple(v["types"]))
                    for k, v in schema.get("cdcpipe.udts", {}).items()}
            ks = schema["cdcpipe.keyspace"]

            def info(f: dict[str, Any]) -> ColumnInfo:
                t = parse_cql_type(f["cdcpipe.cql_type"], ks, lambda k, n: udts.get((k, n)))
                return ColumnInfo(f["name"], f["cdcpipe.column"], f["cdcpipe.kind"], t)

            fields = {f["name"]: f for f in schema["fields"]}
            pk = tuple(info(f) for f in fields["partition_key"]["type"]["fields"])
            ck = tuple(info(f) for f in fields["clustering"]["type"][1]["fields"])
            cols = tuple(info(f) for f in fields["columns"]["type"]["fields"])
            dropped = tuple(DroppedColumn(d["name"], parse_cql_type(d["cql_type"], ks, lambda k, n: udts.get((k, n))),
                                          int(d["dropped_time"]), d["kind"])
                            for d in schema.get("cdcpipe.dropped", ()))
            return _build(ks, schema["cdcpipe.table"], uuid.UUID(schema["cdcpipe.table_id"]), pk, ck, cols,
                          schema, dropped=dropped)
        except EventDecodeError:
            raise
        except Exception as exc:  # malformed JSON or not our layout
            raise EventDecodeError(f"not a cdcpipe event schema: {exc}") from exc


# ------------------------------------------------------------------------------------------------ schema

def _deletion_record() -> dict[str, Any]:
    return {"type": "record", "name": "Deletion", "fields": [
        {"name": "timestamp", "type": "long"}, {"name": "local_deletion_time", "type": "long"}]}


def table_schema(table: TableSchema) -> EventSchema:
    """The Avro event schema for one version of a table's schema (pure; cache it per TableSchema)."""
    fnamer = Namer()
    pk = tuple(ColumnInfo(fnamer(c.name), c.name, c.kind, c.type) for c in table.partition_key)
    ck = tuple(ColumnInfo(fnamer(c.name), c.name, c.kind, c.type) for c in table.clustering)
    cnamer = Namer()
    cols = tuple(ColumnInfo(cnamer(c.name), c.name, c.kind, c.type) for c in (*table.static, *table.regular))
    return _build(table.keyspace, table.table, table.table_id, pk, ck, cols, None,
                  reversed_cols={c.name for c in table.clustering if c.reversed}, dropped=table.dropped)


def _udts(t: CqlType, out: dict[str, dict[str, list[str]]]) -> None:
    if t.name == "udt":
        out[f"{t.keyspace}.{t.udt_name}"] = {"fields": list(t.field_names), "types": [p.cql() for p in t.params]}
    for p in t.params:
        _udts(p, out)


def _build(keyspace: str, table: str, table_id: uuid.UUID, pk: tuple[ColumnInfo, ...],
           ck: tuple[ColumnInfo, ...], cols: tuple[ColumnInfo, ...], schema: dict[str, Any] | None,
           reversed_cols: set[str] | None = None, dropped: tuple[DroppedColumn, ...] = ()) -> EventSchema:
    if schema is None:
        schema = _schema_json(keyspace, table, table_id, pk, ck, cols, reversed_cols or set(), dropped)
    elif _version_mark(schema) != _digest(schema):
        raise EventDecodeError(f"{keyspace}.{table}: the schema's version mark does not match its metadata "
                               "(altered after publication?)")
    parsed = fastavro.parse_schema(json.loads(json.dumps(schema)))
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    fp = int(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"), 16).to_bytes(8, "little")
    plain = fastavro.parse_schema(_strip_logical(json.loads(json.dumps(schema))))
    return EventSchema(keyspace, table, table_id, pk, ck, cols, schema, parsed, plain, fp, dropped)


def _digest(schema: dict[str, Any]) -> str:
    """16 hex: the first 8 bytes of BLAKE2b over the schema JSON without its version mark — the ``cdcpipe.*``
    metadata and logical types included.  Carried into Avro's parsing canonical form (and with it the fingerprint,
    which would otherwise drop them: uuid vs timeuuid, clustering order, table id, column kind, ... would share a
    fingerprint) as the name of the record's last field (format 3) or in the record name (format 2)."""
    if schema.get("cdcpipe.format") == 2:
        rest = {k: v for k, v in schema.items() if k != "name"}
    else:
        rest = {**schema, "fields": [f for f in schema["fields"] if not f["name"].startswith(VERSION_FIELD)]}
    return hashlib.blake2b(json.dumps(rest, sort_keys=True).encode(), digest_size=8).hexdigest()


def _version_mark(schema: dict[str, Any]) -> str | None:
    if schema.get("cdcpipe.format") == 2:  # written by cdcpipe 0.2: ``<table>_m<hash>``
        name = str(schema.get("name", ""))
        return name.rsplit("_m", 1)[1] if "_m" in name else None
    last = schema["fields"][-1]["name"]
    return last[len(VERSION_FIELD):] if last.startswith(VERSION_FIELD) else None


def _strip_logical(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_logical(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical(v) for v in node]
    return node


def _schema_json(keyspace: str, table: str, table_id: uuid.UUID, pk: tuple[ColumnInfo, ...],
                 ck: tuple[ColumnInfo, ...], cols: tuple[ColumnInfo, ...], reversed_cols: set[str],
                 dropped: tuple[DroppedColumn, ...]) -> dict[str, Any]:
    namer = Namer()
    for fixed in ("EventId", "Op", "Source", "Liveness", "Deletion", "Bound", "PartitionKey", "Clustering",
                  "Columns"):
        namer(fixed)
    record_name = namer(table)  # stable across the table's versions (a table named like a fixed type: ``_2``)
    udts: dict[str, dict[str, list[str]]] = {}

    def key_field(c: ColumnInfo, optional: bool) -> dict[str, Any]:
        _udts(c.type, udts)
        t = avro_type(c.type, namer, c.field)
        return {"name": c.field, "type": nullable(t) if optional else t, "cdcpipe.column": c.name,
                "cdcpipe.kind": c.kind, "cdcpipe.cql_type": c.type.cql()}

    column_fields = []
    for c in cols:
        _udts(c.type, udts)
        value_t, path_t = element_types(c.type, namer, c.field)
        cell_fields: list[dict[str, Any]] = [
            {"name": "value", "type": nullable(value_t) if value_t != "null" else "null"},
            {"name": "raw", "type": "bytes"},
            {"name": "timestamp", "type": "long"},
            {"name": "ttl", "type": "int"},
            {"name": "expires_at", "type": ["null", "long"]},
            {"name": "deleted", "type": "boolean"},
            {"name": "local_deletion_time", "type": ["null", "long"]},
        ]
        if path_t is not None:
            cell_fields += [{"name": "path", "type": nullable(path_t)}, {"name": "path_raw", "type": "bytes"}]
        change = {"type": "record", "name": namer(f"Column_{c.field}"), "fields": [
            {"name": "cells", "type": {"type": "array", "items": {
                "type": "record", "name": namer(f"Cell_{c.field}"), "fields": cell_fields}}},
            {"name": "complex_deletion", "type": ["null", "Deletion"]}]}
        column_fields.append({"name": c.field, "type": ["null", change], "default": None, "cdcpipe.column": c.name,
                              "cdcpipe.kind": c.kind, "cdcpipe.cql_type": c.type.cql()})
    pk_fields = [key_field(c, False) for c in pk]
    ck_fields = [key_field(c, True) for c in ck]
    schema: dict[str, Any] = {
        "type": "record", "name": record_name, "namespace": f"{NAMESPACE}.{avro_name(keyspace)}",
        "cdcpipe.format": FORMAT_VERSION, "cdcpipe.keyspace": keyspace, "cdcpipe.table": table,
        "cdcpipe.table_id": str(table_id), "cdcpipe.partition_key": [c.name for c in pk],
        "cdcpipe.clustering": [{"name": c.name, "order": "DESC" if c.name in reversed_cols else "ASC"} for c in ck],
        "cdcpipe.udts": udts,
        "fields": [
            {"name": "event_id", "type": {"type": "fixed", "name": "EventId", "size": 16}},
            {"name": "op", "type": {"type": "enum", "name": "Op", "symbols": [o.value for o in Op]}},
            {"name": "timestamp_micros", "type": "long"},
            {"name": "source", "type": {"type": "record", "name": "Source", "fields": [
                {"name": "cluster", "type": "string"}, {"name": "datacenter", "type": "string"},
                {"name": "node", "type": "string"}, {"name": "keyspace", "type": "string"},
                {"name": "table", "type": "string"}, {"name": "table_id", "type": SIMPLE["uuid"]},
                {"name": "segment_id", "type": "long"}, {"name": "position", "type": "long"}]}},
            {"name": "partition_key", "type": {"type": "record", "name": "PartitionKey", "fields": pk_fields}},
            {"name": "key_raw", "type": {"type": "array", "items": "bytes"}},
            {"name": "clustering", "type": ["null", {"type": "record", "name": "Clustering", "fields": ck_fields}]},
            {"name": "clustering_raw", "type": {"type": "array", "items": ["null", "bytes"]}},
            {"name": "static", "type": "boolean"},
            {"name": "liveness", "type": ["null", {"type": "record", "name": "Liveness", "fields": [
                {"name": "timestamp", "type": "long"}, {"name": "ttl", "type": "int"},
                {"name": "expires_at", "type": ["null", "long"]}]}]},
            {"name": "deletion", "type": ["null", _deletion_record()]},
            {"name": "range_start", "type": ["null", {"type": "record", "name": "Bound", "fields": [
                {"name": "inclusive", "type": "boolean"}, {"name": "values", "type": "Clustering"},
                {"name": "values_raw", "type": {"type": "array", "items": ["null", "bytes"]}}]}]},
            {"name": "range_end", "type": ["null", "Bound"]},
            {"name": "columns", "type": {"type": "record", "name": "Columns", "fields": column_fields}},
        ],
    }
    if dropped:  # only then: the schemas (and fingerprints) of tables without drops stay as they were
        schema["cdcpipe.dropped"] = [{"name": d.name, "cql_type": d.type.cql(), "kind": d.kind,
                                      "dropped_time": d.dropped_time} for d in sorted(dropped, key=lambda d: d.name)]
    schema["fields"].append({"name": VERSION_FIELD + _digest(schema), "type": "null", "default": None})
    return schema


# ------------------------------------------------------------------------------------------------ encode

def _deletion(d: Deletion | None, branch: str) -> tuple[str, dict[str, int]] | None:
    return None if d is None else (branch, {"timestamp": d.timestamp, "local_deletion_time": d.local_deletion_time})


def _clustering_record(s: EventSchema, values: tuple[Any, ...]) -> dict[str, Any]:
    conv = s._convert
    return {c.field: (conv[id(c)](values[i]) if i < len(values) else None) for i, c in enumerate(s.clustering)}


def encode(event: ChangeEvent, schema: EventSchema, raw_key: tuple[bytes, ...],
           raw_clustering: tuple[bytes | None, ...] = (), raw_bounds: tuple[tuple[bytes | None, ...], ...] = ()
           ) -> bytes:
    """Single-object encoding of ``event`` with ``schema``.  ``raw_key``, ``raw_clustering`` and ``raw_bounds``
    (start, end) are the serialized key values the event's typed values were decoded from; every cell must carry
    ``raw``.  Raises ValueError when the event does not fit the schema."""
    branch, conv = schema._branch, schema._convert
    deletion_name = branch["Deletion"]
    columns: dict[str, Any] = dict.fromkeys(schema.column_fields)
    for change in event.columns:
        info = schema.column(change.name)
        if info is None:
            raise ValueError(f"{schema.keyspace}.{schema.table}: column {change.name!r} not in the Avro schema")
        t = info.type
        cells = []
        if not t.multi_cell:
            to_value = conv[id(info)]
            for cell in change.cells:
                if cell.raw is None:
                    raise ValueError(f"column {change.name!r}: cell without raw bytes")
                cells.append({"value": to_value(cell.value), "raw": cell.raw, "timestamp": cell.timestamp,
                              "ttl": cell.ttl, "expires_at": cell.expires_at, "deleted": cell.deleted,
                              "local_deletion_time": cell.local_deletion_time})
        else:
            for cell in change.cells:
                if cell.raw is None:
                    raise ValueError(f"column {change.name!r}: cell without raw bytes")
                value_t, path_t = element_cql(t, cell.raw_path)
                cells.append({
                    "value": safe_avro(value_t, cell.value) if value_t is not None and t.name not in ("set", "udt")
                    else None,
                    "raw": cell.raw, "timestamp": cell.timestamp, "ttl": cell.ttl, "expires_at": cell.expires_at,
                    "deleted": cell.deleted, "local_deletion_time": cell.local_deletion_time,
                    "path": (cell.path if t.name == "udt" else safe_avro(path_t, cell.path) if path_t is not None
                             else None),
                    "path_raw": cell.raw_path or b""})
        columns[info.field] = (branch[info.field], {
            "cells": cells, "complex_deletion": _deletion(change.complex_deletion, deletion_name)})
    src = event.source

    def bound(b: Bound | None, raw: tuple[bytes | None, ...]) -> tuple[str, dict[str, Any]] | None:
        if b is None:
            return None
        return (branch["Bound"], {"inclusive": b.inclusive, "values": _clustering_record(schema, b.values),
                                  "values_raw": list(raw)})

    lv = event.liveness
    record = {
        "event_id": event.event_id, "op": event.op.value, "timestamp_micros": event.timestamp_micros,
        "source": {"cluster": src.cluster, "datacenter": src.datacenter, "node": src.node, "keyspace": src.keyspace,
                   "table": src.table, "table_id": str(src.table_id), "segment_id": src.segment_id,
                   "position": src.position},
        "partition_key": {c.field: conv[id(c)](v) for c, v in zip(schema.partition_key, event.partition_key,
                                                                   strict=True)},
        "key_raw": list(raw_key),
        "clustering": (branch["Clustering"], _clustering_record(schema, event.clustering)) if event.clustering
        else None,
        "clustering_raw": list(raw_clustering), "static": event.static,
        "liveness": None if lv is None else (branch["Liveness"], {
            "timestamp": lv.timestamp, "ttl": lv.ttl, "expires_at": lv.expires_at}),
        "deletion": _deletion(event.deletion, deletion_name),
        "range_start": bound(event.range_start, raw_bounds[0] if raw_bounds else ()),
        "range_end": bound(event.range_end, raw_bounds[1] if raw_bounds else ()),
        "columns": columns,
        **schema._tail,
    }
    buf = io.BytesIO()
    buf.write(MAGIC)
    buf.write(schema.fingerprint)
    try:
        fastavro.schemaless_writer(buf, schema.parsed, record, strict=True)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{schema.keyspace}.{schema.table}: event does not fit its Avro schema: {exc}") from exc
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ decode

def fingerprint_of(data: bytes) -> bytes:
    """The 8-byte schema fingerprint of a single-object-encoded message (raises EventDecodeError)."""
    if len(data) < 10 or data[:2] != MAGIC:
        raise EventDecodeError("not an Avro single-object encoded message")
    return bytes(data[2:10])


def _value(t: CqlType | None, raw: bytes | None) -> Any:
    if t is None or raw is None:
        return None
    try:
        return decode_value(t, raw)
    except Exception:  # driver codecs raise assorted types; capture made the same choice (events._value)
        return None


def decode(data: bytes, schema_lookup: Callable[[bytes], EventSchema | None]) -> ChangeEvent:
    """Decode a single-object-encoded event.  ``schema_lookup`` maps a fingerprint to its EventSchema (None when
    unknown: raises a retriable EventDecodeError, the schemas topic may not be read far enough yet)."""
    fp = fingerprint_of(data)
    schema = schema_lookup(fp)
    if schema is None:
        raise EventDecodeError(f"unknown schema fingerprint {fp.hex()}", retriable=True)
    try:
        rec = fastavro.schemaless_reader(io.BytesIO(data[10:]), schema.plain, None)
        return _event(rec, schema)
    except EventDecodeError:
        raise
    except Exception as exc:  # fastavro raises assorted types on malformed bodies
        raise EventDecodeError(f"{schema.keyspace}.{schema.table}: cannot decode event: {exc}") from exc


def _event(rec: Any, s: EventSchema) -> ChangeEvent:
    def deletion(d: Any) -> Deletion | None:
        return None if d is None else Deletion(d["timestamp"], d["local_deletion_time"])

    def bound(b: Any) -> Bound | None:
        if b is None:
            return None
        raws = b["values_raw"]
        return Bound(tuple(_value(s.clustering[i].type, r) for i, r in enumerate(raws)), b["inclusive"])

    fields = {c.field: c for c in s.columns}
    columns = []
    for name, change in rec["columns"].items():
        if change is None:
            continue
        info = fields[name]
        t = info.type
        cells = []
        for c in change["cells"]:
            path_raw = c.get("path_raw") if t.multi_cell else None
            value_t, path_t = element_cql(t, path_raw)
            raw = c["raw"]
            path: Any = None
            if t.multi_cell:
                path = (t.field_names[udt_field_index(path_raw)] if t.name == "udt" and path_raw is not None
                        else _value(path_t, path_raw))
            value = None if c["deleted"] or value_t is None else _value(value_t, raw)
            cells.append(Cell(value, c["timestamp"], c["ttl"], c["expires_at"], c["deleted"],
                              c["local_deletion_time"], path, raw, path_raw))
        columns.append(ColumnChange(info.name, tuple(cells), deletion(change["complex_deletion"]),
                                    info.kind == "static"))
    src = rec["source"]
    lv = rec["liveness"]
    return ChangeEvent(
        event_id=rec["event_id"], op=Op(rec["op"]), timestamp_micros=rec["timestamp_micros"],
        source=Source(src["cluster"], src["datacenter"], src["node"], src["keyspace"], src["table"],
                      uuid.UUID(src["table_id"]), src["segment_id"], src["position"]),
        partition_key=tuple(_value(c.type, r) for c, r in zip(s.partition_key, rec["key_raw"], strict=True)),
        clustering=tuple(_value(c.type, r) for c, r in zip(s.clustering, rec["clustering_raw"], strict=False)),
        liveness=None if lv is None else Liveness(lv["timestamp"], lv["ttl"], lv["expires_at"]),
        deletion=deletion(rec["deletion"]), range_start=bound(rec["range_start"]), range_end=bound(rec["range_end"]),
        columns=tuple(columns), static=rec["static"],
    )


class SchemaCache:
    """Fingerprint → EventSchema, filled from ``<prefix>.schemas`` records (``add``) or by capture itself."""

    def __init__(self) -> None:
        self._by_fp: dict[bytes, EventSchema] = {}

    def add(self, schema: EventSchema | str | bytes) -> EventSchema:
        s = schema if isinstance(schema, EventSchema) else EventSchema.from_json(schema)
        self._by_fp[s.fingerprint] = s
        return s

    def get(self, fingerprint: bytes) -> EventSchema | None:
        return self._by_fp.get(fingerprint)

    __call__ = get


def schema_version(table: TableSchema) -> str:
    """A short stable text naming one table schema version (for logs)."""
    return hashlib.blake2b(repr(table).encode(), digest_size=4).hexdigest()
