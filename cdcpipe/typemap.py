"""The one table of CQL type → Avro (in the event) → PostgreSQL type, with the value converter for each, and the
CQL wire codec.

Every column of a mirrored table gets its PostgreSQL type from :func:`pg_type` and its values from
:func:`to_pg`.  A converter returns ``(value, exact)``: ``exact`` is False when PostgreSQL cannot hold the
Cassandra value exactly (a date or timestamp outside PostgreSQL's or Python's range, a ``time`` with
sub-microsecond nanoseconds, text holding U+0000, a number beyond ``numeric``'s range).  The column then holds
the nearest representable value (``±infinity`` for out-of-range instants) or NULL, its name is listed in the row's
``_cdc_inexact`` array, and the exact serialized CQL value stays in ``_cdc_meta`` — so nothing is lost.

:func:`serialize` / :func:`deserialize` are the CQL serialized form (protocol v4) through cassandra-driver's
``cqltypes``; the merge compares these bytes (reference rule 6).  ``docs/type-mapping.md`` is generated from
:data:`MAPPING` by :func:`render_doc` (``python -m cdcpipe.typemap > docs/type-mapping.md``).
"""

from __future__ import annotations

import datetime
import decimal
import ipaddress
import json
import struct
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cdcpipe.avro_values import avro_summary
from cdcpipe.cql import PROTOCOL_VERSION, CqlType, driver_type, parse_cql_type, to_json

Converted = tuple[Any, bool]

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_EPOCH_DATE = datetime.date(1970, 1, 1)
_TS_MAX = datetime.datetime.max.replace(tzinfo=datetime.UTC)  # asyncpg sends it as 'infinity'
_TS_MIN = datetime.datetime.min.replace(tzinfo=datetime.UTC)  # '-infinity'
_LONG = struct.Struct(">q")
_NUMERIC_MAX_INT_DIGITS = 131072
_NUMERIC_MAX_SCALE = 16383


@dataclass(frozen=True, slots=True)
class TypeRow:
    """One row of the mapping table (also one row of ``docs/type-mapping.md``).  ``examples`` are CQL types of the
    row: the doc's Avro column is generated from them (:func:`cdcpipe.avro_values.avro_summary`), and a unit test
    checks that :func:`pg_type` gives each of them the row's PostgreSQL type (``S`` standing for the element's)."""

    cql: str
    pg: str
    representation: str
    examples: tuple[str, ...]


MAPPING: tuple[TypeRow, ...] = (
    TypeRow("ascii, text, varchar", "text", "as is; text holding U+0000 (PostgreSQL cannot store it) → NULL, inexact",
            ("ascii", "text", "varchar")),
    TypeRow("tinyint, smallint", "smallint", "as is", ("tinyint", "smallint")),
    TypeRow("int", "integer", "as is", ("int",)),
    TypeRow("bigint", "bigint", "as is", ("bigint",)),
    TypeRow("counter", "bigint", "counter tables are refused at start (see ADR 0002)", ("counter",)),
    TypeRow("varint", "numeric", "as is; more than 131072 digits → NULL, inexact", ("varint",)),
    TypeRow("decimal", "numeric", "as is (scale kept: 1.0 stays 1.0); beyond numeric's range → NULL, inexact",
            ("decimal",)),
    TypeRow("float", "real", "as is, NaN and ±Infinity included", ("float",)),
    TypeRow("double", "double precision", "as is, NaN and ±Infinity included", ("double",)),
    TypeRow("boolean", "boolean", "as is", ("boolean",)),
    TypeRow("uuid, timeuuid", "uuid", "as is", ("uuid", "timeuuid")),
    TypeRow("timestamp", "timestamptz", "milliseconds, UTC; outside years 1–9999 → ±infinity, inexact",
            ("timestamp",)),
    TypeRow("date", "date", "outside years 1–9999 → ±infinity, inexact", ("date",)),
    TypeRow("time", "time", "microseconds; a value with sub-microsecond nanoseconds is truncated, inexact",
            ("time",)),
    TypeRow("inet", "inet", "as is", ("inet",)),
    TypeRow("blob, custom types", "bytea", "the serialized bytes",
            ("blob", "'org.apache.cassandra.db.marshal.BytesType'")),
    TypeRow("duration", "jsonb",
            '`{"months": m, "days": d, "nanoseconds": n}` — lossless (interval has no nanoseconds)', ("duration",)),
    TypeRow("list<S>, set<S> (S a scalar above, not duration)", "S[]",
            "elements in list order; sets sorted by element; an element that is inexact → NULL element, inexact",
            ("list<int>", "set<text>", "frozen<list<timestamp>>")),
    TypeRow("map, tuple, UDT, nested collections, collections of duration", "jsonb",
            "maps as `[[key, value], ...]` in key order, UDTs as objects, tuples as arrays; blobs as hex, "
            "decimals/varints as strings, timestamps ISO-8601, non-finite floats as strings",
            ("map<text, int>", "tuple<int, text>", "list<frozen<list<int>>>", "list<duration>")),
    TypeRow("vector<float, n>", "real[]", "as is", ("vector<float, 3>",)),
    TypeRow("vector<double, n>", "double precision[]", "as is", ("vector<double, 2>",)),
    TypeRow("vector<other, n>", "jsonb", "as an array, rendered like a list", ("vector<int, 2>",)),
)

