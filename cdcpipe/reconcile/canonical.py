"""The canonical form of a mirrored row, as Cassandra returns it and as PostgreSQL holds it: the one normal form
``cdcpipe reconcile`` hashes and compares (and the demo's fidelity comparison uses).

:func:`read_cassandra` reads rows as raw serialized bytes (so values outside the driver's or Python's range are
read too: :func:`raw_session`), decodes them with the CQL codec (:func:`cdcpipe.typemap.deserialize`), maps each
value with :func:`cdcpipe.typemap.to_pg` and renders it with :func:`canon`; :func:`read_postgres` renders the
mirrored rows of ``"<schema_prefix><ks>"."<t>"`` the same way.  :func:`diff` compares the two:

- rows are matched on the key bytes (``_cdc_partition``, ``_cdc_clustering``); a row on one side only is a
  mismatch, and so is every column whose values differ (NaN equals NaN; numerics compare with their scale);
- ``_cdc_inexact`` must list exactly the columns ``to_pg`` says PostgreSQL cannot hold exactly, and for those
  (simple columns) the exact bytes in ``_cdc_meta`` must equal Cassandra's;
- documented divergence (ADR 0002): a partition with only static data is a row of Cassandra's ``SELECT *`` but not
  of the mirrored table; its statics are read from ``"<t>$partition"`` (the same view apply uses).

Both readers take a token range (``(lo, hi]``) and/or a set of partitions, so a table is compared range by range.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cdcpipe.apply.merge import RowState
from cdcpipe.apply.state import decode_partition, decode_row
from cdcpipe.apply.tables import ident
from cdcpipe.apply.view import static_view
from cdcpipe.schema import Column, TableSchema
from cdcpipe.tokens import token
from cdcpipe.typemap import converter, deserialize, deserializer, pg_type, to_pg

_GRACE = 10**9  # statics: only liveness matters here, not when tombstones may be forgotten
Key = tuple[bytes, bytes | None]  # (partition, clustering; None: a partition with only static data)


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One difference, with the row's key (typed values) and the column (``<row>`` for a missing row)."""

    table: str
    key: tuple[Any, ...]
    column: str
    cassandra: str
    postgres: str

    def __str__(self) -> str:
        return f"{self.table} key={self.key!r} {self.column}: cassandra={self.cassandra} postgres={self.postgres}"


class RawColumns:
    """A cassandra-driver column "encryption" policy that decrypts nothing and types every column as blob, so
    ``SELECT`` returns each value's serialized bytes (the driver cannot decode e.g. timestamps beyond year 9999).
    Use it on a Cluster that only reads."""

    def contains_column(self, coldesc: Any) -> bool:
        return True

    def decrypt(self, coldesc: Any, encrypted_bytes: bytes) -> bytes:
        return encrypted_bytes

    def column_type(self, coldesc: Any) -> Any:
        from cassandra.cqltypes import BytesType

        return BytesType

    def encrypt(self, coldesc: Any, obj_bytes: bytes) -> bytes:
        raise TypeError("RawColumns is for reading only")

    def encode_and_encrypt(self, coldesc: Any, obj: Any) -> bytes:
        raise TypeError("RawColumns is for reading only")

    def add_column(self, coldesc: Any, key: Any) -> None:
        raise TypeError("RawColumns is for reading only")


def raw_session(hosts: Sequence[str], port: int = 9042, **options: Any) -> tuple[Any, Any]:
    """A cassandra-driver (cluster, session) whose queries return raw bytes (see :class:`RawColumns`).  The
    pure-Python protocol handler is used: the Cython row parser does not consult the policy for nulls.
    ``options``: more ``Cluster`` keyword arguments (``cdcpipe.schema_source.cluster_options``: they win)."""
    from cassandra.cluster import Cluster
    from cassandra.policies import ColumnEncryptionPolicy
    from cassandra.protocol import _ProtocolHandler

    policy = type("RawColumnsPolicy", (RawColumns, ColumnEncryptionPolicy), {})()
    cluster = Cluster(**{"contact_points": list(hosts), "port": port, "protocol_version": 5,
                         "connect_timeout": 20, **options, "column_encryption_policy": policy})
    session = cluster.connect()
    session.client_protocol_handler = type("RawProtocolHandler", (_ProtocolHandler,),
                                           {"column_encryption_policy": policy})
    return cluster, session


