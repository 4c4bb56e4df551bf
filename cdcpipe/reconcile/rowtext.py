"""The text form of a mirrored row that both sides of a comparison hash: PostgreSQL computes it in SQL on the
server (:meth:`RowText.sql`: no row leaves PostgreSQL while hashing), the reconciler computes the same text in
Python from Cassandra's values mapped as apply maps them (:meth:`RowText.cassandra`).

Each column becomes ``~`` (null) or ``<length>:<text>``, and a row is its columns' pieces joined, so no two rows
share a text.  A column's text by its PostgreSQL type:

- integers as decimal digits; ``numeric`` as PostgreSQL prints it (its scale kept, no negative zero);
- ``real`` and ``double precision`` as the hex of their IEEE bytes (``float4send``/``float8send``);
- ``boolean`` as ``true``/``false``; ``text`` as itself; ``uuid`` as PostgreSQL prints it;
- ``timestamptz`` and ``time`` as microseconds (since the epoch; since midnight), ``date`` as days since the
  epoch (Python's first and last instants and days as ``-infinity``/``infinity``: apply writes them so);
- ``inet`` and ``bytea`` as the hex of their bytes (``inet_send``; the bytes);
- ``jsonb`` as PostgreSQL prints it (keys by length then bytes, ``", "`` and ``": "``, numbers as ``numeric``):
  :func:`jsonb_text` prints apply's JSON that way;
- arrays of integers, booleans, text and uuids as ``to_jsonb`` prints them; other arrays as their elements'
  pieces joined.

A value PostgreSQL cannot hold exactly (``to_pg`` says so) makes the Cassandra row *dirty*; a mirrored row with
``_cdc_inexact`` is dirty on PostgreSQL's side: a dirty row's leaf is compared row by row.
"""

from __future__ import annotations

import datetime
import decimal
import ipaddress
import json
import struct
from collections.abc import Callable, Sequence
from typing import Any

from cdcpipe.apply.tables import ident
from cdcpipe.cql import CqlType, to_json
from cdcpipe.reconcile.canonical import Columns
from cdcpipe.schema import Column
from cdcpipe.typemap import converter

NULL = "~"
DIRTY = object()
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_EPOCH_DATE = datetime.date(1970, 1, 1)
_US = datetime.timedelta(microseconds=1)
_F4, _F8 = struct.Struct(">f"), struct.Struct(">d")


def _numeric(d: Any) -> str:
    text = format(d, "f")
    return text.lstrip("-") if d.is_zero() else text


_TS_MIN = datetime.datetime.min.replace(tzinfo=datetime.UTC)
_TS_MAX = datetime.datetime.max.replace(tzinfo=datetime.UTC)


def _timestamp(v: datetime.datetime) -> str:
    v = v if v.tzinfo else v.replace(tzinfo=datetime.UTC)
    if v in (_TS_MIN, _TS_MAX):  # apply writes Python's ends as PostgreSQL's infinities, as asyncpg does
        return "-infinity" if v == _TS_MIN else "infinity"
    return str((v - _EPOCH) // _US)


def _date(v: datetime.date) -> str:
    if v in (datetime.date.min, datetime.date.max):
        return "-infinity" if v == datetime.date.min else "infinity"
    return str((v - _EPOCH_DATE).days)


def _time(v: datetime.time) -> str:
    return str(((v.hour * 60 + v.minute) * 60 + v.second) * 1_000_000 + v.microsecond)


def _inet(v: Any) -> str:
    ip = ipaddress.ip_address(v)
    head = bytes([2, 32, 0, 4]) if ip.version == 4 else bytes([3, 128, 0, 16])  # PGSQL_AF_INET(6), bits, cidr, len
    return (head + ip.packed).hex()


def _emit(v: Any) -> str:
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):  # as json.dumps prints it, then read as numeric
        return _numeric(decimal.Decimal(repr(v)))
    if isinstance(v, decimal.Decimal):
        return _numeric(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_emit(x) for x in v) + "]"
    keys = sorted(v, key=lambda k: (len(k.encode()), k.encode()))
    return "{" + ", ".join(json.dumps(k, ensure_ascii=False) + ": " + _emit(v[k]) for k in keys) + "}"


