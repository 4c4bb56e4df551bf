"""Apply's staging records in PostgreSQL's binary ``COPY`` format, written from Cassandra's serialized values.

A staging record is a mirrored table's columns then its ``_cdc_*`` columns
(:attr:`cdcpipe.apply.tables.Layout.record_columns`).  For the CQL types whose PostgreSQL binary form is their
serialized form or an integer transform of it (:func:`raw_writer`: tinyint, smallint, int, bigint, float, double,
boolean, uuid, timeuuid, ascii, text, varchar, blob, custom, timestamp, date, time) a field is written straight from
the cell's bytes: no typed Python value is made.  Every other value takes today's route — the typed value
(:func:`cdcpipe.typemap.deserializer`, or the one the decoder cached), :func:`cdcpipe.typemap.converter`, then
:func:`typed_writer` for its PostgreSQL type — and so does every value the direct form does not cover exactly:
text holding U+0000, instants at or beyond the ends of years 1–9999, a ``time`` with sub-microsecond
nanoseconds, a value of the wrong length (which raises there as it did before).

Contract: every field is what asyncpg's ``copy_records_to_table`` sends for :func:`cdcpipe.typemap.to_pg` of the
value, including its mapping of 0001-01-01 00:00 and 9999-12-31 to ``-infinity`` / ``infinity`` (only a float's
NaN keeps its payload bits, which a round trip through a Python float may change; PostgreSQL shows every NaN
alike), so the stored rows and their ``_cdc_inexact`` lists are the same.  :func:`record_writer` returns None for a
table with a column whose PostgreSQL type has no writer here (numeric, inet and arrays of them); the caller then
COPYs typed records through asyncpg as before.
"""

from __future__ import annotations

import datetime
import struct
from collections.abc import Callable, Mapping
from typing import Any

from cdcpipe.apply.keys import split_clustering
from cdcpipe.apply.merge import UNSET
from cdcpipe.cql import CqlType
from cdcpipe.schema import Column, TableSchema
from cdcpipe.tokens import token
from cdcpipe.typemap import converter, deserializer, pg_type

HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, no header extension
TRAILER = b"\xff\xff"
NULL = b"\xff\xff\xff\xff"
_TOKEN_LENGTH = b"\x00\x00\x00\x08"  # _cdc_token: a bigint field

RawWriter = Callable[[bytearray, bytes], bool]
"""Appends the field of a serialized value to the buffer and returns True, or appends nothing and returns False
when the value must take the typed route."""
TypedWriter = Callable[[Any], bytes]
"""The field (length and data, or :data:`NULL`) of a value as :func:`cdcpipe.typemap.to_pg` converted it."""

_L1, _L2, _L4, _L8 = (n.to_bytes(4, "big") for n in (1, 2, 4, 8))
_TRUE, _FALSE = _L1 + b"\x01", _L1 + b"\x00"
_UTC = datetime.UTC
_PG_EPOCH = datetime.datetime(2000, 1, 1, tzinfo=_UTC)
_PG_EPOCH_S = 946_684_800  # 2000-01-01 in seconds since 1970-01-01
_PG_EPOCH_DAYS = 10_957
_PG_EPOCH_ORD = datetime.date(2000, 1, 1).toordinal()
# asyncpg sends an instant equal to Python's datetime.min/max (µs since 2000) as -infinity/infinity
_US_MIN, _US_MAX = -63_082_281_600_000_000, 252_455_615_999_999_999
_MIN_INF, _MAX_INF = _L8 + b"\x80" + bytes(7), _L8 + b"\x7f" + b"\xff" * 7
_NAIVE_MIN, _NAIVE_MAX = datetime.datetime.min, datetime.datetime.max
# Python's datetime range in milliseconds since 1970 (the direct form takes _MS_LO < ms: datetime.min is -infinity)
_MS_LO, _MS_HI = -62_135_596_800_000, 253_402_300_799_999
# instant(): whole seconds inside Python's datetime range (beyond it: datetime.max)
_S_LO, _S_HI = -62_135_596_800, 253_402_300_799
_DAY_NS = 86_400_000_000_000
_ORD_MAX = datetime.date.max.toordinal()
_ORD_1970 = datetime.date(1970, 1, 1).toordinal()
_DATE_OFFSET = 1 << 31
_INT2, _INT4, _INT8 = struct.Struct(">h"), struct.Struct(">i"), struct.Struct(">q")
_F4, _F8 = struct.Struct(">f"), struct.Struct(">d")
_ARRAY_HEAD = struct.Struct(">iiiii")
_LENGTHS = [n.to_bytes(4, "big") for n in range(256)]


