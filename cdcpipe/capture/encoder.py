"""Capture's hot path: a PartitionUpdate straight to single-object-encoded Avro events, from the raw bytes.

Contract
    :class:`TableEncoder` is compiled once per (table schema version, node).  :meth:`TableEncoder.encode` turns
    one ``PartitionUpdate`` into ``(op, timestamp_micros, message)`` triples that are byte for byte what
    ``events.from_mutation`` followed by ``avro.encode`` produce (same events, same order, same ``event_id``:
    the hash input is the same byte string, built in one piece).  That reference path stays the specification
    (``tests/unit/test_avro_fast.py`` compares both on random events); when an update holds something the fast
    path does not handle (a key that does not decode, a value fastavro rejects) it raises :class:`Unsupported`
    and the caller uses the reference path for the whole mutation, so the two can never disagree.

    :meth:`TableEncoder.begin` / :meth:`TableEncoder.row` make it a ``RowSink`` of the mutation decoder: the
    regular rows of an update are read from the wire straight into the same events (``out``), without Rows or
    Cells (one pass; ``tests/unit/test_avro_fast_wire.py`` compares it with both passes and the reference).

Values are written by ``cdcpipe.capture.avro_write`` from their serialized form.  Cost model (docs/operations.md):
a live cell of a simple column is inlined into its row (one Avro field, one hash run), other cells go through
their column's writer; nothing per event is built but bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from cdcpipe.avro import MAGIC, EventSchema
from cdcpipe.capture.avro_write import (
    HASH_NONE,
    HASH_ONE,
    LIVE_HEAD,
    LIVE_TAIL,
    SMALL_LONGS,
    SOME_SMALL_LONGS,
    CellWriter,
    Encoder,
    Unsupported,
    cell_writer,
    hash_int,
    hash_text,
    hash_tuple,
    nullable_encoder,
    opt_long,
    pack_long,
    required_encoder,
    value_encoder,
    zlong,
)
from cdcpipe.capture.events import Origin, ranges
from cdcpipe.capture.mutation import PartitionUpdate
from cdcpipe.capture.rows import (
    HAS_ALL_COLUMNS,
    HAS_COMPLEX_DELETION,
    HAS_DELETION,
    HAS_EMPTY_VALUE,
    HAS_TIMESTAMP,
    HAS_TTL,
    IS_DELETED,
    IS_EXPIRING,
    NO_TIMESTAMP,
    TWO_63,
    TWO_64,
    USE_ROW_TIMESTAMP,
    USE_ROW_TTL,
    Cell,
    DeletionTime,
    Header,
    Row,
    RowReader,
    WireError,
    uvint,
)
from cdcpipe.capture.segment import Position
from cdcpipe.schema import TableSchema

_NULL, _SOME, _FALSE, _TRUE = b"\x00", b"\x02", b"\x00", b"\x01"
# op enum indexes in the record: upsert 0, row_delete 1, partition_delete 2, range_delete 3 (zigzag: 00 02 04 06)
__all__ = ["TableEncoder", "Unsupported", "value_encoder", "zlong"]
_H_STATIC, _H_ROW, _H_LIVE, _H_DELETION = hash_text("S"), hash_text("W"), hash_text("L"), hash_text("D")
_H_ZERO = hash_int(0)
# an inlined live cell: "\x02\x02" (the column's union branch, a 1-element array), the value's union branch...,
# then after the raw value and timestamp: ttl 0, no expiry, not deleted, no deletion time, end of array, no
# collection deletion
_LIVE_NULL, _LIVE_REST = b"\x02\x02\x00", b"\x00\x00\x00\x00\x00\x00"  # _LIVE_SOME: avro_write
_LEN4 = [n.to_bytes(4, "big") for n in range(0x2000)]  # the hash's length prefix of a short value
# a column: (field index, hash of its name, cell writer, value encoder of a simple column, hash prefix of a live cell)
_Column = tuple[int, bytes, CellWriter, Encoder | None, bytes]
_Groups = dict[str, tuple[int, bytes, list[bytes], list[bytes]]]  # column -> (field, name hash, Avro, hash parts)
_new: Any = tuple.__new__


def _apply(f: Callable[[bytes | None], bytes], v: bytes | None) -> bytes:
    return f(v)


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
        self.out: list[tuple[str, int, bytes]] = []  # the events of the rows since begin()
        self._ctx: tuple[bytes, bytes] = (b"", b"")  # begin()'s partition: hash base, Avro head
        self.columns: tuple[dict[str, _Column], dict[str, _Column]] = ({}, {})
        for static, cols in ((False, table.regular), (True, table.static)):
            for c in cols:
                i, f = by_name[c.name]
                cell_fields = f["type"][1]["fields"][0]["type"]["items"]["fields"]
                h_name = hash_text("C") + hash_text(c.name)
                write, value = cell_writer(c.type, cell_fields)
                self.columns[static][c.name] = (i, h_name, write, value, h_name + HASH_NONE + LIVE_HEAD)
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

    def _head(self, key: bytes, segment_id: int, position: int) -> tuple[bytes, bytes]:
        """(the event-id hash input common to the partition's events, the Avro of its source and key)."""
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
        h_base = b"".join((self.h_table, HASH_ONE, len(key).to_bytes(4, "big"), key))
        return h_base, head

    def encode(self, u: PartitionUpdate, segment_id: int, position: int) -> list[tuple[str, int, bytes]]:
        """``(op, timestamp_micros, message)`` for each event of ``u``, in ``events.from_mutation`` order.
        Raises Unsupported."""
        h_base, head = self._head(u.key, segment_id, position)
        out: list[tuple[str, int, bytes]] = []
        nulls = b"\x00" * self.ncols
        header = self.header
        blake2b = hashlib.blake2b

        if u.partition_deletion is not None:
            d = u.partition_deletion
            dl = (d.marked_for_delete_at, d.local_deletion_time)
            eid = blake2b(h_base + hash_text("P") + hash_int(dl[0]) + hash_int(dl[1]), digest_size=16).digest()
            out.append(("partition_delete", dl[0], b"".join([
                header, eid, b"\x04", zlong(dl[0]), head,
                b"\x00\x00\x00\x00\x02", zlong(dl[0]), zlong(dl[1]), b"\x00\x00", nulls])))
        for (s_raw, s_incl), (e_raw, e_incl), dt in ranges(u.range_tombstones) if u.range_tombstones else ():
            dl = (dt.marked_for_delete_at, dt.local_deletion_time)
            h = b"".join([h_base, hash_text("R"), hash_int(dl[0]), hash_int(dl[1]), hash_text("s"), hash_int(s_incl),
                          hash_tuple(s_raw), hash_text("e"), hash_int(e_incl), hash_tuple(e_raw)])
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
        groups: _Groups | None = None
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
                    last, zts, hts = ts, zlong(ts), b"\x01" + pack_long(ts)
                n = len(raw)
                v = value(raw)
                if n < 0x2000:
                    fields[spec[0]] = b"".join((_LIVE_NULL if v is None else v, SMALL_LONGS[n + n], raw, zts,
                                                _LIVE_REST))
                    hcols += (spec[4], _LEN4[n], raw, hts, LIVE_TAIL)
                else:
                    fields[spec[0]] = b"".join((_LIVE_NULL if v is None else v, zlong(n), raw, zts, _LIVE_REST))
                    hcols += (spec[4], n.to_bytes(4, "big"), raw, hts, LIVE_TAIL)
                continue
            if groups is None:
                groups = {}
            _group(rc, spec, groups, fields, hcols)
        self._emit(row.static, row.clustering, row.liveness, row.deletion, row.complex_deletions, current, fields,
                   hcols, groups, newest, last, zts, hts, h_base, head, out)

    # RowSink (cdcpipe.capture.mutation): a row decoded from the wire straight into its event (see begin)
    def begin(self, key: bytes, position: Position) -> None:
        """Start a PartitionUpdate of ``key`` read at ``position``; its rows' events go to ``self.out``."""
        self.out = []
        self._ctx = self._head(key, position.segment_id, position.offset)

    def row(self, r: RowReader, p: int, flags: int, ext: int, header: Header) -> int:
        """Decode the regular row at ``p`` (after its flags) as ``RowReader.row`` does and append the event that
        ``_row`` appends for it to ``self.out``; the offset after the row.  Raises Unsupported, WireError."""
        buf = r.buf
        end = r.end
        min_ts = r.min_ts
        clustering: tuple[bytes | None, ...] = ()
        if r.clustering_fixed:
            clustering, p = r.clustering(p, len(r.clustering_fixed))
        liveness = None
        row_ts, row_ttl, row_ldt = NO_TIMESTAMP, 0, None
        if flags & HAS_TIMESTAMP:
            b = buf[p]
            if b < 0x80:
                p += 1
            else:
                b, p = uvint(buf, p)
            row_ts = b + min_ts
            if row_ts >= TWO_63:
                row_ts -= TWO_64
            if flags & HAS_TTL:
                row_ttl, p = r.ttl(p)
                row_ldt, p = r.ldt(p)
            liveness = (row_ts, row_ttl, row_ldt)
        deletion = None
        if flags & HAS_DELETION:
            deletion, p = r.deletion_time(p)
        if flags & HAS_ALL_COLUMNS:
            columns = header.columns
        else:
            columns, p = r._subset(p, header)
        current = self.columns[False]
        fields = self.nulls[:]
        hcols: list[bytes | str] = []
        groups: _Groups | None = None
        cds: list[tuple[str, DeletionTime]] | None = None
        newest = NO_TIMESTAMP
        last, zts, hts = None, b"", b""
        for col in columns:
            name, _, fixed, is_complex, dropped = col
            if is_complex:
                cells: list[Cell] = []
                if cds is None:
                    cds = []
                p = r._complex(p, col, row_ts, row_ttl, row_ldt, flags & HAS_COMPLEX_DELETION, cells.append, cds)
                spec = current.get(name)
                if spec is not None and cells:
                    if groups is None:
                        groups = {}
                    for rc in cells:
                        if rc[2] > newest:
                            newest = rc[2]
                        _group(rc, spec, groups, fields, hcols)
                continue
            cflags = buf[p]  # a simple cell, as in RowReader.row
            p += 1
            if cflags & USE_ROW_TIMESTAMP:
                ts = row_ts
            else:
                b = buf[p]
                if b < 0x80:
                    p += 1
                else:
                    b, p = uvint(buf, p)
                ts = b + min_ts
                if ts >= TWO_63:
                    ts -= TWO_64
            if cflags & USE_ROW_TTL:
                ttl, ldt = row_ttl, row_ldt
            elif cflags & (IS_DELETED | IS_EXPIRING):
                ldt, p = r.ldt(p)
                ttl = 0
                if cflags & IS_EXPIRING:
                    ttl, p = r.ttl(p)
            else:
                ttl, ldt = 0, None
            if cflags & HAS_EMPTY_VALUE:
                raw = b""
            else:
                n = fixed
                if n < 0:
                    n = buf[p]
                    if n < 0x80:
                        p += 1
                    else:
                        n, p = uvint(buf, p)
                e = p + n
                if e > end:
                    raise WireError(f"value of {n} bytes at {p} overruns the mutation")
                raw = buf[p:e]
                p = e
            if dropped is not None and ts <= dropped:
                continue
            spec = current.get(name)
            if spec is None:
                continue
            if ts > newest:
                newest = ts
            value = spec[3]
            if value is not None and not ttl and not cflags & IS_DELETED:  # inlined as in _row
                if fields[spec[0]] is not _NULL:
                    raise Unsupported(f"two cells of simple column {name}")
                if ts != last:
                    last, zts, hts = ts, zlong(ts), b"\x01" + pack_long(ts)
                n = len(raw)
                v = value(raw)
                if n < 0x2000:
                    fields[spec[0]] = b"".join((_LIVE_NULL if v is None else v, SMALL_LONGS[n + n], raw, zts,
                                                _LIVE_REST))
                    hcols += (spec[4], _LEN4[n], raw, hts, LIVE_TAIL)
                else:
                    fields[spec[0]] = b"".join((_LIVE_NULL if v is None else v, zlong(n), raw, zts, _LIVE_REST))
                    hcols += (spec[4], n.to_bytes(4, "big"), raw, hts, LIVE_TAIL)
                continue
            if groups is None:
                groups = {}
            _group(_new(Cell, (name, raw, ts, ttl, ldt, (cflags & IS_DELETED) != 0, None)), spec, groups, fields,
                   hcols)
        h_base, head = self._ctx
        self._emit(False, clustering, liveness, deletion, cds, current, fields, hcols, groups, newest, last, zts, hts,
                   h_base, head, self.out)
        return p

    def _emit(self, static: bool, clustering: tuple[bytes | None, ...], lv: tuple[int, int, int | None] | None,
              d: DeletionTime | None, cds: Sequence[tuple[str, DeletionTime]] | None, current: dict[str, _Column],
              fields: list[bytes], hcols: list[bytes | str], groups: _Groups | None, newest: int, last: int | None,
              zts: bytes, hts: bytes, h_base: bytes, head: bytes, out: list[tuple[str, int, bytes]]) -> None:
        """The row's event from its cells as ``_row`` gathered them (``last``/``zts``/``hts``: the timestamp of
        the last inlined cell and its encodings), appended to ``out`` unless the row has none."""
        if cds:
            newest = self._complex_deletions(cds, current, newest, hcols, groups, fields)
        elif groups is not None:
            for name, (i, h_name, cell_avro, cell_h) in groups.items():
                fields[i] = b"".join([_SOME, zlong(len(cell_avro)), *cell_avro, b"\x00\x00"])
                hcols[hcols.index(name)] = b"".join([h_name, HASH_NONE, *cell_h])
        live = lv is not None and lv[0] != NO_TIMESTAMP
        if not hcols and not live and d is None:
            return
        h: list[Any] = [h_base, _H_STATIC if static else _H_ROW, hash_tuple(clustering) if clustering else _H_ZERO]
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
                h += (_H_LIVE, hts, _H_ZERO, HASH_NONE)
                avro += (_SOME, zts, b"\x00\x00")
            else:
                exp = lv[2] if lttl > 0 else None
                h += (_H_LIVE, hash_int(lts), hash_int(lttl), hash_int(exp))
                avro += (_SOME, zlong(lts), zlong(lttl), opt_long(exp))
        else:
            avro.append(_NULL)
        if d is not None:
            if d.marked_for_delete_at > newest:
                newest = d.marked_for_delete_at
            h += (_H_DELETION, hash_int(d.marked_for_delete_at), hash_int(d.local_deletion_time))
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

    def _complex_deletions(self, cds: Sequence[tuple[str, DeletionTime]], current: dict[str, _Column], newest: int,
                           hcols: list[bytes | str], groups: _Groups | None, fields: list[bytes]) -> int:
        """Fold the row's collection deletions into ``groups`` and expand them into ``hcols``/``fields``; the
        newest timestamp including them."""
        groups = {} if groups is None else groups
        deletions: dict[str, tuple[int, int]] = {}
        for name, dt in cds:
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
            deletion_h = HASH_NONE if cd is None else hash_int(cd[0]) + hash_int(cd[1])
            hcols[hcols.index(name)] = b"".join([h_name, deletion_h, *cell_h])
        return newest


def _group(rc: Cell, spec: _Column, groups: _Groups, fields: list[bytes], hcols: list[bytes | str]) -> None:
    """A cell that is not inlined, written by its column's writer into the column's group."""
    name = rc[0]
    g = groups.get(name)
    if g is None:
        if spec[3] is not None and fields[spec[0]] is not _NULL:
            raise Unsupported(f"two cells of simple column {name}")
        g = groups[name] = (spec[0], spec[1], [], [])
        hcols.append(name)
    elif spec[3] is not None:
        raise Unsupported(f"two cells of simple column {name}")
    a, hb = spec[2](rc)
    g[2].append(a)
    g[3].append(hb)
