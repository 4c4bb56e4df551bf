"""A seeded random CQL workload over the demo tables, for ``cdcpipe demo`` and the end-to-end tests.

Three tables (:func:`schema`) together use every CQL type but counter (apply refuses counter tables, ADR 0002):
``users`` (scalars, a set, a map, a list, a non-frozen UDT), ``readings`` (clustering columns in both orders,
static columns, range deletes) and ``wide`` (a composite partition key and one column of every type, including
values PostgreSQL cannot hold exactly).  Each :meth:`Workload.next` statement is one of: insert, partial update,
row / cell / partition / range / collection-element delete, ``USING TTL`` (short ones expire during the run),
``USING TIMESTAMP`` in order and out of order, logged or unlogged batch, static update.  The same seed gives the
same statements; what Cassandra keeps is whatever it decides — the comparison reads it back, it needs no model.
"""

from __future__ import annotations

import datetime
import decimal
import ipaddress
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cassandra.util import Date, Duration, Time

TABLES = ("users", "readings", "wide")
SHORT_TTL_MAX_S = 6

_WIDE_SCALARS = {
    "a_ascii": "ascii", "a_bigint": "bigint", "a_blob": "blob", "a_boolean": "boolean", "a_date": "date",
    "a_decimal": "decimal", "a_double": "double", "a_duration": "duration", "a_float": "float", "a_inet": "inet",
    "a_int": "int", "a_smallint": "smallint", "a_text": "text", "a_time": "time", "a_timestamp": "timestamp",
    "a_timeuuid": "timeuuid", "a_tinyint": "tinyint", "a_uuid": "uuid", "a_varchar": "varchar",
    "a_varint": "varint",
}
_WIDE_COMPLEX = {
    "l_list": "list<text>", "s_set": "set<int>", "m_map": "map<int, text>", "f_list": "frozen<list<double>>",
    "f_set": "frozen<set<uuid>>", "f_map": "frozen<map<text, frozen<list<int>>>>",
    "t_tuple": "tuple<int, text, boolean>", "u_udt": "frozen<address>", "v_vector": "vector<float, 3>",
    "n_nested": "map<text, frozen<set<timestamp>>>",
}


def schema(keyspace: str, replication_factor: int = 1) -> list[str]:
    """CREATE statements of the demo keyspace (idempotent)."""
    wide_cols = ", ".join(f"{n} {t}" for n, t in {**_WIDE_SCALARS, **_WIDE_COMPLEX}.items())
    return [
        f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = "
        f"{{'class': 'SimpleStrategy', 'replication_factor': {replication_factor}}}",
        f"CREATE TYPE IF NOT EXISTS {keyspace}.address (street text, city text, zip int)",
        f"CREATE TABLE IF NOT EXISTS {keyspace}.users (id int PRIMARY KEY, name text, email text, age int, "
        "score double, active boolean, joined timestamp, tags set<text>, prefs map<text, text>, visits list<int>, "
        "home address) WITH cdc = true",
        f"CREATE TABLE IF NOT EXISTS {keyspace}.readings (device text, day date, seq int, value decimal, "
        "note text, firmware text STATIC, owner int STATIC, PRIMARY KEY ((device), day, seq)) "
        "WITH CLUSTERING ORDER BY (day DESC, seq ASC) AND cdc = true",
        f"CREATE TABLE IF NOT EXISTS {keyspace}.wide (k int, kb text, c int, s_static text STATIC, {wide_cols}, "
        "PRIMARY KEY ((k, kb), c)) WITH cdc = true",
    ]


def _text(r: random.Random, n: int = 10) -> str:
    return "".join(r.choice("abcdefgh é€𝄞XYZ019-") for _ in range(r.randint(0, n)))


