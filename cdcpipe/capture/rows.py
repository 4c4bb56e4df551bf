"""Wire primitives and row-level decoding of serialized PartitionUpdates (messaging 10-13).

Rows, cells, clustering prefixes and range tombstone markers as written by Cassandra's
``UnfilteredSerializer`` in the on-wire (commit log) form: reference §7.6-§7.12. Values are kept as
raw bytes; ``cdcpipe.cql`` decodes them on demand.

The value types are immutable NamedTuples rather than frozen dataclasses: a reader builds several per
mutation, and a frozen dataclass costs about 15 times as much to construct (docs/adr/0003). The hot
paths below build them with ``tuple.__new__`` and decode one-byte vints inline.

Internal decoding functions raise ``WireError`` (or IndexError/struct.error on truncation); the
mutation decoder turns those into ``MutationDecodeError`` with coordinates.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from cdcpipe.cql import CqlType

NO_TIMESTAMP = -(1 << 63)
_M64 = (1 << 64) - 1
_M32 = 0xFFFFFFFF
TWO_63 = 1 << 63
TWO_64 = 1 << 64
TIMESTAMP_EPOCH = 1442880000000000
DELETION_TIME_EPOCH = 1442880000

# UnfilteredSerializer flags
END_OF_PARTITION, IS_MARKER, HAS_TIMESTAMP, HAS_TTL = 0x01, 0x02, 0x04, 0x08
HAS_DELETION, HAS_ALL_COLUMNS, HAS_COMPLEX_DELETION, EXTENSION_FLAG = 0x10, 0x20, 0x40, 0x80
IS_STATIC, HAS_SHADOWABLE_DELETION = 0x01, 0x02
# Cell flags
IS_DELETED, IS_EXPIRING, HAS_EMPTY_VALUE, USE_ROW_TIMESTAMP, USE_ROW_TTL = 0x01, 0x02, 0x04, 0x08, 0x10

# ClusteringPrefix.Kind ordinals
EXCL_END_BOUND, INCL_START_BOUND, EXCL_END_INCL_START_BOUNDARY = 0, 1, 2
INCL_END_EXCL_START_BOUNDARY, INCL_END_BOUND, EXCL_START_BOUND = 5, 6, 7
BOUND_KIND_NAMES = {0: "EXCL_END_BOUND", 1: "INCL_START_BOUND", 2: "EXCL_END_INCL_START_BOUNDARY",
                    5: "INCL_END_EXCL_START_BOUNDARY", 6: "INCL_END_BOUND", 7: "EXCL_START_BOUND"}

# number of extra bytes of a vint, by first byte (= count of leading one bits)
VINT_EXTRA = bytes((8 - (b ^ 0xFF).bit_length()) for b in range(256))
VINT_MASK = bytes(0xFF >> n for n in range(9))


class WireError(ValueError):
    """Malformed serialized data (the message says what and where)."""


def uvint(buf: bytes, p: int) -> tuple[int, int]:
    """Decode an unsigned Cassandra vint at ``p``: (value as unsigned 64-bit, next offset)."""
    b = buf[p]
    if b < 0x80:
        return b, p + 1
    n = VINT_EXTRA[b]
    end = p + 1 + n
    if end > len(buf):
        raise WireError(f"truncated vint at {p}")
    return ((b & VINT_MASK[n]) << (8 * n)) | int.from_bytes(buf[p + 1:end], "big"), end


def take(buf: bytes, p: int, n: int) -> tuple[bytes, int]:
    """``n`` bytes at ``p`` (checked)."""
    end = p + n
    if end > len(buf) or n < 0:
        raise WireError(f"value of {n} bytes at {p} overruns the mutation")
    return buf[p:end], end


_new: Any = tuple.__new__  # builds a NamedTuple without its Python-level __new__


class DeletionTime(NamedTuple):
    """``marked_for_delete_at`` in microseconds; ``local_deletion_time`` in seconds since the epoch."""

    marked_for_delete_at: int
    local_deletion_time: int


class Liveness(NamedTuple):
    """Primary-key liveness of a row. ``ttl`` 0 = not expiring; ``local_expiration_time`` in seconds."""

    timestamp: int
    ttl: int = 0
    local_expiration_time: int | None = None


class Cell(NamedTuple):
    """One cell. ``value`` is raw serialized bytes (b"" when empty or a tombstone). For a tombstone
    ``local_deletion_time`` is the deletion time, for an expiring cell the expiry time. ``path`` is
    set for cells of non-frozen collections/UDTs (list: timeuuid, set: element, map: key, UDT: field
    index as 2 bytes)."""

    column: str
    value: bytes
    timestamp: int
    ttl: int = 0
    local_deletion_time: int | None = None
    deleted: bool = False
    path: bytes | None = None


class Row(NamedTuple):
    """A row (or the static row, with an empty clustering). Clustering values are raw bytes
    (b"" empty, None null). ``complex_deletions`` maps a column name to its collection deletion."""

    clustering: tuple[bytes | None, ...]
    liveness: Liveness | None
    deletion: DeletionTime | None
    cells: tuple[Cell, ...]
    complex_deletions: tuple[tuple[str, DeletionTime], ...] = ()
    shadowable: bool = False
    static: bool = False


class RangeTombstoneMarker(NamedTuple):
    """A bound or boundary of a range tombstone. ``kind`` is the ClusteringPrefix.Kind ordinal;
    ``close_deletion`` ends the range before the marker, ``open_deletion`` starts the one after it
    (a boundary has both)."""

    kind: int
    bound: tuple[bytes | None, ...]
    close_deletion: DeletionTime | None
    open_deletion: DeletionTime | None

    @property
    def kind_name(self) -> str:
        return BOUND_KIND_NAMES.get(self.kind, str(self.kind))


class ColumnSpec(NamedTuple):
    """A header column resolved against the schema (internal to decoding)."""

    name: str
    type: CqlType
    fixed: int  # value length if fixed, else -1
    complex: bool
    dropped_time: int | None  # cells at or before this timestamp belong to a dropped column


class Header:
    """A PartitionUpdate's resolved column list, with the column subsets its rows selected (by bitmap)."""

    __slots__ = ("columns", "subsets")

    def __init__(self, columns: tuple[ColumnSpec, ...]) -> None:
        self.columns = columns
        self.subsets: dict[int, tuple[ColumnSpec, ...]] = {}