def _length(n: int) -> bytes:
    return _LENGTHS[n] if n < 256 else n.to_bytes(4, "big")


def _time64(us: int) -> bytes:
    if us == _US_MAX:
        return _MAX_INF
    if us == _US_MIN:
        return _MIN_INF
    return _L8 + _INT8.pack(us)


# ---------------------------------------------------------------------------------------------- serialized → field


# direct forms, by code: fixed-length values copied as they are, then the ones that check or transform
_FIXED2, _FIXED4, _FIXED8, _FIXED16, _TEXT, _ASCII, _BLOB, _TIMESTAMP, _DATE, _TIME, _TINYINT, _BOOLEAN = range(1, 13)
_CODES = {
    "smallint": _FIXED2, "int": _FIXED4, "bigint": _FIXED8, "float": _FIXED4, "double": _FIXED8, "uuid": _FIXED16,
    "timeuuid": _FIXED16, "tinyint": _TINYINT, "boolean": _BOOLEAN, "text": _TEXT, "varchar": _TEXT,
    "ascii": _ASCII, "blob": _BLOB, "custom": _BLOB, "timestamp": _TIMESTAMP, "date": _DATE, "time": _TIME,
}
_SIZES = {_FIXED2: 2, _FIXED4: 4, _FIXED8: 8, _FIXED16: 16}