def random_scalar(r: random.Random, cql: str, *, edge: bool = False) -> Any:
    """A random value of the scalar CQL type ``cql``; ``edge`` picks values PostgreSQL cannot hold exactly."""
    match cql:
        case "ascii":
            return "".join(r.choice("abcXYZ019 _-") for _ in range(r.randint(0, 12)))
        case "text" | "varchar":
            return _text(r) + ("\x00" if edge else "")
        case "blob":
            return r.randbytes(r.randint(0, 24))
        case "boolean":
            return r.random() < 0.5
        case "tinyint":
            return r.randint(-128, 127)
        case "smallint":
            return r.randint(-32768, 32767)
        case "int":
            return r.randint(-2**31, 2**31 - 1)
        case "bigint":
            return r.randint(-2**63, 2**63 - 1)
        case "varint":
            return r.randint(-10**30, 10**30)
        case "float":
            return r.choice([float("nan"), float("inf"), -0.0]) if edge else r.randint(-2**20, 2**20) / 8
        case "double":
            return r.choice([float("nan"), float("-inf")]) if edge else r.uniform(-1e12, 1e12)
        case "decimal":
            return decimal.Decimal(f"{r.randint(-10**12, 10**12)}E-{r.randint(0, 8)}")
        case "date":
            return Date(r.choice([-10**9, 10**9]) if edge else r.randint(-100_000, 100_000))
        case "time":
            nanos = r.randint(0, 86_400 * 10**9 - 1)
            return Time(nanos if edge else nanos - nanos % 1000)
        case "timestamp":
            if edge:
                return r.choice([2**62, -2**62])  # milliseconds beyond Python's datetime
            ms = r.randint(-2 * 10**12, 4 * 10**12)
            return datetime.datetime(1970, 1, 1) + datetime.timedelta(milliseconds=ms)
        case "duration":
            return Duration(r.randint(0, 30), r.randint(0, 400), r.randint(0, 10**15))
        case "uuid":
            return uuid.UUID(int=r.getrandbits(128), version=4)
        case "timeuuid":
            return uuid.uuid1(node=r.getrandbits(48), clock_seq=r.getrandbits(14))
        case "inet":
            if r.random() < 0.5:
                return str(ipaddress.IPv4Address(r.getrandbits(32)))
            return str(ipaddress.IPv6Address(r.getrandbits(128)))
    raise ValueError(cql)


@dataclass(frozen=True, slots=True)
class Statement:
    """One CQL statement with its bound values; ``kind`` names the operation (for the tally)."""

    kind: str
    cql: str
    params: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Sizes:
    """Key-space sizes: small enough that operations collide on the same rows."""

    users: int = 200
    devices: int = 30
    days: int = 6
    seqs: int = 12
    wide_k: int = 12
    wide_c: int = 16