def typed_session(hosts: Sequence[str], port: int = 9042, **options: Any) -> tuple[Any, Any]:
    """A plain cassandra-driver (cluster, session) returning tuple rows of typed values (its own, compiled row
    parsing: what reconcile hashes with).  ``options`` as for :func:`raw_session`."""
    from cassandra.cluster import Cluster
    from cassandra.query import tuple_factory

    cluster = Cluster(**{"contact_points": list(hosts), "port": port, "protocol_version": 5,
                         "connect_timeout": 20, **options})
    for profile in (options.get("execution_profiles") or {}).values():
        profile.row_factory = tuple_factory
    session = cluster.connect()
    if not options.get("execution_profiles"):
        session.row_factory = tuple_factory
    return cluster, session


# ---------------------------------------------------------------------------------------------- canonical form


def canon(pg: str, value: Any) -> str:
    """A canonical text of a PostgreSQL value of type ``pg`` (as asyncpg returns it or :func:`to_pg` gives it)."""
    if value is None:
        return "null"
    if pg == "jsonb":
        data = json.loads(value) if isinstance(value, str) else value
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if pg.endswith("[]"):
        return "[" + ",".join(canon(pg[:-2], v) for v in value) + "]"
    kind = type(value)
    if kind is int or kind is str:
        return str(value)
    if kind is float:
        return "NaN" if math.isnan(value) else repr(value)
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        return str(value.astimezone(datetime.UTC).isoformat())
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return str(value)


def partition_bytes(values: Sequence[bytes]) -> bytes:
    """Cassandra's partition key bytes from the serialized key values (CompositeType for several)."""
    if len(values) == 1:
        return values[0]
    return b"".join(len(v).to_bytes(2, "big") + v + b"\x00" for v in values)


def clustering_bytes(values: Sequence[bytes]) -> bytes:
    """``_cdc_clustering``: each serialized value prefixed with its 4-byte length."""
    return b"".join(len(v).to_bytes(4, "big") + v for v in values)


# ---------------------------------------------------------------------------------------------- one table


@dataclass
class Side:
    rows: dict[tuple[bytes, bytes | None], dict[str, str]] = field(default_factory=dict)
    keys: dict[tuple[bytes, bytes | None], tuple[Any, ...]] = field(default_factory=dict)
    inexact: dict[tuple[bytes, bytes | None], set[str]] = field(default_factory=dict)
    raw: dict[tuple[bytes, bytes | None], dict[str, bytes]] = field(default_factory=dict)
    meta: dict[tuple[bytes, bytes | None], RowState] = field(default_factory=dict)
    size: int = 0  # the characters of the canonical values read (what a comparison transferred)

    def update(self, other: Side) -> None:
        self.size += other.size
        self.rows.update(other.rows)
        self.keys.update(other.keys)
        self.inexact.update(other.inexact)
        self.raw.update(other.raw)
        self.meta.update(other.meta)

    def checksum(self) -> str:
        h = hashlib.sha256()
        for key in sorted(self.rows, key=lambda k: (k[0], k[1] or b"")):
            values = self.rows[key]
            h.update(json.dumps([key[0].hex(), None if key[1] is None else key[1].hex(),
                                 sorted(values.items())]).encode())
        return h.hexdigest()[:16]


def all_columns(table: TableSchema) -> tuple[Column, ...]:
    return (*table.partition_key, *table.clustering, *table.static, *table.regular)


