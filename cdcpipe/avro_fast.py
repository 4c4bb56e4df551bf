"""Capture's hot path: a PartitionUpdate straight to single-object-encoded Avro events, from the raw bytes.

Contract
    :class:`TableEncoder` is compiled once per (table schema version, node).  :meth:`TableEncoder.encode` turns
    one ``PartitionUpdate`` into ``(op, timestamp_micros, message)`` triples that are byte for byte what
    ``events.from_mutation`` followed by ``avro.encode`` produce (same events, same order, same ``event_id``:
    the hash input is the same byte string, built in one piece).  That reference path stays the specification
    (``tests/unit/test_avro_fast.py`` compares both on random events); when an update holds something the fast
    path does not handle (a key that does not decode, a value fastavro rejects) it raises :class:`Unsupported`
    and the caller uses the reference path for the whole mutation, so the two can never disagree.

Values of simple types are written from their serialized form (zigzag varints, length-prefixed strings,
reversed doubles, uuid text); the others (varint, decimal, inet, duration, collections, tuples, UDTs, vectors,
edge values such as out-of-range timestamps) go through the driver decode + ``avro_values.converter`` + a
fastavro writer for that one value, exactly as the reference does.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from collections.abc import Callable
from typing import Any

import fastavro

from cdcpipe.avro import MAGIC, EventSchema
from cdcpipe.avro_values import converter
from cdcpipe.capture.events import Origin, _ranges, value_of
from cdcpipe.capture.mutation import PartitionUpdate
from cdcpipe.capture.rows import NO_TIMESTAMP, Row
from cdcpipe.capture.schema import TableSchema
from cdcpipe.capture.values import CqlType, udt_field_index

Encoder = Callable[[bytes], bytes | None]  # serialized CQL value -> Avro binary of the value, None for null

_Q = struct.Struct(">q").pack
_F_BE = struct.Struct(">f").unpack
_F_LE = struct.Struct("<f").pack
_NULL, _SOME, _FALSE, _TRUE = b"\x00", b"\x02", b"\x00", b"\x01"
_NONE_I = b"\x00"  # the hash's encoding of None
_ONE = b"\x01" + _Q(1)  # the hash's count prefix of a 1-tuple
_NULL_PATH = _ONE + b"\xff\xff\xff\xff"
_OPS = {"upsert": b"\x00", "row_delete": b"\x02", "partition_delete": b"\x04", "range_delete": b"\x06"}
_TS_MIN_MS, _TS_MAX_MS = -30610224000000, 221845392000000  # years 1000..9000: the driver gives datetimes
_TIME_MAX_NS = 86_400_000_000_000


class Unsupported(Exception):
    """This update needs the reference path."""


def _zz(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_LONGS: dict[int, bytes] = {i: _zz(i) for i in range(-64, 4096)}


def zlong(n: int) -> bytes:
    """Avro's zigzag varint of a 64-bit int (memoized: timestamps repeat across the cells of a write)."""
    b = _LONGS.get(n)
    if b is None:
        if not -(1 << 63) <= n < (1 << 63):
            raise Unsupported(f"{n} does not fit a long")
        b = _zz(n)
        if len(_LONGS) > 200_000:
            _LONGS.clear()
            _LONGS.update({i: _zz(i) for i in range(-64, 4096)})
        _LONGS[n] = b
    return b


def _opt_long(v: int | None) -> bytes:
    return _NULL if v is None else _SOME + zlong(v)


def _h(v: int | None) -> bytes:
    """The event-id hash's encoding of an int (``events._Hasher.int``)."""
    return _NONE_I if v is None else b"\x01" + _Q(int(v))


_LIVE_HEAD = _NULL_PATH + _ONE  # no path, then the value as a 1-tuple
_LIVE_TAIL = _h(0) + _h(False) + _NONE_I + _NONE_I  # ttl 0, not deleted, no expiry, no deletion time


def _h_text(s: str) -> bytes:
    b = s.encode()
    return _ONE + len(b).to_bytes(4, "big") + b


def _h_bytes(v: bytes | None) -> bytes:
    return _NULL_PATH if v is None else _ONE + len(v).to_bytes(4, "big") + v


def _h_tuple(values: tuple[bytes | None, ...]) -> bytes:
    parts = [_h(len(values))]
    for v in values:
        parts.append(b"\xff\xff\xff\xff" if v is None else len(v).to_bytes(4, "big") + v)
    return b"".join(parts)