class Workload:
    """Seeded random statements over the demo tables of ``keyspace``."""

    def __init__(self, keyspace: str, seed: int, sizes: Sizes | None = None, *, short_ttl: bool = True,
                 inexact: bool = True) -> None:
        self.ks = keyspace
        self.rng = random.Random(seed)
        self.sizes = sizes or Sizes()
        self.short_ttl = short_ttl
        self.inexact = inexact
        self._last_ts = 0
        ops: list[tuple[Callable[[], Statement], int]] = [
            (self.insert_user, 6), (self.update_user, 6), (self.user_collections, 6), (self.delete_user, 2),
            (self.insert_reading, 7), (self.update_reading, 3), (self.update_static, 2), (self.delete_reading, 2),
            (self.delete_day, 1), (self.delete_range, 1), (self.delete_device, 1),
            (self.insert_wide, 5), (self.update_wide, 4), (self.wide_collections, 3), (self.delete_wide, 1),
            (self.batch_logged, 1), (self.batch_unlogged, 1),
        ]
        self._ops = [f for f, _ in ops]
        self._weights = [w for _, w in ops]

    def next(self) -> Statement:
        return self.rng.choices(self._ops, self._weights)[0]()

    # ------------------------------------------------------------------ USING clauses

    def _using(self, ttl_ok: bool = True) -> tuple[str, list[Any], str]:
        """A USING clause: no timestamp (the coordinator's), an in-order or an out-of-order client timestamp,
        and sometimes a TTL (a short one expires during the run)."""
        r = self.rng
        parts, params, tags = [], [], []
        if ttl_ok and r.random() < 0.15:
            ttl = r.randint(1, SHORT_TTL_MAX_S) if self.short_ttl and r.random() < 0.5 else r.randint(3600, 86400)
            parts.append("TTL ?")
            params.append(ttl)
            tags.append("ttl_short" if ttl <= SHORT_TTL_MAX_S else "ttl")
        x = r.random()
        if x < 0.25:
            self._last_ts = max(self._last_ts + 1, int(time.time() * 1e6))
            parts.append("TIMESTAMP ?")
            params.append(self._last_ts)
            tags.append("ts_in_order")
        elif x < 0.40:
            parts.append("TIMESTAMP ?")
            params.append(int(time.time() * 1e6) - r.randint(1, 30_000_000))
            tags.append("ts_out_of_order")
        clause = (" USING " + " AND ".join(parts)) if parts else ""
        return clause, params, "+".join(tags)

    @staticmethod
    def _kind(base: str, tags: str) -> str:
        return f"{base}[{tags}]" if tags else base

    # ------------------------------------------------------------------ values

    def text(self, n: int = 10) -> str:
        return _text(self.rng, n)

    def scalar(self, cql: str) -> Any:
        # values PostgreSQL cannot hold exactly (listed in _cdc_inexact)
        return random_scalar(self.rng, cql, edge=self.inexact and self.rng.random() < 0.03)

    def maybe_null(self, value: Any) -> Any:
        return None if self.rng.random() < 0.07 else value

    # ------------------------------------------------------------------ users

    def _uid(self) -> int:
        return self.rng.randrange(self.sizes.users)

    def _addr(self) -> tuple[Any, ...]:
        r = self.rng
        return (r.choice(["Main St", "Elm St", "Oak Ave"]), self.maybe_null(r.choice(["Paris", "Oslo"])),
                r.randint(1000, 99999))

    def insert_user(self) -> Statement:
        r = self.rng
        using, up, tags = self._using()
        cols = {"name": self.text(), "email": self.maybe_null(f"u{r.randint(0, 999)}@example.org"),
                "age": self.maybe_null(r.randint(0, 99)), "score": self.scalar("double"), "active": r.random() < 0.5,
                "joined": self.scalar("timestamp") if r.random() < 0.9 else None,
                "tags": {self.text(4) for _ in range(r.randint(0, 3))}, "prefs": {"lang": r.choice(["en", "fr"])},
                "visits": [r.randint(0, 9) for _ in range(r.randint(0, 3))], "home": self._addr()}
        if using and "ttl" in tags:  # an expiring null is just a tombstone: keep TTL inserts to live values
            cols = {k: v for k, v in cols.items() if v is not None}
        chosen = r.sample(list(cols), r.randint(1, len(cols)))
        names = ["id", *chosen]
        return Statement(self._kind("insert", tags),
                         f"INSERT INTO {self.ks}.users ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
                         f"{using}", (self._uid(), *(cols[c] for c in chosen), *up))

    def update_user(self) -> Statement:
        r = self.rng
        using, up, tags = self._using()
        setters = {"name": self.text(), "email": self.maybe_null("e@x.org"), "age": self.maybe_null(r.randint(0, 99)),
                   "score": self.scalar("double"), "active": r.random() < 0.5,
                   "home": self.maybe_null(self._addr())}
        chosen = r.sample(list(setters), r.randint(1, 3))
        return Statement(self._kind("update", tags),
                         f"UPDATE {self.ks}.users{using} SET {', '.join(f'{c} = ?' for c in chosen)} WHERE id = ?",
                         (*up, *(setters[c] for c in chosen), self._uid()))

    def user_collections(self) -> Statement:
        r = self.rng
        using, up, tags = self._using()
        where = "WHERE id = ?"
        uid = self._uid()
        match r.randrange(8):
            case 0:
                return Statement(self._kind("set_add", tags), f"UPDATE {self.ks}.users{using} SET tags = tags + ? "
                                 f"{where}", (*up, {self.text(4)}, uid))
            case 1:
                return Statement(self._kind("set_remove", tags), f"UPDATE {self.ks}.users{using} SET tags = tags - ? "
                                 f"{where}", (*up, {self.text(4)}, uid))
            case 2:
                return Statement(self._kind("map_put", tags), f"UPDATE {self.ks}.users{using} SET prefs[?] = ? "
                                 f"{where}", (*up, r.choice(["lang", "tz", "theme"]), self.text(5), uid))
            case 3:
                using, up, tags = self._using(ttl_ok=False)
                return Statement(self._kind("map_delete", tags), f"DELETE prefs[?] FROM {self.ks}.users{using} "
                                 f"{where}", (r.choice(["lang", "tz", "theme"]), *up, uid))
            case 4:
                return Statement(self._kind("list_append", tags), f"UPDATE {self.ks}.users{using} SET visits = "
                                 f"visits + ? {where}", (*up, [r.randint(0, 9)], uid))
            case 5:
                return Statement(self._kind("list_prepend", tags), f"UPDATE {self.ks}.users{using} SET visits = "
                                 f"? + visits {where}", (*up, [r.randint(0, 9)], uid))
            case 6:
                return Statement(self._kind("udt_field", tags), f"UPDATE {self.ks}.users{using} SET home.city = ? "
                                 f"{where}", (*up, self.maybe_null(r.choice(["Rome", "Kyiv"])), uid))
            case _:
                return Statement(self._kind("collection_overwrite", tags), f"UPDATE {self.ks}.users{using} SET "
                                 f"tags = ?, prefs = ? {where}",
                                 (*up, {self.text(3)}, {"k" + str(r.randint(0, 3)): "v"}, uid))

    def delete_user(self) -> Statement:
        using, up, tags = self._using(ttl_ok=False)
        if self.rng.random() < 0.5:
            return Statement(self._kind("row_delete", tags), f"DELETE FROM {self.ks}.users{using} WHERE id = ?",
                             (*up, self._uid()))
        return Statement(self._kind("cell_delete", tags),
                         f"DELETE email, tags FROM {self.ks}.users{using} WHERE id = ?", (*up, self._uid()))

    # ------------------------------------------------------------------ readings (clustering, statics, ranges)

    def _device(self) -> str:
        return f"dev-{self.rng.randrange(self.sizes.devices)}"

    def _day(self) -> Date:
        return Date(19_000 + self.rng.randrange(self.sizes.days))

    def insert_reading(self) -> Statement:
        r = self.rng
        using, up, tags = self._using()
        static = r.random() < 0.2
        names = ["device", "day", "seq", "value", "note", *(["firmware"] if static else [])]
        values = [self._device(), self._day(), r.randrange(self.sizes.seqs), self.scalar("decimal"),
                  self.text() if "ttl" in tags else self.maybe_null(self.text()),
                  *([f"fw-{r.randint(1, 9)}"] if static else [])]
        return Statement(self._kind("insert_static" if static else "insert", tags),
                         f"INSERT INTO {self.ks}.readings ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
                         f"{using}", (*values, *up))

    def update_reading(self) -> Statement:
        using, up, tags = self._using()
        return Statement(self._kind("update", tags), f"UPDATE {self.ks}.readings{using} SET note = ? WHERE device = ? "
                         "AND day = ? AND seq = ?",
                         (*up, self.text(), self._device(), self._day(), self.rng.randrange(self.sizes.seqs)))

    def update_static(self) -> Statement:
        r = self.rng
        using, up, tags = self._using()
        value = f"fw-{r.randint(1, 9)}" if "ttl" in tags else self.maybe_null(f"fw-{r.randint(1, 9)}")
        # a few devices only ever get static data: partitions Cassandra returns as one static-only row
        device = self._device() if r.random() < 0.8 else f"dev-static-{r.randrange(4)}"
        return Statement(self._kind("static_update", tags), f"UPDATE {self.ks}.readings{using} SET firmware = ?, "
                         "owner = ? WHERE device = ?", (*up, value, r.randint(0, 50), device))

    def delete_reading(self) -> Statement:
        using, up, tags = self._using(ttl_ok=False)
        key = (self._device(), self._day(), self.rng.randrange(self.sizes.seqs))
        if self.rng.random() < 0.5:
            return Statement(self._kind("row_delete", tags), f"DELETE FROM {self.ks}.readings{using} WHERE "
                             "device = ? AND day = ? AND seq = ?", (*up, *key))
        return Statement(self._kind("cell_delete", tags), f"DELETE note FROM {self.ks}.readings{using} WHERE "
                         "device = ? AND day = ? AND seq = ?", (*up, *key))

    def delete_day(self) -> Statement:
        using, up, tags = self._using(ttl_ok=False)
        return Statement(self._kind("range_delete", tags), f"DELETE FROM {self.ks}.readings{using} WHERE device = ? "
                         "AND day = ?", (*up, self._device(), self._day()))

    def delete_range(self) -> Statement:
        r = self.rng
        using, up, tags = self._using(ttl_ok=False)
        lo, hi = sorted(r.sample(range(self.sizes.seqs + 1), 2))
        lo_op, hi_op = r.choice([">", ">="]), r.choice(["<", "<="])
        return Statement(self._kind("range_delete", tags), f"DELETE FROM {self.ks}.readings{using} WHERE device = ? "
                         f"AND day = ? AND seq {lo_op} ? AND seq {hi_op} ?", (*up, self._device(), self._day(), lo, hi))

    def delete_device(self) -> Statement:
        using, up, tags = self._using(ttl_ok=False)
        return Statement(self._kind("partition_delete", tags),
                         f"DELETE FROM {self.ks}.readings{using} WHERE device = ?", (*up, self._device()))

    # ------------------------------------------------------------------ wide (every type)

    def _wide_key(self) -> tuple[int, str]:
        return self.rng.randrange(self.sizes.wide_k), self.rng.choice(["a", "b"])

    def complex_value(self, name: str) -> Any:
        r = self.rng
        n = r.randint(0, 3)
        match name:
            case "l_list":
                return [self.text(4) for _ in range(n)]
            case "s_set":
                return {r.randint(-50, 50) for _ in range(n)}
            case "m_map":
                return {r.randint(0, 9): self.text(3) for _ in range(n)}
            case "f_list":
                return [r.uniform(-1, 1) for _ in range(n)]
            case "f_set":
                return {uuid.UUID(int=r.getrandbits(128), version=4) for _ in range(n)}
            case "f_map":
                return {self.text(2): [r.randint(0, 5) for _ in range(r.randint(0, 2))] for _ in range(n)}
            case "t_tuple":
                return (r.randint(-9, 9), self.maybe_null(self.text(3)), r.random() < 0.5)
            case "u_udt":
                return self._addr()
            case "v_vector":
                return [r.randint(-64, 64) / 8 for _ in range(3)]
            case "n_nested":
                return {self.text(2): {self.scalar("timestamp") for _ in range(r.randint(1, 2))} for _ in range(n)}
        raise ValueError(name)

    def _wide_value(self, name: str) -> Any:
        return self.scalar(_WIDE_SCALARS[name]) if name in _WIDE_SCALARS else self.complex_value(name)

    def insert_wide(self) -> Statement:
        r = self.rng
        using, up, tags = self._using()
        everything = [*_WIDE_SCALARS, *_WIDE_COMPLEX]
        chosen = r.sample(everything, r.randint(1, len(everything)))
        static = r.random() < 0.2
        names = ["k", "kb", "c", *chosen, *(["s_static"] if static else [])]
        values = [*self._wide_key(), r.randrange(self.sizes.wide_c), *(self._wide_value(c) for c in chosen),
                  *([self.text(5)] if static else [])]
        return Statement(self._kind("insert", tags),
                         f"INSERT INTO {self.ks}.wide ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
                         f"{using}", (*values, *up))

    def update_wide(self) -> Statement:
        r = self.rng
        using, up, tags = self._using()
        chosen = r.sample(list(_WIDE_SCALARS), r.randint(1, 4))
        values = [self._wide_value(c) if "ttl" in tags else self.maybe_null(self._wide_value(c)) for c in chosen]
        return Statement(self._kind("update", tags), f"UPDATE {self.ks}.wide{using} SET "
                         f"{', '.join(f'{c} = ?' for c in chosen)} WHERE k = ? AND kb = ? AND c = ?",
                         (*up, *values, *self._wide_key(), r.randrange(self.sizes.wide_c)))

    def wide_collections(self) -> Statement:
        r = self.rng
        using, up, tags = self._using()
        key = (*self._wide_key(), r.randrange(self.sizes.wide_c))
        where = "WHERE k = ? AND kb = ? AND c = ?"
        match r.randrange(5):
            case 0:
                return Statement(self._kind("set_add", tags), f"UPDATE {self.ks}.wide{using} SET s_set = s_set + ? "
                                 f"{where}", (*up, {r.randint(-50, 50)}, *key))
            case 1:
                return Statement(self._kind("set_remove", tags), f"UPDATE {self.ks}.wide{using} SET s_set = s_set - ? "
                                 f"{where}", (*up, {r.randint(-50, 50)}, *key))
            case 2:
                return Statement(self._kind("map_put", tags), f"UPDATE {self.ks}.wide{using} SET m_map[?] = ? "
                                 f"{where}", (*up, r.randint(0, 9), self.text(3), *key))
            case 3:
                using, up, tags = self._using(ttl_ok=False)
                return Statement(self._kind("map_delete", tags), f"DELETE m_map[?] FROM {self.ks}.wide{using} "
                                 f"{where}", (r.randint(0, 9), *up, *key))
            case _:
                return Statement(self._kind("nested_put", tags), f"UPDATE {self.ks}.wide{using} SET n_nested[?] = ? "
                                 f"{where}", (*up, self.text(2), {self.scalar("timestamp")}, *key))

    def delete_wide(self) -> Statement:
        r = self.rng
        using, up, tags = self._using(ttl_ok=False)
        k, kb = self._wide_key()
        match r.randrange(4):
            case 0:
                return Statement(self._kind("partition_delete", tags), f"DELETE FROM {self.ks}.wide{using} WHERE "
                                 "k = ? AND kb = ?", (*up, k, kb))
            case 1:
                return Statement(self._kind("range_delete", tags), f"DELETE FROM {self.ks}.wide{using} WHERE "
                                 "k = ? AND kb = ? AND c >= ? AND c < ?",
                                 (*up, k, kb, *sorted(r.sample(range(self.sizes.wide_c + 1), 2))))
            case 2:
                return Statement(self._kind("cell_delete", tags), f"DELETE a_text, f_map, u_udt, s_static FROM "
                                 f"{self.ks}.wide{using} WHERE k = ? AND kb = ? AND c = ?",
                                 (*up, k, kb, r.randrange(self.sizes.wide_c)))
            case _:
                return Statement(self._kind("row_delete", tags), f"DELETE FROM {self.ks}.wide{using} WHERE k = ? "
                                 "AND kb = ? AND c = ?", (*up, k, kb, r.randrange(self.sizes.wide_c)))

    # ------------------------------------------------------------------ batches

    def batch_logged(self) -> Statement:
        """A logged batch over several partitions and tables, one timestamp for all."""
        r = self.rng
        using, up, tags = self._using(ttl_ok=False)
        uid, dev = self._uid(), self._device()
        return Statement(self._kind("batch_logged", tags),
                         f"BEGIN BATCH{using} INSERT INTO {self.ks}.users (id, name) VALUES (?, ?); "
                         f"UPDATE {self.ks}.readings SET firmware = ? WHERE device = ?; "
                         f"UPDATE {self.ks}.users SET age = ? WHERE id = ?; APPLY BATCH",
                         (*up, uid, self.text(), f"fw-{r.randint(1, 9)}", dev, r.randint(0, 99), self._uid()))

    def batch_unlogged(self) -> Statement:
        """An unlogged batch inside one partition: rows and the static row together."""
        r = self.rng
        using, up, tags = self._using(ttl_ok=False)
        dev, day = self._device(), self._day()
        s1, s2 = r.sample(range(self.sizes.seqs), 2)
        return Statement(self._kind("batch_unlogged", tags),
                         f"BEGIN UNLOGGED BATCH{using} INSERT INTO {self.ks}.readings (device, day, seq, value) "
                         f"VALUES (?, ?, ?, ?); UPDATE {self.ks}.readings SET note = ? WHERE device = ? AND day = ? "
                         f"AND seq = ?; UPDATE {self.ks}.readings SET owner = ? WHERE device = ?; APPLY BATCH",
                         (*up, dev, day, s1, self.scalar("decimal"), self.text(), dev, day, s2, r.randint(0, 9), dev))


