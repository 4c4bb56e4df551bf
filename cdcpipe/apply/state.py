"""The stored form of merge states (``_cdc_meta bytea`` in PostgreSQL): format 2, binary.

Row meta (``_cdc_meta`` of a mirrored row or of its shadow row), big-endian::

    0x02                      format
    u8 flags                  1: a row marker follows, 2: a row deletion follows
    [marker]                  i64 ts, i32 ttl, i64 ldt
    [deletion]                i64 ts, i64 ldt
    u16 n, n x cell           name, version
    u16 n, n x complex        name, u8 has deletion, [i64 ts, i64 ldt], u32 n, n x (bytes path, version)

    name      u16 length + UTF-8
    bytes     u32 length + bytes
    version   u8 0 (a plain live cell: no TTL, no expiry, not a tombstone), i64 ts, bytes value
              | u8 1, i64 ts, i32 ttl, i64 ldt, u8 tombstone, bytes value

Partition meta (``<table>$partition``)::

    0x02, u8 flags (1: a partition deletion follows), [i64 ts, i64 ldt],
    u32 n, n x range (u16 k, k x bytes start, u8 inclusive, u16 k, k x bytes end, u8 inclusive, i64 ts, i64 ldt),
    then the static row as row meta.

``ldt`` is the expiry of an expiring cell/marker and the deletion time of a tombstone; ``-2**63`` stands for none.
:func:`decode_row` inverts :func:`encode_row` and :func:`decode_partition` :func:`encode_partition` exactly.
Format 1 (``jsonb``, before issue 15) is read only by :mod:`cdcpipe.apply.migrate`.
"""

from __future__ import annotations

import struct

from cdcpipe.apply.merge import UNSET, ComplexState, PartitionState, RangeTombstone, RowState, Version
from cdcpipe.model import Deletion

FORMAT = 2
_NONE = -(2**63)
_HEAD = struct.Struct(">BB")
_MARKER = struct.Struct(">qiq")
_DELETION = struct.Struct(">qq")
_PLAIN = struct.Struct(">BqI")
_FULL = struct.Struct(">BqiqBI")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_NAMES: dict[str, bytes] = {}


class StateFormatError(ValueError):
    """Stored merge-state bytes that are not format 2 (or are cut short)."""


def stored_name(key: str) -> bytes:
    """A column name as stored (cached: names repeat on every row)."""
    found = _NAMES.get(key)
    if found is None:
        if len(_NAMES) > 100_000:
            _NAMES.clear()
        data = key.encode()
        found = _NAMES[key] = _U16.pack(len(data)) + data
    return found


def _version(out: list[bytes], v: Version) -> None:
    value = v.value
    ldt = v.ldt
    if ldt is None and v.ttl == 0 and not v.tombstone:
        out.append(_PLAIN.pack(0, v.ts, len(value)))
    else:
        out.append(_FULL.pack(1, v.ts, v.ttl, _NONE if ldt is None else ldt, 1 if v.tombstone else 0, len(value)))
    out.append(value)


def _row_into(out: list[bytes], row: RowState) -> None:
    m = row.marker
    d = row.deletion
    out.append(_HEAD.pack(FORMAT, (1 if m is not None else 0) | (2 if d is not None else 0)))
    if m is not None:
        out.append(_MARKER.pack(m.ts, m.ttl, _NONE if m.ldt is None else m.ldt))
    if d is not None:
        out.append(_DELETION.pack(d.timestamp, d.local_deletion_time))
    cells = row.cells
    out.append(_U16.pack(len(cells)))
    for k in sorted(cells):  # in name order: equal states are stored as equal bytes, whatever order they merged in
        out.append(_NAMES.get(k) or stored_name(k))
        _version(out, cells[k])
    complex_ = row.complex
    out.append(_U16.pack(len(complex_)))
    for k in sorted(complex_):
        c = complex_[k]
        out.append(_NAMES.get(k) or stored_name(k))
        cd = c.deletion
        if cd is None:
            out.append(b"\x00")
        else:
            out.append(b"\x01")
            out.append(_DELETION.pack(cd.timestamp, cd.local_deletion_time))
        out.append(_U32.pack(len(c.elements)))
        for path, v in sorted(c.elements.items()):
            out.append(_U32.pack(len(path)))
            out.append(path)
            _version(out, v)


def encode_row(row: RowState) -> bytes:
    out: list[bytes] = []
    _row_into(out, row)
    return b"".join(out)


def _cut() -> StateFormatError:
    return StateFormatError("merge state cut short")


def _version_at(data: bytes, p: int) -> tuple[Version, int]:
    end = len(data)
    if p + 13 > end:
        raise _cut()
    if data[p] == 0:
        _, ts, size = _PLAIN.unpack_from(data, p)
        p += 13
        if p + size > end:
            raise _cut()
        return Version(ts, None, 0, False, data[p:p + size], UNSET), p + size
    if p + 26 > end:
        raise _cut()
    _, ts, ttl, ldt, tomb, size = _FULL.unpack_from(data, p)
    p += 26
    if p + size > end:
        raise _cut()
    return Version(ts, None if ldt == _NONE else ldt, ttl, tomb == 1, data[p:p + size]), p + size


