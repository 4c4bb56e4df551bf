"""Avro binary, read in place: zigzag varints, lengths, and skip functions compiled from a schema.

Contract
    Every function takes the message and a position and returns what it read and/or the position after it.
    Only the canonical encoding fastavro's writer produces is accepted: a union index, boolean, enum index or
    block count out of range, a negative length, a long over 10 bytes or 64 bits, a string that is not UTF-8,
    raise :class:`Malformed` (reading past the end raises IndexError, or leaves a position beyond the end that
    the caller checks).  :class:`Skips` turns Avro types (the JSON form) into :data:`Skip` functions, and raises
    :class:`Unsupported` for a type it does not know.  Used by :mod:`cdcpipe.apply.avro_read`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Skip = Callable[[bytes, int], int]  # (message, position of a value) -> position after it; raises on bad input


class Malformed(Exception):
    """Not the canonical encoding: leave the message to fastavro."""


# ------------------------------------------------------------------------------------------------ primitives

def read_long(data: bytes, p: int) -> tuple[int, int]:
    """A zigzag varint at ``p``: (value, position after it).  Longer than 10 bytes or over 64 bits: Malformed."""
    b = data[p]
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), p + 1
    n = b & 0x7F
    shift = 7
    while True:
        p += 1
        b = data[p]
        n |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
        if shift > 63:
            raise Malformed("long over 10 bytes")
    if n >> 64:
        raise Malformed("long over 64 bits")
    return (n >> 1) ^ -(n & 1), p + 1


def read_len(data: bytes, p: int) -> tuple[int, int]:
    """A length or block count (not negative)."""
    b = data[p]
    if b < 0x80:
        if b & 1:
            raise Malformed("negative length")
        return b >> 1, p + 1
    n, p = read_long(data, p)
    if n < 0:
        raise Malformed("negative length")
    return n, p


def skip_long(data: bytes, p: int) -> int:
    q = p
    while data[q] >= 0x80:
        q += 1
    if q - p > 9:
        raise Malformed("long over 10 bytes")
    return q + 1


def skip_bytes(data: bytes, p: int) -> int:
    n = data[p]
    if n < 0x80 and not n & 1:
        return p + 1 + (n >> 1)
    n, p = read_len(data, p)
    return p + n


def skip_string(data: bytes, p: int) -> int:
    n = data[p]
    if n < 0x80 and not n & 1:
        p += 1
        n >>= 1
    else:
        n, p = read_len(data, p)
    q = p + n
    data[p:q].decode()  # fastavro rejects a string that is not UTF-8
    return q


def skip_boolean(data: bytes, p: int) -> int:
    if data[p] > 1:
        raise Malformed("boolean")
    return p + 1


def skip_null(data: bytes, p: int) -> int:
    return p


def fixed(size: int) -> Skip:
    return lambda data, p: p + size


PRIMITIVE: dict[str, Skip] = {"null": skip_null, "boolean": skip_boolean, "int": skip_long, "long": skip_long,
                               "float": fixed(4), "double": fixed(8), "bytes": skip_bytes,
                               "string": skip_string}


class Unsupported(Exception):
    """The schema is not of the layout this reader knows: use fastavro for its events."""


class Skips:
    """Skip functions for the Avro types of one schema; named types are registered as they are defined."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.named: dict[str, Skip] = {}

    def of(self, t: Any, ns: str | None = None) -> Skip:
        ns = self.namespace if ns is None else ns
        if isinstance(t, str):
            found = PRIMITIVE.get(t) or self.named.get(t) or self.named.get(f"{ns}.{t}")
            if found is None:
                raise Unsupported(f"unknown type {t!r}")
            return found
        if isinstance(t, list):
            return self._union([self.of(b, ns) for b in t])
        kind = t.get("type")
        if kind in PRIMITIVE:
            return PRIMITIVE[kind]
        if kind == "array":
            return self._array(self.of(t["items"], ns))
        name = t.get("name", "")
        full = name if "." in name else f"{t.get('namespace', ns)}.{name}"
        inner = full.rsplit(".", 1)[0]
        if kind == "record":
            fields = tuple(self.of(f["type"], inner) for f in t["fields"])
            skip = self._record(fields)
        elif kind == "fixed":
            skip = fixed(int(t["size"]))
        elif kind == "enum":
            skip = self._enum(len(t["symbols"]))
        else:
            raise Unsupported(f"Avro type {kind!r}")
        self.named[full] = self.named[name] = skip
        return skip

    @staticmethod
    def _record(fields: tuple[Skip, ...]) -> Skip:
        def record(data: bytes, p: int) -> int:
            for f in fields:
                p = f(data, p)
            return p
        return record

    @staticmethod
    def _union(branches: list[Skip]) -> Skip:
        limit = 2 * len(branches)
        if limit > 0x80:
            raise Unsupported("union of over 64 branches")
        table = tuple(None if b is skip_null else b for b in branches)

        def union(data: bytes, p: int) -> int:
            b = data[p]
            if b & 1 or b >= limit:
                raise Malformed("union index")
            skip = table[b >> 1]
            return p + 1 if skip is None else skip(data, p + 1)
        return union

    @staticmethod
    def _array(item: Skip) -> Skip:
        def array(data: bytes, p: int) -> int:
            while True:
                n, p = read_len(data, p)
                if not n:
                    return p
                if n > len(data) - p:  # more items than bytes left (a fixed-size item would never read them)
                    raise Malformed("block count")
                for _ in range(n):
                    p = item(data, p)
        return array

    @staticmethod
    def _enum(size: int) -> Skip:
        def enum(data: bytes, p: int) -> int:
            i, p = read_long(data, p)
            if not 0 <= i < size:
                raise Malformed("enum index")
            return p
        return enum