_SCALAR_PG = {
    "ascii": "text", "text": "text", "varchar": "text", "tinyint": "smallint", "smallint": "smallint",
    "int": "integer", "bigint": "bigint", "counter": "bigint", "varint": "numeric", "decimal": "numeric",
    "float": "real", "double": "double precision", "boolean": "boolean", "uuid": "uuid", "timeuuid": "uuid",
    "timestamp": "timestamptz", "date": "date", "time": "time", "inet": "inet", "blob": "bytea",
    "custom": "bytea", "empty": "bytea",
}


def pg_type(t: CqlType) -> str:
    """The PostgreSQL column type for CQL type ``t`` (see :data:`MAPPING`)."""
    scalar = _SCALAR_PG.get(t.name)
    if scalar is not None:
        return scalar
    if t.name in ("list", "set"):
        elem = _SCALAR_PG.get(t.params[0].name)
        return f"{elem}[]" if elem is not None else "jsonb"
    if t.name == "vector" and t.params[0].name in ("float", "double"):
        return f"{_SCALAR_PG[t.params[0].name]}[]"
    return "jsonb"


def to_pg(t: CqlType, value: Any) -> Converted:
    """``value`` (a cassandra-driver typed value, or None) as a value asyncpg can send for :func:`pg_type`."""
    if value is None:
        return None, True
    conv = _SCALAR_CONVERT.get(t.name)
    if conv is not None:
        return conv(value)
    if t.name in ("list", "set") and t.params[0].name in _SCALAR_CONVERT:
        elem_conv = _SCALAR_CONVERT[t.params[0].name]
        items = sorted(value, key=_sort_key) if t.name == "set" else list(value)
        out, exact = [], True
        for item in items:
            v, ok = elem_conv(item)
            out.append(v)
            exact = exact and ok
        return out, exact
    if t.name == "vector" and t.params[0].name in ("float", "double"):
        return [float(v) for v in value], True
    return _jsonb(t, value)


def converter(t: CqlType) -> Callable[[Any], Converted] | None:
    """:func:`to_pg` for values of type ``t`` with the type dispatch done once; None when values pass through
    unchanged (``to_pg(t, v) == (v, True)`` for every ``v``)."""
    conv = _SCALAR_CONVERT.get(t.name)
    if conv is _same:
        return None
    if conv is not None:
        scalar = conv
        return lambda value: (None, True) if value is None else scalar(value)
    return lambda value: to_pg(t, value)


def deserializer(t: CqlType) -> Callable[[bytes], Any]:
    """:func:`deserialize` for values of type ``t`` with the type dispatch done once."""
    if t.name in ("timestamp", "blob", "custom"):
        return lambda raw: deserialize(t, raw)
    decode = driver_type(t).deserialize
    stringish = t.name in ("ascii", "text", "varchar")

    def run(raw: bytes) -> Any:
        if not raw and not stringish:
            return None
        return decode(bytes(raw), PROTOCOL_VERSION)
    return run


