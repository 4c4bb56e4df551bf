"""Helpers for apply tests: events in the real Avro encoding produced with a transactional producer, apply's
pipeline run in the test's event loop, ``cdcpipe apply`` as a child process (kill -9, SIGTERM, /health, /metrics), a
checkpoint audit trigger, the mirror tables' content and dumps, a seeded workload over the merge-kit tables, and
for outage tests: that workload as a live stream, readiness watched, dead letters counted, a database of one's own."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any, Self

import asyncpg
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cdcpipe import avro
from cdcpipe.apply import keys
from cdcpipe.apply.tables import ident
from cdcpipe.avro import EventSchema
from cdcpipe.config import Settings
from cdcpipe.cql import CqlType
from cdcpipe.model import Bound, Cell, ChangeEvent, ColumnChange, Liveness, Op, Source
from cdcpipe.schema import TableSchema
from cdcpipe.schema_source import parse_cql_schema
from cdcpipe.typemap import serialize, to_pg
from tests.support import mergekit as mk
from tests.support.processes import CdcpipeProcess

# ---------------------------------------------------------------------------------------------- encoding

def _types(t: CqlType) -> tuple[CqlType | None, CqlType | None]:
    """(value type, path type) of one cell of a column of type ``t``."""
    if not t.multi_cell:
        return t, None
    if t.name == "list":
        return t.params[0], CqlType("timeuuid")
    if t.name == "set":
        return None, t.params[0]
    return t.params[1], t.params[0]


def with_raw(table: TableSchema, ev: ChangeEvent) -> ChangeEvent:
    """``ev`` with every cell's ``raw``/``raw_path`` filled as capture fills them from the commit log."""
    types = {c.name: c.type for c in (*table.regular, *table.static)}
    changes = []
    for ch in ev.columns:
        vt, pt = _types(types[ch.name])
        cells = tuple(dataclasses.replace(
            c, raw=b"" if c.deleted or vt is None or c.value is None else serialize(vt, c.value),
            raw_path=serialize(pt, c.path) if pt is not None else None) for c in ch.cells)
        changes.append(ColumnChange(ch.name, cells, ch.complex_deletion, ch.static))
    return dataclasses.replace(ev, columns=tuple(changes))


def encode(table: TableSchema, schema: avro.EventSchema, ev: ChangeEvent) -> tuple[bytes, bytes]:
    """(Kafka key, value) of ``ev`` as capture produces it: keyed by the partition key bytes."""
    ev = with_raw(table, ev)
    raw_key = tuple(serialize(c.type, v) for c, v in zip(table.partition_key, ev.partition_key, strict=True))
    raw_ck = tuple(serialize(c.type, v) for c, v in zip(table.clustering, ev.clustering, strict=False))

    def raw_bound(b: Bound | None) -> tuple[bytes | None, ...]:
        if b is None:
            return ()
        return tuple(serialize(c.type, v) for c, v in zip(table.clustering, b.values, strict=False))

    bounds = (raw_bound(ev.range_start), raw_bound(ev.range_end)) if ev.range_start or ev.range_end else ()
    return keys.partition_bytes(table, ev.partition_key), avro.encode(ev, schema, raw_key, raw_ck, bounds)


def create_topics(kafka: dict[str, Any], topics: Iterable[str], partitions: int) -> None:
    admin = AdminClient(kafka)
    for f in admin.create_topics([NewTopic(t, partitions, 1) for t in topics]).values():
        f.result(30)


def publish_schemas(kafka: dict[str, Any], prefix: str, tables: Iterable[TableSchema]) -> None:
    producer = Producer(kafka)
    for t in tables:
        s = avro.table_schema(t)
        producer.produce(f"{prefix}.schemas", key=s.fingerprint, value=s.to_json())
    assert producer.flush(30) == 0


class TxProducer:
    """A transactional producer: each :meth:`send` is one committed Kafka transaction, as capture sends."""

    def __init__(self, kafka: dict[str, Any]) -> None:
        self._p = Producer({**kafka, "transactional.id": f"it-apply-{uuid.uuid4().hex[:10]}"})
        self._p.init_transactions(30)

    def send(self, records: Iterable[tuple[str, bytes, bytes]]) -> None:
        self._p.begin_transaction()
        for topic, key, value in records:
            self._p.produce(topic, key=key, value=value)
        self._p.commit_transaction(30)