def _direct(code: int, out: bytearray, raw: bytes) -> bool:
    """The :data:`RawWriter` of direct form ``code`` (one function, which mypyc calls natively)."""
    n = len(raw)
    if code <= _FIXED16:
        if n == _SIZES[code]:
            out += _LENGTHS[n]
            out += raw
            return True
    elif code <= _BLOB:  # text, ascii, blob
        if code != _BLOB:
            if b"\x00" in raw:
                return False  # typemap: NULL, inexact
            if not raw.isascii():
                if code == _ASCII:
                    return False  # the driver's decoding raises
                raw.decode()  # the driver's decoding: invalid UTF-8 raises as it did
        out += _length(n)
        out += raw
        return True
    elif code == _TIMESTAMP:
        if n == 8:
            ms = int.from_bytes(raw, "big", signed=True)
            if _MS_LO < ms <= _MS_HI:
                out += _L8
                out += ((ms - _PG_EPOCH_S * 1000) * 1000).to_bytes(8, "big", signed=True)
                return True
            return False
    elif code == _DATE:
        if n == 4:
            days = int.from_bytes(raw, "big") - _DATE_OFFSET
            if 1 < days + _ORD_1970 < _ORD_MAX:
                out += _L4
                out += (days - _PG_EPOCH_DAYS).to_bytes(4, "big", signed=True)
                return True
            return False
    elif code == _TIME:
        if n == 8:
            ns = int.from_bytes(raw, "big", signed=True)
            if 0 <= ns < _DAY_NS and ns % 1000 == 0:
                out += _L8
                out += (ns // 1000).to_bytes(8, "big")
                return True
            return False
    elif code == _TINYINT:
        if n == 1:
            out += _L2
            out += b"\xff" if raw[0] & 0x80 else b"\x00"
            out += raw
            return True
    elif n == 1:  # boolean
        out += _TRUE if raw[0] else _FALSE
        return True
    if n:
        return False  # a wrong length: the typed route raises
    out += NULL  # an empty value of a non-string type reads as null
    return True


def raw_writer(t: CqlType) -> RawWriter | None:
    """The direct writer of serialized values of ``t``; None when its values take the typed route."""
    code = _CODES.get(t.name)
    if code is None:
        return None
    return lambda out, raw: _direct(code, out, raw)


# ---------------------------------------------------------------------------------------------- typed → field


def _packer(s: struct.Struct, prefix: bytes) -> TypedWriter:
    pack = s.pack
    return lambda v: NULL if v is None else prefix + pack(v)


def _w_bool(v: Any) -> bytes:
    return NULL if v is None else _TRUE if v is True else _FALSE


def _w_text(v: Any) -> bytes:
    if v is None:
        return NULL
    data: bytes = v.encode()
    return _length(len(data)) + data


def _w_bytea(v: Any) -> bytes:
    return NULL if v is None else _length(len(v)) + bytes(v)


def _w_uuid(v: Any) -> bytes:
    return NULL if v is None else _length(16) + bytes(v.bytes)


def _w_jsonb(v: Any) -> bytes:
    if v is None:
        return NULL
    data: bytes = v.encode()
    return _length(len(data) + 1) + b"\x01" + data


def _w_timestamptz(v: Any) -> bytes:
    if v is None:
        return NULL
    if v == _NAIVE_MAX:
        return _MAX_INF
    if v == _NAIVE_MIN:
        return _MIN_INF
    d = v.astimezone(_UTC) - _PG_EPOCH
    return _time64((d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds)


def _w_date(v: Any) -> bytes:
    if v is None:
        return NULL
    ordinal = v.toordinal()
    if ordinal == _ORD_MAX:
        return _L4 + b"\x7f\xff\xff\xff"
    if ordinal == 1:
        return _L4 + b"\x80\x00\x00\x00"
    return _L4 + _INT4.pack(ordinal - _PG_EPOCH_ORD)


def _w_time(v: Any) -> bytes:
    if v is None:
        return NULL
    return _time64((v.hour * 3600 + v.minute * 60 + v.second) * 1_000_000 + v.microsecond)


# PostgreSQL type → (writer, element type OID for arrays of it)
_TYPED: dict[str, tuple[TypedWriter, int]] = {
    "smallint": (_packer(_INT2, _L2), 21), "integer": (_packer(_INT4, _L4), 23),
    "bigint": (_packer(_INT8, _L8), 20), "real": (_packer(_F4, _L4), 700),
    "double precision": (_packer(_F8, _L8), 701), "boolean": (_w_bool, 16), "text": (_w_text, 25),
    "bytea": (_w_bytea, 17), "uuid": (_w_uuid, 2950), "timestamptz": (_w_timestamptz, 1184),
    "date": (_w_date, 1082), "time": (_w_time, 1083), "jsonb": (_w_jsonb, 3802),
}


def _array_field(oid: int, items: list[bytes]) -> bytes:
    """array_send's form of a one-dimensional array: dimensions, has-null flag (asyncpg always writes 0),
    element type, then length and lower bound of the dimension, then the element fields."""
    body = b"".join(items)
    return _length(20 + len(body)) + _ARRAY_HEAD.pack(1, 0, oid, len(items), 1) + body


def _array(element: TypedWriter, oid: int) -> TypedWriter:
    return lambda v: NULL if v is None else _array_field(oid, [element(x) for x in v])


def typed_writer(pg: str) -> TypedWriter | None:
    """The writer of converted values of PostgreSQL type ``pg`` (as :func:`cdcpipe.typemap.pg_type` names it);
    None for a type without one here."""
    if pg.endswith("[]"):
        found = _TYPED.get(pg[:-2])
        return None if found is None else _array(*found)
    found = _TYPED.get(pg)
    return None if found is None else found[0]


def text_field(s: str) -> bytes:
    return _w_text(s)


def instant_field(seconds: int | None) -> bytes:
    """The ``timestamptz`` field of :func:`cdcpipe.apply.tables.instant` of ``seconds`` (beyond Python's range
    it gives datetime.max, sent as ``infinity``)."""
    if seconds is None:
        return NULL
    if _S_LO <= seconds <= _S_HI:
        return _time64((seconds - _PG_EPOCH_S) * 1_000_000)
    return _MAX_INF


# ---------------------------------------------------------------------------------------------- records

_KEY, _CLUSTERING, _CELL, _MULTI = 0, 1, 2, 3


class _Column:
    """How one column of a record is written: ``kind`` (key, clustering, simple cell, multi-cell), ``index``
    among the key's or clustering's values, ``code`` of its direct form (0: none), and its typed route."""

    __slots__ = ("code", "convert", "index", "kind", "name", "name_field", "read", "typed")

    def __init__(self, kind: int, index: int, name: str, code: int, read: Callable[[bytes], Any],
                 convert: Callable[[Any], tuple[Any, bool]] | None, typed: TypedWriter) -> None:
        self.kind = kind
        self.index = index
        self.name = name
        self.code = code
        self.read = read
        self.convert = convert
        self.typed = typed
        self.name_field = text_field(name)


class RecordWriter:
    """Writes one table version's staging records (its columns in ``columns`` order, then the ``_cdc_*``
    columns) into a binary COPY buffer."""

    __slots__ = ("_clustered", "_columns", "_count", "_single_key", "_table")

    def __init__(self, table: TableSchema, columns: list[_Column]) -> None:
        self._table = table
        self._columns = columns
        self._count = (len(columns) + 7).to_bytes(2, "big")
        self._single_key = len(table.partition_key) == 1
        self._clustered = bool(table.clustering)

    def write(self, out: bytearray, partition: bytes, clustering: bytes, values: Mapping[str, Any], meta: bytes,
              expires_at: int | None, stamp: bytes) -> None:
        """Append one record: the row with key ``(partition, clustering)`` whose ``raw`` view
        (:func:`cdcpipe.apply.view.row_view`) has ``values``; ``meta`` is its ``_cdc_meta`` bytes, ``expires_at``
        its next expiry (seconds), ``stamp`` the ``_cdc_updated_at`` field (:func:`instant_field`)."""
        out += self._count
        keys = (partition,) if self._single_key else self._table.partition_key_values(partition)
        clusterings = split_clustering(clustering) if self._clustered else ()
        inexact: list[bytes] | None = None
        for col in self._columns:
            kind = col.kind
            obj: Any = UNSET
            if kind == _CELL:
                v = values.get(col.name)
                if v is None:
                    out += NULL
                    continue
                raw: bytes = v.value
                obj = v.obj
            elif kind == _KEY:
                raw = keys[col.index]
            elif kind == _CLUSTERING:
                if col.index >= len(clusterings):  # a clustering shorter than the table's
                    out += NULL
                    continue
                raw = clusterings[col.index]
            if kind != _MULTI:
                if col.code and _direct(col.code, out, raw):
                    continue
                value = obj if obj is not UNSET else col.read(raw)
            else:
                value = values.get(col.name)
            exact = True
            if col.convert is not None:
                value, exact = col.convert(value)
            out += col.typed(value)
            if not exact:
                inexact = [*(inexact or ()), col.name_field]
        out += _length(len(partition))
        out += partition
        out += _length(len(clustering))
        out += clustering
        out += _length(len(meta))
        out += meta
        out += NULL if inexact is None else _array_field(25, inexact)  # text[]
        out += NULL if expires_at is None else instant_field(expires_at)
        out += stamp
        out += _TOKEN_LENGTH
        out += token(partition).to_bytes(8, "big", signed=True)


def record_writer(table: TableSchema, columns: tuple[Column, ...]) -> RecordWriter | None:
    """The record writer of a table whose records hold ``columns`` (primary key first, in Cassandra's order);
    None when a column's PostgreSQL type has no :func:`typed_writer`."""
    plan: list[_Column] = []
    partition = {c.name: i for i, c in enumerate(table.partition_key)}
    clustering = {c.name: i for i, c in enumerate(table.clustering)}
    for c in columns:
        typed = typed_writer(pg_type(c.type))
        if typed is None:
            return None
        if c.name in partition:
            kind, index = _KEY, partition[c.name]
        elif c.name in clustering:
            kind, index = _CLUSTERING, clustering[c.name]
        else:
            kind, index = (_MULTI if c.type.multi_cell else _CELL), 0
        plan.append(_Column(kind, index, c.name, _CODES.get(c.type.name, 0), deserializer(c.type),
                            converter(c.type), typed))
    return RecordWriter(table, plan)