# ------------------------------------------------------------------------------------------------ values

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


def _fixed_int(size: int, slow: Encoder) -> Encoder:
    def enc(raw: bytes) -> bytes | None:
        if len(raw) == size:
            return zlong(int.from_bytes(raw, "big", signed=True))
        return slow(raw)
    return enc


def _string(codec: str, slow: Encoder) -> Encoder:
    def enc(raw: bytes) -> bytes | None:
        try:
            raw.decode(codec)
        except UnicodeDecodeError:
            return slow(raw)
        return zlong(len(raw)) + raw
    return enc


def value_encoder(t: CqlType, avro_t: Any) -> Encoder:
    """Raw CQL bytes → Avro binary of ``avro_t`` (the non-null branch), None where the reference writes null."""
    slow = _generic(t, avro_t)
    n = t.name
    if n in ("int", "bigint", "smallint", "tinyint"):
        return _fixed_int({"int": 4, "bigint": 8, "smallint": 2, "tinyint": 1}[n], slow)
    if n in ("text", "varchar"):
        return _string("utf-8", slow)
    if n == "ascii":
        return _string("ascii", slow)
    if n == "blob":
        return lambda raw: zlong(len(raw)) + raw
    if n == "boolean":
        return lambda raw: (_TRUE if raw[0] else _FALSE) if len(raw) == 1 else slow(raw)
    if n == "double":
        return lambda raw: raw[::-1] if len(raw) == 8 else slow(raw)
    if n == "float":
        def f32(raw: bytes) -> bytes | None:
            if len(raw) == 4 and (raw[0] & 0x7F != 0x7F or raw[1] & 0x80 == 0):  # not NaN/inf
                return _F_LE(_F_BE(raw)[0])
            return slow(raw)
        return f32
    if n in ("uuid", "timeuuid"):
        def uid(raw: bytes) -> bytes | None:
            if len(raw) != 16:
                return slow(raw)
            h = raw.hex()
            return b"\x48" + f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}".encode()
        return uid
    if n == "timestamp":
        def ts(raw: bytes) -> bytes | None:
            if len(raw) == 8:
                ms = int.from_bytes(raw, "big", signed=True)
                if _TS_MIN_MS <= ms <= _TS_MAX_MS:
                    return zlong(ms * 1000)
            return slow(raw)
        return ts
    if n == "date":
        return lambda raw: zlong(int.from_bytes(raw, "big") - (1 << 31)) if len(raw) == 4 else slow(raw)
    if n == "time":
        def tm(raw: bytes) -> bytes | None:
            if len(raw) == 8:
                ns = int.from_bytes(raw, "big", signed=True)
                if 0 <= ns < _TIME_MAX_NS:
                    return zlong(ns // 1000)
            return slow(raw)
        return tm
    return slow


def _nullable(enc: Encoder) -> Callable[[bytes | None], bytes]:
    def w(raw: bytes | None) -> bytes:
        if raw is None:
            return _NULL
        v = enc(raw)
        return _NULL if v is None else _SOME + v
    return w


def _required(enc: Encoder) -> Callable[[bytes], bytes]:
    def w(raw: bytes) -> bytes:
        v = enc(raw)
        if v is None:
            raise Unsupported("key value does not decode")
        return v
    return w


# ------------------------------------------------------------------------------------------------ cells

CellWriter = Callable[[Any], tuple[bytes, bytes]]  # raw cell -> (Avro Cell record, event-id hash input)


def _cell_writer(t: CqlType, cell_fields: list[dict[str, Any]]) -> CellWriter:
    vtype = cell_fields[0]["type"]
    value: Callable[[bytes | None], bytes]
    if vtype == "null":
        def value(raw: bytes | None) -> bytes:
            return b""
    else:
        elem = t if not t.multi_cell else t.params[0] if t.name == "list" else t.params[1]
        value = _nullable(value_encoder(elem, vtype[1]))
    path: Callable[[bytes | None], bytes] | None = None
    if t.multi_cell:
        ptype = cell_fields[7]["type"][1]
        if t.name == "list":
            uid = value_encoder(CqlType("timeuuid"), ptype)

            def path(p: bytes | None) -> bytes:
                v = uid(p) if p is not None and len(p) == 16 else None
                return _NULL if v is None else _SOME + v
        elif t.name in ("set", "map"):
            path = _nullable(value_encoder(t.params[0], ptype))
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
                    b"".join([_LIVE_HEAD, n.to_bytes(4, "big"), raw, _h(ts), _LIVE_TAIL]))
        if rc.deleted:
            ttl, exp, ld = 0, None, ldt
            avro = [_NULL if vtype != "null" else b"", zlong(len(raw)), raw, zlong(ts), b"\x00", _NULL, _TRUE,
                    _opt_long(ldt)]
        else:
            ttl, ld = rc.ttl, None
            exp = ldt if ttl > 0 else None
            avro = [value(raw), zlong(len(raw)), raw, zlong(ts), zlong(ttl), _opt_long(exp), _FALSE, _NULL]
        if path is not None:
            avro += (path(p), zlong(len(p or b"")), p or b"")
        h = (_h_bytes(p), _h_bytes(raw), _h(ts), _h(ttl), _h(rc.deleted), _h(exp), _h(ld))
        return b"".join(avro), b"".join(h)
    return write