class Columns:
    """A table's columns in the canonical order with their conversions, the type dispatch done once: Cassandra's
    serialized bytes → typed value (:func:`cdcpipe.typemap.deserializer`) → the value PostgreSQL holds
    (:func:`cdcpipe.typemap.converter`) → its canonical text (:func:`canon`)."""

    def __init__(self, table: TableSchema) -> None:
        self.table = table
        self.columns = all_columns(table)
        self.names = tuple(c.name for c in self.columns)
        self.pg_types = tuple(pg_type(c.type) for c in self.columns)
        self._decode = tuple(deserializer(c.type) for c in self.columns)
        self._convert = tuple(converter(c.type) for c in self.columns)
        self.n_pk, self.n_ck = len(table.partition_key), len(table.clustering)

    def select(self, tokens: tuple[int, int] | None = None) -> str:
        """``SELECT token(pk), <columns in canonical order> FROM ks.t`` (of partitions in ``tokens``)."""
        pk = ", ".join(ident(c.name) for c in self.table.partition_key)
        query = (f"SELECT token({pk}), {', '.join(ident(n) for n in self.names)} FROM "
                 f"{ident(self.table.keyspace)}.{ident(self.table.table)}")
        if tokens is not None:
            query += f" WHERE token({pk}) > {int(tokens[0])} AND token({pk}) <= {int(tokens[1])}"
        return query

    def cassandra(self, raw: Sequence[Any]) -> tuple[Key, list[str], set[str], dict[str, bytes]]:
        """One row of :meth:`select` (without its token; serialized values in canonical column order): its key,
        canonical values, the columns PostgreSQL cannot hold exactly, and those columns' exact bytes."""
        n_pk, n_ck = self.n_pk, self.n_ck
        pk, ck = raw[:n_pk], raw[n_pk:n_pk + n_ck]
        static_only = n_ck > 0 and all(v is None for v in ck)
        key = (partition_bytes(pk), None if static_only else clustering_bytes(ck))
        values: list[str] = []
        inexact: set[str] = set()
        exact_raw: dict[str, bytes] = {}
        for i, data in enumerate(raw):
            if data is None:
                values.append("null")
                continue
            typed = self._decode[i](data)
            conv = self._convert[i]
            if conv is None:
                values.append(canon(self.pg_types[i], typed))
                continue
            mapped, exact = conv(typed) if typed is not None else (None, True)
            values.append(canon(self.pg_types[i], mapped))
            if not exact:
                inexact.add(self.names[i])
                exact_raw[self.names[i]] = bytes(data)
        return key, values, inexact, exact_raw

    def typed(self, raw: Sequence[Any]) -> list[Any]:
        """The typed values of a row of :meth:`select` (without its token), decoded here."""
        return [None if v is None else self._decode[i](v) for i, v in enumerate(raw)]

    def shown(self, raw: Sequence[Any]) -> tuple[Any, ...]:
        """The typed primary-key values of a row of :meth:`select` (without its token)."""
        return tuple(None if v is None else self._decode[i](v) for i, v in enumerate(raw[:self.n_pk + self.n_ck]))


def read_cassandra(session: Any, table: TableSchema, consistency: int | None = None, *,
                   tokens: tuple[int, int] | None = None, partitions: frozenset[bytes] | None = None,
                   pace: Any = None) -> Side:
    """Every row of ``SELECT *`` as canonical mapped values (``session`` from :func:`raw_session`); only those of
    partitions with a token in ``tokens`` (``(lo, hi]``) and/or in ``partitions``; ``pace(n)`` is called per page
    of ``n`` rows (a rate limit)."""
    if partitions is not None:  # one read per token: the partitions of a token are few
        side = Side()
        for t in sorted({token(p) for p in partitions}):
            if tokens is None or tokens[0] < t <= tokens[1]:
                part = read_cassandra(session, table, consistency, tokens=(t - 1, t), pace=pace)
                for key in [k for k in part.rows if k[0] not in partitions]:
                    for d in (part.rows, part.keys, part.inexact, part.raw):
                        d.pop(key, None)
                side.update(part)
        return side
    from cassandra.query import SimpleStatement

    side = Side()
    cols = Columns(table)
    stmt = SimpleStatement(cols.select(tokens), fetch_size=2000)
    if consistency is not None:
        stmt.consistency_level = consistency
    for n, row in enumerate(session.execute(stmt)):
        if pace is not None and n % 2000 == 0:
            pace(2000)
        key, values, inexact, exact_raw = cols.cassandra(row[1:])
        side.rows[key] = dict(zip(cols.names, values, strict=True))
        side.inexact[key] = inexact
        side.raw[key] = exact_raw
        side.keys[key] = cols.shown(row[1:])
        side.size += sum(map(len, values))
    return side


