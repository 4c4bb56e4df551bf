"""CQL types and values: a type tree parsed from CQL type strings, the commit-log length rule per
type, decoding of serialized values with cassandra-driver's codecs, and a JSON rendering.

Value encodings follow ``docs/reference/cassandra-commitlog-format.md`` §8. Values are decoded
lazily (only when asked), the mutation decoder keeps raw bytes.
"""

from __future__ import annotations

import datetime
import decimal
import ipaddress
import math
import re
import struct
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cdcpipe.errors import SchemaError

NATIVE_TYPES = frozenset({
    "ascii", "bigint", "blob", "boolean", "counter", "date", "decimal", "double", "duration", "float",
    "inet", "int", "smallint", "text", "time", "timestamp", "timeuuid", "tinyint", "uuid", "varchar",
    "varint", "empty",
})
COLLECTIONS = frozenset({"list", "set", "map"})
# Types written without a length prefix in the commit log (AbstractType.valueLengthIfFixed).
_FIXED = {"boolean": 1, "int": 4, "bigint": 8, "float": 4, "double": 8, "timestamp": 8, "uuid": 16,
          "timeuuid": 16, "empty": 0}
# marshal class short name -> CQL name, for 'quoted' custom types that are really native ones
_MARSHAL = {
    "AsciiType": "ascii", "LongType": "bigint", "BytesType": "blob", "BooleanType": "boolean",
    "CounterColumnType": "counter", "SimpleDateType": "date", "DecimalType": "decimal", "DoubleType": "double",
    "DurationType": "duration", "FloatType": "float", "InetAddressType": "inet", "Int32Type": "int",
    "ShortType": "smallint", "UTF8Type": "text", "TimeType": "time", "TimestampType": "timestamp",
    "TimeUUIDType": "timeuuid", "ByteType": "tinyint", "UUIDType": "uuid", "IntegerType": "varint",
    "EmptyType": "empty",
}
_CUSTOM_FIXED = {"DateType": 8, "LexicalUUIDType": 16}
_STRINGISH = frozenset({"ascii", "text", "varchar", "blob"})
PROTOCOL_VERSION = 4


@dataclass(frozen=True, slots=True)
class CqlType:
    """A CQL type. ``name`` is a native type name, ``list``/``set``/``map``/``tuple``/``vector``,
    ``udt`` (with ``keyspace``, ``udt_name``, ``field_names``) or ``custom`` (``custom_class``).
    ``frozen`` is meaningful for collections and UDTs: non-frozen ones are stored as one cell per
    element (complex columns); tuples are always frozen."""

    name: str
    params: tuple[CqlType, ...] = ()
    frozen: bool = False
    keyspace: str = ""
    udt_name: str = ""
    field_names: tuple[str, ...] = ()
    size: int = 0
    custom_class: str = ""

    @property
    def multi_cell(self) -> bool:
        """True for non-frozen collections and UDTs (complex columns)."""
        return not self.frozen and self.name in ("list", "set", "map", "udt")

    @property
    def fixed_length(self) -> int | None:
        """Serialized length when written without a length prefix; None for variable-length types."""
        fixed = _FIXED.get(self.name)
        if fixed is not None:
            return fixed
        if self.name == "vector":
            elem = self.params[0].fixed_length
            return None if elem is None else elem * self.size
        if self.name == "custom":
            return _CUSTOM_FIXED.get(self.custom_class.rsplit(".", 1)[-1])
        return None

    def freeze(self) -> CqlType:
        if self.frozen or self.name not in ("list", "set", "map", "udt", "tuple"):
            return self
        return CqlType(self.name, self.params, True, self.keyspace, self.udt_name, self.field_names,
                       self.size, self.custom_class)

    def cql(self) -> str:
        """The CQL spelling of the type."""
        if self.name == "udt":
            text = _quote(self.udt_name)
        elif self.name == "custom":
            return "'" + self.custom_class.replace("'", "''") + "'"
        elif self.name == "vector":
            return f"vector<{self.params[0].cql()}, {self.size}>"
        elif self.params:
            text = f"{self.name}<{', '.join(p.cql() for p in self.params)}>"
        else:
            return self.name
        return f"frozen<{text}>" if self.frozen and self.name != "tuple" else text