# ------------------------------------------------------------------------------------------------ events

class TableEncoder:
    """One table schema version's events, as the node ``origin`` logs them (see the module docstring)."""

    def __init__(self, table: TableSchema, schema: EventSchema, origin: Origin) -> None:
        self.table = table
        fields = {f["name"]: f for f in schema.schema["fields"]}
        self.header = MAGIC + schema.fingerprint
        self.source = b"".join(zlong(len(b)) + b for b in (
            s.encode() for s in (origin.cluster, origin.datacenter, origin.node, table.keyspace, table.table)))
        self.source += b"\x48" + str(table.table_id).encode()
        self.h_table = table.table_id.bytes
        pk_types = fields["partition_key"]["type"]["fields"]
        self.pk = [_required(value_encoder(c.type, f["type"])) for c, f in zip(table.partition_key, pk_types,
                                                                                 strict=True)]
        ck_types = fields["clustering"]["type"][1]["fields"]
        self.ck = [_nullable(value_encoder(c.type, f["type"][1])) for c, f in zip(table.clustering, ck_types,
                                                                                  strict=True)]
        col_fields = fields["columns"]["type"]["fields"]
        self.ncols = len(col_fields)
        by_name = {f["cdcpipe.column"]: (i, f) for i, f in enumerate(col_fields)}
        self.columns: tuple[dict[str, tuple[int, bytes, CellWriter]], dict[str, tuple[int, bytes, CellWriter]]]
        self.columns = ({}, {})
        for static, cols in ((False, table.regular), (True, table.static)):
            for c in cols:
                i, f = by_name[c.name]
                cell_fields = f["type"][1]["fields"][0]["type"]["items"]["fields"]
                self.columns[static][c.name] = (i, _h_text("C") + _h_text(c.name), _cell_writer(c.type, cell_fields))

    def _clustering(self, raws: tuple[bytes | None, ...]) -> bytes:
        """The Clustering record for these values (missing trailing values are null)."""
        ck = self.ck
        return b"".join([ck[i](raws[i]) if i < len(raws) else _NULL for i in range(len(ck))])

    def _raws(self, raws: tuple[bytes | None, ...]) -> bytes:
        if not raws:
            return b"\x00"
        return zlong(len(raws)) + b"".join(
            [_NULL if r is None else _SOME + zlong(len(r)) + r for r in raws]) + b"\x00"

    def encode(self, u: PartitionUpdate, segment_id: int, position: int) -> list[tuple[str, int, bytes]]:
        """``(op, timestamp_micros, message)`` for each event of ``u``, in ``events.from_mutation`` order.
        Raises Unsupported."""
        try:
            raw_key = self.table.partition_key_values(u.key)
        except ValueError as exc:
            raise Unsupported(str(exc)) from exc
        key = u.key
        head = b"".join([self.source, zlong(segment_id), zlong(position), *(w(r) for w, r in zip(
            self.pk, raw_key, strict=True)), zlong(len(raw_key)), *(zlong(len(r)) + r for r in raw_key), b"\x00"])
        h_base = self.h_table + _ONE + len(key).to_bytes(4, "big") + key
        out: list[tuple[str, int, bytes]] = []
        nulls = b"\x00" * self.ncols

        def emit(op: str, ts: int, h: bytes, body: bytes) -> None:
            eid = hashlib.blake2b(h, digest_size=16).digest()
            out.append((op, ts, b"".join([self.header, eid, _OPS[op], zlong(ts), head, body])))

        if u.partition_deletion is not None:
            d = u.partition_deletion
            dl = (d.marked_for_delete_at, d.local_deletion_time)
            emit("partition_delete", dl[0], h_base + _h_text("P") + _h(dl[0]) + _h(dl[1]),
                 b"\x00\x00\x00\x00\x02" + zlong(dl[0]) + zlong(dl[1]) + b"\x00\x00" + nulls)
        for (s_raw, s_incl), (e_raw, e_incl), dt in _ranges(u.range_tombstones):
            dl = (dt.marked_for_delete_at, dt.local_deletion_time)
            h = b"".join([h_base, _h_text("R"), _h(dl[0]), _h(dl[1]), _h_text("s"), _h(s_incl), _h_tuple(s_raw),
                          _h_text("e"), _h(e_incl), _h_tuple(e_raw)])
            ncl = len(self.ck)
            body = b"".join([b"\x00\x00\x00\x00\x02", zlong(dl[0]), zlong(dl[1]),
                             b"\x02", _TRUE if s_incl else _FALSE, self._clustering(s_raw[:ncl]), self._raws(s_raw),
                             b"\x02", _TRUE if e_incl else _FALSE, self._clustering(e_raw[:ncl]), self._raws(e_raw),
                             nulls])
            emit("range_delete", dl[0], h, body)
        rows = (u.static_row, *u.rows) if u.static_row is not None else u.rows
        for row in rows:
            self._row(row, h_base, emit)
        return out

    def _row(self, row: Row, h_base: bytes, emit: Callable[[str, int, bytes, bytes], None]) -> None:
        current = self.columns[row.static]
        cells: dict[str, tuple[int, bytes, list[bytes], list[bytes]]] = {}
        newest = NO_TIMESTAMP
        for rc in row.cells:
            spec = current.get(rc.column)
            if spec is None:  # a dropped column's cell
                continue
            entry = cells.get(rc.column)
            if entry is None:
                entry = cells[rc.column] = (spec[0], spec[1], [], [])
            a, hb = spec[2](rc)
            entry[2].append(a)
            entry[3].append(hb)
            if rc.timestamp > newest:
                newest = rc.timestamp
        deletions: dict[str, tuple[int, int]] = {}
        for name, dt in row.complex_deletions:
            if name in current:
                deletions[name] = (dt.marked_for_delete_at, dt.local_deletion_time)
                newest = max(newest, dt.marked_for_delete_at)
        for name in deletions:
            if name not in cells:
                spec = current[name]
                cells[name] = (spec[0], spec[1], [], [])
        lv = row.liveness
        live = lv is not None and lv.timestamp != NO_TIMESTAMP
        d = row.deletion
        if not cells and not live and d is None:
            return
        clustering = () if row.static else row.clustering
        h = [h_base, _h_text("S" if row.static else "W"), _h_tuple(row.clustering)]
        avro = [self._raws(clustering), _TRUE if row.static else _FALSE]
        if clustering and self.ck:
            avro.insert(0, _SOME + self._clustering(clustering))
        else:
            avro.insert(0, _NULL)
        if live:
            assert lv is not None
            exp = lv.local_expiration_time if lv.ttl > 0 else None
            newest = max(newest, lv.timestamp)
            h += [_h_text("L"), _h(lv.timestamp), _h(lv.ttl), _h(exp)]
            avro += [_SOME, zlong(lv.timestamp), zlong(lv.ttl), _opt_long(exp)]
        else:
            avro.append(_NULL)
        if d is not None:
            newest = max(newest, d.marked_for_delete_at)
            h += [_h_text("D"), _h(d.marked_for_delete_at), _h(d.local_deletion_time)]
            avro += [_SOME, zlong(d.marked_for_delete_at), zlong(d.local_deletion_time)]
        else:
            avro.append(_NULL)
        avro.append(b"\x00\x00")  # range_start, range_end
        fields = [_NULL] * self.ncols
        for name, (i, h_name, cell_avro, cell_h) in cells.items():
            cd = deletions.get(name)
            h.append(h_name)
            h.append(_NONE_I if cd is None else _h(cd[0]) + _h(cd[1]))
            h += cell_h
            arr = zlong(len(cell_avro)) + b"".join(cell_avro) + b"\x00" if cell_avro else b"\x00"
            fields[i] = b"".join([_SOME, arr, _NULL if cd is None else _SOME + zlong(cd[0]) + zlong(cd[1])])
        avro += fields
        op = "upsert" if cells or live else "row_delete"
        emit(op, newest, b"".join(h), b"".join(avro))