def jsonb_text(text: str) -> str:
    """JSON ``text`` as PostgreSQL prints it once stored as ``jsonb``."""
    return _emit(json.loads(text, parse_float=decimal.Decimal))


# PostgreSQL type → (text of a value as Python holds it, SQL of the text of the value ``{}``)
_SCALAR: dict[str, tuple[Callable[[Any], str], str]] = {
    "smallint": (str, "{}::text"), "integer": (str, "{}::text"), "bigint": (str, "{}::text"),
    "numeric": (_numeric, "{}::text"),
    "real": (lambda v: _F4.pack(v).hex(), "encode(float4send({}), 'hex')"),
    "double precision": (lambda v: _F8.pack(v).hex(), "encode(float8send({}), 'hex')"),
    "boolean": (lambda v: "true" if v else "false", "{}::text"),
    "text": (str, "{}"),
    "uuid": (str, "{}::text"),
    "timestamptz": (_timestamp, "CASE WHEN isfinite({}) THEN (extract(epoch from {}) * 1000000)::bigint::text "
                    "ELSE {}::text END"),  # infinity: what apply writes for a time it cannot hold (dirty)
    "date": (_date, "CASE WHEN isfinite({}) THEN ({} - date '1970-01-01')::text "
             "ELSE {}::text END"),
    "time": (_time, "(extract(epoch from {}) * 1000000)::bigint::text"),
    "inet": (_inet, "encode(inet_send({}), 'hex')"),
    "bytea": (lambda v: bytes(v).hex(), "encode({}, 'hex')"),
    "jsonb": (jsonb_text, "{}::text"),
}


_JSON_ELEMENTS = ("smallint", "integer", "bigint", "boolean", "text", "uuid")  # arrays printed by to_jsonb


def _piece_sql(expr: str) -> str:
    return f"coalesce(length({expr})::text || ':' || {expr}, '{NULL}')"


def _column(pg: str) -> tuple[Callable[[Any], str], str]:
    if pg.endswith("[]") and pg[:-2] in _JSON_ELEMENTS:
        plain = pg[:-2] != "uuid"
        return (lambda v: _emit(v if plain else [str(e) for e in v])), "to_jsonb({})::text"
    if pg.endswith("[]"):
        text, sql = _SCALAR[pg[:-2]]

        def array(v: Any) -> str:
            return "".join(NULL if e is None else f"{len(t)}:{t}" for e in v for t in (text(e),))
        return array, (f"CASE WHEN {{}} IS NULL THEN NULL ELSE coalesce((SELECT string_agg("
                       f"{_piece_sql(sql.replace('{}', 'u.e'))}, '' ORDER BY u.o) FROM unnest({{}}) WITH ORDINALITY "
                       "AS u(e, o)), '') END")
    return _SCALAR[pg]


_NAIVE_EPOCH = datetime.datetime(1970, 1, 1)
_NAIVE_ENDS = (datetime.datetime.min, datetime.datetime.max)


def _piece(text: Callable[[Any], str]) -> Callable[[Any], Any]:
    def piece(v: Any) -> str:
        t = text(v)
        return f"{len(t)}:{t}"
    return piece


_JSON_FAST = ("tinyint", "smallint", "int", "bigint", "counter", "boolean", "ascii", "text", "varchar", "uuid",
              "timeuuid")
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode  # as to_jsonb prints a flat array


_PLAIN = ("tinyint", "smallint", "int", "bigint", "counter", "boolean", "ascii", "text", "varchar")
_PLAIN_JSON = (*_PLAIN, "uuid", "timeuuid", "inet", "blob", "timestamp", "date", "time", "decimal", "varint")


def _plain_json(t: CqlType) -> bool:
    """Whether ``to_json`` gives values of ``t`` as lists, strings, integers, booleans and nulls only."""
    if t.name in ("list", "set", "map", "tuple"):
        return all(_plain_json(p) for p in t.params)
    return t.name in _PLAIN_JSON


