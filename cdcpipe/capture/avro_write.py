"""Avro binary straight from serialized CQL values: zigzag varints and one encoder per CQL type.

Contract
    ``value_encoder(t, avro_t, some)`` returns ``some`` + the Avro binary that ``avro_values.converter(t)``
    followed by fastavro writes for ``avro_t``, or None where that path writes null (a value the driver cannot
    decode).  Simple types are written from their serialized form (zigzag varints, length-prefixed strings,
    reversed doubles, uuid text); the others (varint, decimal, inet, duration, collections, tuples, UDTs,
    vectors, edge values such as out-of-range timestamps) go through exactly that path for the one value.
    :class:`Unsupported` means the caller must fall back to the reference path.  ``cell_writer`` writes any cell
    of a column (its Avro Cell record and its part of the event id's hash input) for ``capture.encoder``.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable
from typing import Any

import fastavro

from cdcpipe.avro_values import converter
from cdcpipe.capture.events import value_of
from cdcpipe.cql import CqlType, udt_field_index

Encoder = Callable[[bytes], bytes | None]  # serialized CQL value -> Avro binary of the value, None for null

_F_BE = struct.Struct(">f").unpack
_F_LE = struct.Struct("<f").pack
_NULL, _SOME, _FALSE, _TRUE = b"\x00", b"\x02", b"\x00", b"\x01"
_TS_MIN_MS, _TS_MAX_MS = -30610224000000, 221845392000000  # years 1000..9000: the driver gives datetimes
_TIME_MAX_NS = 86_400_000_000_000


class Unsupported(Exception):
    """This update needs the reference path."""


# Avro longs are zigzag varints of 7-bit groups; two groups (14 bits) are looked up at a time: _MID[c] is c as two
# continued bytes, SMALL_LONGS[c] as the final one or two bytes.  Event timestamps and positions are unique, but the
# bits above the low 28 of a microsecond timestamp change only every ~134 s: their bytes are memoized (_HIGH).
_MID = [bytes(((c & 0x7F) | 0x80, (c >> 7) | 0x80)) for c in range(1 << 14)]
SMALL_LONGS = [bytes(((c & 0x7F) | 0x80, c >> 7)) if c >> 7 else bytes((c,)) for c in range(1 << 14)]
_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1
SOME_SMALL_LONGS = [b"\x02" + b for b in SMALL_LONGS]  # the non-null branch of a union, then the varint
_HIGH: dict[int, bytes] = {}  # z >> 28 -> its final groups, for 28 <= bits(z) < 56


def _high(h: int) -> bytes:
    b = SMALL_LONGS[h] if h < 0x4000 else _MID[h & 0x3FFF] + SMALL_LONGS[h >> 14]
    if len(_HIGH) >= 4096:
        _HIGH.clear()
    _HIGH[h] = b
    return b


def zlong(n: int) -> bytes:
    """Avro's zigzag varint of a 64-bit int; raises Unsupported outside the long range."""
    z = (n << 1) ^ (n >> 63)  # >= 0; < 2**64 exactly when n is a long
    if z < 0x4000:
        return SMALL_LONGS[z]
    if z < 0x10000000:
        return _MID[z & 0x3FFF] + SMALL_LONGS[z >> 14]
    if z < 0x100000000000000:  # microsecond timestamps of this era
        hi = _HIGH.get(z >> 28)
        if hi is None:
            hi = _high(z >> 28)
        return _MID[z & 0x3FFF] + _MID[z >> 14 & 0x3FFF] + hi
    if not _LONG_MIN <= n <= _LONG_MAX:
        raise Unsupported(f"{n} does not fit a long")
    return b"".join((_MID[z & 0x3FFF], _MID[z >> 14 & 0x3FFF], _MID[z >> 28 & 0x3FFF], _MID[z >> 42 & 0x3FFF],
                     SMALL_LONGS[z >> 56]))


_PREFIXED = {b"": SMALL_LONGS, _SOME: SOME_SMALL_LONGS}  # some -> some + SMALL_LONGS[c], shared by encoders


def _prefixed(some: bytes) -> list[bytes]:
    table = _PREFIXED.get(some)
    if table is None:
        table = _PREFIXED[some] = [some + b for b in SMALL_LONGS]
    return table


def _generic(t: CqlType, avro_t: Any) -> Encoder:
    """The reference conversion for one value: driver decode, converter, fastavro."""
    parsed = fastavro.parse_schema(json.loads(json.dumps(avro_t)), named_schemas={})
    conv = converter(t)

    def enc(raw: bytes) -> bytes | None:
        v = conv(value_of(t, raw))
        if v is None:
            return None
        buf = io.BytesIO()
        try:
            fastavro.schemaless_writer(buf, parsed, v, strict=True)
        except Exception as exc:  # the reference would reject the whole event: let it say so
            raise Unsupported(str(exc)) from exc
        return buf.getvalue()
    return enc


