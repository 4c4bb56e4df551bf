"""A KEY of ``cdcpipe erase``: a JSON object of primary-key column values, checked against the table and serialized
as Cassandra serializes it.

Every partition-key column is required; with every clustering column too, the KEY names one row, without any,
the whole partition; some clustering columns but not all is refused (``erase`` never deletes a clustering range).
Values take the JSON forms CQL's ``fromJson()`` takes (numbers may be strings; ``decimal`` keeps its scale;
``timestamp`` as milliseconds or ISO 8601 text *with* a time zone; ``date``, ``time``, ``uuid``, ``inet`` as text;
``blob`` as ``"0x…"``; tuples and frozen lists/sets as arrays, frozen maps and UDTs as objects).

The key bytes (:attr:`EraseKey.partition`, :attr:`EraseKey.clustering`) are what apply keys mirrored rows and
dead letters by (``_cdc_partition``, ``_cdc_clustering``, the Kafka key); Cassandra's own parse of the same JSON
(:meth:`EraseKey.where`) is checked against them before anything is deleted (:mod:`cdcpipe.reconcile.erase`).
"""

from __future__ import annotations

import datetime
import decimal
import ipaddress
import json
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cdcpipe.apply.tables import ident
from cdcpipe.cql import CqlType
from cdcpipe.errors import EraseKeyError
from cdcpipe.reconcile.canonical import Key, clustering_bytes, partition_bytes
from cdcpipe.schema import Column, TableSchema
from cdcpipe.typemap import serialize

_INTS = frozenset({"tinyint", "smallint", "int", "bigint", "varint", "counter"})
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


@dataclass(frozen=True, slots=True)
class EraseKey:
    """One KEY: a partition (``clustering`` None) or one row of ``table``; ``columns`` and ``json_values`` are the
    key columns given (in key order) and their values as JSON text (for ``fromJson``)."""

    table: str
    given: str
    columns: tuple[str, ...]
    json_values: tuple[str, ...]
    partition: bytes
    clustering: bytes | None

    @property
    def scope(self) -> str:
        return "partition" if self.clustering is None else "row"

    def where(self) -> tuple[str, list[str]]:
        """The CQL ``WHERE`` condition (driver ``%s`` parameters) naming this partition or row."""
        return " AND ".join(f"{ident(c)} = fromJson(%s)" for c in self.columns), list(self.json_values)

    def holds(self, key: Key) -> bool:
        """True when the row ``key`` (partition, clustering; clustering None: a static-only partition) is erased
        by this KEY."""
        return key[0] == self.partition and (self.clustering is None or key[1] == self.clustering)

    def shown(self) -> Any:
        return json.loads(self.given)


def parse_key(table: TableSchema, text: str) -> EraseKey:
    """The KEY ``text`` of ``table``; raises :class:`EraseKeyError` naming what is wrong."""
    def refuse(reason: str, column: str = "") -> EraseKeyError:
        return EraseKeyError(table.name, text, reason, column=column)

    try:
        data = json.loads(text, parse_float=decimal.Decimal)
    except ValueError as exc:
        raise refuse(f"not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise refuse("must be a JSON object of primary-key column values, e.g. "
                     + json.dumps({c.name: "…" for c in table.partition_key}))
    names = [c.name for c in (*table.partition_key, *table.clustering)]
    for name in data:
        if name not in names:
            raise refuse(f"{name} is not a primary-key column (the primary key: {', '.join(names)})", name)
    missing = [c.name for c in table.partition_key if c.name not in data]
    if missing:
        raise refuse(f"missing partition key column {', '.join(missing)}", missing[0])
    some = [c.name for c in table.clustering if c.name in data]
    if some and len(some) < len(table.clustering):
        raise refuse(f"gives the clustering columns {', '.join(some)} of {', '.join(c.name for c in table.clustering)}:"
                     " erase takes a whole partition (no clustering column) or one row (every one), never a prefix "
                     "of the clustering columns")
    key_cols = [*table.partition_key, *(table.clustering if some else ())]
    raw = [_serialized(table, text, c, data[c.name]) for c in key_cols]
    n = len(table.partition_key)
    return EraseKey(table.name, text, tuple(c.name for c in key_cols),
                    tuple(json.dumps(_plain(data[c.name])) for c in key_cols),
                    partition_bytes(raw[:n]), clustering_bytes(raw[n:]) if some else None)