def _fast(col: Column, pg: str) -> Callable[[Any], Any] | None:
    """A column's piece straight from cassandra-driver's value, for the commonest types (DIRTY: not exact)."""
    cql = col.type.name
    if cql in ("tinyint", "smallint", "int", "bigint", "counter"):
        return _piece(str)
    if cql in ("ascii", "text", "varchar"):
        return lambda v: DIRTY if "\x00" in v else f"{len(v)}:{v}"
    if cql == "boolean":
        return lambda v: "4:true" if v else "5:false"
    if cql == "double":
        return lambda v: "16:" + _F8.pack(v).hex()
    if cql == "float":
        return lambda v: "8:" + _F4.pack(v).hex()
    if cql in ("uuid", "timeuuid"):
        return lambda v: "36:" + str(v)
    if cql == "blob":
        return _piece(lambda v: bytes(v).hex())
    if col.type.name in ("list", "set") and col.type.params[0].name in _JSON_FAST:
        elem, is_set = col.type.params[0].name, col.type.name == "set"
        texts, uuids = elem in ("ascii", "text", "varchar"), elem in ("uuid", "timeuuid")

        def array(v: Any) -> Any:
            items = sorted(v) if is_set else list(v)
            if texts and "\x00" in "".join(items):
                return DIRTY
            t = _dumps([str(e) for e in items] if uuids else items)
            return f"{len(t)}:{t}"
        return array
    if pg == "jsonb" and cql != "duration":  # to_pg's JSON text, printed as jsonb without its round trip
        t_ = col.type
        if cql == "map" and all(p.name in _PLAIN for p in t_.params):
            def pairs(v: Any) -> Any:
                t = _dumps([[k, x] for k, x in v.items()])
                return DIRTY if "\\u0000" in t else f"{len(t)}:{t}"
            return pairs
        emit = _dumps if _plain_json(t_) else _emit  # no object, no float: json prints it as PostgreSQL does

        def document(v: Any) -> Any:
            t = emit(to_json(t_, v))
            return DIRTY if "\\u0000" in t else f"{len(t)}:{t}"
        return document
    if cql == "timestamp":
        def timestamp(v: Any) -> Any:
            if not isinstance(v, datetime.datetime):
                return DIRTY  # milliseconds beyond Python's datetime range
            naive = v.tzinfo is None and v not in _NAIVE_ENDS
            t = str((v - _NAIVE_EPOCH) // _US) if naive else _timestamp(v)
            return f"{len(t)}:{t}"
        return timestamp
    return None


def _general(convert: Callable[[Any], Any] | None, text: Callable[[Any], str]) -> Callable[[Any], Any]:
    def piece(v: Any) -> Any:
        if convert is not None:
            v, exact = convert(v)
            if not exact:
                return DIRTY
            if v is None:
                return NULL
        t = text(v)
        return f"{len(t)}:{t}"
    return piece


class RowText:
    """A table's row text (see the module): in SQL over the mirror's columns, and from Cassandra's values."""

    def __init__(self, cols: Columns, offset: int = 0) -> None:
        parts = [_column(pg) for pg in cols.pg_types]
        pieces = [_fast(c, pg) or _general(converter(c.type), text)
                  for c, pg, (text, _) in zip(cols.columns, cols.pg_types, parts, strict=True)]
        self._pieces = tuple(enumerate(pieces, offset))
        names = [ident(n) for n in cols.names]
        self.sql = " || ".join(_piece_sql(sql.replace("{}", name)) for (_, sql), name in zip(parts, names,
                                                                                                  strict=True))
        self._clustering = tuple(range(offset + cols.n_pk, offset + cols.n_pk + cols.n_ck))

    def cassandra(self, row: Sequence[Any]) -> str | None:
        """The text of a row of cassandra-driver's typed values (canonical column order, from the ``offset``
        given), or None: dirty."""
        if self._clustering and all(row[i] is None for i in self._clustering):
            return None  # a partition with only static data: PostgreSQL keeps it apart (``<t>$partition``)
        out: list[str] = []
        for i, piece in self._pieces:
            v = row[i]
            if v is None:
                out.append(NULL)
                continue
            p = piece(v)
            if p is DIRTY:
                return None
            out.append(p)
        return "".join(out)