def _sized(data: bytes, p: int, width: int) -> tuple[bytes, int]:
    """A u16- (``width`` 2) or u32-length-prefixed byte string at ``p``."""
    if p + width > len(data):
        raise _cut()
    size = int.from_bytes(data[p:p + width], "big")
    p += width
    if p + size > len(data):
        raise _cut()
    return data[p:p + size], p + size


def _count(data: bytes, p: int, width: int) -> tuple[int, int]:
    if p + width > len(data):
        raise _cut()
    return int.from_bytes(data[p:p + width], "big"), p + width


def _deletion_at(data: bytes, p: int) -> tuple[Deletion, int]:
    if p + 16 > len(data):
        raise _cut()
    ts, ldt = _DELETION.unpack_from(data, p)
    return Deletion(ts, ldt), p + 16


def _row_at(data: bytes, p: int) -> tuple[RowState, int]:
    if p + 2 > len(data):
        raise _cut()
    fmt = data[p]
    if fmt != FORMAT:
        raise StateFormatError(f"merge state format {fmt}, expected {FORMAT}")
    flags = data[p + 1]
    p += 2
    marker = None
    deletion = None
    if flags & 1:
        if p + 20 > len(data):
            raise _cut()
        ts, ttl, ldt = _MARKER.unpack_from(data, p)
        p += 20
        marker = Version(ts, None if ldt == _NONE else ldt, ttl)
    if flags & 2:
        deletion, p = _deletion_at(data, p)
    cells: dict[str, Version] = {}
    n, p = _count(data, p, 2)
    for _ in range(n):
        name, p = _sized(data, p, 2)
        cells[name.decode()], p = _version_at(data, p)
    complex_: dict[str, ComplexState] = {}
    n, p = _count(data, p, 2)
    for _ in range(n):
        name, p = _sized(data, p, 2)
        if p >= len(data):
            raise _cut()
        cdel = None
        p += 1
        if data[p - 1]:
            cdel, p = _deletion_at(data, p)
        elements: dict[bytes, Version] = {}
        k, p = _count(data, p, 4)
        for _ in range(k):
            path, p = _sized(data, p, 4)
            elements[path], p = _version_at(data, p)
        complex_[name.decode()] = ComplexState(cdel, elements)
    return RowState(marker, deletion, cells, complex_), p


def decode_row(data: bytes) -> RowState:
    """The row state stored as ``data``; raises :class:`StateFormatError` for anything else."""
    data = bytes(data)
    row, p = _row_at(data, 0)
    if p != len(data):
        raise StateFormatError("bytes after the merge state")
    return row


def encode_partition(part: PartitionState) -> bytes:
    out: list[bytes] = []
    d = part.deletion
    out.append(_HEAD.pack(FORMAT, 0 if d is None else 1))
    if d is not None:
        out.append(_DELETION.pack(d.timestamp, d.local_deletion_time))
    out.append(_U32.pack(len(part.ranges)))
    for r in part.ranges:
        for bound, inclusive in ((r.start, r.start_inclusive), (r.end, r.end_inclusive)):
            out.append(_U16.pack(len(bound)))
            for b in bound:
                out.append(_U32.pack(len(b)))
                out.append(b)
            out.append(b"\x01" if inclusive else b"\x00")
        out.append(_DELETION.pack(r.deletion.timestamp, r.deletion.local_deletion_time))
    _row_into(out, part.static)
    return b"".join(out)


def _prefix_at(data: bytes, p: int) -> tuple[tuple[bytes, ...], bool, int]:
    """A range bound: its serialized clustering prefix and whether it is inclusive."""
    n, p = _count(data, p, 2)
    items = []
    for _ in range(n):
        item, p = _sized(data, p, 4)
        items.append(item)
    if p >= len(data):
        raise _cut()
    return tuple(items), data[p] == 1, p + 1


def decode_partition(data: bytes) -> PartitionState:
    """The partition state stored as ``data``; raises :class:`StateFormatError` for anything else."""
    data = bytes(data)
    if len(data) < 2:
        raise _cut()
    if data[0] != FORMAT:
        raise StateFormatError(f"merge state format {data[0]}, expected {FORMAT}")
    p = 2
    deletion = None
    if data[1] & 1:
        deletion, p = _deletion_at(data, p)
    ranges = []
    n, p = _count(data, p, 4)
    for _ in range(n):
        start, start_inclusive, p = _prefix_at(data, p)
        end, end_inclusive, p = _prefix_at(data, p)
        rd, p = _deletion_at(data, p)
        ranges.append(RangeTombstone(start, start_inclusive, end, end_inclusive, rd))
    static, p = _row_at(data, p)
    if p != len(data):
        raise StateFormatError("bytes after the merge state")
    return PartitionState(deletion, tuple(ranges), static)


def columns_of(data: bytes) -> frozenset[str]:
    """The names of the columns (cells and complex) a stored row state holds."""
    row = decode_row(data)
    return frozenset((*row.cells, *row.complex))
