"""A seeded random CQL workload that records, write by write, what Cassandra must log in its commit log.

Used by the live reader test (``tests/integration/test_reader_live.py``).  Every statement carries its own
``USING TIMESTAMP`` (unique, deliberately out of order), so each expectation is keyed by (table, partition key
bytes, clustering bytes, column, cell path, timestamp) and can be matched exactly against what the reader
decodes.  Expected
values are the cassandra-driver's serialization of what was written (rule: the commit log holds the bytes the
coordinator serialized).
"""

from __future__ import annotations

import datetime
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from cassandra.cluster import Session

from cdcpipe.cql import CqlType, driver_type, parse_cql_type
from cdcpipe.demo.workload import random_scalar

KEYSPACE = "live_reader"
PROTO = 4

SCALAR_COLUMNS = {
    "ascii_v": "ascii", "text_v": "text", "varchar_v": "varchar", "blob_v": "blob", "bool_v": "boolean",
    "tiny_v": "tinyint", "small_v": "smallint", "int_v": "int", "big_v": "bigint", "varint_v": "varint",
    "float_v": "float", "double_v": "double", "dec_v": "decimal", "date_v": "date", "time_v": "time",
    "ts_v": "timestamp", "dur_v": "duration", "uuid_v": "uuid", "tuuid_v": "timeuuid", "inet_v": "inet",
}
COLL_COLUMNS = {
    "l": "list<text>", "st": "set<int>", "m": "map<text, bigint>", "fl": "frozen<list<int>>",
    "fs": "frozen<set<text>>", "fm": "frozen<map<int, text>>", "tup": "tuple<int, text, double>",
    "fu": "frozen<addr>", "vec": "vector<float, 3>",
}
UDT_FIELDS = (("street", "text"), ("zip", "int"))

SCHEMA = [
    f"CREATE KEYSPACE IF NOT EXISTS {KEYSPACE} WITH replication = "
    "{'class': 'SimpleStrategy', 'replication_factor': 1}",
    f"CREATE TYPE IF NOT EXISTS {KEYSPACE}.addr (street text, zip int)",
    f"CREATE TABLE IF NOT EXISTS {KEYSPACE}.scalars (k int, c int, "
    + ", ".join(f"{n} {t}" for n, t in SCALAR_COLUMNS.items())
    + ", s text STATIC, PRIMARY KEY (k, c)) WITH cdc = true",
    f"CREATE TABLE IF NOT EXISTS {KEYSPACE}.colls (k text, c1 int, c2 text, "
    + ", ".join(f"{n} {t}" for n, t in COLL_COLUMNS.items())
    + ", u addr, PRIMARY KEY (k, c1, c2)) WITH CLUSTERING ORDER BY (c1 ASC, c2 DESC) AND cdc = true",
    f"CREATE TABLE IF NOT EXISTS {KEYSPACE}.composite (a int, b text, v text, PRIMARY KEY ((a, b))) "
    "WITH cdc = true",
    f"CREATE TABLE IF NOT EXISTS {KEYSPACE}.counters (k int PRIMARY KEY, n counter) WITH cdc = true",
]

Key = tuple[Any, ...]


def ser(cql: str, value: Any) -> bytes:
    """The driver's serialization of ``value`` as the CQL type ``cql`` (frozen form)."""
    t = parse_cql_type(cql, KEYSPACE, _udts)
    return bytes(driver_type(t.freeze()).serialize(value, PROTO))


