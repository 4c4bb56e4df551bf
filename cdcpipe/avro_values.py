"""CQL types and values in their Avro form (the type table of ``docs/events.md``), used by :mod:`cdcpipe.avro`.

Contract
    - :func:`avro_type` maps a (frozen) CQL type to its Avro type; :func:`element_types` gives the (value, path)
      Avro types of one cell of a column (a non-frozen collection or UDT has one cell per element).
    - :func:`to_avro` converts a driver-decoded value to its Avro form; :func:`converter` returns a function doing
      the same for one type, with the identity for the types whose Python value already is the Avro value (the
      hot path of capture), and ``None`` instead of an exception for values that do not fit.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Mapping
from typing import Any

from cdcpipe.cql import CqlType, TimestampMillis, udt_field_index

_NAME_OK = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EPOCH_NAIVE = datetime.datetime(1970, 1, 1)
_EPOCH_AWARE = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MICRO = datetime.timedelta(microseconds=1)


class Namer:
    """Unique Avro names within one schema."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, base: str) -> str:
        name, n = avro_name(base), 1
        while name in self.used:
            n += 1
            name = f"{avro_name(base)}_{n}"
        self.used.add(name)
        return name


def avro_name(text: str) -> str:
    if _NAME_OK.fullmatch(text):
        return text
    name = re.sub(r"[^A-Za-z0-9_]", "_", text)
    return name if _NAME_OK.fullmatch(name) else "_" + name


def nullable(t: Any) -> list[Any]:
    return ["null", t]


SIMPLE: dict[str, Any] = {
    "ascii": "string", "text": "string", "varchar": "string", "inet": "string", "varint": "string",
    "decimal": "string", "blob": "bytes", "boolean": "boolean", "tinyint": "int", "smallint": "int",
    "int": "int", "bigint": "long", "counter": "long", "float": "float", "double": "double", "empty": "null",
    "uuid": {"type": "string", "logicalType": "uuid"}, "timeuuid": {"type": "string", "logicalType": "uuid"},
    "date": {"type": "int", "logicalType": "date"}, "time": {"type": "long", "logicalType": "time-micros"},
    "timestamp": {"type": "long", "logicalType": "timestamp-micros"},
}


def avro_type(t: CqlType, namer: Namer, base: str) -> Any:
    """The Avro type of a (frozen) CQL value; see docs/events.md for the table."""
    simple = SIMPLE.get(t.name)
    if simple is not None:
        return simple
    if t.name == "duration":
        return {"type": "record", "name": namer(f"{base}_duration"), "fields": [
            {"name": "months", "type": "int"}, {"name": "days", "type": "int"},
            {"name": "nanoseconds", "type": "long"}]}
    if t.name in ("list", "set", "vector"):
        return {"type": "array", "items": avro_type(t.params[0], namer, f"{base}_item")}
    if t.name == "map":
        return {"type": "array", "items": {"type": "record", "name": namer(f"{base}_entry"), "fields": [
            {"name": "key", "type": avro_type(t.params[0], namer, f"{base}_key")},
            {"name": "value", "type": avro_type(t.params[1], namer, f"{base}_value")}]}}
    if t.name == "tuple":
        return {"type": "record", "name": namer(f"{base}_tuple"), "fields": [
            {"name": f"f{i}", "type": nullable(avro_type(p, namer, f"{base}_f{i}"))}
            for i, p in enumerate(t.params)]}
    if t.name == "udt":
        fnamer = Namer()
        return {"type": "record", "name": namer(f"{base}_{t.udt_name}"), "fields": [
            {"name": fnamer(n), "cdcpipe.field": n, "type": nullable(avro_type(p, namer, f"{base}_{n}")),
             "default": None}
            for n, p in zip(t.field_names, t.params, strict=True)]}
    return "bytes"  # custom types: the serialized bytes


def avro_summary(t: CqlType) -> str:
    """A short text of :func:`avro_type` (the Avro column of ``docs/type-mapping.md``), e.g. ``array<int>``."""
    return _summary(avro_type(t, Namer(), "v"))


def _summary(a: Any) -> str:
    if isinstance(a, str):
        return a
    if isinstance(a, list):  # ["null", t]: a nullable field
        return _summary(a[1]) + "?"
    if a["type"] == "array":
        return f"array<{_summary(a['items'])}>"
    if a["type"] == "record":
        fields = ", ".join(f"{f.get('cdcpipe.field', f['name'])}: {_summary(f['type'])}" for f in a["fields"])
        return f"record {{{fields}}}"
    return f"{a['type']} ({a['logicalType']})"