def _fixed_int(size: int, slow: Encoder, some: bytes) -> Encoder:
    small = _prefixed(some)

    def enc(raw: bytes) -> bytes | None:
        if len(raw) == size:
            v = int.from_bytes(raw, "big", signed=True)
            z = (v << 1) ^ (v >> 63)
            if z < 0x4000:
                return small[z]
            return some + _MID[z & 0x3FFF] + SMALL_LONGS[z >> 14] if z < 0x10000000 else some + zlong(v)
        return slow(raw)
    return enc


def _string(codec: str, slow: Encoder, some: bytes) -> Encoder:
    small = _prefixed(some)

    def enc(raw: bytes) -> bytes | None:
        try:
            raw.decode(codec)
        except UnicodeDecodeError:
            return slow(raw)
        n = len(raw)
        return (small[n + n] if n < 0x2000 else some + zlong(n)) + raw
    return enc


def value_encoder(t: CqlType, avro_t: Any, some: bytes = b"") -> Encoder:
    """Raw CQL bytes → ``some`` + Avro binary of ``avro_t`` (``some`` = b"\\x02" writes the non-null branch of a
    nullable union), None where the reference writes null."""
    generic = _generic(t, avro_t)
    slow: Encoder = generic
    if some:
        def slow(raw: bytes) -> bytes | None:
            v = generic(raw)
            return None if v is None else some + v
    n = t.name
    if n in ("int", "bigint", "smallint", "tinyint"):
        return _fixed_int({"int": 4, "bigint": 8, "smallint": 2, "tinyint": 1}[n], slow, some)
    if n in ("text", "varchar"):
        return _string("utf-8", slow, some)
    if n == "ascii":
        return _string("ascii", slow, some)
    if n == "blob":
        return lambda raw: b"".join((some, zlong(len(raw)), raw))
    if n == "boolean":
        true, false = some + _TRUE, some + _FALSE
        return lambda raw: (true if raw[0] else false) if len(raw) == 1 else slow(raw)
    if n == "double":
        return lambda raw: some + raw[::-1] if len(raw) == 8 else slow(raw)
    if n == "float":
        def f32(raw: bytes) -> bytes | None:
            if len(raw) == 4 and (raw[0] & 0x7F != 0x7F or raw[1] & 0x80 == 0):  # not NaN/inf
                return some + _F_LE(_F_BE(raw)[0])
            return slow(raw)
        return f32
    if n in ("uuid", "timeuuid"):
        head = some + b"\x48"

        def uid(raw: bytes) -> bytes | None:
            if len(raw) != 16:
                return slow(raw)
            h = raw.hex()
            return head + f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}".encode()
        return uid
    if n == "timestamp":
        def ts(raw: bytes) -> bytes | None:
            if len(raw) == 8:
                ms = int.from_bytes(raw, "big", signed=True)
                if _TS_MIN_MS <= ms <= _TS_MAX_MS:
                    return some + zlong(ms * 1000)
            return slow(raw)
        return ts
    if n == "date":
        return lambda raw: some + zlong(int.from_bytes(raw, "big") - (1 << 31)) if len(raw) == 4 else slow(raw)
    if n == "time":
        def tm(raw: bytes) -> bytes | None:
            if len(raw) == 8:
                ns = int.from_bytes(raw, "big", signed=True)
                if 0 <= ns < _TIME_MAX_NS:
                    return some + zlong(ns // 1000)
            return slow(raw)
        return tm
    return slow


def nullable_encoder(t: CqlType, avro_t: Any) -> Callable[[bytes | None], bytes]:
    """The nullable union of ``avro_t``: null for None and wherever the reference writes null."""
    enc = value_encoder(t, avro_t, _SOME)

    def w(raw: bytes | None) -> bytes:
        if raw is None:
            return _NULL
        v = enc(raw)
        return _NULL if v is None else v
    return w


def required_encoder(enc: Encoder) -> Callable[[bytes], bytes]:
    def w(raw: bytes) -> bytes:
        v = enc(raw)
        if v is None:
            raise Unsupported("key value does not decode")
        return v
    return w


# ------------------------------------------------------------------------------------------------ cells, event id
# The event id hashes the change as ``events._Hasher`` feeds it (see ``capture.encoder``).

pack_long = struct.Struct(">q").pack
HASH_NONE = b"\x00"  # the hash's encoding of None
HASH_ONE = b"\x01" + pack_long(1)  # the hash's count prefix of a 1-tuple
_NULL_PATH = HASH_ONE + b"\xff\xff\xff\xff"


def opt_long(v: int | None) -> bytes:
    return _NULL if v is None else _SOME + zlong(v)


def hash_int(v: int | None) -> bytes:
    """The event-id hash's encoding of an int (``events._Hasher.int``)."""
    return HASH_NONE if v is None else b"\x01" + pack_long(int(v))


_LIVE_SOME = b"\x02\x02\x02"  # an inlined live cell: column union branch, 1-element array, value union branch
LIVE_HEAD = _NULL_PATH + HASH_ONE  # no path, then the value as a 1-tuple
LIVE_TAIL = hash_int(0) + hash_int(False) + HASH_NONE + HASH_NONE  # ttl 0, not deleted, no expiry, no deletion time


def hash_text(s: str) -> bytes:
    b = s.encode()
    return HASH_ONE + len(b).to_bytes(4, "big") + b




def _h_bytes(v: bytes | None) -> bytes:
    return _NULL_PATH if v is None else HASH_ONE + len(v).to_bytes(4, "big") + v


def hash_tuple(values: tuple[bytes | None, ...]) -> bytes:
    parts = [hash_int(len(values))]
    for v in values:
        parts.append(b"\xff\xff\xff\xff" if v is None else len(v).to_bytes(4, "big") + v)
    return b"".join(parts)


CellWriter = Callable[[Any], tuple[bytes, bytes]]  # raw cell -> (Avro Cell record, event-id hash input)


def cell_writer(t: CqlType, cell_fields: list[dict[str, Any]],
                 ) -> tuple[CellWriter, Encoder | None]:
    """The writer of any cell of a column, and for a simple column the value encoder of its non-null union
    branch (None: null) that ``TableEncoder`` inlines for live cells."""
    vtype = cell_fields[0]["type"]
    value: Callable[[bytes | None], bytes]
    if vtype == "null":
        def value(raw: bytes | None) -> bytes:
            return b""
    else:
        elem = t if not t.multi_cell else t.params[0] if t.name == "list" else t.params[1]
        value = nullable_encoder(elem, vtype[1])
    path: Callable[[bytes | None], bytes] | None = None
    if t.multi_cell:
        ptype = cell_fields[7]["type"][1]
        if t.name == "list":
            uid = value_encoder(CqlType("timeuuid"), ptype)

            def path(p: bytes | None) -> bytes:
                v = uid(p) if p is not None and len(p) == 16 else None
                return _NULL if v is None else _SOME + v
        elif t.name in ("set", "map"):
            path = nullable_encoder(t.params[0], ptype)
        else:
            names = [_SOME + zlong(len(b)) + b for b in (n.encode() for n in t.field_names)]

            def path(p: bytes | None) -> bytes:
                i = udt_field_index(p or b"\0\0")
                return names[i] if i < len(names) else _NULL

    def write(rc: Any) -> tuple[bytes, bytes]:
        raw, ts, p, ldt = rc.value, rc.timestamp, rc.path, rc.local_deletion_time
        if path is None and not rc.ttl and not rc.deleted:  # the common case: a live simple cell
            n = len(raw)
            return (b"".join([value(raw), zlong(n), raw, zlong(ts), b"\x00\x00\x00\x00"]),
                    b"".join([LIVE_HEAD, n.to_bytes(4, "big"), raw, hash_int(ts), LIVE_TAIL]))
        if path is not None and p is not None and not rc.ttl and not rc.deleted:  # a live collection element
            n, m = len(raw), len(p)
            return (b"".join([value(raw), zlong(n), raw, zlong(ts), b"\x00\x00\x00\x00", path(p), zlong(m), p]),
                    b"".join([HASH_ONE, m.to_bytes(4, "big"), p, HASH_ONE, n.to_bytes(4, "big"), raw, hash_int(ts),
                              LIVE_TAIL]))
        if rc.deleted:
            ttl, exp, ld = 0, None, ldt
            avro = [_NULL if vtype != "null" else b"", zlong(len(raw)), raw, zlong(ts), b"\x00", _NULL, _TRUE,
                    opt_long(ldt)]
        else:
            ttl, ld = rc.ttl, None
            exp = ldt if ttl > 0 else None
            avro = [value(raw), zlong(len(raw)), raw, zlong(ts), zlong(ttl), opt_long(exp), _FALSE, _NULL]
        if path is not None:
            avro += (path(p), zlong(len(p or b"")), p or b"")
        h = (_h_bytes(p), _h_bytes(raw), hash_int(ts), hash_int(ttl), hash_int(rc.deleted), hash_int(exp), hash_int(ld))
        return b"".join(avro), b"".join(h)
    # the inlined live cell begins with the column's and the value's union branches: written by the encoder
    return write, value_encoder(t, vtype[1], _LIVE_SOME) if path is None and vtype != "null" else None