def _serialized(table: TableSchema, text: str, col: Column, value: Any) -> bytes:
    if value is None:
        raise EraseKeyError(table.name, text, f"{col.name}: null is not a key value", column=col.name)
    try:
        return serialize(col.type, python_value(col.type, value))
    except (ValueError, TypeError, OverflowError, struct.error, decimal.InvalidOperation) as exc:
        raise EraseKeyError(table.name, text, f"{col.name} ({col.type.cql()}): {json.dumps(_plain(value))} is not "
                            f"a value of this type ({exc})", column=col.name) from exc


def _plain(value: Any) -> Any:
    """JSON data with decimals as strings (exactly as given: their scale is part of the value)."""
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def python_value(t: CqlType, value: Any) -> Any:
    """The value :func:`cdcpipe.typemap.serialize` takes for the JSON ``value`` of type ``t`` (nested nulls stay
    None).  Raises ValueError/TypeError."""
    if value is None:
        return None
    name = t.name
    if name != "boolean" and isinstance(value, bool):
        raise TypeError("a boolean")
    if name in ("ascii", "text", "varchar"):
        return _need(value, str)
    if name in _INTS:
        if isinstance(value, str):
            return int(value.strip())
        return _need(value, int)
    if name in ("float", "double"):
        return float(value if isinstance(value, str) else _need(value, int, decimal.Decimal))
    if name == "decimal":
        return decimal.Decimal(value if isinstance(value, str) else _need(value, int, decimal.Decimal))
    if name == "boolean":
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        return _need(value, bool)
    if name in ("uuid", "timeuuid"):
        u = uuid.UUID(_need(value, str))
        if name == "timeuuid" and u.version != 1:
            raise ValueError("not a time-based (version 1) UUID")
        return u
    if name == "timestamp":
        if isinstance(value, int):
            return value
        at = datetime.datetime.fromisoformat(_need(value, str))
        if at.tzinfo is None:
            raise ValueError("give a time zone (Z or +hh:mm) or milliseconds since the epoch")
        return (at - _EPOCH) // datetime.timedelta(milliseconds=1)
    if name == "date":
        return datetime.date.fromisoformat(_need(value, str))
    if name == "time":
        from cassandra.util import Time

        return Time(_need(value, str))
    if name == "blob":
        text = _need(value, str)
        if not text.startswith("0x"):
            raise ValueError('a blob is "0x" and hex digits')
        return bytes.fromhex(text[2:])
    if name == "inet":
        return str(ipaddress.ip_address(_need(value, str)))
    return _composite(t, value)


def _composite(t: CqlType, value: Any) -> Any:
    name = t.name
    if name in ("list", "set", "vector"):
        items = [python_value(t.params[0], v) for v in _need(value, list)]
        if name == "vector" and len(items) != t.size:
            raise ValueError(f"a vector of {t.size} values")
        return items
    if name == "tuple":
        items = _need(value, list)
        if len(items) != len(t.params):
            raise ValueError(f"a tuple of {len(t.params)} values")
        return tuple(python_value(p, v) for p, v in zip(t.params, items, strict=True))
    if name == "map":
        return [(python_value(t.params[0], k), python_value(t.params[1], v))
                for k, v in _need(value, dict).items()]
    if name == "udt":
        fields: Mapping[str, Any] = _need(value, dict)
        unknown = set(fields) - set(t.field_names)
        if unknown:
            raise ValueError(f"{t.udt_name} has no field {', '.join(sorted(unknown))}")
        return {f: python_value(p, fields.get(f)) for f, p in zip(t.field_names, t.params, strict=True)}
    raise TypeError(f"erase does not take keys of type {t.cql()}")


def _need(value: Any, *types: type) -> Any:
    if not isinstance(value, types):
        raise TypeError(f"expected {' or '.join(x.__name__ for x in types)}, got {type(value).__name__}")
    return value