class RowReader:
    """Decodes the unfiltereds of one PartitionUpdate, given its EncodingStats and column headers."""

    __slots__ = ("buf", "clustering_fixed", "end", "ldt_unsigned", "min_ldt", "min_ts", "min_ttl")

    def __init__(self, buf: bytes, min_ts: int, min_ldt: int, min_ttl: int, ldt_unsigned: bool,
                 clustering_fixed: tuple[int, ...]) -> None:
        self.buf = buf
        self.end = len(buf)
        self.min_ts, self.min_ldt, self.min_ttl = min_ts, min_ldt, min_ttl
        self.ldt_unsigned = ldt_unsigned
        self.clustering_fixed = clustering_fixed

    # --- deltas (§7.6)
    def timestamp(self, p: int) -> tuple[int, int]:
        u, p = uvint(self.buf, p)
        ts = u + self.min_ts
        if ts >= TWO_63:
            ts -= TWO_64
        return ts, p

    def ldt(self, p: int) -> tuple[int, int]:
        """Local deletion time: signed int32 up to messaging 12, unsigned uint32 in messaging 13."""
        u, p = uvint(self.buf, p)
        v = (u + self.min_ldt) & _M32
        if self.ldt_unsigned or v < 0x80000000:
            return v, p
        return v - (1 << 32), p

    def ttl(self, p: int) -> tuple[int, int]:
        u, p = uvint(self.buf, p)
        v = (u + self.min_ttl) & _M32
        return (v - (1 << 32) if v >= 0x80000000 else v), p

    def deletion_time(self, p: int) -> tuple[DeletionTime, int]:
        ts, p = self.timestamp(p)
        ldt, p = self.ldt(p)
        return _new(DeletionTime, (ts, ldt)), p

    # --- clustering (§7.8)
    def clustering(self, p: int, count: int) -> tuple[tuple[bytes | None, ...], int]:
        buf = self.buf
        fixed = self.clustering_fixed
        end = self.end
        values: list[bytes | None] = []
        header = 0
        for i in range(count):
            j = i & 31
            if j == 0:
                header = buf[p]
                if header < 0x80:
                    p += 1
                else:
                    header, p = uvint(buf, p)
            bits = (header >> (j + j)) & 3
            if bits:
                values.append(b"" if bits & 1 else None)
                continue
            n = fixed[i]
            if n < 0:
                n = buf[p]
                if n < 0x80:
                    p += 1
                else:
                    n, p = uvint(buf, p)
            e = p + n
            if e > end:
                raise WireError(f"value of {n} bytes at {p} overruns the mutation")
            values.append(buf[p:e])
            p = e
        return tuple(values), p

    # --- range tombstone marker (§7.12)
    def marker(self, p: int) -> tuple[RangeTombstoneMarker, int]:
        buf = self.buf
        kind = buf[p]
        size = (buf[p + 1] << 8) | buf[p + 2]
        if kind not in BOUND_KIND_NAMES or size > len(self.clustering_fixed):
            raise WireError(f"bad range tombstone bound kind {kind} / size {size} at {p}")
        bound, p = self.clustering(p + 3, size)
        first, p = self.deletion_time(p)
        if kind in (EXCL_END_INCL_START_BOUNDARY, INCL_END_EXCL_START_BOUNDARY):
            second, p = self.deletion_time(p)
            return RangeTombstoneMarker(kind, bound, first, second), p
        if kind in (INCL_START_BOUND, EXCL_START_BOUND):
            return RangeTombstoneMarker(kind, bound, None, first), p
        return RangeTombstoneMarker(kind, bound, first, None), p

    # --- row (§7.7, §7.9-§7.11)
    def row(self, p: int, flags: int, ext: int, header: Header, static: bool) -> tuple[Row, int]:
        buf = self.buf
        end = self.end
        min_ts = self.min_ts
        clustering: tuple[bytes | None, ...] = ()
        if not static and self.clustering_fixed:
            clustering, p = self.clustering(p, len(self.clustering_fixed))
        liveness: Liveness | None = None
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
                row_ttl, p = self.ttl(p)
                row_ldt, p = self.ldt(p)
            liveness = _new(Liveness, (row_ts, row_ttl, row_ldt))
        deletion = None
        if flags & HAS_DELETION:
            deletion, p = self.deletion_time(p)
        if flags & HAS_ALL_COLUMNS:
            columns = header.columns
        else:
            columns, p = self._subset(p, header)
        cells: list[Cell] = []
        append = cells.append
        complex_deletions: list[tuple[str, DeletionTime]] | None = None
        for col in columns:
            name, _, fixed, is_complex, dropped = col
            if is_complex:
                if complex_deletions is None:
                    complex_deletions = []
                p = self._complex(p, col, row_ts, row_ttl, row_ldt, flags & HAS_COMPLEX_DELETION, append,
                                  complex_deletions)
                continue
            # simple cell (§7.10), inlined: this is the innermost loop of the reader
            cflags = buf[p]
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
                ldt, p = self.ldt(p)
                ttl = 0
                if cflags & IS_EXPIRING:
                    ttl, p = self.ttl(p)
            else:
                ttl, ldt = 0, None
            if cflags & HAS_EMPTY_VALUE:
                value = b""
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
                value = buf[p:e]
                p = e
            if dropped is None or ts > dropped:
                append(_new(Cell, (name, value, ts, ttl, ldt, (cflags & IS_DELETED) != 0, None)))
        row: Row = _new(Row, (clustering, liveness, deletion, tuple(cells),
                              () if not complex_deletions else tuple(complex_deletions),
                              (ext & HAS_SHADOWABLE_DELETION) != 0, static))
        return row, p

    def _complex(self, p: int, col: ColumnSpec, row_ts: int, row_ttl: int, row_ldt: int | None,
                 has_complex_deletion: int, append: Any, complex_deletions: list[tuple[str, DeletionTime]]) -> int:
        """Complex column data (§7.11): its deletion (if any) into ``complex_deletions``, cells via ``append``."""
        buf = self.buf
        end = self.end
        min_ts = self.min_ts
        name, _, _, _, dropped = col
        if has_complex_deletion:
            dt, p = self.deletion_time(p)
            if dt[0] != NO_TIMESTAMP and (dropped is None or dt[0] > dropped):
                complex_deletions.append((name, dt))
        count = buf[p]
        if count < 0x80:
            p += 1
        else:
            count, p = uvint(buf, p)
        if count > end:
            raise WireError(f"bad cell count {count} at {p}")
        for _ in range(count):
            cflags = buf[p]
            p += 1
            if cflags & USE_ROW_TIMESTAMP:
                ts = row_ts
            else:
                u = buf[p]
                if u < 0x80:
                    p += 1
                else:
                    u, p = uvint(buf, p)
                ts = u + min_ts
                if ts >= TWO_63:
                    ts -= TWO_64
            if cflags & USE_ROW_TTL:
                ttl, ldt = row_ttl, row_ldt
            elif cflags & (IS_DELETED | IS_EXPIRING):
                ldt, p = self.ldt(p)
                ttl = 0
                if cflags & IS_EXPIRING:
                    ttl, p = self.ttl(p)
            else:
                ttl, ldt = 0, None
            n = buf[p]
            if n < 0x80:
                p += 1
            else:
                n, p = uvint(buf, p)
            e = p + n
            if e > end:
                raise WireError(f"cell path of {n} bytes at {p} overruns the mutation")
            path = buf[p:e]
            p = e
            if cflags & HAS_EMPTY_VALUE:
                value = b""
            else:
                n = buf[p]
                if n < 0x80:
                    p += 1
                else:
                    n, p = uvint(buf, p)
                e = p + n
                if e > end:
                    raise WireError(f"value of {n} bytes at {p} overruns the mutation")
                value = buf[p:e]
                p = e
            if dropped is None or ts > dropped:
                append(_new(Cell, (name, value, ts, ttl, ldt, (cflags & IS_DELETED) != 0, path)))
        return p

    def _subset(self, p: int, header: Header) -> tuple[tuple[ColumnSpec, ...], int]:
        v = self.buf[p]
        if v < 0x80:
            p += 1
        else:
            v, p = uvint(self.buf, p)
        columns = header.columns
        if v == 0:
            return columns, p
        n = len(columns)
        if n < 64:
            subset = header.subsets.get(v)
            if subset is None:
                if v >> n:
                    raise WireError(f"column subset bitmap {v:#x} exceeds {n} columns")
                subset = tuple(c for i, c in enumerate(columns) if not (v >> i) & 1)
                if len(header.subsets) < 4096:
                    header.subsets[v] = subset
            return subset, p
        if v > n:
            raise WireError(f"column subset: {v} missing of {n}")
        present = n - v
        idx: list[int] = []
        if present < n // 2:
            for _ in range(present):
                i, p = uvint(self.buf, p)
                idx.append(i)
        else:
            missing = set()
            for _ in range(v):
                i, p = uvint(self.buf, p)
                missing.add(i)
            idx = [i for i in range(n) if i not in missing]
        if any(i >= n for i in idx):
            raise WireError("column subset index out of range")
        return tuple(columns[i] for i in idx), p