def _udts(keyspace: str, name: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    if name == "addr":
        return tuple(f for f, _ in UDT_FIELDS), tuple(t for _, t in UDT_FIELDS)
    return None


def composite_key(parts: list[bytes]) -> bytes:
    return b"".join(len(p).to_bytes(2, "big") + p + b"\x00" for p in parts)


@dataclass
class Expected:
    """What the commit log must contain for our keyspace, keyed for exact matching."""

    cells: dict[tuple[Any, ...], tuple[Any, ...]] = field(default_factory=dict)
    list_cells: dict[tuple[Any, ...], list[bytes]] = field(default_factory=lambda: defaultdict(list))
    liveness: dict[tuple[Any, ...], int] = field(default_factory=dict)
    row_deletions: set[tuple[Any, ...]] = field(default_factory=set)
    partition_deletions: set[tuple[Any, ...]] = field(default_factory=set)
    complex_deletions: set[tuple[Any, ...]] = field(default_factory=set)
    ranges: dict[tuple[Any, ...], tuple[Any, ...]] = field(default_factory=dict)
    counter_totals: dict[bytes, int] = field(default_factory=lambda: defaultdict(int))
    decoded: dict[tuple[Any, ...], Any] = field(default_factory=dict)  # cell key -> value written
    statements: int = 0


class Workload:
    """Seeded random writes over the schema above; ``expected`` records each one."""

    def __init__(self, session: Session, seed: int) -> None:
        self.s = session
        self.rng = random.Random(seed)
        self.expected = Expected()
        self._prepared: dict[str, Any] = {}
        self._ts = 1_700_000_000_000_000 + seed * 10_000_000
        self.now = int(datetime.datetime.now(datetime.UTC).timestamp())

    # ------------------------------------------------------------------ plumbing

    def ts(self) -> int:
        """A unique write timestamp; one in four goes back in time (out-of-order USING TIMESTAMP)."""
        self._ts += self.rng.randint(10, 1000)
        if self.rng.random() < 0.25:
            return self._ts - self.rng.randint(1_000_000, 5_000_000_000)
        return self._ts

    def run(self, cql: str, params: tuple[Any, ...]) -> None:
        stmt = self._prepared.get(cql)
        if stmt is None:
            stmt = self._prepared[cql] = self.s.prepare(cql)
        self.s.execute(stmt, params)
        self.expected.statements += 1

    def cell(self, table: str, pk: bytes, ck: tuple[bytes, ...], col: str, path: bytes | None, ts: int,
             cql: str | None, value: Any, ttl: int = 0) -> None:
        key = (table, pk, ck, col, path, ts)
        if value is None:
            self.expected.cells[key] = ("tombstone",)
        else:
            assert cql is not None
            self.expected.cells[key] = ("live", ser(cql, value), ttl)
            self.expected.decoded[key] = value

    # ------------------------------------------------------------------ values

    def scalar(self, cql: str) -> Any:
        if self.rng.random() < 0.08:
            return None
        return random_scalar(self.rng, cql)

    def live_scalar(self, cql: str) -> Any:
        while (value := self.scalar(cql)) is None:
            pass
        return value

    # ------------------------------------------------------------------ operations on ``scalars``

    def scalars_pk(self) -> tuple[int, bytes]:
        k = self.rng.randint(0, 15)
        return k, ser("int", k)

    def insert_scalars(self) -> None:
        k, pk = self.scalars_pk()
        c = self.rng.randint(0, 30)
        ck = (ser("int", c),)
        cols = self.rng.sample(list(SCALAR_COLUMNS), self.rng.randint(1, len(SCALAR_COLUMNS)))
        values = [self.scalar(SCALAR_COLUMNS[n]) for n in cols]
        ttl = self.rng.choice([0, 0, 0, 3600, 86400 * 30])
        if ttl:  # an expiring write of null would be a plain tombstone: keep TTL writes to live values
            values = [self.live_scalar(SCALAR_COLUMNS[n]) if v is None else v
                      for n, v in zip(cols, values, strict=True)]
        with_static = self.rng.random() < 0.3
        static_value = "static " + str(self.rng.randint(0, 99)) if with_static else None
        names = ["k", "c", *cols, *(["s"] if with_static else [])]
        t = self.ts()
        using = "USING TIMESTAMP ?" + (" AND TTL ?" if ttl else "")
        cql = (f"INSERT INTO {KEYSPACE}.scalars ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
               f"{using}")
        params = (k, c, *values, *([static_value] if with_static else []), t, *([ttl] if ttl else []))
        self.run(cql, params)
        self.expected.liveness[("scalars", pk, ck, t)] = ttl
        for n, v in zip(cols, values, strict=True):
            self.cell("scalars", pk, ck, n, None, t, SCALAR_COLUMNS[n], v, ttl)
        if with_static:
            self.cell("scalars", pk, (), "s", None, t, "text", static_value, ttl)

    def update_scalars(self) -> None:
        k, pk = self.scalars_pk()
        c = self.rng.randint(0, 30)
        ck = (ser("int", c),)
        cols = self.rng.sample(list(SCALAR_COLUMNS), self.rng.randint(1, 4))
        values = [self.scalar(SCALAR_COLUMNS[n]) for n in cols]
        t = self.ts()
        cql = (f"UPDATE {KEYSPACE}.scalars USING TIMESTAMP ? SET {', '.join(f'{n} = ?' for n in cols)} "
               "WHERE k = ? AND c = ?")
        self.run(cql, (t, *values, k, c))
        for n, v in zip(cols, values, strict=True):
            self.cell("scalars", pk, ck, n, None, t, SCALAR_COLUMNS[n], v)

    def update_static(self) -> None:
        k, pk = self.scalars_pk()
        value = self.rng.choice([None, "s" + str(self.rng.randint(0, 999))])
        t = self.ts()
        self.run(f"UPDATE {KEYSPACE}.scalars USING TIMESTAMP ? SET s = ? WHERE k = ?", (t, value, k))
        self.cell("scalars", pk, (), "s", None, t, "text", value)

    def delete_row(self) -> None:
        k, pk = self.scalars_pk()
        c = self.rng.randint(0, 30)
        t = self.ts()
        self.run(f"DELETE FROM {KEYSPACE}.scalars USING TIMESTAMP ? WHERE k = ? AND c = ?", (t, k, c))
        self.expected.row_deletions.add(("scalars", pk, (ser("int", c),), t))

    def delete_cell(self) -> None:
        k, pk = self.scalars_pk()
        c = self.rng.randint(0, 30)
        col = self.rng.choice(list(SCALAR_COLUMNS))
        t = self.ts()
        self.run(f"DELETE {col} FROM {KEYSPACE}.scalars USING TIMESTAMP ? WHERE k = ? AND c = ?", (t, k, c))
        self.cell("scalars", pk, (ser("int", c),), col, None, t, None, None)

    def delete_partition(self) -> None:
        k, pk = self.scalars_pk()
        t = self.ts()
        self.run(f"DELETE FROM {KEYSPACE}.scalars USING TIMESTAMP ? WHERE k = ?", (t, k))
        self.expected.partition_deletions.add(("scalars", pk, t))

    def delete_range(self) -> None:
        k, pk = self.scalars_pk()
        lo, hi = sorted(self.rng.sample(range(0, 31), 2))
        lo_op, hi_op = self.rng.choice([">", ">="]), self.rng.choice(["<", "<="])
        t = self.ts()
        self.run(f"DELETE FROM {KEYSPACE}.scalars USING TIMESTAMP ? WHERE k = ? AND c {lo_op} ? AND c {hi_op} ?",
                 (t, k, lo, hi))
        start = ("EXCL_START_BOUND" if lo_op == ">" else "INCL_START_BOUND", (ser("int", lo),))
        end = ("EXCL_END_BOUND" if hi_op == "<" else "INCL_END_BOUND", (ser("int", hi),))
        self.expected.ranges[("scalars", pk, t)] = (start, end)

    # ------------------------------------------------------------------ operations on ``colls``

    def colls_key(self) -> tuple[tuple[Any, ...], bytes, tuple[bytes, ...]]:
        k = self.rng.choice(["alpha", "beta", "gamma"])
        c1, c2 = self.rng.randint(0, 5), self.rng.choice(["x", "y", "zz"])
        return (k, c1, c2), ser("text", k), (ser("int", c1), ser("text", c2))

    def frozen_value(self, col: str) -> Any:
        r = self.rng
        return {
            "fl": [r.randint(-9, 9) for _ in range(r.randint(0, 4))],
            "fs": sorted({r.choice("abcdef") for _ in range(r.randint(0, 4))}),
            "fm": dict(sorted({r.randint(-9, 9): r.choice(["p", "q", ""]) for _ in range(r.randint(0, 3))}.items())),
            "tup": (r.randint(-5, 5), r.choice(["t", "uv"]), r.randint(-8, 8) / 4),
            "fu": {"street": r.choice(["Main", "Elm"]), "zip": r.randint(1000, 9999)},
            "vec": [r.randint(-64, 64) / 8 for _ in range(3)],
        }[col]

    def insert_colls(self) -> None:
        (k, c1, c2), pk, ck = self.colls_key()
        r = self.rng
        lst = [r.choice(["a", "b", "c"]) for _ in range(r.randint(1, 3))]
        st = sorted({r.randint(-50, 50) for _ in range(r.randint(1, 3))})
        mp = {r.choice(["m", "n", "o"]): r.randint(-9, 9) for _ in range(r.randint(1, 3))}
        frozen = {c: self.frozen_value(c) for c in ("fl", "fs", "fm", "tup", "fu", "vec")}
        t = self.ts()
        fu = frozen["fu"]
        self.run(f"INSERT INTO {KEYSPACE}.colls (k, c1, c2, l, st, m, fl, fs, fm, tup, fu, vec) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
                 (k, c1, c2, lst, set(st), mp, frozen["fl"], set(frozen["fs"]), frozen["fm"], frozen["tup"],
                  (fu["street"], fu["zip"]), frozen["vec"], t))
        self.expected.liveness[("colls", pk, ck, t)] = 0
        for col in ("l", "st", "m"):
            self.expected.complex_deletions.add(("colls", pk, ck, col, t - 1))
        self.expected.list_cells[("colls", pk, ck, "l", t)].extend(ser("text", v) for v in lst)
        for v in st:
            self.expected.cells[("colls", pk, ck, "st", ser("int", v), t)] = ("live", b"", 0)
        for key, v in mp.items():
            self.expected.cells[("colls", pk, ck, "m", ser("text", key), t)] = ("live", ser("bigint", v), 0)
        for col, v in frozen.items():  # frozen sets and maps are stored sorted: fs and fm are generated sorted
            value = (v["street"], v["zip"]) if col == "fu" else v
            self.cell("colls", pk, ck, col, None, t, COLL_COLUMNS[col], value)

    def element_ops(self) -> None:
        (k, c1, c2), pk, ck = self.colls_key()
        r = self.rng
        t = self.ts()
        where = "WHERE k = ? AND c1 = ? AND c2 = ?"
        match r.randrange(7):
            case 0:
                v = r.randint(-50, 50)
                self.run(f"UPDATE {KEYSPACE}.colls USING TIMESTAMP ? SET st = st + ? {where}", (t, {v}, k, c1, c2))
                self.expected.cells[("colls", pk, ck, "st", ser("int", v), t)] = ("live", b"", 0)
            case 1:
                v = r.randint(-50, 50)
                self.run(f"UPDATE {KEYSPACE}.colls USING TIMESTAMP ? SET st = st - ? {where}", (t, {v}, k, c1, c2))
                self.expected.cells[("colls", pk, ck, "st", ser("int", v), t)] = ("tombstone",)
            case 2:
                key, v = r.choice(["m", "n", "q"]), r.randint(-99, 99)
                self.run(f"UPDATE {KEYSPACE}.colls USING TIMESTAMP ? SET m[?] = ? {where}", (t, key, v, k, c1, c2))
                self.expected.cells[("colls", pk, ck, "m", ser("text", key), t)] = ("live", ser("bigint", v), 0)
            case 3:
                key = r.choice(["m", "n", "q"])
                self.run(f"DELETE m[?] FROM {KEYSPACE}.colls USING TIMESTAMP ? {where}", (key, t, k, c1, c2))
                self.expected.cells[("colls", pk, ck, "m", ser("text", key), t)] = ("tombstone",)
            case 4:
                vals = [r.choice(["d", "e"]) for _ in range(r.randint(1, 2))]
                self.run(f"UPDATE {KEYSPACE}.colls USING TIMESTAMP ? SET l = l + ? {where}", (t, vals, k, c1, c2))
                self.expected.list_cells[("colls", pk, ck, "l", t)].extend(ser("text", v) for v in vals)
            case 5:
                st = sorted({r.randint(0, 9) for _ in range(r.randint(1, 3))})
                self.run(f"UPDATE {KEYSPACE}.colls USING TIMESTAMP ? SET st = ? {where}", (t, set(st), k, c1, c2))
                self.expected.complex_deletions.add(("colls", pk, ck, "st", t - 1))
                for v in st:
                    self.expected.cells[("colls", pk, ck, "st", ser("int", v), t)] = ("live", b"", 0)
            case 6:
                field_name, cql = r.choice(UDT_FIELDS)
                v = r.choice(["Oak", "Pine"]) if cql == "text" else r.randint(0, 99999)
                self.run(f"UPDATE {KEYSPACE}.colls USING TIMESTAMP ? SET u.{field_name} = ? {where}",
                         (t, v, k, c1, c2))
                index = [f for f, _ in UDT_FIELDS].index(field_name)
                self.cell("colls", pk, ck, "u", index.to_bytes(2, "big"), t, cql, v)

    # ------------------------------------------------------------------ composite key, counters, batches

    def composite(self) -> None:
        a, b = self.rng.randint(0, 3), self.rng.choice(["x", "yy"])
        pk = composite_key([ser("int", a), ser("text", b)])
        v = self.rng.choice([None, "v" + str(self.rng.randint(0, 9))])
        t = self.ts()
        self.run(f"UPDATE {KEYSPACE}.composite USING TIMESTAMP ? SET v = ? WHERE a = ? AND b = ?", (t, v, a, b))
        self.cell("composite", pk, (), "v", None, t, "text", v)

    def counter(self) -> None:
        k = self.rng.randint(0, 3)
        delta = self.rng.randint(-5, 20)
        self.run(f"UPDATE {KEYSPACE}.counters SET n = n + ? WHERE k = ?", (delta, k))
        self.expected.counter_totals[ser("int", k)] += delta

    def batch(self, logged: bool) -> None:
        t = self.ts()
        k, pk = self.scalars_pk()
        c1, c2 = self.rng.sample(range(40, 60), 2)
        v1, v2 = self.live_scalar("text"), self.live_scalar("int")
        kind = "BEGIN BATCH" if logged else "BEGIN UNLOGGED BATCH"
        self.run(f"{kind} USING TIMESTAMP ? "
                 f"INSERT INTO {KEYSPACE}.scalars (k, c, text_v) VALUES (?, ?, ?); "
                 f"UPDATE {KEYSPACE}.scalars SET int_v = ? WHERE k = ? AND c = ?; APPLY BATCH",
                 (t, k, c1, v1, v2, k, c2))
        self.expected.liveness[("scalars", pk, (ser("int", c1),), t)] = 0
        self.cell("scalars", pk, (ser("int", c1),), "text_v", None, t, "text", v1)
        self.cell("scalars", pk, (ser("int", c2),), "int_v", None, t, "int", v2)

    def step(self) -> None:
        ops = [(self.insert_scalars, 6), (self.update_scalars, 5), (self.update_static, 2), (self.delete_row, 2),
               (self.delete_cell, 2), (self.delete_partition, 1), (self.delete_range, 2), (self.insert_colls, 4),
               (self.element_ops, 6), (self.composite, 2), (self.counter, 2),
               (lambda: self.batch(True), 1), (lambda: self.batch(False), 1)]
        fns, weights = zip(*ops, strict=True)
        self.rng.choices(fns, weights)[0]()


def create_schema(session: Session) -> None:
    for stmt in SCHEMA:
        session.execute(stmt)


__all__ = ["KEYSPACE", "CqlType", "Expected", "Workload", "create_schema", "ser"]
