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
from cdcpipe.typemap import deserialize, pg_type, to_pg

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
    if isinstance(value, float):
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

    def update(self, other: Side) -> None:
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
    query = f"SELECT * FROM {ident(table.keyspace)}.{ident(table.table)}"
    if tokens is not None:
        names_pk = ", ".join(ident(c.name) for c in table.partition_key)
        query += f" WHERE token({names_pk}) > {int(tokens[0])} AND token({names_pk}) <= {int(tokens[1])}"
    stmt = SimpleStatement(query, fetch_size=2000)
    if consistency is not None:
        stmt.consistency_level = consistency
    result = session.execute(stmt)
    names = list(result.column_names)
    types = {c.name: c for c in all_columns(table)}
    for n, row in enumerate(result):
        if pace is not None and n % 2000 == 0:
            pace(2000)
        raw = dict(zip(names, row, strict=True))
        pk = [raw[c.name] for c in table.partition_key]
        ck = [raw[c.name] for c in table.clustering]
        static_only = bool(table.clustering) and all(v is None for v in ck)
        key = (partition_bytes(pk), None if static_only else clustering_bytes(ck))
        values, inexact, exact_raw = {}, set(), {}
        for name, col in types.items():
            data = raw.get(name)
            typed = None if data is None else deserialize(col.type, data)
            mapped, exact = to_pg(col.type, typed)
            values[name] = canon(pg_type(col.type), mapped)
            if not exact:
                inexact.add(name)
                if data is not None:
                    exact_raw[name] = bytes(data)
        side.rows[key] = values
        side.inexact[key] = inexact
        side.raw[key] = exact_raw
        side.keys[key] = tuple(None if raw[c.name] is None else deserialize(c.type, raw[c.name])
                               for c in (*table.partition_key, *table.clustering))
    return side


async def read_postgres(conn: Any, table: TableSchema, schema_prefix: str = "", now: int | None = None, *,
                        tokens: tuple[int, int] | None = None, partitions: frozenset[bytes] | None = None) -> Side:
    """Every mirrored row, plus partitions whose only live data is static (from ``<t>$partition``); only those of
    partitions with a token in ``tokens`` (``(lo, hi]``, by ``_cdc_token``) and/or in ``partitions``."""
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
        side.inexact[key] = set(r["_cdc_inexact"] or [])
        side.meta[key] = decode_row(r["meta"])
        side.keys[key] = tuple(r[c.name] for c in (*table.partition_key, *table.clustering))
    if not table.clustering:
        return side
    now = int(time.time()) if now is None else now
    for r in await conn.fetch(f"SELECT _cdc_partition, _cdc_meta AS meta FROM "
                              f"{schema}.{ident(table.table + '$partition')}"
                              + (" WHERE _cdc_partition = ANY($1::bytea[])" if partitions is not None else ""),
                              *([list(partitions)] if partitions is not None else [])):
        p = bytes(r["_cdc_partition"])
        if tokens is not None and not tokens[0] < token(p) <= tokens[1]:
            continue
        view = static_view(table, decode_partition(r["meta"]), now, _GRACE)
        if p in with_rows or not view.live:
            continue
        key_values = [deserialize(c.type, v) for c, v in zip(table.partition_key,
                                                             table.partition_key_values(p), strict=True)]
        values: dict[str, str] = {}
        inexact: set[str] = set()
        for c in cols:
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
        side.rows[(p, None)] = values
        side.inexact[(p, None)] = inexact
        side.keys[(p, None)] = (*key_values, *(None for _ in table.clustering))
    return side


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


