"""Reconcile's row text (``cdcpipe.reconcile.rowtext``) is the same computed by PostgreSQL in SQL over mirrored
values as computed in Python from Cassandra's values: for every CQL type apply maps (scalars at the edges of
their ranges, arrays, every ``jsonb`` kind), random values mapped with ``to_pg`` are stored in a real PostgreSQL
table of the mapped types and the server's text of each row equals the Python text; a value PostgreSQL cannot hold
exactly makes the Python side dirty (None)."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import random
import uuid
from typing import Any

import asyncpg

from cdcpipe.config import Settings
from cdcpipe.reconcile.canonical import Columns
from cdcpipe.reconcile.digest import row_digest
from cdcpipe.reconcile.rowtext import RowText, jsonb_text
from cdcpipe.schema_source import parse_cql_schema
from cdcpipe.typemap import deserialize, pg_type, to_pg
from tests.support.eventkit import random_value, ser

SCALARS = ["int", "bigint", "smallint", "tinyint", "text", "ascii", "blob", "boolean", "double", "float", "uuid",
           "timeuuid", "timestamp", "date", "time", "varint", "decimal", "inet", "duration", "frozen<list<int>>",
           "frozen<map<text, frozen<list<int>>>>", "tuple<int, text>", "frozen<addr>", "vector<float, 2>"]
COLLECTIONS = {
    "list<text>": lambda r: [r.choice(["a", "é", "x\ty", '"q"', "\\", "\x01", "\x00n"])
                             for _ in range(r.randint(1, 4))],
    "set<int>": lambda r: {r.randint(-5, 5) for _ in range(r.randint(1, 4))},
    "set<double>": lambda r: {r.choice([0.5, -0.0, 1e300, 2.0]) for _ in range(r.randint(1, 3))},
    "list<timestamp>": lambda r: [datetime.datetime(2020, 1, 1) + datetime.timedelta(milliseconds=r.randint(0, 10**10))
                                  for _ in range(r.randint(1, 3))],
    "list<decimal>": lambda r: [decimal.Decimal(r.randint(-999, 999)).scaleb(-r.randint(0, 4))
                                for _ in range(r.randint(1, 3))],
    "set<uuid>": lambda r: {uuid.UUID(int=r.getrandbits(128)) for _ in range(r.randint(1, 3))},
    "list<date>": lambda r: [datetime.date(1999, 1, 1) + datetime.timedelta(days=r.randint(-10**5, 10**5))],
    "list<inet>": lambda r: [r.choice(["10.0.0.1", "::1", "2001:db8::ff00:42:8329", "::ffff:1.2.3.4"])],
    "list<blob>": lambda r: [bytes(r.getrandbits(8) for _ in range(r.randint(0, 5)))],
    "map<int, text>": lambda r: {r.randint(-9, 9): r.choice(["v", "é\n", "\u2028", "a\"b"]) for _ in range(3)},
    "map<text, double>": lambda r: {r.choice(["k", "kk", "b", "ä", "aa"]): r.choice([1.5, 1e16, -0.0, 1e-7, 3.0])
                                    for _ in range(3)},
    "frozen<set<timeuuid>>": lambda r: {uuid.uuid1()},
}
TYPES = [*SCALARS, *COLLECTIONS]
(TABLE,) = parse_cql_schema(
    "CREATE TYPE ks.addr (street text, \"No\" int);\nCREATE TABLE ks.rt (k int PRIMARY KEY, "
    + ", ".join(f"c{i} {t}" for i, t in enumerate(TYPES)) + ") WITH id = 00000000-0000-0000-0000-000000000099;")


def typed_row(rng: random.Random, k: int) -> list[Any]:
    row: list[Any] = [k]
    by_name = {c.name: c for c in Columns(TABLE).columns}
    for i, t in enumerate(TYPES):
        col = by_name[f"c{i}"]
        if rng.random() < 0.1:
            row.append(None)
            continue
        raw = random_value(rng, t) if t in SCALARS else ser(t, COLLECTIONS[t](rng))
        try:
            value = deserialize(col.type, raw)
            to_pg(col.type, value)
        except Exception:  # a malformed value (random_value makes some): Cassandra would refuse it
            value = None
        row.append(value)
    return row


def test_row_text_in_sql_equals_python(settings: Settings) -> None:
    rng = random.Random(17)
    cols = Columns(TABLE)
    text = RowText(cols)
    rows = [typed_row(rng, k) for k in range(1500)]
    mapped, expected = [], {}
    for row in rows:
        values, exact = [], True
        for c, v in zip(cols.columns, row, strict=True):
            m, ok = to_pg(c.type, v)
            values.append(m)
            exact = exact and ok
        python = text.cassandra(row)
        assert (python is None) == (not exact), row
        mapped.append(values)
        if python is not None:
            expected[row[0]] = python

    async def server() -> dict[int, str]:
        conn = await asyncpg.connect(settings.require("postgres.dsn").get_secret_value())
        try:
            await conn.execute("CREATE TEMP TABLE rt (" + ", ".join(
                f'"{c.name}" {pg_type(c.type)}' for c in cols.columns) + ")")
            await conn.copy_records_to_table("rt", records=mapped, columns=list(cols.names))
            got = await conn.fetch(f"SELECT k, {text.sql} AS t, md5({text.sql}) AS m FROM rt")
            return {r["k"]: (r["t"], r["m"]) for r in got}
        finally:
            await conn.close()

    got = asyncio.run(server())
    assert len(expected) > 200  # the others hold a value PostgreSQL cannot hold exactly (random_value edges)
    assert sum(v is not None for row in rows for v in row) > 0.7 * len(rows) * len(TYPES)
    for k, python in expected.items():
        server_text, server_md5 = got[k]
        if server_text != python:
            at = next(i for i, (a, b) in enumerate(zip(server_text, python, strict=False)) if a != b)
            raise AssertionError(f"row {k}: server {server_text[at - 40:at + 60]!r} python {python[at - 40:at + 60]!r}")
        digest, _ = row_digest(python)
        assert server_md5[:16] == digest.to_bytes(8, "big", signed=True).hex()


def test_jsonb_text_is_postgres_output(settings: Settings) -> None:
    samples = ['{"b":1,"aa":2,"a":[1.50,-0.0,1e+16,1E-7]}', '["\\u00e9","\\n","\\u0001","\\u2028","a\\"b"]',
               '{"\\u00e4":1,"z":{"y":null,"x":true,"xx":false}}', "[]", "{}", '"s"', "123456789012345678901234567890"]

    async def server() -> list[str]:
        conn = await asyncpg.connect(settings.require("postgres.dsn").get_secret_value())
        try:
            return [await conn.fetchval("SELECT $1::jsonb::text", s) for s in samples]
        finally:
            await conn.close()

    assert [jsonb_text(s) for s in samples] == asyncio.run(server())