def end_offsets(kafka: dict[str, Any], topics: Iterable[str]) -> dict[tuple[str, int], int]:
    """Per topic partition: 1 + the offset of the last committed record (0 when empty).  With transactions the
    high watermark is one more (the commit marker), so it is read from the records themselves."""
    c = Consumer({**kafka, "group.id": f"it-end-{uuid.uuid4().hex[:8]}", "isolation.level": "read_committed",
                  "enable.auto.commit": False, "enable.partition.eof": True})
    out: dict[tuple[str, int], int] = {}
    tps = []
    for topic in topics:
        meta = c.list_topics(topic, timeout=10).topics[topic]
        for p in meta.partitions:
            out[(topic, p)] = 0
            tps.append(TopicPartition(topic, p, -2))
    c.assign(tps)
    pending = set(out)
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        for m in c.consume(5000, timeout=0.5):
            key = (str(m.topic()), int(m.partition() or 0))
            if m.error() is not None:
                pending.discard(key)
            else:
                out[key] = int(m.offset() or 0) + 1
    c.close()
    assert not pending, f"partitions not read to the end: {pending}"
    return out


# ---------------------------------------------------------------------------------------------- in-process pipeline

(TX,) = parse_cql_schema("CREATE TABLE ks.tx (k text PRIMARY KEY, v int, n text) "
                         "WITH id = 00000000-0000-0000-0000-0000000000cc;")
_ids = iter(range(1, 10**6))


def event(table: TableSchema, key: str, ts: int, insert: bool = False, **cols: Any) -> ChangeEvent:
    """A change of the row ``key`` of a table keyed by one text column: ``cols`` written (None: deleted) at
    ``ts``, with a row marker if ``insert``."""
    types = {c.name: c.type for c in table.regular}
    changes = tuple(
        ColumnChange(n, (Cell(None, ts, deleted=True, local_deletion_time=1, raw=b"") if v is None
                         else Cell(v, ts, raw=serialize(types[n], v)),))
        for n, v in cols.items())
    src = Source("c", "dc1", "n1", table.keyspace, table.table, table.table_id, 1, 0)
    return ChangeEvent(next(_ids).to_bytes(16, "big"), Op.UPSERT, ts, src, (key,),
                       liveness=Liveness(ts) if insert else None, columns=changes)


def encode_tx(schema: avro.EventSchema, ev: ChangeEvent) -> bytes:
    """The Avro value of an :func:`event` of :data:`TX`."""
    return avro.encode(ev, schema, (serialize(TX.partition_key[0].type, ev.partition_key[0]),))


async def wait_for(predicate: Any, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.3)


def run_settings(settings: Settings, prefix: str, **batch: int) -> Settings:
    """``settings`` for one test run: its own topic prefix, schema prefix and consumer group; ``batch`` overrides
    ``apply.batch``."""
    return settings.model_copy(update={
        "kafka": settings.kafka.model_copy(update={"topic_prefix": prefix}),
        "postgres": settings.postgres.model_copy(update={"schema_prefix": prefix + "_"}),
        "apply": settings.apply.model_copy(update={
            "group_id": prefix, "batch": settings.apply.batch.model_copy(update=batch)}),
    })


async def next_offset(pool: Any, prefix: str, task: asyncio.Task[int]) -> int | None:
    """The run's checkpoint (None before apply created its table or stored one); re-raises if apply died."""
    if task.done():
        task.result()
    try:
        found = await pool.fetchval("SELECT next_offset FROM cdcpipe_checkpoints WHERE group_id = $1", prefix)
    except asyncpg.UndefinedTableError:  # a fresh database: apply has not created it yet
        return None
    return None if found is None else int(found)


