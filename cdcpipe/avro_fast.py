"""Capture's hot path: a PartitionUpdate straight to single-object-encoded Avro events, from the raw bytes.

Contract
    :class:`TableEncoder` is compiled once per (table schema version, node).  :meth:`TableEncoder.encode` turns
    one ``PartitionUpdate`` into ``(op, timestamp_micros, message)`` triples that are byte for byte what
    ``events.from_mutation`` followed by ``avro.encode`` produce (same events, same order, same ``event_id``:
    the hash input is the same byte string, built in one piece).  That reference path stays the specification
    (``tests/unit/test_avro_fast.py`` compares both on random events); when an update holds something the fast
    path does not handle (a key that does not decode, a value fastavro rejects) it raises :class:`Unsupported`
    and the caller uses the reference path for the whole mutation, so the two can never disagree.

Values are written by ``cdcpipe.avro_raw`` from their serialized form.  Cost model (docs/operations.md): a live
cell of a simple column is inlined into its row (one Avro field, one hash run), other cells go through their
column's writer; nothing per event is built but bytes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from typing import Any

from cdcpipe.avro import MAGIC, EventSchema
from cdcpipe.avro_raw import (
    SMALL_LONGS,
    SOME_SMALL_LONGS,
    Encoder,
    Unsupported,
    nullable_encoder,
    required_encoder,
    value_encoder,
    zlong,
)
from cdcpipe.capture.events import Origin, _ranges
from cdcpipe.capture.mutation import PartitionUpdate
from cdcpipe.capture.rows import NO_TIMESTAMP, Row
from cdcpipe.capture.schema import TableSchema
from cdcpipe.capture.values import CqlType, udt_field_index

_Q = struct.Struct(">q").pack
_NULL, _SOME, _FALSE, _TRUE = b"\x00", b"\x02", b"\x00", b"\x01"
_NONE_I = b"\x00"  # the hash's encoding of None
_ONE = b"\x01" + _Q(1)  # the hash's count prefix of a 1-tuple
_NULL_PATH = _ONE + b"\xff\xff\xff\xff"
# op enum indexes in the record: upsert 0, row_delete 1, partition_delete 2, range_delete 3 (zigzag: 00 02 04 06)
__all__ = ["TableEncoder", "Unsupported", "value_encoder", "zlong"]


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


_H_STATIC, _H_ROW, _H_LIVE, _H_DELETION = _h_text("S"), _h_text("W"), _h_text("L"), _h_text("D")
_H_ZERO = _h(0)
# an inlined live cell: "\x02\x02" (the column's union branch, a 1-element array), the value's union branch...,
# then after the raw value and timestamp: ttl 0, no expiry, not deleted, no deletion time, end of array, no
# collection deletion
_LIVE_SOME, _LIVE_NULL, _LIVE_REST = b"\x02\x02\x02", b"\x02\x02\x00", b"\x00\x00\x00\x00\x00\x00"
_LEN4 = [n.to_bytes(4, "big") for n in range(0x2000)]  # the hash's length prefix of a short value


def _h_bytes(v: bytes | None) -> bytes:
    return _NULL_PATH if v is None else _ONE + len(v).to_bytes(4, "big") + v


def _h_tuple(values: tuple[bytes | None, ...]) -> bytes:
    parts = [_h(len(values))]
    for v in values:
        parts.append(b"\xff\xff\xff\xff" if v is None else len(v).to_bytes(4, "big") + v)
    return b"".join(parts)


def _apply(f: Callable[[bytes | None], bytes], v: bytes | None) -> bytes:
    return f(v)


# ------------------------------------------------------------------------------------------------ cells

CellWriter = Callable[[Any], tuple[bytes, bytes]]  # raw cell -> (Avro Cell record, event-id hash input)
# a column: (field index, hash of its name, cell writer, value encoder of a simple column, hash prefix of a live cell)
_Column = tuple[int, bytes, CellWriter, Encoder | None, bytes]


def _cell_writer(t: CqlType, cell_fields: list[dict[str, Any]],
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
                    b"".join([_LIVE_HEAD, n.to_bytes(4, "big"), raw, _h(ts), _LIVE_TAIL]))
        if path is not None and p is not None and not rc.ttl and not rc.deleted:  # a live collection element
            n, m = len(raw), len(p)
            return (b"".join([value(raw), zlong(n), raw, zlong(ts), b"\x00\x00\x00\x00", path(p), zlong(m), p]),
                    b"".join([_ONE, m.to_bytes(4, "big"), p, _ONE, n.to_bytes(4, "big"), raw, _h(ts), _LIVE_TAIL]))
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
    # the inlined live cell begins with the column's and the value's union branches: written by the encoder
    return write, value_encoder(t, vtype[1], _LIVE_SOME) if path is None and vtype != "null" else None


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
        self.pk = [required_encoder(value_encoder(c.type, f["type"])) for c, f in zip(table.partition_key, pk_types,
                                                                                 strict=True)]
        ck_types = fields["clustering"]["type"][1]["fields"]
        self.ck = [nullable_encoder(c.type, f["type"][1]) for c, f in zip(table.clustering, ck_types,
                                                                                  strict=True)]
        col_fields = fields["columns"]["type"]["fields"]
        self.ncols = len(col_fields)
        by_name = {f["cdcpipe.column"]: (i, f) for i, f in enumerate(col_fields)}
        self.nulls = [_NULL] * self.ncols
        self._segment: tuple[int, bytes] = (-1, b"")  # the last segment id and source + its varint
        self.columns: tuple[dict[str, _Column], dict[str, _Column]] = ({}, {})
        for static, cols in ((False, table.regular), (True, table.static)):
            for c in cols:
                i, f = by_name[c.name]
                cell_fields = f["type"][1]["fields"][0]["type"]["items"]["fields"]
                h_name = _h_text("C") + _h_text(c.name)
                write, value = _cell_writer(c.type, cell_fields)
                self.columns[static][c.name] = (i, h_name, write, value, h_name + _NONE_I + _LIVE_HEAD)
    def _clustering(self, raws: tuple[bytes | None, ...]) -> bytes:
        """The Clustering record for these values (missing trailing values are null)."""
        ck = self.ck
        if len(raws) == len(ck):
            if len(ck) == 1:
                return ck[0](raws[0])
            return b"".join(map(_apply, ck, raws))
        return b"".join([ck[i](raws[i]) if i < len(raws) else _NULL for i in range(len(ck))])

    def _raws(self, raws: tuple[bytes | None, ...]) -> bytes:
        if not raws:
            return b"\x00"
        n = len(raws)
        parts = [SMALL_LONGS[n + n] if n < 0x2000 else zlong(n)]
        for r in raws:
            m = -1 if r is None else len(r)
            parts.append(_NULL if r is None else SOME_SMALL_LONGS[m + m] + r if m < 0x2000 else _SOME + zlong(m) + r)
        parts.append(b"\x00")
        return b"".join(parts)

    def encode(self, u: PartitionUpdate, segment_id: int, position: int) -> list[tuple[str, int, bytes]]:
        """``(op, timestamp_micros, message)`` for each event of ``u``, in ``events.from_mutation`` order.
        Raises Unsupported."""
        key = u.key
        if len(self.pk) == 1:
            n = len(key)
            keys = [self.pk[0](key), b"\x02", SMALL_LONGS[n + n] if n < 0x2000 else zlong(n), key, b"\x00"]
        else:
            try:
                raw_key = self.table.partition_key_values(key)
            except ValueError as exc:
                raise Unsupported(str(exc)) from exc
            keys = [w(r) for w, r in zip(self.pk, raw_key, strict=True)]
            keys.append(zlong(len(raw_key)))
            keys += [zlong(len(r)) + r for r in raw_key]
            keys.append(b"\x00")
        seg = self._segment
        if seg[0] != segment_id:
            seg = self._segment = (segment_id, self.source + zlong(segment_id))
        head = b"".join([seg[1], zlong(position), *keys])
        h_base = b"".join((self.h_table, _ONE, len(key).to_bytes(4, "big"), key))
        out: list[tuple[str, int, bytes]] = []
        nulls = b"\x00" * self.ncols
        header = self.header
        blake2b = hashlib.blake2b

        if u.partition_deletion is not None:
            d = u.partition_deletion
            dl = (d.marked_for_delete_at, d.local_deletion_time)
            eid = blake2b(h_base + _h_text("P") + _h(dl[0]) + _h(dl[1]), digest_size=16).digest()
            out.append(("partition_delete", dl[0], b"".join([
                header, eid, b"\x04", zlong(dl[0]), head,
                b"\x00\x00\x00\x00\x02", zlong(dl[0]), zlong(dl[1]), b"\x00\x00", nulls])))
        for (s_raw, s_incl), (e_raw, e_incl), dt in _ranges(u.range_tombstones) if u.range_tombstones else ():
            dl = (dt.marked_for_delete_at, dt.local_deletion_time)
            h = b"".join([h_base, _h_text("R"), _h(dl[0]), _h(dl[1]), _h_text("s"), _h(s_incl), _h_tuple(s_raw),
                          _h_text("e"), _h(e_incl), _h_tuple(e_raw)])
            ncl = len(self.ck)
            eid = blake2b(h, digest_size=16).digest()
            out.append(("range_delete", dl[0], b"".join([
                header, eid, b"\x06", zlong(dl[0]), head,
                b"\x00\x00\x00\x00\x02", zlong(dl[0]), zlong(dl[1]),
                b"\x02", _TRUE if s_incl else _FALSE, self._clustering(s_raw[:ncl]), self._raws(s_raw),
                b"\x02", _TRUE if e_incl else _FALSE, self._clustering(e_raw[:ncl]), self._raws(e_raw), nulls])))
        if u.static_row is not None:
            self._row(u.static_row, h_base, head, out)
        for row in u.rows:
            self._row(row, h_base, head, out)
        return out

    def _row(self, row: Row, h_base: bytes, head: bytes, out: list[tuple[str, int, bytes]]) -> None:
        """Append the row's event (if it has one) to ``out``.

        Hash input and Avro are those of ``events._row_change`` + ``avro.encode``: columns in the order of their
        first cell, then the columns with only a collection deletion.  A live simple cell is inlined (one field,
        one hash run); the other cells go through the column's writer and are grouped by column."""
        current = self.columns[row.static]
        fields = self.nulls[:]
        hcols: list[bytes | str] = []  # hash parts; a str marks a grouped column, expanded at the end
        groups: dict[str, tuple[int, bytes, list[bytes], list[bytes]]] | None = None
        newest = NO_TIMESTAMP
        last, zts, hts = None, b"", b""
        for rc in row.cells:
            name, raw, ts, ttl, _, deleted, _ = rc
            spec = current.get(name)
            if spec is None:  # a dropped column's cell
                continue
            if ts > newest:
                newest = ts
            value = spec[3]
            if value is not None and not ttl and not deleted:
                if fields[spec[0]] is not _NULL or (groups is not None and name in groups):
                    raise Unsupported(f"two cells of simple column {name}")  # never in a decoded row
                if ts != last:
                    last, zts, hts = ts, zlong(ts), b"\x01" + _Q(ts)
                n = len(raw)
                v = value(raw)
                if n < 0x2000:
                    fields[spec[0]] = b"".join((_LIVE_NULL if v is None else v, SMALL_LONGS[n + n], raw, zts,
                                                _LIVE_REST))
                    hcols += (spec[4], _LEN4[n], raw, hts, _LIVE_TAIL)
                else:
                    fields[spec[0]] = b"".join((_LIVE_NULL if v is None else v, zlong(n), raw, zts, _LIVE_REST))
                    hcols += (spec[4], n.to_bytes(4, "big"), raw, hts, _LIVE_TAIL)
                continue
            if groups is None:
                groups = {}
            g = groups.get(name)
            if g is None:
                if value is not None and fields[spec[0]] is not _NULL:
                    raise Unsupported(f"two cells of simple column {name}")
                g = groups[name] = (spec[0], spec[1], [], [])
                hcols.append(name)
            elif value is not None:
                raise Unsupported(f"two cells of simple column {name}")
            a, hb = spec[2](rc)
            g[2].append(a)
            g[3].append(hb)
        if row.complex_deletions:
            newest = self._complex_deletions(row, current, newest, hcols, groups, fields)
        elif groups is not None:
            for name, (i, h_name, cell_avro, cell_h) in groups.items():
                fields[i] = b"".join([_SOME, zlong(len(cell_avro)), *cell_avro, b"\x00\x00"])
                hcols[hcols.index(name)] = b"".join([h_name, _NONE_I, *cell_h])
        lv = row.liveness
        live = lv is not None and lv[0] != NO_TIMESTAMP
        d = row.deletion
        if not hcols and not live and d is None:
            return
        static = row.static
        clustering = row.clustering
        h: list[Any] = [h_base, _H_STATIC if static else _H_ROW, _h_tuple(clustering) if clustering else _H_ZERO]
        if static or not clustering:
            avro = [b"\x00\x00\x01" if static else b"\x00\x00\x00"]  # no clustering, no raw values, static?
        else:
            avro = [_SOME + self._clustering(clustering) if self.ck else _NULL, self._raws(clustering), _FALSE]
        if live:
            assert lv is not None
            lts, lttl = lv[0], lv[1]
            if lts > newest:
                newest = lts
            if lts == last and not lttl:  # an INSERT: the marker has the cells' timestamp
                h += (_H_LIVE, hts, _H_ZERO, _NONE_I)
                avro += (_SOME, zts, b"\x00\x00")
            else:
                exp = lv[2] if lttl > 0 else None
                h += (_H_LIVE, _h(lts), _h(lttl), _h(exp))
                avro += (_SOME, zlong(lts), zlong(lttl), _opt_long(exp))
        else:
            avro.append(_NULL)
        if d is not None:
            if d.marked_for_delete_at > newest:
                newest = d.marked_for_delete_at
            h += (_H_DELETION, _h(d.marked_for_delete_at), _h(d.local_deletion_time))
            avro += (_SOME, zlong(d.marked_for_delete_at), zlong(d.local_deletion_time))
        else:
            avro.append(_NULL)
        avro.append(b"\x00\x00")  # range_start, range_end
        h += hcols
        eid = hashlib.blake2b(b"".join(h), digest_size=16).digest()
        zn = zts if newest == last else zlong(newest)
        if hcols or live:
            out.append(("upsert", newest, b"".join([self.header, eid, b"\x00", zn, head, *avro, *fields])))
        else:
            out.append(("row_delete", newest, b"".join([self.header, eid, b"\x02", zn, head, *avro, *fields])))

    def _complex_deletions(self, row: Row, current: dict[str, _Column], newest: int, hcols: list[bytes | str],
                           groups: dict[str, tuple[int, bytes, list[bytes], list[bytes]]] | None,
                           fields: list[bytes]) -> int:
        """Fold the row's collection deletions into ``groups`` and expand them into ``hcols``/``fields``; the
        newest timestamp including them."""
        groups = {} if groups is None else groups
        deletions: dict[str, tuple[int, int]] = {}
        for name, dt in row.complex_deletions:
            spec = current.get(name)
            if spec is not None:
                if spec[3] is not None:  # never written by Cassandra: a simple column's cell was inlined
                    raise Unsupported(f"collection deletion of simple column {name}")
                deletions[name] = (dt.marked_for_delete_at, dt.local_deletion_time)
                if dt.marked_for_delete_at > newest:
                    newest = dt.marked_for_delete_at
        for name in deletions:
            if name not in groups:
                spec = current[name]
                groups[name] = (spec[0], spec[1], [], [])
                hcols.append(name)
        for name, (i, h_name, cell_avro, cell_h) in groups.items():
            cd = deletions.get(name)
            arr = zlong(len(cell_avro)) + b"".join(cell_avro) + b"\x00" if cell_avro else b"\x00"
            fields[i] = b"".join([_SOME, arr, _NULL if cd is None else _SOME + zlong(cd[0]) + zlong(cd[1])])
            hcols[hcols.index(name)] = b"".join([h_name, _NONE_I if cd is None else _h(cd[0]) + _h(cd[1]), *cell_h])
        return newest
