"""Schema changes as records: what capture publishes to ``<prefix>.schema-changes`` and apply keeps in
``cdcpipe_schema_history`` (``cdcpipe.capture.schema_changes``, ``cdcpipe.apply.schema_history``).

A :class:`Shape` is what a table looks like to a consumer: its id, ``cdc`` flag, columns (name, kind, CQL type),
the fields of the UDTs its columns use, and its dropped columns.  Capture compares each captured table's shape with
the last one it published (:func:`diff`) and publishes a :class:`SchemaChangeRecord` for every difference: the
changes (``initial``, ``created``, ``column_added``, ``column_dropped``, ``column_altered``, ``udt_field_added``,
``udt_altered``, ``cdc_on``, ``cdc_off``, ``dropped``, ``truncated``), the new shape, the table's event-schema
version (its Avro fingerprint, hex) and an ordinal per table and node (1, 2, ...: ``cdcpipe_schema_version``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cdcpipe.cql import CqlType
from cdcpipe.schema import TableSchema

KINDS = ("initial", "created", "column_added", "column_dropped", "column_altered", "udt_field_added", "udt_altered",
         "cdc_on", "cdc_off", "dropped", "truncated")


@dataclass(frozen=True, slots=True)
class Shape:
    table_id: str
    cdc: bool
    columns: tuple[tuple[str, str, str], ...]  # (name, kind, CQL type)
    udts: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = ()  # (keyspace.type, fields, field types)
    dropped: tuple[tuple[str, int], ...] = ()  # (name, drop time µs)
    created_us: int | None = None  # the table's creation time (system_schema.tables writetime), when known

    def to_dict(self) -> dict[str, Any]:
        return {"table_id": self.table_id, "cdc": self.cdc, "columns": [list(c) for c in self.columns],
                "udts": [[k, list(f), list(t)] for k, f, t in self.udts], "dropped": [list(d) for d in self.dropped],
                "created_us": self.created_us}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Shape:
        return cls(str(d["table_id"]), bool(d["cdc"]), tuple((str(n), str(k), str(t)) for n, k, t in d["columns"]),
                   tuple((str(k), tuple(f), tuple(t)) for k, f, t in d.get("udts", ())),
                   tuple((str(n), int(at)) for n, at in d.get("dropped", ())),
                   None if d.get("created_us") is None else int(d["created_us"]))


def _udts(t: CqlType, out: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]) -> None:
    if t.name == "udt":
        out[f"{t.keyspace}.{t.udt_name}"] = (t.field_names, tuple(p.cql() for p in t.params))
    for p in t.params:
        _udts(p, out)


def shape_of(table: TableSchema, created_us: int | None = None) -> Shape:
    cols = (*table.partition_key, *table.clustering, *table.static, *table.regular)
    udts: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    for c in cols:
        _udts(c.type, udts)
    return Shape(str(table.table_id), table.cdc, tuple((c.name, c.kind, c.type.cql()) for c in cols),
                 tuple((k, f, t) for k, (f, t) in sorted(udts.items())),
                 tuple(sorted((d.name, d.dropped_time) for d in table.dropped)), created_us)


@dataclass(frozen=True, slots=True)
class SchemaChange:
    change: str  # one of KINDS
    subject: str = ""  # the column, ``keyspace.type.field`` or ``keyspace.type``
    detail: str = ""  # a CQL type, ``old -> new``, a time


def diff(before: Shape | None, after: Shape | None, first: bool = False) -> list[SchemaChange]:
    """The changes from ``before`` to ``after`` (None: the table does not exist); ``first``: capture has published
    nothing for the table yet (a table it finds at its start is ``initial``, not ``created``)."""
    if before is None:
        return [] if after is None else [SchemaChange("initial" if first else "created")]
    if after is None:
        return [SchemaChange("dropped")]
    if after.table_id != before.table_id:  # dropped and created again under the same name
        return [SchemaChange("dropped", detail=before.table_id), SchemaChange("created", detail=after.table_id)]
    out: list[SchemaChange] = []
    if before.cdc != after.cdc:
        out.append(SchemaChange("cdc_on" if after.cdc else "cdc_off"))
    old = {n: t for n, _, t in before.columns}
    new = {n: t for n, _, t in after.columns}
    old_drops, new_drops = dict(before.dropped), dict(after.dropped)
    for name in sorted(old.keys() | new.keys()):
        dropped_between = new_drops.get(name) != old_drops.get(name) and name in new_drops
        if name not in new:
            out.append(SchemaChange("column_dropped", name, old[name]))
        elif name not in old:
            out.append(SchemaChange("column_added", name, new[name]))
        elif dropped_between:  # dropped and added again between two looks
            out += [SchemaChange("column_dropped", name, old[name]), SchemaChange("column_added", name, new[name])]
        elif old[name] != new[name]:
            out.append(SchemaChange("column_altered", name, f"{old[name]} -> {new[name]}"))
    old_udts = {k: (f, t) for k, f, t in before.udts}
    for key, fields, types in after.udts:
        was = old_udts.get(key)
        if was is None or was == (fields, types):
            continue
        if fields[:len(was[0])] == was[0] and types[:len(was[1])] == was[1]:
            out += [SchemaChange("udt_field_added", f"{key}.{f}", t)
                    for f, t in zip(fields[len(was[0]):], types[len(was[1]):], strict=True)]
        else:
            out.append(SchemaChange("udt_altered", key, f"{list(was[0])} -> {list(fields)}"))
    return out


@dataclass(frozen=True, slots=True)
class SchemaChangeRecord:
    """One node's view of one change of one table.  ``version`` is the hex fingerprint of the table's event schema
    after the change ("" once dropped); ``shape`` None once dropped; ``changed_at_us`` the change's own time where
    Cassandra records one (a drop of a column, a truncation), else None; ``seen_at_ms`` when capture saw it."""

    table: str
    table_id: str
    node: str
    version: str
    ordinal: int
    changes: tuple[SchemaChange, ...]
    shape: Shape | None
    seen_at_ms: int
    changed_at_us: int | None = None

    @property
    def key(self) -> bytes:
        return f"{self.table}@{self.node}".encode()

    def to_value(self) -> bytes:
        return json.dumps({
            "table": self.table, "table_id": self.table_id, "node": self.node, "version": self.version,
            "ordinal": self.ordinal, "changes": [[c.change, c.subject, c.detail] for c in self.changes],
            "shape": None if self.shape is None else self.shape.to_dict(), "seen_at_ms": self.seen_at_ms,
            "changed_at_us": self.changed_at_us}, sort_keys=True).encode()

    @classmethod
    def from_value(cls, value: bytes) -> SchemaChangeRecord | None:
        """The record, or None for a value that is not one."""
        try:
            d = json.loads(value)
            return cls(str(d["table"]), str(d["table_id"]), str(d["node"]), str(d["version"]), int(d["ordinal"]),
                       tuple(SchemaChange(str(c), str(s), str(t)) for c, s, t in d["changes"]),
                       None if d["shape"] is None else Shape.from_dict(d["shape"]), int(d["seen_at_ms"]),
                       None if d.get("changed_at_us") is None else int(d["changed_at_us"]))
        except (ValueError, KeyError, TypeError):
            return None
