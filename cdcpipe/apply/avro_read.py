"""Apply's hot path: an event's Avro body straight to :class:`merge.Delta`, compiled once per event schema.

Contract
    :func:`compile_reader` builds, for one :class:`EventSchema`, a :class:`DeltaReader` (or None when the schema
    is not of the layout ``cdcpipe.avro`` writes, or its keys have no canonical encoding).
    :meth:`DeltaReader.delta` gives for a single-object-encoded message exactly the Delta that fastavro's reader
    followed by ``decode._Plan.delta`` gives (``tests/unit/test_avro_read.py`` compares both on random events of
    random tables), or None where that path must decide: partition and range deletions, keys that do not have
    the size of their type, and any body not in the canonical form capture writes — a union index, boolean,
    enum index or block count out of range, a negative length, a long over 64 bits, a string that is not UTF-8,
    a truncated body.  None is never an error: the caller runs the fastavro path, which raises where it did.

The record is read in place from the message bytes: what a Delta needs (keys, op, marker, deletions, and per
cell its raw bytes, timestamp, TTL, expiry, deletion) is decoded, everything else (the typed values, paths, key
records, source) is skipped by its Avro encoding, without building a value.  Cost model: docs/operations.md.
"""

from __future__ import annotations

from typing import Any

from cdcpipe.apply.avro_skip import (
    Malformed,
    Skip,
    Skips,
    Unsupported,
    read_len,
    read_long,
    skip_long,
    skip_string,
)
from cdcpipe.apply.merge import UNSET, ComplexState, Delta, PartitionState, RowState, Version, expiry, newer
from cdcpipe.avro import EventSchema
from cdcpipe.model import Deletion, Op

# key column types whose serialized form is canonical (re-serializing the typed value gives the same bytes),
# with their fixed size (None: any): only for those may a key's bytes be taken as they are
CANONICAL = {"int": 4, "bigint": 8, "smallint": 2, "tinyint": 1, "uuid": 16, "timeuuid": 16, "timestamp": 8,
             "date": 4, "time": 8, "text": None, "varchar": None, "ascii": None, "blob": None}
_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1
_UPSERT, _ROW_DELETE = Op.UPSERT, Op.ROW_DELETE  # an enum member's lookup costs more than a global


def key_sizes(columns: tuple[Any, ...]) -> tuple[int, ...] | None:
    """Fixed sizes of key columns (``ColumnInfo``), -1 for any size; None when a column's type is not canonical."""
    if any(c.type.name not in CANONICAL for c in columns):
        return None
    return tuple(CANONICAL[c.type.name] or -1 for c in columns)


# ------------------------------------------------------------------------------------------------ values

def _deletion(data: bytes, p: int) -> tuple[Deletion | None, int]:
    """A ``["null", Deletion]`` union."""
    u = data[p]
    if u == 0:
        return None, p + 1
    if u != 2:
        raise Malformed("union index")
    ts, p = read_long(data, p + 1)
    ldt, p = read_long(data, p)
    return Deletion(ts, ldt), p


def _opt_long(data: bytes, p: int) -> tuple[int | None, int]:
    """A ``["null", "long"]`` union."""
    u = data[p]
    if u == 0:
        return None, p + 1
    if u != 2:
        raise Malformed("union index")
    return read_long(data, p + 1)


def _cell_tail(data: bytes, p: int, raw: bytes, ts: int, is_set: bool) -> tuple[Version, int]:
    """ttl, expires_at, deleted, local_deletion_time of a cell that is not a plain live one; its Version
    (``decode._fast_version``)."""
    ttl, p = read_long(data, p)
    if not _INT_MIN <= ttl <= _INT_MAX:
        raise Malformed("int")
    exp, p = _opt_long(data, p)
    deleted = data[p]
    if deleted > 1:
        raise Malformed("boolean")
    ldt, p = _opt_long(data, p + 1)
    if deleted:
        return Version(ts, ldt or 0, 0, True), p
    end = expiry(ts, ttl, exp) if ttl > 0 else None
    if is_set:
        return Version(ts, end, ttl, False, b"", None), p
    return Version(ts, end, ttl, False, raw, UNSET), p


# ------------------------------------------------------------------------------------------------ the reader

_FIELDS = ("event_id", "op", "timestamp_micros", "source", "partition_key", "key_raw", "clustering",
           "clustering_raw", "static", "liveness", "deletion", "range_start", "range_end", "columns")