async def drop_run(pool: Any, prefix: str) -> None:
    """Remove what one run wrote to PostgreSQL: its schemas and its checkpoint rows."""
    await drop_schemas(pool, prefix)
    await pool.execute("DELETE FROM cdcpipe_checkpoints WHERE group_id = $1", prefix)
    with contextlib.suppress(asyncpg.UndefinedTableError):
        await pool.execute("DELETE FROM cdcpipe_truncations WHERE starts_with(table_name, $1)", prefix + "_")


# ---------------------------------------------------------------------------------------------- process

class ApplyProcess(CdcpipeProcess):
    """``cdcpipe apply`` as a child process (logs appended to ``log``), with its own ops HTTP port."""

    def __init__(self, log: Path, **env: str) -> None:
        super().__init__("apply", {**os.environ, **env}, log, http=True)


# ---------------------------------------------------------------------------------------------- PostgreSQL

async def install_audit(pool: Any, schema: str, group: str) -> None:
    """Log every checkpoint write of ``group`` (a BEFORE INSERT trigger fires on each upsert attempt, inside the
    batch's own transaction) into ``schema.audit``: one row per committed batch transaction."""
    await pool.execute(f"CREATE SCHEMA IF NOT EXISTS {ident(schema)}")
    await pool.execute(f"CREATE TABLE {ident(schema)}.audit (id bigserial PRIMARY KEY, topic text, "
                       "partition int, next_offset bigint, txid bigint)")
    await pool.execute(
        f"CREATE FUNCTION {ident(schema)}.audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"INSERT INTO {ident(schema)}.audit (topic, partition, next_offset, txid) "
        "VALUES (NEW.topic, NEW.partition, NEW.next_offset, txid_current()); RETURN NEW; END $$")
    await pool.execute(
        f"CREATE TRIGGER {ident(schema + '_audit')} BEFORE INSERT ON cdcpipe_checkpoints FOR EACH ROW "
        f"WHEN (NEW.group_id = '{group}') EXECUTE FUNCTION {ident(schema)}.audit_fn()")


async def drop_audit(pool: Any, schema: str) -> None:
    await pool.execute(f"DROP TRIGGER IF EXISTS {ident(schema + '_audit')} ON cdcpipe_checkpoints")


async def audit_chains(pool: Any, schema: str) -> dict[tuple[str, int], list[int]]:
    """Per topic partition, the checkpoint of each committed batch transaction, in commit order."""
    rows = await pool.fetch(f"SELECT topic, partition, next_offset, txid FROM {ident(schema)}.audit ORDER BY id")
    assert len({r["txid"] for r in rows}) == len(rows), "a transaction wrote two checkpoints"
    out: dict[tuple[str, int], list[int]] = {}
    for r in rows:
        out.setdefault((r["topic"], r["partition"]), []).append(int(r["next_offset"]))
    return out


async def checkpoints(pool: Any, group: str) -> dict[tuple[str, int], int]:
    rows = await pool.fetch("SELECT topic, partition, next_offset FROM cdcpipe_checkpoints WHERE group_id = $1",
                            group)
    return {(r["topic"], r["partition"]): int(r["next_offset"]) for r in rows}


