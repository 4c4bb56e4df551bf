"""Does PostgreSQL hold what Cassandra returns?  Every row of a table, value by value, after the type mapping.

:func:`compare` reads ``SELECT *`` from Cassandra as raw serialized bytes (so values outside the driver's or
Python's range are read too), decodes them with the CQL codec (:func:`cdcpipe.typemap.deserialize`), maps each
value with :func:`cdcpipe.typemap.to_pg` and compares it with the mirrored row in ``"<schema_prefix><ks>"."<t>"``:

- rows are matched on the key bytes (``_cdc_partition``, ``_cdc_clustering``); a row on one side only is a
  mismatch, and so is every column whose values differ (NaN equals NaN; numerics compare with their scale);
- ``_cdc_inexact`` must list exactly the columns ``to_pg`` says PostgreSQL cannot hold exactly, and for those
  (simple columns) the exact bytes in ``_cdc_meta`` must equal Cassandra's;
- documented divergence (ADR 0002): a partition with only static data is a row of Cassandra's ``SELECT *`` but not
  of the mirrored table; its statics are read from ``"<t>$partition"`` (the same view apply uses) and compared
  there.  Such partitions are counted in :attr:`TableReport.static_only`, never passed over silently;
- counter tables are refused by apply: they are reported as not compared (:attr:`TableReport.refused`).

A content checksum per side (sha256 of the canonical rows, sorted) lets a person see at a glance that both sides
hold the same thing.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import hashlib
import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cdcpipe.apply.merge import RowState
from cdcpipe.apply.state import decode_partition, decode_row
from cdcpipe.apply.tables import ident
from cdcpipe.apply.view import static_view
from cdcpipe.schema import Column, TableSchema
from cdcpipe.schema_source import SystemSchemaSource
from cdcpipe.typemap import deserialize, pg_type, to_pg

_GRACE = 10**9  # statics: only liveness matters here, not when tombstones may be forgotten


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


@dataclass(frozen=True, slots=True)
class TableReport:
    table: str
    cassandra_rows: int
    postgres_rows: int
    static_only: int
    cassandra_checksum: str
    postgres_checksum: str
    mismatches: tuple[Mismatch, ...]
    refused: str | None = None

    @property
    def ok(self) -> bool:
        return self.refused is None and not self.mismatches and self.cassandra_checksum == self.postgres_checksum


@dataclass(frozen=True, slots=True)
class Report:
    tables: tuple[TableReport, ...]
    seconds: float = 0.0

    @property
    def mismatches(self) -> list[Mismatch]:
        return [m for t in self.tables for m in t.mismatches]

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tables)

    def lines(self, limit: int = 50) -> list[str]:
        out = []
        for t in self.tables:
            if t.refused:
                out.append(f"{t.table}: NOT COMPARED — {t.refused}")
                continue
            out.append(f"{t.table}: cassandra {t.cassandra_rows} rows sha256 {t.cassandra_checksum}, postgres "
                       f"{t.postgres_rows} rows sha256 {t.postgres_checksum}, static-only partitions "
                       f"{t.static_only} (compared in $partition, ADR 0002), mismatches {len(t.mismatches)}"
                       f" — {'MATCH' if t.ok else 'DIFFER'}")
        out += [f"  {m}" for m in self.mismatches[:limit]]
        if len(self.mismatches) > limit:
            out.append(f"  ... and {len(self.mismatches) - limit} more")
        return out


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


def raw_session(hosts: Sequence[str], port: int = 9042) -> tuple[Any, Any]:
    """A cassandra-driver (cluster, session) whose queries return raw bytes (see :class:`RawColumns`).  The
    pure-Python protocol handler is used: the Cython row parser does not consult the policy for nulls."""
    from cassandra.cluster import Cluster
    from cassandra.policies import ColumnEncryptionPolicy
    from cassandra.protocol import _ProtocolHandler

    policy = type("RawColumnsPolicy", (RawColumns, ColumnEncryptionPolicy), {})()
    cluster = Cluster(list(hosts), port=port, protocol_version=5, column_encryption_policy=policy,
                      connect_timeout=20)
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
class _Side:
    rows: dict[tuple[bytes, bytes | None], dict[str, str]] = field(default_factory=dict)
    keys: dict[tuple[bytes, bytes | None], tuple[Any, ...]] = field(default_factory=dict)
    inexact: dict[tuple[bytes, bytes | None], set[str]] = field(default_factory=dict)
    raw: dict[tuple[bytes, bytes | None], dict[str, bytes]] = field(default_factory=dict)
    meta: dict[tuple[bytes, bytes | None], RowState] = field(default_factory=dict)

    def checksum(self) -> str:
        h = hashlib.sha256()
        for key in sorted(self.rows, key=lambda k: (k[0], k[1] or b"")):
            values = self.rows[key]
            h.update(json.dumps([key[0].hex(), None if key[1] is None else key[1].hex(),
                                 sorted(values.items())]).encode())
        return h.hexdigest()[:16]


def _columns(table: TableSchema) -> tuple[Column, ...]:
    return (*table.partition_key, *table.clustering, *table.static, *table.regular)


def read_cassandra(session: Any, table: TableSchema, consistency: int | None = None) -> _Side:
    """Every row of ``SELECT *`` as canonical mapped values (``session`` from :func:`raw_session`)."""
    from cassandra.query import SimpleStatement

    side = _Side()
    stmt = SimpleStatement(f"SELECT * FROM {ident(table.keyspace)}.{ident(table.table)}", fetch_size=2000)
    if consistency is not None:
        stmt.consistency_level = consistency
    result = session.execute(stmt)
    names = list(result.column_names)
    types = {c.name: c for c in _columns(table)}
    for row in result:
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


async def read_postgres(conn: Any, table: TableSchema, schema_prefix: str = "", now: int | None = None) -> _Side:
    """Every mirrored row, plus partitions whose only live data is static (from ``<t>$partition``)."""
    side = _Side()
    schema = ident(schema_prefix + table.keyspace)
    target = f"{schema}.{ident(table.table)}"
    exists = await conn.fetchval("SELECT to_regclass($1)", target)
    if exists is None:
        return side
    cols = _columns(table)
    select = ", ".join(ident(c.name) for c in cols)
    with_rows: set[bytes] = set()
    for r in await conn.fetch(f"SELECT {select}, _cdc_partition, _cdc_clustering, _cdc_inexact, "
                              f"_cdc_meta AS meta FROM {target}"):
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
                              f"{schema}.{ident(table.table + '$partition')}"):
        p = bytes(r["_cdc_partition"])
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


def diff(table: TableSchema, cass: _Side, pg: _Side) -> list[Mismatch]:
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


async def compare(cass_session: Any, pg_conn: Any, tables: Iterable[TableSchema], *, schema_prefix: str = "",
                  consistency: int | None = None) -> Report:
    """Compare each of ``tables`` (``cass_session`` from :func:`raw_session`, ``pg_conn`` an asyncpg
    connection)."""
    started = time.monotonic()
    reports = []
    for table in tables:
        counters = [c.name for c in _columns(table) if c.type.name == "counter"]
        if counters:
            reports.append(TableReport(table.name, 0, 0, 0, "", "", (), refused=(
                f"counter columns {counters}: apply refuses counter tables (ADR 0002)")))
            continue
        cass = await asyncio.to_thread(read_cassandra, cass_session, table, consistency)
        pg = await read_postgres(pg_conn, table, schema_prefix)
        static_only = sum(1 for k in cass.rows if k[1] is None)
        reports.append(TableReport(table.name, len(cass.rows), len(pg.rows), static_only, cass.checksum(),
                                   pg.checksum(), tuple(diff(table, cass, pg))))
    return Report(tuple(reports), time.monotonic() - started)


def load_tables(session: Any, keyspace: str, names: Iterable[str] | None = None) -> list[TableSchema]:
    """Schemas of ``keyspace``'s tables (all, or ``names``) from ``system_schema``."""
    wanted = set(names) if names is not None else None
    return sorted((t for t in SystemSchemaSource(session).load()
                   if t.keyspace == keyspace and (wanted is None or t.table in wanted)), key=lambda t: t.table)


async def drop_mirror(dsn: str, schema: str) -> None:
    """Drop the PostgreSQL schema mirroring a keyspace (the tables apply made for it), if it exists."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {ident(schema)} CASCADE")
    finally:
        await conn.close()