@dataclass
class Tally:
    """What a run did: statements per kind, and the first errors (a run with errors is not a valid run)."""

    kinds: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    done: int = 0

    def base_kinds(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for k, n in self.kinds.items():
            out[k.split("[")[0]] += n
            for tag in (k.split("[")[1].rstrip("]").split("+") if "[" in k else []):
                out[tag] += n
        return out


def drive(session: Any, workload: Workload, ops: int, *, rate: float | None = None, concurrency: int = 16,
          stop: threading.Event | None = None, consistency: int | None = None,
          on_done: Callable[[Tally], None] | None = None, tally: Tally | None = None) -> Tally:
    """Run ``ops`` statements of ``workload`` through a cassandra-driver ``session`` with at most ``concurrency``
    in flight and at most ``rate`` per second (None: as fast as possible); stops early when ``stop`` is set.
    ``tally`` (a new one by default) is updated as statements complete."""
    tally = tally if tally is not None else Tally()
    prepared: dict[str, Any] = {}
    slots = threading.BoundedSemaphore(concurrency)
    lock = threading.Lock()
    started = time.monotonic()

    def finished(_: Any = None, error: BaseException | None = None) -> None:
        with lock:
            tally.done += 1
            if error is not None and len(tally.errors) < 20:
                tally.errors.append(f"{type(error).__name__}: {error}")
        slots.release()
        if on_done is not None:
            on_done(tally)

    for i in range(ops):
        if stop is not None and stop.is_set():
            break
        if rate:
            ahead = started + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        st = workload.next()
        stmt = prepared.get(st.cql)
        if stmt is None:
            try:
                stmt = prepared[st.cql] = session.prepare(st.cql)
            except Exception as exc:  # e.g. no host while a node restarts: the statement is not run
                with lock:
                    tally.done += 1
                    if len(tally.errors) < 20:
                        tally.errors.append(f"prepare: {type(exc).__name__}: {exc}")
                time.sleep(0.2)
                continue
            if consistency is not None:
                stmt.consistency_level = consistency
        slots.acquire()
        tally.kinds[st.kind] += 1
        future = session.execute_async(stmt, st.params)
        future.add_callbacks(finished, lambda exc: finished(error=exc))
    for _ in range(concurrency):  # wait for the statements in flight
        slots.acquire()
    return tally


def write_without_cdc(session: Any, keyspace: str, statements: int, seed: int, sizes: Sizes | None = None,
                      consistency: int | None = None) -> Tally:
    """``statements`` of the workload (``seed``) with CDC off on the demo tables, then CDC on again: rows no
    capture has seen, for ``cdcpipe snapshot`` to bring over."""
    for t in TABLES:
        session.execute(f"ALTER TABLE {keyspace}.{t} WITH cdc = false", timeout=60)
    tally = drive(session, Workload(keyspace, seed, sizes), statements, concurrency=32, consistency=consistency)
    for t in TABLES:
        session.execute(f"ALTER TABLE {keyspace}.{t} WITH cdc = true", timeout=60)
    return tally