async def dump(pool: Any, schema: str, table: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of a mirrored table, its shadow table and its partition store (``_cdc_updated_at`` aside)."""
    out = {}
    for name in (table, f"{table}$shadow", f"{table}$partition"):
        cols = [r[0] for r in await pool.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2 "
            "AND column_name <> '_cdc_updated_at' ORDER BY column_name", schema, name)]
        assert cols, f"{schema}.{name} does not exist"
        sel = ", ".join(f"{ident(c)}::text" for c in cols)
        rows = await pool.fetch(f"SELECT {sel} FROM {ident(schema)}.{ident(name)}")
        out[name] = sorted((tuple(r) for r in rows), key=repr)
    return out


async def drop_schemas(pool: Any, like: str) -> None:
    for s in await pool.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", like + "%"):
        await pool.execute(f"DROP SCHEMA {ident(s[0])} CASCADE")


class Clock:
    """A settable clock for :class:`cdcpipe.apply.writer.BatchWriter`."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def content(pool: Any, prefix: str, table: str) -> list[dict[str, Any]]:
    """The rows of the merge-kit table ``table`` mirrored under the schema prefix ``prefix``, in key order."""
    t = mk.TABLES[table]
    cols = [c.name for c in (*t.partition_key, *t.clustering, *t.static, *t.regular)]
    order = ", ".join(ident(c.name) for c in (*t.partition_key, *t.clustering))
    rows = await pool.fetch(f"SELECT {', '.join(ident(c) for c in cols)} FROM {ident(prefix + t.keyspace)}."
                            f"{ident(t.table)} ORDER BY {order}")
    return [dict(r) for r in rows]


def as_pg(table: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The model's typed SELECT rows as the PostgreSQL mirror shows them (maps as JSON text)."""
    t = mk.TABLES[table]
    types = {c.name: c.type for c in (*t.partition_key, *t.clustering, *t.static, *t.regular)}
    out = []
    for r in rows:
        conv = {k: to_pg(types[k], v)[0] for k, v in r.items()}
        out.append({k: json.loads(v) if types[k].name == "map" and v is not None else v for k, v in conv.items()})
    return out


def jsonb_parsed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """asyncpg returns jsonb as text: parse it to compare with the model's values."""
    return [{k: json.loads(v) if isinstance(v, str) and v[:1] in "[{" else v for k, v in r.items()} for r in rows]


# ---------------------------------------------------------------------------------------------- workload

class Workload:
    """A seeded, endless stream of change events over the merge-kit tables (``kv``, ``t``, ``r``, ``st``, ``col``):
    inserts, updates, cell/row/partition/range deletions, collection element writes and removals, TTLs (long, and
    already expired before arrival), replica duplicates and out-of-order timestamps (many equal)."""

    TABLES = ("kv", "t", "r", "st", "col")

    def __init__(self, seed: int, now: int) -> None:
        import random

        self.rnd = random.Random(seed)
        self.now = now
        self.sent: list[ChangeEvent] = []

    def _ttl(self) -> dict[str, Any]:
        x = self.rnd.random()
        if x < 0.1:
            return {"ttl": 86_400, "now": self.now}
        if x < 0.18:
            return {"ttl": 60, "now": self.now - 100_000}  # expired before it arrives: writes nothing
        return {"now": self.now}

    def _one(self) -> ChangeEvent:
        r = self.rnd
        ts = r.randint(1, 3000)
        table = r.choice(self.TABLES)

        def word() -> str:
            return r.choice("abcdefgh")

        x = r.random()
        if table == "kv":
            k = (r.randint(1, 25),)
            if x < 0.4:
                return mk.insert("kv", k, ts, v=word(), n=r.randint(-5, 5), **self._ttl())
            if x < 0.7:
                return mk.update("kv", k, ts, **({"v": r.choice([word(), None])} if r.random() < 0.5
                                                  else {"n": r.randint(0, 9)}), **self._ttl())
            if x < 0.85:
                return mk.delete_columns("kv", k, ts, r.choice(["v", "n"]), now=self.now)
            return mk.delete_row("kv", k, ts, now=self.now)
        if table == "t":
            key = (r.randint(1, 5), r.randint(1, 6))
            if x < 0.45:
                return mk.insert("t", key, ts, v=word(), w=word(), **self._ttl())
            if x < 0.7:
                return mk.update("t", key, ts, w=r.choice([word(), None]), **self._ttl())
            if x < 0.9:
                return mk.delete_row("t", key, ts, now=self.now)
            return mk.delete_partition("t", key[:1], ts, now=self.now)
        if table == "r":
            k = (r.randint(1, 3),)
            if x < 0.6:
                return mk.insert("r", (*k, r.randint(1, 3), r.randint(1, 4)), ts, v=r.randint(0, 99), **self._ttl())
            if x < 0.85:
                a = r.randint(1, 3)
                b = r.randint(a, 3)
                lo, hi = r.randint(1, 4), r.randint(1, 4)
                if a == b:
                    lo, hi = min(lo, hi), max(lo, hi)
                start = (a, lo) if r.random() < 0.5 else (a,)
                end = (b, hi) if r.random() < 0.5 else (b,)
                return mk.delete_range("r", k, start, r.random() < 0.5 or len(start) == 1, end,
                                       r.random() < 0.5 or len(end) == 1, ts, now=self.now)
            if x < 0.95:
                return mk.delete_row("r", (*k, r.randint(1, 3), r.randint(1, 4)), ts, now=self.now)
            return mk.delete_partition("r", k, ts, now=self.now)
        if table == "st":
            sk = r.randint(1, 4)
            if x < 0.35:
                return mk.insert("st", (sk, r.randint(1, 4)), ts, v=word(), **self._ttl())
            if x < 0.55:
                return mk.insert("st", (sk, r.randint(1, 4)), ts, s=word(), v=word(), **self._ttl())
            if x < 0.75:
                return mk.update("st", (sk,), ts, s=r.choice([word(), None]), **self._ttl())
            if x < 0.9:
                return mk.delete_columns("st", (sk,), ts, "s", now=self.now)
            return mk.delete_row("st", (sk, r.randint(1, 4)), ts, now=self.now)
        k = (r.randint(1, 6),)
        if x < 0.3:
            return mk.insert("col", k, ts, s=[word(), word()], l=[word()], m={word(): r.randint(0, 9)},
                             fs=[word()], **self._ttl())
        if x < 0.55:
            col = r.choice(["s", "l", "m"])
            value: Any = {word(): r.randint(0, 9)} if col == "m" else [word()]
            return mk.update("col", k, ts, whole=r.random() < 0.5, **{col: value}, **self._ttl())
        if x < 0.75:
            col = r.choice(["s", "m"])
            path = word()
            cell = Cell(None, ts, deleted=True, local_deletion_time=self.now, path=path)
            return mk.elements("col", k, ts, col, (cell,))
        if x < 0.9:
            return mk.delete_columns("col", k, ts, r.choice(["s", "l", "m", "fs"]), now=self.now)
        return mk.delete_row("col", k, ts, now=self.now)

    def next(self) -> ChangeEvent:
        duplicate = self.sent and self.rnd.random() < 0.1  # a replica duplicate, arriving later
        ev = self.rnd.choice(self.sent[-200:]) if duplicate else self._one()
        self.sent.append(ev)
        return ev


# ---------------------------------------------------------------------------------------------- outages

@contextlib.asynccontextmanager
async def private_database(dsn: str) -> AsyncIterator[str]:
    """The DSN of a database of its own on the server of ``dsn``, dropped afterwards (its sessions ended)."""
    name = f"cdcpipe_it_{uuid.uuid4().hex[:8]}"
    base, _, rest = dsn.rpartition("/")
    query = rest.partition("?")[2]
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        try:
            yield f"{base}/{name}" + (f"?{query}" if query else "")
        finally:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


class LiveStream:
    """``work``'s events as a steady live stream from a thread: every ``period_s``, one committed transaction of
    ``per_tx`` events (:class:`TxProducer`), each to its table's topic in ``topics``.

    :meth:`hold` returns once no transaction is in flight and sends none until :meth:`release` (for a Kafka outage:
    nothing is half-sent when the broker stops), which resumes with a new producer.  A failed send ends the stream;
    :meth:`stop` raises it.  Every event sent is in ``work.sent``."""

    def __init__(self, kafka: dict[str, Any], work: Workload, topics: Mapping[str, str], per_tx: int = 20,
                 period_s: float = 0.1) -> None:
        self._kafka, self.work, self._topics = kafka, work, dict(topics)
        self._tables = {name: mk.TABLES[name] for name in self._topics}
        self._schemas = {name: avro.table_schema(t) for name, t in self._tables.items()}
        self._per_tx, self._period = per_tx, period_s
        self._lock = threading.Lock()  # held while a transaction is sent
        self._held = False
        self._producer: TxProducer | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-stream", daemon=True)
        self.error: BaseException | None = None
        self.transactions = 0

    def start(self) -> Self:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                with self._lock:
                    if not self._held:
                        self._send(self._per_tx)
                self._stopping.wait(self._period)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def _send(self, events: int) -> None:
        if self._producer is None:
            self._producer = TxProducer(self._kafka)
        batch = []
        for _ in range(events):
            ev = self.work.next()
            name = ev.source.table
            batch.append((self._topics[name], *encode(self._tables[name], self._schemas[name], ev)))
        self._producer.send(batch)
        self.transactions += 1

    def send_now(self, events: int) -> None:
        """One transaction of ``events`` events from the caller's thread, between the stream's own (held or not)."""
        with self._lock:
            self._send(events)

    def hold(self) -> None:
        with self._lock:
            self._held = True

    def release(self) -> None:
        with self._lock:
            self._held, self._producer = False, None

    def stop(self, timeout: float = 60, check: bool = True) -> None:
        """End the stream; with ``check``, a send that failed is raised (for clean-up: ``check=False``)."""
        self._stopping.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        if check:
            assert not self._thread.is_alive(), "the live stream did not stop"
            if self.error is not None:
                raise AssertionError(f"the test's own producer failed: {self.error!r}") from self.error


@dataclasses.dataclass
class Readiness:
    """What a process's ``/readyz``, ``/health`` and ``/livez`` answered while a dependency was down."""

    samples: int = 0
    first_503_s: float | None = None  # seconds from the start of the watch to the first /readyz 503
    not_ready: set[str] = dataclasses.field(default_factory=set)  # conditions failing in any 503
    last: dict[str, str] = dataclasses.field(default_factory=dict)  # /readyz conditions of the last 503
    wrong: list[str] = dataclasses.field(default_factory=list)  # answers that break the contract


async def watch_readiness(proc: CdcpipeProcess, seconds: float, period_s: float = 0.5) -> Readiness:
    """Poll ``/readyz``, ``/health`` and ``/livez`` for ``seconds`` while the process must keep running: /livez
    answers 200 throughout, /health answers as /readyz, and once /readyz said 503 it keeps saying it (the
    dependency stays down for the whole watch).  Breaches are collected in :attr:`Readiness.wrong`."""
    seen = Readiness()
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        assert proc.running, f"the process exited during the outage:\n{proc.tail()}"
        live, _ = proc.get("/livez")
        ready, body = proc.get("/readyz")
        health, _ = proc.get("/health")
        seen.samples += 1
        at = f"{elapsed:.1f}s"
        if live != 200:
            seen.wrong.append(f"{at}: /livez {live}")
        if health != ready and seen.first_503_s is not None:  # (at the very moment it turns they may differ)
            seen.wrong.append(f"{at}: /health {health} but /readyz {ready}")
        if ready == 503:
            conditions = dict(json.loads(body)["conditions"])
            seen.last = conditions
            seen.not_ready |= {name for name, reason in conditions.items() if reason != "ok"}
            if seen.first_503_s is None:
                seen.first_503_s = elapsed
        elif seen.first_503_s is not None:
            seen.wrong.append(f"{at}: /readyz {ready} after 503, dependency still down")
        await asyncio.sleep(period_s)
    return seen


async def dead_letters(pool: Any, kafka: dict[str, Any], group: str, topic: str) -> tuple[int, int]:
    """(rows of ``cdcpipe_dlq`` for ``group``, records in the dead-letter topic ``topic``)."""
    rows = int(await pool.fetchval("SELECT count(*) FROM cdcpipe_dlq WHERE group_id = $1", group))
    return rows, sum(end_offsets(kafka, [topic]).values())


def tx_topics(kafka: dict[str, Any], topic: str, schemas_topic: str) -> tuple[AdminClient, Producer, EventSchema]:
    """Creates ``topic`` (the TX table's events) and ``schemas_topic``, one partition each, and produces TX's
    event schema to the latter (not flushed); returns an admin client, the producer and the schema."""
    admin = AdminClient(kafka)
    for f in admin.create_topics([NewTopic(t, 1, 1) for t in (topic, schemas_topic)]).values():
        f.result(30)
    schema = avro.table_schema(TX)
    producer = Producer(kafka)
    producer.produce(schemas_topic, key=schema.fingerprint, value=schema.to_json())
    return admin, producer, schema
