"""Row and partition keys as bytes, and clustering order: what merge, view and the COPY writer key rows by.

A partition is Cassandra's partition key bytes; a clustering is :func:`clustering_bytes` of its values; clustering
order (for range tombstones) is decided on the serialized values by :func:`order_key`.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence
from typing import Any

from cdcpipe.cql import CqlType
from cdcpipe.model import Bound
from cdcpipe.schema import Column, TableSchema
from cdcpipe.typemap import serialize


def partition_bytes(table: TableSchema, values: Sequence[Any]) -> bytes:
    """Cassandra's partition key bytes: the value, or CompositeType (2-byte length, value, 0) per column."""
    cols = table.partition_key
    if len(cols) == 1:
        return serialize(cols[0].type, values[0])
    out = bytearray()
    for col, v in zip(cols, values, strict=True):
        raw = serialize(col.type, v)
        out += len(raw).to_bytes(2, "big") + raw + b"\x00"
    return bytes(out)


def clustering_bytes(table: TableSchema, values: Sequence[Any]) -> bytes:
    """A clustering as bytes: each value serialized, prefixed with its 4-byte length."""
    out = bytearray()
    for col, v in zip(table.clustering, values, strict=False):
        raw = serialize(col.type, v)
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


def split_clustering(data: bytes) -> tuple[bytes, ...]:
    """Inverse of :func:`clustering_bytes`, giving serialized values."""
    out: list[bytes] = []
    p = 0
    while p < len(data):
        n = int.from_bytes(data[p:p + 4], "big")
        out.append(data[p + 4:p + 4 + n])
        p += 4 + n
    return tuple(out)


def bound_bytes(table: TableSchema, bound: Bound) -> tuple[bytes, ...]:
    return tuple(serialize(col.type, v) for col, v in zip(table.clustering, bound.values, strict=False))


_SIGNED_INTS = frozenset({"tinyint", "smallint", "int", "bigint", "counter", "timestamp", "time", "varint"})


def order_key(t: CqlType, raw: bytes) -> Any:
    """A sort key for one serialized clustering value in the type's ascending order (an empty value first).

    Numbers, timestamps and times by value; date by its unsigned day number; text and blobs by unsigned
    bytes; timeuuid by time then signed low bytes; other values (frozen collections, custom types) by
    unsigned bytes, an approximation of their comparators documented in ADR 0002."""
    if not raw:
        return (0,)
    name = t.name
    if name in _SIGNED_INTS:
        return (1, int.from_bytes(raw, "big", signed=True))
    if name == "date":
        return (1, int.from_bytes(raw, "big"))
    if name in ("float", "double"):
        return (1, struct.unpack(">f" if name == "float" else ">d", raw)[0])
    if name == "decimal":
        from cdcpipe.typemap import deserialize

        return (1, deserialize(t, raw))
    if name == "boolean":
        return (1, raw[0] != 0)
    if name in ("uuid", "timeuuid") and len(raw) == 16:
        u = uuid.UUID(bytes=raw)
        if u.version == 1:
            low = tuple(b - 256 if b > 127 else b for b in raw[8:])
            return (1, 1, u.time, low) if name == "timeuuid" else (1, 1, u.time, raw)
        return (1, u.version or 0, 0, raw)
    return (1, raw)


def clustering_keys(columns: Sequence[Column], values: Sequence[bytes]) -> tuple[Any, ...]:
    return tuple(order_key(c.type, v) for c, v in zip(columns, values, strict=False))


def _compare_prefix(columns: Sequence[Column], a: Sequence[Any], b: Sequence[Any]) -> int:
    for col, x, y in zip(columns, a, b, strict=False):
        if x != y:
            less = x < y
            if col.reversed:
                less = not less
            return -1 if less else 1
    return 0


def covers(columns: Sequence[Column], bounds: tuple[tuple[bytes, ...], bool, tuple[bytes, ...], bool],
           keys: Sequence[Any]) -> bool:
    """Whether a range tombstone's ``bounds`` (start, inclusive, end, inclusive: ``RangeTombstone.bounds``) cover
    the clustering with order keys ``keys`` (rule 12)."""
    start, start_inclusive, end, end_inclusive = bounds
    if start:
        first = clustering_keys(columns, start)
        c = _compare_prefix(columns, keys[:len(first)], first)
        if c < 0 or (c == 0 and not start_inclusive):
            return False
    if end:
        last = clustering_keys(columns, end)
        c = _compare_prefix(columns, keys[:len(last)], last)
        if c > 0 or (c == 0 and not end_inclusive):
            return False
    return True
