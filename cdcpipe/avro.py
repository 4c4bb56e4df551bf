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

import datetime
import hashlib
import io
import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import fastavro

from cdcpipe.capture.schema import TableSchema
from cdcpipe.capture.values import CqlType, decode_value, parse_cql_type, udt_field_index
from cdcpipe.errors import EventDecodeError
from cdcpipe.model import Bound, Cell, ChangeEvent, ColumnChange, Deletion, Liveness, Op, Source

MAGIC = b"\xc3\x01"
FORMAT_VERSION = 1
NAMESPACE = "cdcpipe"
_NAME_OK = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EPOCH_NAIVE = datetime.datetime(1970, 1, 1)
_EPOCH_AWARE = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MICRO = datetime.timedelta(microseconds=1)


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
    _by_name: dict[str, ColumnInfo] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({c.name: c for c in self.columns})

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
            return _build(ks, schema["cdcpipe.table"], uuid.UUID(schema["cdcpipe.table_id"]), pk, ck, cols,
                          schema)
        except EventDecodeError:
            raise
        except Exception as exc:  # malformed JSON or not our layout
            raise EventDecodeError(f"not a cdcpipe event schema: {exc}") from exc


# ------------------------------------------------------------------------------------------------ schema

class _Namer:
    """Unique Avro names within one schema."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, base: str) -> str:
        name, n = _avro_name(base), 1
        while name in self.used:
            n += 1
            name = f"{_avro_name(base)}_{n}"
        self.used.add(name)
        return name


def _avro_name(text: str) -> str:
    if _NAME_OK.fullmatch(text):
        return text
    name = re.sub(r"[^A-Za-z0-9_]", "_", text)
    return name if _NAME_OK.fullmatch(name) else "_" + name


def _nullable(t: Any) -> list[Any]:
    return ["null", t]


_SIMPLE: dict[str, Any] = {
    "ascii": "string", "text": "string", "varchar": "string", "inet": "string", "varint": "string",
    "decimal": "string", "blob": "bytes", "boolean": "boolean", "tinyint": "int", "smallint": "int",
    "int": "int", "bigint": "long", "counter": "long", "float": "float", "double": "double", "empty": "null",
    "uuid": {"type": "string", "logicalType": "uuid"}, "timeuuid": {"type": "string", "logicalType": "uuid"},
    "date": {"type": "int", "logicalType": "date"}, "time": {"type": "long", "logicalType": "time-micros"},
    "timestamp": {"type": "long", "logicalType": "timestamp-micros"},
}


def avro_type(t: CqlType, namer: _Namer, base: str) -> Any:
    """The Avro type of a (frozen) CQL value; see docs/events.md for the table."""
    simple = _SIMPLE.get(t.name)
    if simple is not None:
        return simple
    if t.name == "duration":
        return {"type": "record", "name": namer(f"{base}_duration"), "fields": [
            {"name": "months", "type": "int"}, {"name": "days", "type": "int"},
            {"name": "nanoseconds", "type": "long"}]}
    if t.name in ("list", "set", "vector"):
        return {"type": "array", "items": avro_type(t.params[0], namer, f"{base}_item")}
    if t.name == "map":
        return {"type": "array", "items": {"type": "record", "name": namer(f"{base}_entry"), "fields": [
            {"name": "key", "type": avro_type(t.params[0], namer, f"{base}_key")},
            {"name": "value", "type": avro_type(t.params[1], namer, f"{base}_value")}]}}
    if t.name == "tuple":
        return {"type": "record", "name": namer(f"{base}_tuple"), "fields": [
            {"name": f"f{i}", "type": _nullable(avro_type(p, namer, f"{base}_f{i}"))}
            for i, p in enumerate(t.params)]}
    if t.name == "udt":
        fnamer = _Namer()
        return {"type": "record", "name": namer(f"{base}_{t.udt_name}"), "fields": [
            {"name": fnamer(n), "cdcpipe.field": n, "type": _nullable(avro_type(p, namer, f"{base}_{n}"))}
            for n, p in zip(t.field_names, t.params, strict=True)]}
    return "bytes"  # custom types: the serialized bytes


def _element_types(t: CqlType, namer: _Namer, base: str) -> tuple[Any, Any]:
    """(value type, path type) of one cell of a column of type ``t``; path None for simple columns."""
    if not t.multi_cell:
        return avro_type(t, namer, base), None
    if t.name == "list":
        return avro_type(t.params[0], namer, base), _SIMPLE["timeuuid"]
    if t.name == "set":
        return "null", avro_type(t.params[0], namer, base)
    if t.name == "map":
        return avro_type(t.params[1], namer, base), avro_type(t.params[0], namer, f"{base}_key")
    return "null", "string"  # non-frozen UDT: path = field name, value only as raw (fields differ in type)


def _deletion_record() -> dict[str, Any]:
    return {"type": "record", "name": "Deletion", "fields": [
        {"name": "timestamp", "type": "long"}, {"name": "local_deletion_time", "type": "long"}]}


def table_schema(table: TableSchema) -> EventSchema:
    """The Avro event schema for one version of a table's schema (pure; cache it per TableSchema)."""
    fnamer = _Namer()
    pk = tuple(ColumnInfo(fnamer(c.name), c.name, c.kind, c.type) for c in table.partition_key)
    ck = tuple(ColumnInfo(fnamer(c.name), c.name, c.kind, c.type) for c in table.clustering)
    cnamer = _Namer()
    cols = tuple(ColumnInfo(cnamer(c.name), c.name, c.kind, c.type) for c in (*table.static, *table.regular))
    return _build(table.keyspace, table.table, table.table_id, pk, ck, cols, None,
                  reversed_cols={c.name for c in table.clustering if c.reversed})