async def read_postgres(conn: Any, table: TableSchema, schema_prefix: str = "", now: int | None = None, *,
                        tokens: tuple[int, int] | None = None, partitions: frozenset[bytes] | None = None,
                        statics: frozenset[bytes] | None = None) -> Side:
    """Every mirrored row, plus partitions whose only live data is static (from ``<t>$partition``); only those of
    partitions with a token in ``tokens`` (``(lo, hi]``, by ``_cdc_token``) and/or in ``partitions``.  ``statics``:
    the only partitions whose static data to look at (known from :func:`static_only`; default: every one)."""
    side = Side()
    schema = ident(schema_prefix + table.keyspace)
    target = f"{schema}.{ident(table.table)}"
    exists = await conn.fetchval("SELECT to_regclass($1)", target)
    if exists is None:
        return side
    cols = all_columns(table)
    select = ", ".join(ident(c.name) for c in cols)
    with_rows: set[bytes] = set()
    where, args = _where(tokens, partitions)
    for r in await conn.fetch(f"SELECT {select}, _cdc_partition, _cdc_clustering, _cdc_inexact, "
                              f"_cdc_meta AS meta FROM {target}{where}", *args):
        key = (bytes(r["_cdc_partition"]), bytes(r["_cdc_clustering"]))
        with_rows.add(key[0])
        side.rows[key] = {c.name: canon(pg_type(c.type), r[c.name]) for c in cols}
        side.size += sum(map(len, side.rows[key].values()))
        side.inexact[key] = set(r["_cdc_inexact"] or [])
        side.meta[key] = decode_row(r["meta"])
        side.keys[key] = tuple(r[c.name] for c in (*table.partition_key, *table.clustering))
    if not table.clustering:
        return side
    now = int(time.time()) if now is None else now
    only = partitions if statics is None else statics if partitions is None else partitions & statics
    if only is not None and not only:
        return side
    for r in await conn.fetch(f"SELECT _cdc_partition, _cdc_meta AS meta FROM "
                              f"{schema}.{ident(table.table + '$partition')}"
                              + (" WHERE _cdc_partition = ANY($1::bytea[])" if only is not None else ""),
                              *([list(only)] if only is not None else [])):
        p = bytes(r["_cdc_partition"])
        if tokens is not None and not tokens[0] < token(p) <= tokens[1]:
            continue
        if p in with_rows:
            continue
        found = static_row(table, p, bytes(r["meta"]), now)
        if found is None:
            continue
        values, inexact, shown = found
        side.rows[(p, None)] = values
        side.inexact[(p, None)] = inexact
        side.keys[(p, None)] = shown
        side.size += sum(map(len, values.values()))
    return side


def static_row(table: TableSchema, partition: bytes, meta: bytes,
               now: int) -> tuple[dict[str, str], set[str], tuple[Any, ...]] | None:
    """The row Cassandra's ``SELECT *`` shows for a partition with only static data, from its ``<t>$partition``
    state (None: no live static data): canonical values, inexact columns, typed key values."""
    view = static_view(table, decode_partition(meta), now, _GRACE)
    if not view.live:
        return None
    key_values = [deserialize(c.type, v) for c, v in zip(table.partition_key,
                                                         table.partition_key_values(partition), strict=True)]
    values: dict[str, str] = {}
    inexact: set[str] = set()
    for c in all_columns(table):
        if c.kind == "partition_key":
            typed = key_values[c.position if c.position >= 0 else 0]
        elif c.kind == "static":
            typed = view.values.get(c.name)
        else:
            typed = None
        mapped, exact = to_pg(c.type, typed)
        values[c.name] = canon(pg_type(c.type), mapped)
        if not exact:
            inexact.add(c.name)
    return values, inexact, (*key_values, *(None for _ in table.clustering))


def _where(tokens: tuple[int, int] | None, partitions: frozenset[bytes] | None) -> tuple[str, list[Any]]:
    conds: list[str] = []
    args: list[Any] = []
    if tokens is not None:
        args += [tokens[0], tokens[1]]
        conds.append(f"_cdc_token > ${len(args) - 1} AND _cdc_token <= ${len(args)}")
    if partitions is not None:
        args.append(list(partitions))
        conds.append(f"_cdc_partition = ANY(${len(args)}::bytea[])")
    return (" WHERE " + " AND ".join(conds) if conds else ""), args


def diff(table: TableSchema, cass: Side, pg: Side) -> list[Mismatch]:
    out: list[Mismatch] = []
    for key in sorted(set(cass.rows) | set(pg.rows), key=lambda k: (k[0], k[1] or b"")):
        shown = cass.keys.get(key) or pg.keys.get(key) or ()
        a, b = cass.rows.get(key), pg.rows.get(key)
        if a is None or b is None:
            out.append(Mismatch(table.name, shown, "<row>", "present" if a else "absent",
                                "present" if b else "absent"))
            continue
        for col, va in a.items():
            vb = b.get(col, "<no column>")
            if va != vb:
                out.append(Mismatch(table.name, shown, col, va, vb))
        ia, ib = cass.inexact.get(key, set()), pg.inexact.get(key, set())
        if ia != ib:
            out.append(Mismatch(table.name, shown, "_cdc_inexact", str(sorted(ia)), str(sorted(ib))))
        meta = pg.meta.get(key)
        for col, exact in cass.raw.get(key, {}).items():
            cell = None if meta is None else meta.cells.get(col)
            if cell is not None and cell.value != exact:  # simple columns keep their exact bytes
                out.append(Mismatch(table.name, shown, f"_cdc_meta.c.{col}", exact.hex(), cell.value.hex()))
    return out