_CELL = [("raw", "bytes"), ("timestamp", "long"), ("ttl", "int"), ("expires_at", ["null", "long"]),
         ("deleted", "boolean"), ("local_deletion_time", ["null", "long"])]
_SOURCE = [("cluster", "string"), ("datacenter", "string"), ("node", "string"), ("keyspace", "string"),
           ("table", "string"), ("table_id", "string"), ("segment_id", "long"), ("position", "long")]
_LIVENESS = [("timestamp", "long"), ("ttl", "int"), ("expires_at", ["null", "long"])]
_DELETION = [("timestamp", "long"), ("local_deletion_time", "long")]
_ZEROS = b"\x00\x00\x00\x00"  # ttl 0, expires_at null, not deleted, local_deletion_time null
_NO_WINDOW = b"\x00" * 9  # longer than any window: matches none
_NO_ELEMENTS: dict[bytes, Version] = {}  # a simple column's (never written)

# per column: name, multi-cell, static, set, value skip (None: the value is Avro null, no bytes), the value's
# inlined skip (a size, 0 for a varint; None: call the skip), path skip
_Column = tuple[str, bool, bool, bool, Skip | None, int | None, Skip | None]


def _shape(fields: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [(f["name"], f["type"]) for f in fields]


def _branch(t: Any) -> Any:
    """The non-null branch of a ``["null", T]`` union."""
    if not (isinstance(t, list) and len(t) == 2 and t[0] == "null"):
        raise Unsupported(f"not a nullable union: {t!r}")
    return t[1]


class DeltaReader:
    """One event schema's reader (see the module docstring).  ``fallbacks`` counts the messages it left to the
    fastavro path."""

    __slots__ = ("_ck_sizes", "_columns", "_has_clustering", "_ops", "_pk_sizes", "_skip_clustering",
                 "_skip_key", "_skip_range", "_skip_range_end", "_source", "fallbacks")

    def __init__(self, schema: EventSchema) -> None:
        s = schema.schema
        fields = s["fields"]
        if tuple(f["name"] for f in fields[:len(_FIELDS)]) != _FIELDS or any(
                f["type"] != "null" for f in fields[len(_FIELDS):]):  # format 3's version mark: no bytes
            raise Unsupported("not the event record layout")
        pk_sizes, ck_sizes = key_sizes(schema.partition_key), key_sizes(schema.clustering)
        if pk_sizes is None or ck_sizes is None:
            raise Unsupported("a key column without a canonical encoding")
        self._pk_sizes, self._ck_sizes = pk_sizes, ck_sizes
        self._has_clustering = bool(schema.clustering)
        ft = {f["name"]: f["type"] for f in fields}
        skips = Skips(s["namespace"])
        for name in _FIELDS[:3]:
            skips.of(ft[name])  # registers EventId and Op
        ops = ft["op"]
        self._ops = tuple(Op(sym) for sym in ops["symbols"])
        if len(self._ops) > 63 or ft["timestamp_micros"] != "long":
            raise Unsupported("op or timestamp")
        source = ft["source"]
        if [(f["name"], f["type"] if isinstance(f["type"], str) else f["type"]["type"])
                for f in source["fields"]] != _SOURCE:
            raise Unsupported("source")
        skips.of(source)
        self._source = _NO_WINDOW
        self._skip_key = skips.of(ft["partition_key"])
        self._skip_clustering = skips.of(ft["clustering"])
        if ft["key_raw"] != {"type": "array", "items": "bytes"} or ft["clustering_raw"] != {
                "type": "array", "items": ["null", "bytes"]} or ft["static"] != "boolean":
            raise Unsupported("raw keys")
        if _shape(_branch(ft["liveness"])["fields"]) != _LIVENESS:
            raise Unsupported("liveness")
        deletion = _branch(ft["deletion"])
        if _shape(deletion["fields"]) != _DELETION:
            raise Unsupported("deletion")
        skips.of(ft["liveness"])
        skips.of(ft["deletion"])
        self._skip_range = skips.of(ft["range_start"])
        self._skip_range_end = skips.of(ft["range_end"])
        infos = {c.field: c for c in schema.columns}
        columns: list[_Column] = []
        for f in ft["columns"]["fields"]:
            info = infos.get(f["name"])
            change = _branch(f["type"])
            if info is None or [g["name"] for g in change["fields"]] != ["cells", "complex_deletion"]:
                raise Unsupported(f"column {f['name']}")
            cells_t, cd_t = change["fields"][0]["type"], change["fields"][1]["type"]
            if cd_t not in (["null", "Deletion"], ["null", f"{deletion.get('namespace', s['namespace'])}.Deletion"]):
                raise Unsupported(f"column {f['name']}: complex_deletion")
            cell = cells_t["items"]
            cf = cell["fields"]
            multi = info.type.multi_cell
            shape = _shape(cf)
            if shape[0][0] != "value" or shape[1:7] != _CELL or len(shape) != (9 if multi else 7):
                raise Unsupported(f"column {f['name']}: cell layout")
            path: Skip | None = None
            if multi:
                if shape[7][0] != "path" or shape[8] != ("path_raw", "bytes"):
                    raise Unsupported(f"column {f['name']}: cell path")
                path = skips.of(shape[7][1])
            value_t = shape[0][1]
            value = None if value_t == "null" else skips.of(_branch(value_t))
            plain = _branch(value_t) if value is not None else None
            plain = plain.get("type") if isinstance(plain, dict) else plain
            width = {"int": 0, "long": 0, "float": 4, "double": 8, "boolean": None}.get(plain) \
                if isinstance(plain, str) else None
            skips.of(change)  # registers the Column and Cell records
            is_set = multi and info.type.name == "set"  # a frozen set's cell keeps its value bytes
            columns.append((info.name, multi, info.kind == "static", is_set, value, width, path))
        self._columns = tuple(columns)
        self.fallbacks = 0

    def delta(self, data: bytes) -> Delta | None:
        """The message's Delta, or None: the fastavro path decides (see the module docstring)."""
        try:
            found = self._delta(data)
        except Exception:  # not canonical Avro (IndexError, Malformed, UnicodeDecodeError...): fastavro decides
            found = None
        if found is None:
            self.fallbacks += 1
        return found

    def _delta(self, data: bytes) -> Delta | None:
        b = data[26]  # after magic, fingerprint and the 16-byte event id
        if b & 1 or b >= 2 * len(self._ops):
            raise Malformed("op")
        op = self._ops[b >> 1]
        if op is not _UPSERT and op is not _ROW_DELETE:
            return None
        p = skip_long(data, 27)
        src = self._source
        if data.startswith(src, p):  # the same cluster, datacenter, node, table names as the last event's
            p += len(src)
        else:
            q = p
            for _ in range(6):
                p = skip_string(data, p)
            if p <= len(data):  # six whole strings (a truncated one must not be remembered)
                self._source = data[q:p]
        p = self._skip_key(data, skip_long(data, skip_long(data, p)))
        # key_raw
        keys: list[bytes] = []
        while True:
            n, p = read_len(data, p)
            if not n:
                break
            for _ in range(n):
                m, p = read_len(data, p)
                q = p + m
                keys.append(data[p:q])
                p = q
        sizes = self._pk_sizes
        if len(keys) == 1 and len(sizes) == 1:
            pk = keys[0]
            if sizes[0] != -1 and len(pk) != sizes[0]:
                return None
        else:
            if len(keys) != len(sizes) or any(n != -1 and len(r) != n for n, r in zip(sizes, keys, strict=True)):
                return None
            pk = b"".join([len(r).to_bytes(2, "big") + r + b"\x00" for r in keys])
        p = self._skip_clustering(data, p)
        # clustering_raw
        ck = b""
        n, p = read_len(data, p)
        if n:
            cks: list[bytes | None] = []
            while n:
                for _ in range(n):
                    u = data[p]
                    if u == 0:
                        cks.append(None)
                        p += 1
                    elif u == 2:
                        m, p = read_len(data, p + 1)
                        q = p + m
                        cks.append(data[p:q])
                        p = q
                    else:
                        raise Malformed("union index")
                n, p = read_len(data, p)
            sizes = self._ck_sizes
            if len(cks) > len(sizes) or any(r is None or (n != -1 and len(r) != n)
                                            for n, r in zip(sizes, cks, strict=False)):
                return None
            ck = b"".join([len(r).to_bytes(4, "big") + r for r in cks if r is not None])  # no None: checked above
        static = data[p]
        if static > 1:
            raise Malformed("boolean")
        # liveness
        u = data[p + 1]
        lv: tuple[int, int, int | None] | None = None
        tw, tv, tl = _NO_WINDOW, 0, 0  # the last timestamp read: its 8-byte window, value, length
        if u == 0:
            p += 2
        elif u == 2:
            p += 2
            tw = data[p:p + 8]
            lts, q = read_long(data, p)
            tv, tl, p = lts, q - p, q
            if tl > 8:
                tw = _NO_WINDOW
            lttl, p = read_long(data, p)
            if not _INT_MIN <= lttl <= _INT_MAX:
                raise Malformed("int")
            lexp, p = _opt_long(data, p)
            lv = (lts, lttl, lexp)
        else:
            raise Malformed("union index")
        deletion, p = _deletion(data, p)
        if data[p] == 0 and data[p + 1] == 0:  # no range bounds
            p += 2
        else:
            p = self._skip_range_end(data, self._skip_range(data, p))
        cells: dict[str, Version] = {}
        complex_: dict[str, ComplexState] = {}
        s_cells: dict[str, Version] = {}
        s_complex: dict[str, ComplexState] = {}
        has_static = has_regular = False
        for name, multi, is_static, is_set, value, width, path in self._columns:
            u = data[p]
            if u == 0:
                p += 1
                continue
            if u != 2:
                raise Malformed("union index")
            p += 1
            if is_static:
                has_static = True
                into, into_complex = s_cells, s_complex
            else:
                has_regular = True
                into, into_complex = cells, complex_
            elements: dict[bytes, Version] = {} if multi else _NO_ELEMENTS
            n = data[p]
            if n == 2:
                n = 1
                p += 1
            else:
                n, p = read_len(data, p)
            while n:
                for _ in range(n):
                    if value is not None:
                        u = data[p]
                        if u == 2:
                            p += 1
                            if width is None:
                                p = value(data, p)
                            elif width:
                                p += width
                            else:  # a varint
                                q = p
                                while data[p] >= 0x80:
                                    p += 1
                                if p - q > 9:
                                    raise Malformed("long over 10 bytes")
                                p += 1
                        elif u == 0:
                            p += 1
                        else:
                            raise Malformed("union index")
                    m = data[p]  # raw
                    if m < 0x80 and not m & 1:
                        p += 1
                        m >>= 1
                    else:
                        m, p = read_len(data, p)
                    q = p + m
                    raw = data[p:q]
                    w = data[q:q + 8]
                    if w == tw:
                        ts, p = tv, q + tl
                    else:
                        ts, p = read_long(data, q)
                        if p - q <= 8:
                            tw, tv, tl = w, ts, p - q
                    if data[p:p + 4] == _ZEROS:
                        p += 4
                        v = Version(ts, None, 0, False, b"" if is_set else raw, None if is_set else UNSET)
                    else:
                        v, p = _cell_tail(data, p, raw, ts, is_set)
                    if path is not None:
                        p = path(data, p)
                        m, p = read_len(data, p)
                        q = p + m
                        key = data[p:q]
                        p = q
                        old = elements.get(key)
                        elements[key] = v if old is None else newer(old, v)  # type: ignore[assignment]
                    else:
                        old = into.get(name)
                        into[name] = v if old is None else newer(old, v)  # type: ignore[assignment]
                n = data[p]
                if n == 0:
                    p += 1
                else:
                    n, p = read_len(data, p)
            if data[p] == 0:  # no complex deletion
                p += 1
                cd = None
            else:
                cd, p = _deletion(data, p)
            if multi:
                into_complex[name] = ComplexState(cd, elements)
        if p > len(data):
            raise Malformed("truncated")
        static_only = static == 1 and self._has_clustering
        part = PartitionState(static=RowState(None, None, s_cells, s_complex)) if has_static else None
        row = None
        if op is _ROW_DELETE or has_regular or deletion is not None or (lv is not None and not static_only):
            marker = None
            if lv is not None and not static_only:
                marker = Version(lv[0], expiry(lv[0], lv[1], lv[2]), lv[1])
            row = RowState(marker, deletion, cells, complex_)
        return Delta(op, pk, ck, part, row)


def compile_reader(schema: EventSchema) -> DeltaReader | None:
    """The schema's :class:`DeltaReader`, None when its events need fastavro (see the module docstring)."""
    try:
        return DeltaReader(schema)
    except (Unsupported, KeyError, TypeError, ValueError, AttributeError, IndexError):
        return None