def _udts(t: CqlType, out: dict[str, dict[str, list[str]]]) -> None:
    if t.name == "udt":
        out[f"{t.keyspace}.{t.udt_name}"] = {"fields": list(t.field_names), "types": [p.cql() for p in t.params]}
    for p in t.params:
        _udts(p, out)


def _build(keyspace: str, table: str, table_id: uuid.UUID, pk: tuple[ColumnInfo, ...],
           ck: tuple[ColumnInfo, ...], cols: tuple[ColumnInfo, ...], schema: dict[str, Any] | None,
           reversed_cols: set[str] | None = None) -> EventSchema:
    if schema is None:
        schema = _schema_json(keyspace, table, table_id, pk, ck, cols, reversed_cols or set())
    parsed = fastavro.parse_schema(json.loads(json.dumps(schema)))
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    fp = int(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"), 16).to_bytes(8, "little")
    plain = fastavro.parse_schema(_strip_logical(json.loads(json.dumps(schema))))
    return EventSchema(keyspace, table, table_id, pk, ck, cols, schema, parsed, plain, fp)


def _strip_logical(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_logical(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical(v) for v in node]
    return node


def _schema_json(keyspace: str, table: str, table_id: uuid.UUID, pk: tuple[ColumnInfo, ...],
                 ck: tuple[ColumnInfo, ...], cols: tuple[ColumnInfo, ...], reversed_cols: set[str]) -> dict[str, Any]:
    namer = _Namer()
    for fixed in ("EventId", "Op", "Source", "Liveness", "Deletion", "Bound", "PartitionKey", "Clustering",
                  "Columns"):
        namer(fixed)
    udts: dict[str, dict[str, list[str]]] = {}

    def key_field(c: ColumnInfo, nullable: bool) -> dict[str, Any]:
        _udts(c.type, udts)
        t = avro_type(c.type, namer, c.field)
        return {"name": c.field, "type": _nullable(t) if nullable else t, "cdcpipe.column": c.name,
                "cdcpipe.kind": c.kind, "cdcpipe.cql_type": c.type.cql()}

    column_fields = []
    for c in cols:
        _udts(c.type, udts)
        value_t, path_t = _element_types(c.type, namer, c.field)
        cell_fields: list[dict[str, Any]] = [
            {"name": "value", "type": _nullable(value_t) if value_t != "null" else "null"},
            {"name": "raw", "type": "bytes"},
            {"name": "timestamp", "type": "long"},
            {"name": "ttl", "type": "int"},
            {"name": "expires_at", "type": ["null", "long"]},
            {"name": "deleted", "type": "boolean"},
            {"name": "local_deletion_time", "type": ["null", "long"]},
        ]
        if path_t is not None:
            cell_fields += [{"name": "path", "type": _nullable(path_t)}, {"name": "path_raw", "type": "bytes"}]
        change = {"type": "record", "name": namer(f"Column_{c.field}"), "fields": [
            {"name": "cells", "type": {"type": "array", "items": {
                "type": "record", "name": namer(f"Cell_{c.field}"), "fields": cell_fields}}},
            {"name": "complex_deletion", "type": ["null", "Deletion"]}]}
        column_fields.append({"name": c.field, "type": ["null", change], "default": None, "cdcpipe.column": c.name,
                              "cdcpipe.kind": c.kind, "cdcpipe.cql_type": c.type.cql()})
    pk_fields = [key_field(c, False) for c in pk]
    ck_fields = [key_field(c, True) for c in ck]
    return {
        "type": "record", "name": _avro_name(table), "namespace": f"{NAMESPACE}.{_avro_name(keyspace)}",
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
                {"name": "table", "type": "string"}, {"name": "table_id", "type": _SIMPLE["uuid"]},
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


# ------------------------------------------------------------------------------------------------ values

def to_avro(t: CqlType, value: Any) -> Any:
    """A driver-decoded value in its Avro form (see docs/events.md).  Raises ValueError/TypeError when the
    value does not fit; callers fall back to None (the ``raw`` bytes still carry it)."""
    if value is None:
        return None
    n = t.name
    if n in ("varint", "decimal", "inet"):
        return str(value)
    if n == "counter":
        return int(getattr(value, "total", value))
    if n == "date":
        return int(getattr(value, "days_from_epoch", value))
    if n == "time":
        return int(getattr(value, "nanosecond_time", value)) // 1000
    if n == "timestamp":
        if isinstance(value, datetime.datetime):
            epoch = _EPOCH_NAIVE if value.tzinfo is None else _EPOCH_AWARE
            return (value - epoch) // _MICRO
        return int(value) * 1000
    if n in ("uuid", "timeuuid"):
        return str(value)
    if n == "duration":
        return {"months": value.months, "days": value.days, "nanoseconds": value.nanoseconds}
    if n in ("list", "set", "vector"):
        return [to_avro(t.params[0], v) for v in value]
    if n == "map":
        pairs = value.items() if isinstance(value, Mapping) else value
        return [{"key": to_avro(t.params[0], k), "value": to_avro(t.params[1], v)} for k, v in pairs]
    if n == "tuple":
        return {f"f{i}": to_avro(p, v) for i, (p, v) in enumerate(zip(t.params, value, strict=False))}
    if n == "udt":
        fnamer = _Namer()
        names = [fnamer(f) for f in t.field_names]
        get: Callable[[str, int], Any] = (
            (lambda f, i: value.get(f)) if isinstance(value, Mapping) else (lambda f, i: getattr(value, f, None)))
        return {a: to_avro(p, get(f, i)) for i, (a, f, p) in enumerate(zip(names, t.field_names, t.params,
                                                                             strict=True))}
    if n == "blob" or n == "custom":
        return bytes(value)
    return value


def _safe_avro(t: CqlType, value: Any) -> Any:
    try:
        return to_avro(t, value)
    except (ValueError, TypeError, AttributeError, OverflowError):
        return None


def _element_cql(t: CqlType, path: bytes | None) -> tuple[CqlType | None, CqlType | None]:
    """(value type, path type) of a cell of a column of type ``t``."""
    if not t.multi_cell:
        return t, None
    if t.name == "list":
        return t.params[0], CqlType("timeuuid")
    if t.name == "set":
        return None, t.params[0]
    if t.name == "map":
        return t.params[1], t.params[0]
    idx = udt_field_index(path or b"\0\0")
    return (t.params[idx] if idx < len(t.params) else None), None


# ------------------------------------------------------------------------------------------------ encode

def _deletion(d: Deletion | None) -> dict[str, int] | None:
    return None if d is None else {"timestamp": d.timestamp, "local_deletion_time": d.local_deletion_time}


def _clustering_record(s: EventSchema, values: tuple[Any, ...]) -> dict[str, Any]:
    return {c.field: (_safe_avro(c.type, values[i]) if i < len(values) else None) for i, c in enumerate(s.clustering)}


def encode(event: ChangeEvent, schema: EventSchema, raw_key: tuple[bytes, ...],
           raw_clustering: tuple[bytes | None, ...] = (), raw_bounds: tuple[tuple[bytes | None, ...], ...] = ()
           ) -> bytes:
    """Single-object encoding of ``event`` with ``schema``.  ``raw_key``, ``raw_clustering`` and ``raw_bounds``
    (start, end) are the serialized key values the event's typed values were decoded from; every cell must carry
    ``raw``.  Raises ValueError when the event does not fit the schema."""
    columns: dict[str, Any] = dict.fromkeys(schema.column_fields)
    for change in event.columns:
        info = schema.column(change.name)
        if info is None:
            raise ValueError(f"{schema.keyspace}.{schema.table}: column {change.name!r} not in the Avro schema")
        multi = info.type.multi_cell
        cells = []
        for cell in change.cells:
            if cell.raw is None:
                raise ValueError(f"column {change.name!r}: cell without raw bytes")
            value_t, path_t = _element_cql(info.type, cell.raw_path)
            rec: dict[str, Any] = {
                "value": _safe_avro(value_t, cell.value) if value_t is not None and not (
                    multi and info.type.name in ("set", "udt")) else None,
                "raw": cell.raw, "timestamp": cell.timestamp, "ttl": cell.ttl, "expires_at": cell.expires_at,
                "deleted": cell.deleted, "local_deletion_time": cell.local_deletion_time}
            if multi:
                rec["path"] = (cell.path if info.type.name == "udt"
                               else _safe_avro(path_t, cell.path) if path_t is not None else None)
                rec["path_raw"] = cell.raw_path or b""
            cells.append(rec)
        columns[info.field] = {"cells": cells, "complex_deletion": _deletion(change.complex_deletion)}
    src = event.source

    def bound(b: Bound | None, raw: tuple[bytes | None, ...]) -> dict[str, Any] | None:
        if b is None:
            return None
        return {"inclusive": b.inclusive, "values": _clustering_record(schema, b.values), "values_raw": list(raw)}

    record = {
        "event_id": event.event_id, "op": event.op.value, "timestamp_micros": event.timestamp_micros,
        "source": {"cluster": src.cluster, "datacenter": src.datacenter, "node": src.node, "keyspace": src.keyspace,
                   "table": src.table, "table_id": str(src.table_id), "segment_id": src.segment_id,
                   "position": src.position},
        "partition_key": {c.field: _safe_avro(c.type, v) for c, v in zip(schema.partition_key, event.partition_key,
                                                                          strict=True)},
        "key_raw": list(raw_key),
        "clustering": _clustering_record(schema, event.clustering) if event.clustering else None,
        "clustering_raw": list(raw_clustering), "static": event.static,
        "liveness": None if event.liveness is None else {
            "timestamp": event.liveness.timestamp, "ttl": event.liveness.ttl, "expires_at": event.liveness.expires_at},
        "deletion": _deletion(event.deletion),
        "range_start": bound(event.range_start, raw_bounds[0] if raw_bounds else ()),
        "range_end": bound(event.range_end, raw_bounds[1] if raw_bounds else ()),
        "columns": columns,
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
            value_t, path_t = _element_cql(t, path_raw)
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