def _sort_key(value: Any) -> Any:
    return (str(type(value)), value)


def _same(value: Any) -> Converted:
    return value, True


def _text(value: Any) -> Converted:
    s = str(value)
    return (None, False) if "\x00" in s else (s, True)


def _numeric(value: Any) -> Converted:
    d = value if isinstance(value, decimal.Decimal) else decimal.Decimal(int(value))
    if not d.is_finite():
        return None, False
    digits = d.as_tuple()
    exponent = int(digits.exponent)
    int_digits = len(digits.digits) + exponent
    if int_digits > _NUMERIC_MAX_INT_DIGITS or -exponent > _NUMERIC_MAX_SCALE:
        return None, False
    return d, True


def _timestamp(value: Any) -> Converted:
    if isinstance(value, datetime.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=datetime.UTC)), True
    millis = int(value)
    try:
        return _EPOCH + datetime.timedelta(milliseconds=millis), True
    except OverflowError:
        return (_TS_MAX if millis > 0 else _TS_MIN), False


def _date(value: Any) -> Converted:
    if isinstance(value, datetime.date):
        return value, True
    days = int(value.days_from_epoch) if hasattr(value, "days_from_epoch") else int(value)
    try:
        return _EPOCH_DATE + datetime.timedelta(days=days), True
    except OverflowError:
        return (datetime.date.max if days > 0 else datetime.date.min), False