def _quote(name: str) -> str:
    if re.fullmatch(r"[a-z][a-z0-9_]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


_TOKEN = re.compile(r"""\s*(?:("(?:[^"]|"")*")|('(?:[^']|'')*')|([A-Za-z0-9_]+)|([<>,.]))""")

UdtResolver = Callable[[str, str], tuple[tuple[str, ...], tuple[str, ...]] | None]
"""(keyspace, udt name) -> (field names, field type strings) or None if unknown."""


def tokenize(text: str) -> list[str]:
    """Split a CQL type string into tokens (quoted identifiers keep their quotes). Raises SchemaError."""
    tokens: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise SchemaError(f"cannot parse type {text!r} at {pos}")
        tokens.append(m.group(m.lastindex or 0))
        pos = m.end()
    return tokens


def identifier(token: str) -> str:
    """CQL identifier semantics: quoted keeps case, unquoted is lower-cased."""
    if token.startswith('"'):
        return token[1:-1].replace('""', '"')
    return token.lower()


def parse_cql_type(text: str, keyspace: str = "", udts: UdtResolver | None = None) -> CqlType:
    """Parse a CQL type string (``int``, ``frozen<map<text, list<int>>>``, ``vector<float, 3>``,
    ``my_udt``, ``ks.my_udt``, ``'org.apache...CustomType'``). UDT names are resolved with ``udts``
    in ``keyspace`` unless qualified. Raises SchemaError."""
    tokens = tokenize(text)
    parser = _TypeParser(tokens, keyspace, udts, text)
    result = parser.parse(freeze=False)
    if parser.i != len(tokens):
        raise SchemaError(f"trailing text in type {text!r}")
    return result


class _TypeParser:
    def __init__(self, tokens: list[str], keyspace: str, udts: UdtResolver | None, text: str) -> None:
        self.tokens, self.keyspace, self.udts, self.text, self.i = tokens, keyspace, udts, text, 0
        self.depth = 0

    def _next(self) -> str:
        if self.i >= len(self.tokens):
            raise SchemaError(f"unexpected end of type {self.text!r}")
        self.i += 1
        return self.tokens[self.i - 1]

    def _expect(self, tok: str) -> None:
        if self._next() != tok:
            raise SchemaError(f"expected {tok!r} in type {self.text!r}")

    def _peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def parse(self, freeze: bool) -> CqlType:
        self.depth += 1
        if self.depth > 64:
            raise SchemaError(f"type nested too deeply: {self.text!r}")
        tok = self._next()
        if tok.startswith("'"):
            self.depth -= 1
            return _custom(tok[1:-1].replace("''", "'"))
        name = identifier(tok)
        if not tok.startswith('"') and self._peek() == "<":
            self._expect("<")
            if name == "frozen":
                inner = self.parse(freeze=True)
                self._expect(">")
                self.depth -= 1
                return inner.freeze()
            params = [self.parse(freeze=True)]
            while self._peek() == ",":
                self._next()
                if name == "vector":
                    size_tok = self._next()
                    if not size_tok.isdigit() or int(size_tok) <= 0:
                        raise SchemaError(f"bad vector dimension in {self.text!r}")
                    self._expect(">")
                    self.depth -= 1
                    return CqlType("vector", (params[0],), True, size=int(size_tok))
                params.append(self.parse(freeze=True))
            self._expect(">")
            arity = {"list": 1, "set": 1, "map": 2}.get(name)
            if name != "tuple" and (arity is None or arity != len(params)):
                raise SchemaError(f"bad type {name}<...> in {self.text!r}")
            self.depth -= 1
            return CqlType(name, tuple(params), frozen=freeze or name == "tuple")
        self.depth -= 1
        if not tok.startswith('"') and name in NATIVE_TYPES:
            return CqlType(name)
        keyspace = self.keyspace
        if self._peek() == ".":
            self._next()
            keyspace, name = name, identifier(self._next())
        return self._udt(keyspace, name, freeze)

    def _udt(self, keyspace: str, name: str, freeze: bool) -> CqlType:
        found = self.udts(keyspace, name) if self.udts is not None else None
        if found is None:
            raise SchemaError(f"unknown type {keyspace}.{name} in {self.text!r}")
        field_names, field_types = found
        fields = tuple(parse_cql_type(t, keyspace, self.udts).freeze() for t in field_types)
        return CqlType("udt", fields, freeze, keyspace, name, tuple(field_names))


def _custom(class_name: str) -> CqlType:
    outer, paren, inner = class_name.partition("(")
    short = outer.rsplit(".", 1)[-1]
    if paren and short == "ReversedType" and inner.endswith(")"):
        return _custom(inner[:-1])
    native = _MARSHAL.get(short) if not paren else None
    return CqlType(native) if native is not None else CqlType("custom", custom_class=class_name)


# ---------------------------------------------------------------------------------------------- decoding

_DRIVER_CACHE: dict[CqlType, Any] = {}
_SHORT = struct.Struct(">h")
_LONG = struct.Struct(">q")


class TimestampMillis(int):
    """A ``timestamp`` value outside Python's datetime range (years 1-9999): the exact milliseconds since
    the Unix epoch. ``decode_value`` returns it (also inside collections, tuples and UDTs) instead of
    raising; timestamps in range decode to naive UTC ``datetime`` as before. (``date`` values never
    raise: the driver's ``cassandra.util.Date`` keeps ``days_from_epoch`` when there is no ``datetime.date``.)"""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"TimestampMillis({int(self)})"

    def __str__(self) -> str:
        return int.__repr__(self)


_TOTAL_TIMESTAMP_TYPES: dict[Any, Any] = {}


def _total_timestamp_type(base: Any) -> Any:
    """A subclass of the driver's TimestampType/DateType whose ``deserialize`` never overflows."""
    cls = _TOTAL_TIMESTAMP_TYPES.get(base)
    if cls is None:
        decode = base.deserialize

        def deserialize(byts: bytes, protocol_version: int) -> Any:
            try:
                return decode(byts, protocol_version)
            except (OverflowError, ValueError):
                if len(byts) != 8:
                    raise
                return TimestampMillis(_LONG.unpack(byts)[0])

        # a leading underscore keeps the driver's type metaclass from registering it under 'timestamp'
        cls = type(base)("_Total" + base.__name__, (base,),
                         {"deserialize": staticmethod(deserialize), "cassname": base.cassname})
        _TOTAL_TIMESTAMP_TYPES[base] = cls
    return cls


def driver_type(t: CqlType) -> Any:
    """The cassandra-driver ``cqltypes`` class that decodes the (frozen) serialized form of ``t``
    (timestamps through a subclass that returns ``TimestampMillis`` where the driver would overflow)."""
    cached = _DRIVER_CACHE.get(t)
    if cached is not None:
        return cached
    from cassandra import cqltypes

    if t.name == "timestamp":
        result: Any = _total_timestamp_type(cqltypes.TimestampType)
    elif t.name in cqltypes._cqltypes and t.name not in COLLECTIONS and t.name not in ("tuple", "frozen"):
        result = cqltypes._cqltypes[t.name]
    elif t.name == "empty":
        result = cqltypes.lookup_casstype("EmptyType")
    elif t.name in COLLECTIONS or t.name == "tuple":
        result = cqltypes._cqltypes[t.name].apply_parameters([driver_type(p) for p in t.params], None)
    elif t.name == "vector":
        result = cqltypes.VectorType.apply_parameters([driver_type(t.params[0]), t.size], None)
    elif t.name == "udt":
        result = cqltypes.UserType.make_udt_class(
            t.keyspace, t.udt_name, t.field_names, tuple(driver_type(p) for p in t.params))
    else:
        result = cqltypes.lookup_casstype(t.custom_class)
        if isinstance(result, type) and issubclass(result, cqltypes.DateType):  # legacy 'DateType'
            result = _total_timestamp_type(result)
    _DRIVER_CACHE[t] = result
    return result


@dataclass(frozen=True, slots=True)
class CounterValue:
    """A counter cell's context: ``total`` is the sum of its shards (a commit log cell holds the
    leader's shard with that node's new total, §8 'Counters')."""

    total: int
    shards: tuple[tuple[uuid.UUID, int, int], ...]


def decode_counter(raw: bytes) -> CounterValue:
    """Decode a counter context. Raises ValueError."""
    if len(raw) < 2:
        raise ValueError("counter context too short")
    header = 2 + abs(_SHORT.unpack_from(raw, 0)[0]) * 2
    if header > len(raw) or (len(raw) - header) % 32:
        raise ValueError("bad counter context length")
    shards = []
    for p in range(header, len(raw), 32):
        shards.append((uuid.UUID(bytes=bytes(raw[p:p + 16])), _LONG.unpack_from(raw, p + 16)[0],
                       _LONG.unpack_from(raw, p + 24)[0]))
    return CounterValue(sum(s[2] for s in shards), tuple(shards))


def decode_value(t: CqlType, raw: bytes) -> Any:
    """Decode one serialized value (frozen form). An empty value of a non-string type decodes to None.
    Total for well-formed values: a timestamp outside the datetime range decodes to ``TimestampMillis``.
    Raises ValueError (or the driver's own error) for malformed bytes."""
    if not raw and t.name not in _STRINGISH:
        return None
    if t.name == "counter":
        return decode_counter(raw)
    return driver_type(t).deserialize(bytes(raw), PROTOCOL_VERSION)


def decode_cells(t: CqlType, cells: Iterable[tuple[bytes, bytes]]) -> Any:
    """Decode a non-frozen collection/UDT from its live cells ``(path, value)`` in path order:
    list -> list, set -> list of elements, map -> list of (key, value), udt -> dict by field name."""
    if t.name == "list":
        return [decode_value(t.params[0], v) for _, v in cells]
    if t.name == "set":
        return [decode_value(t.params[0], p) for p, _ in cells]
    if t.name == "map":
        return [(decode_value(t.params[0], p), decode_value(t.params[1], v)) for p, v in cells]
    if t.name == "udt":
        out: dict[str, Any] = {}
        for p, v in cells:
            idx = udt_field_index(p)
            if idx < len(t.params):
                out[t.field_names[idx]] = decode_value(t.params[idx], v)
        return out
    raise ValueError(f"{t.cql()} is not a multi-cell type")


def udt_field_index(path: bytes) -> int:
    """Field position from a non-frozen UDT cell path (2-byte big-endian)."""
    if len(path) != 2:
        raise ValueError("bad UDT cell path")
    return int.from_bytes(path, "big")


# ---------------------------------------------------------------------------------------------- JSON

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def iso_from_micros(micros: int) -> str:
    """ISO-8601 UTC text for microseconds since the epoch (falls back to the number as text)."""
    try:
        return (_EPOCH + datetime.timedelta(microseconds=micros)).isoformat().replace("+00:00", "Z")
    except OverflowError:
        return str(micros)


def to_json(t: CqlType, value: Any) -> Any:
    """Render a decoded value as JSON-compatible data: text as strings, blobs as hex, uuids and
    inets as strings, timestamps ISO-8601, decimals/varints as strings, durations as objects,
    non-finite floats as strings, maps as lists of [key, value] pairs, UDTs as objects."""
    if value is None:
        return None
    name = t.name
    if name in ("blob", "custom") and isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if name == "varint" or name == "decimal":
        return str(value)
    if name in ("float", "double"):
        return value if math.isfinite(value) else str(value)
    if name == "timestamp":
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=datetime.UTC)
            return value.isoformat().replace("+00:00", "Z")
        return str(value)
    if name in ("date", "time", "uuid", "timeuuid", "inet"):
        return str(value)
    if name == "duration":
        return {"months": value.months, "days": value.days, "nanoseconds": value.nanoseconds}
    if name == "counter" and isinstance(value, CounterValue):
        return value.total
    if name in ("list", "set", "vector"):
        return [to_json(t.params[0], v) for v in value]
    if name == "map":
        pairs = value.items() if isinstance(value, Mapping) else value
        return [[to_json(t.params[0], k), to_json(t.params[1], v)] for k, v in pairs]
    if name == "tuple":
        return [to_json(p, v) for p, v in zip(t.params, value, strict=False)]
    if name == "udt":
        if isinstance(value, Mapping):
            items: Iterable[tuple[str, Any]] = value.items()
        else:
            items = zip(t.field_names, value, strict=False)
        types = dict(zip(t.field_names, t.params, strict=True))
        return {k: to_json(types[k], v) for k, v in items if k in types}
    return _plain_json(value)


def _plain_json(value: Any) -> Any:
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, uuid.UUID | decimal.Decimal | ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if isinstance(value, Sequence):
        return [_plain_json(v) for v in value]
    return str(value)


def render(t: CqlType, raw: bytes) -> Any:
    """Decode and render ``raw``; undecodable bytes become ``{"undecodable": hex}``."""
    try:
        return to_json(t, decode_value(t, raw))
    except Exception:  # driver codecs raise assorted types on malformed input
        return {"undecodable": bytes(raw).hex()}