def element_types(t: CqlType, namer: Namer, base: str) -> tuple[Any, Any]:
    """(value type, path type) of one cell of a column of type ``t``; path None for simple columns."""
    if not t.multi_cell:
        return avro_type(t, namer, base), None
    if t.name == "list":
        return avro_type(t.params[0], namer, base), SIMPLE["timeuuid"]
    if t.name == "set":
        return "null", avro_type(t.params[0], namer, base)
    if t.name == "map":
        return avro_type(t.params[1], namer, base), avro_type(t.params[0], namer, f"{base}_key")
    return "null", "string"  # non-frozen UDT: path = field name, value only as raw (fields differ in type)




def to_avro(t: CqlType, value: Any) -> Any:
    """A driver-decoded value in its Avro form (see docs/events.md).  Raises ValueError/TypeError when the
    value does not fit; callers fall back to None (the ``raw`` bytes still carry it)."""
    if value is None:
        return None
    n = t.name
    if n in ("varint", "decimal", "inet"):
        return str(value)
    if n == "counter":
        return int(getattr(value, "total", value))
    if n == "date":
        return int(getattr(value, "days_from_epoch", value))
    if n == "time":
        return int(getattr(value, "nanosecond_time", value)) // 1000
    if n == "timestamp":
        if isinstance(value, datetime.datetime):
            epoch = _EPOCH_NAIVE if value.tzinfo is None else _EPOCH_AWARE
            return (value - epoch) // _MICRO
        if isinstance(value, TimestampMillis):  # outside the datetime range: Avro readers could not convert it
            raise ValueError(f"timestamp {int(value)} ms is outside the datetime range (raw bytes carry it)")
        return int(value) * 1000
    if n in ("uuid", "timeuuid"):
        return str(value)
    if n == "duration":
        return {"months": value.months, "days": value.days, "nanoseconds": value.nanoseconds}
    if n in ("list", "set", "vector"):
        return [to_avro(t.params[0], v) for v in value]
    if n == "map":
        pairs = value.items() if isinstance(value, Mapping) else value
        return [{"key": to_avro(t.params[0], k), "value": to_avro(t.params[1], v)} for k, v in pairs]
    if n == "tuple":
        return {f"f{i}": to_avro(p, v) for i, (p, v) in enumerate(zip(t.params, value, strict=False))}
    if n == "udt":
        fnamer = Namer()
        names = [fnamer(f) for f in t.field_names]
        get: Callable[[str, int], Any] = (
            (lambda f, i: value.get(f)) if isinstance(value, Mapping) else (lambda f, i: getattr(value, f, None)))
        return {a: to_avro(p, get(f, i)) for i, (a, f, p) in enumerate(zip(names, t.field_names, t.params,
                                                                             strict=True))}
    if n == "blob" or n == "custom":
        return bytes(value)
    return value


def safe_avro(t: CqlType, value: Any) -> Any:
    try:
        return to_avro(t, value)
    except (ValueError, TypeError, AttributeError, OverflowError):
        return None


def element_cql(t: CqlType, path: bytes | None) -> tuple[CqlType | None, CqlType | None]:
    """(value type, path type) of a cell of a column of type ``t``."""
    if not t.multi_cell:
        return t, None
    if t.name == "list":
        return t.params[0], CqlType("timeuuid")
    if t.name == "set":
        return None, t.params[0]
    if t.name == "map":
        return t.params[1], t.params[0]
    idx = udt_field_index(path or b"\0\0")
    return (t.params[idx] if idx < len(t.params) else None), None


# the Python value the driver decodes these to is already their Avro value
_IDENTITY = frozenset({"ascii", "text", "varchar", "tinyint", "smallint", "int", "bigint", "float", "double",
                       "boolean", "blob"})


def _identity(value: Any) -> Any:
    return value


def converter(t: CqlType | None) -> Callable[[Any], Any]:
    """``safe_avro`` for one type, as a function (the identity where no conversion is needed)."""
    if t is None:
        return lambda value: None
    if t.name in _IDENTITY:
        return _identity
    return lambda value: safe_avro(t, value)