def _time(value: Any) -> Converted:
    if isinstance(value, datetime.time):
        return value, True
    nanos = int(value.nanosecond_time) if hasattr(value, "nanosecond_time") else int(value)
    micros, rest = divmod(nanos, 1000)
    seconds, micro = divmod(micros, 1_000_000)
    hours, rem = divmod(seconds, 3600)
    return datetime.time(hours, rem // 60, rem % 60, micro), rest == 0


def _inet(value: Any) -> Converted:
    return ipaddress.ip_address(value), True


def _blob(value: Any) -> Converted:
    return bytes(value), True


def _duration(value: Any) -> Converted:
    return json.dumps({"months": value.months, "days": value.days, "nanoseconds": value.nanoseconds}), True


_SCALAR_CONVERT: dict[str, Callable[[Any], Converted]] = {
    "ascii": _text, "text": _text, "varchar": _text, "tinyint": _same, "smallint": _same, "int": _same,
    "bigint": _same, "counter": _same, "varint": _numeric, "decimal": _numeric, "float": _same, "double": _same,
    "boolean": _same, "uuid": _same, "timeuuid": _same, "timestamp": _timestamp, "date": _date, "time": _time,
    "inet": _inet, "blob": _blob, "custom": _blob, "empty": _blob, "duration": _duration,
}


def _jsonb(t: CqlType, value: Any) -> Converted:
    text = json.dumps(to_json(t, value), separators=(",", ":"))
    return (None, False) if "\\u0000" in text else (text, True)


# ---------------------------------------------------------------------------------------------- CQL wire form


class _Pairs(list[tuple[Any, Any]]):
    """A list of (key, value) pairs that cassandra-driver's map serializer accepts (it calls ``items()``)."""

    def items(self) -> list[tuple[Any, Any]]:
        return self


def _driver_value(t: CqlType, value: Any) -> Any:
    """Shape a model value the way the driver's serializers expect it (maps as pairs, UDTs as tuples)."""
    if value is None:
        return None
    name = t.name
    if name == "map":
        pairs = value.items() if isinstance(value, Mapping) else value
        return _Pairs((_driver_value(t.params[0], k), _driver_value(t.params[1], v)) for k, v in pairs)
    if name in ("list", "set", "vector"):
        return [_driver_value(t.params[0], v) for v in value]
    if name == "tuple":
        return tuple(_driver_value(p, v) for p, v in zip(t.params, value, strict=False))
    if name == "udt":
        if isinstance(value, Mapping):
            return tuple(_driver_value(p, value.get(f)) for f, p in zip(t.field_names, t.params, strict=True))
        return tuple(_driver_value(p, v) for p, v in zip(t.params, value, strict=False))
    if name == "timestamp" and not isinstance(value, datetime.datetime):
        return int(value)  # milliseconds outside Python's datetime range
    return value


def serialize(t: CqlType, value: Any) -> bytes:
    """The CQL serialized form of ``value`` (frozen form for collections).  Raises ValueError/TypeError."""
    if t.name == "timestamp" and not isinstance(value, datetime.datetime):
        return _LONG.pack(int(value))
    if t.name in ("blob", "custom") and isinstance(value, bytes | bytearray):
        return bytes(value)
    return bytes(driver_type(t).serialize(_driver_value(t, value), PROTOCOL_VERSION))


def deserialize(t: CqlType, raw: bytes) -> Any:
    """The typed value of a serialized CQL value; timestamps outside Python's datetime range come back as
    ``int`` milliseconds.  An empty value of a non-string type is None."""
    if not raw and t.name not in ("ascii", "text", "varchar", "blob", "custom"):
        return None
    if t.name == "timestamp":
        millis = _LONG.unpack(raw)[0]
        try:
            return (_EPOCH + datetime.timedelta(milliseconds=millis)).replace(tzinfo=None)
        except OverflowError:
            return millis
    if t.name in ("blob", "custom"):
        return bytes(raw)
    return driver_type(t).deserialize(bytes(raw), PROTOCOL_VERSION)


# ---------------------------------------------------------------------------------------------- docs


def _avro_column(row: TypeRow) -> str:
    summaries = list(dict.fromkeys(avro_summary(parse_cql_type(e)) for e in row.examples))
    return ("e.g. " if len(summaries) > 1 else "") + ", ".join(f"`{a}`" for a in summaries)


def render_doc() -> str:
    """The text of ``docs/type-mapping.md``."""
    lines = [
        "# Type mapping",
        "",
        "Generated from `cdcpipe/typemap.py` by `python -m cdcpipe.typemap > docs/type-mapping.md`; do not edit.",
        "",
        "Each Cassandra column becomes a PostgreSQL column of the same name. When PostgreSQL cannot hold a value",
        "exactly (*inexact* below), the column holds the nearest value or NULL, the column's name is listed in the",
        "row's `_cdc_inexact text[]`, and the exact serialized CQL value is kept in the row's `_cdc_meta`",
        "(`c.<column>[4]`, hex), so no value is lost. Frozen and non-frozen collections map the same way.",
        "",
        "The Avro column is the type of the value in a change event (`docs/events.md`); a UDT's record has one",
        "nullable field per UDT field, and every value also travels as its serialized bytes (`raw`).",
        "",
        "| CQL | Avro (event) | PostgreSQL | representation |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r.cql} | {_avro_column(r)} | {r.pg} | {r.representation} |" for r in MAPPING]
    lines += [
        "",
        "Metadata columns of every mirrored table (see ADR 0002):",
        "",
        "| column | type | meaning |",
        "|---|---|---|",
        "| `_cdc_partition` | bytea | the serialized partition key (Cassandra's key bytes) |",
        "| `_cdc_clustering` | bytea | the serialized clustering, one length-prefixed value per column |",
        "| `_cdc_meta` | bytea | the merge state, binary (format 2, `cdcpipe/apply/state.py`): per cell timestamp, "
        "TTL, expiry, tombstone, value bytes; row marker; row deletion |",
        "| `_cdc_inexact` | text[] | columns whose PostgreSQL value is not the exact Cassandra value |",
        "| `_cdc_expires_at` | timestamptz | when the row's content next changes by TTL expiry (NULL: never) |",
        "| `_cdc_updated_at` | timestamptz | when apply last wrote the row |",
        "| `_cdc_token` | bigint | the partition's token as Cassandra computes it (Murmur3Partitioner, "
        "`cdcpipe/tokens.py`), indexed: token-range comparisons (`cdcpipe reconcile`). Mirrors made before it was "
        "kept get the column when apply next prepares the table, and their rows get the value in chunks from apply's "
        "maintenance pass (`migrate.fill_tokens`) |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render_doc())
