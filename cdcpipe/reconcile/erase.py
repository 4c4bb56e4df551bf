"""``cdcpipe erase``: GDPR erasure of keys through the pipeline's own path, wired in order:

1. every KEY checked against the table (:mod:`cdcpipe.reconcile.erasekey`) before anything is deleted, and its
   bytes against Cassandra's own parse of it (``fromJson``) where Cassandra holds it;
2. the partition (or row) deleted in Cassandra at ``--consistency``: capture carries the deletion to Kafka and
   apply removes the rows from PostgreSQL, as any other deletion;
3. waited for until PostgreSQL holds no row of the key (``--wait-s``);
4. its dead letters removed from ``cdcpipe_dlq`` (for a row: those whose event is of that row, or cannot be
   read) and its rows of earlier reconcile runs' ``cdcpipe_reconcile_mismatches``;
5. confirmed by reconciling the key: both sides of its partition read in the canonical form, compared
   (:func:`cdcpipe.reconcile.compare.classify`), and apply's stored merge states of it checked for values;
6. one row per key in ``cdcpipe_audit_log`` (who, when, which key, why, the outcome), whatever the outcome.

What it cannot erase (Kafka's copies until retention, PostgreSQL WAL and backups, Cassandra's until compaction):
docs/erasure.md.

Exit code: 0 — every key erased and confirmed; 1 — a key not confirmed within ``--wait-s`` (audited
``not_confirmed``; running it again is harmless); 2 — could not run (a bad key, an unknown table, cannot
connect; keys already deleted in Cassandra are audited ``failed``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from typing import IO, Any

import structlog

from cdcpipe import pgconn
from cdcpipe.apply.keys import clustering_bytes
from cdcpipe.apply.state import decode_partition, decode_row
from cdcpipe.apply.tables import Layout, ident, layout
from cdcpipe.config import Settings
from cdcpipe.model import Op
from cdcpipe.ops import operator_name
from cdcpipe.reconcile import canonical
from cdcpipe.reconcile.canonical import Side, raw_session, read_cassandra, read_postgres
from cdcpipe.reconcile.compare import classify
from cdcpipe.reconcile.erasekey import EraseKey, parse_key
from cdcpipe.schema import TableSchema
from cdcpipe.schema_source import cluster_options, connect_system_schema
from cdcpipe.snapshot.reader import consistency_level
from cdcpipe.topics import schemas_topic

log = structlog.get_logger(__name__)
ERASED, NOT_CONFIRMED, FAILED = 0, 1, 2

AUDIT_DDL = (
    "CREATE TABLE IF NOT EXISTS cdcpipe_audit_log (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), "
    "actor text NOT NULL, action text NOT NULL, table_name text NOT NULL, key jsonb NOT NULL, reason text NOT NULL, "
    "status text NOT NULL, details jsonb NOT NULL DEFAULT '{}'::jsonb)"
)


@dataclass(frozen=True, slots=True)
class Look:
    """What both sides hold of one key: rows of it (Cassandra, PostgreSQL), the differences
    :func:`~cdcpipe.reconcile.compare.classify` finds, and apply's stored merge states of it that still hold a
    value (rows PostgreSQL does not show: expired, or shadowed by a deletion not applied yet)."""

    cassandra_rows: int
    postgres_rows: int
    differences: tuple[str, ...]
    stored_values: int

    @property
    def erased(self) -> bool:
        return not (self.cassandra_rows or self.postgres_rows or self.differences or self.stored_values)


@dataclass(frozen=True, slots=True)
class Outcome:
    key: EraseKey
    status: str  # erased | not_confirmed | failed | dry_run
    before: Look
    after: Look | None
    dlq_rows: int
    dlq_unreadable: int
    reconcile_rows: int
    waited_s: float
    audit_id: int | None = None

    def details(self) -> dict[str, Any]:
        return {"scope": self.key.scope, "cassandra_rows": self.before.cassandra_rows,
                "postgres_rows": self.before.postgres_rows, "dlq_rows": self.dlq_rows,
                "dlq_unreadable": self.dlq_unreadable, "reconcile_rows": self.reconcile_rows,
                "waited_s": round(self.waited_s, 3),
                "left": None if self.after is None else dataclasses.asdict(self.after)}


def only(side: Side, key: EraseKey) -> Side:
    """The rows of ``side`` that ``key`` erases."""
    kept = Side()
    for rows in ("rows", "keys", "inexact", "raw", "meta"):
        getattr(kept, rows).update((k, v) for k, v in getattr(side, rows).items() if key.holds(k))
    return kept


class Eraser:
    """Erases keys of one table: ``session`` from :func:`~cdcpipe.reconcile.canonical.raw_session`, ``conn`` an
    asyncpg connection."""

    def __init__(self, settings: Settings, table: TableSchema, session: Any, conn: Any, consistency: int) -> None:
        self.settings = settings
        self.table = table
        self.session = session
        self.conn = conn
        self.consistency = consistency
        self.layout: Layout = layout(table, settings.postgres.schema_prefix)

    def _cql(self, query: str, params: list[str]) -> Any:
        from cassandra.query import SimpleStatement

        stmt = SimpleStatement(query, consistency_level=self.consistency)
        return self.session.execute(stmt, params)

    def check(self, key: EraseKey) -> None:
        """Cassandra's parse of the KEY equals its bytes here (where Cassandra holds the partition or row);
        raises ValueError."""
        t = self.table
        cols = [*t.partition_key, *(t.clustering if key.clustering is not None else ())]
        where, params = key.where()
        names = ", ".join(ident(c.name) for c in cols)
        rows = list(self._cql(f"SELECT {names} FROM {ident(t.keyspace)}.{ident(t.table)} WHERE {where} LIMIT 1",
                              params))
        if not rows:
            return
        raw = [bytes(v) for v in rows[0]]
        n = len(t.partition_key)
        partition = canonical.partition_bytes(raw[:n])
        if partition != key.partition or (key.clustering is not None
                                          and canonical.clustering_bytes(raw[n:]) != key.clustering):
            raise ValueError(f"{t.name} key {key.given}: Cassandra reads it as other bytes than cdcpipe does "
                             f"(partition {partition.hex()}, not {key.partition.hex()}): nothing deleted")

    def delete(self, key: EraseKey) -> None:
        where, params = key.where()
        self._cql(f"DELETE FROM {ident(self.table.keyspace)}.{ident(self.table.table)} WHERE {where}", params)

    async def in_postgres(self, key: EraseKey) -> int:
        pg = await read_postgres(self.conn, self.table, self.settings.postgres.schema_prefix,
                                 partitions=frozenset({key.partition}))
        return sum(1 for k in pg.rows if key.holds(k))

    async def look(self, key: EraseKey) -> Look:
        """Reconcile the key: both sides of its partition, only its rows compared."""
        parts = frozenset({key.partition})
        cass = only(await asyncio.to_thread(read_cassandra, self.session, self.table, self.consistency,
                                            partitions=parts), key)
        pg = only(await read_postgres(self.conn, self.table, self.settings.postgres.schema_prefix,
                                      partitions=parts), key)
        found = classify(self.table, cass, pg)
        return Look(len(cass.rows), len(pg.rows), tuple(f"{d.kind} {list(d.shown)}" for d in found),
                    await self._stored_values(key))

    async def _stored_values(self, key: EraseKey) -> int:
        """Merge states of the key in ``<t>$shadow`` (and, for a partition, its static row in ``<t>$partition``)
        that still hold a cell value."""
        lay = self.layout
        if await self.conn.fetchval("SELECT to_regclass($1)", lay.shadow) is None:
            return 0
        n = 0
        for r in await self.conn.fetch(f"SELECT _cdc_clustering, _cdc_meta FROM {lay.shadow} "
                                       "WHERE _cdc_partition = $1", key.partition):
            if key.holds((key.partition, bytes(r["_cdc_clustering"]))) and _has_values(decode_row(r["_cdc_meta"])):
                n += 1
        if key.clustering is None:
            meta = await self.conn.fetchval(f"SELECT _cdc_meta FROM {lay.partitions} WHERE _cdc_partition = $1",
                                            key.partition)
            if meta is not None and _has_values(decode_partition(meta).static):
                n += 1
        return n

    async def scrub_dlq(self, key: EraseKey, *, dry_run: bool = False) -> tuple[int, int]:
        """Remove the key's dead letters from ``cdcpipe_dlq`` (any consumer group, any topic prefix: matched by
        table name or by topic suffix, and by Kafka key = partition key).  For a row, only letters whose event is of
        that row, or cannot be read (then nobody can tell it is not).  Returns (removed, of them unreadable)."""
        if await self.conn.fetchval("SELECT to_regclass('cdcpipe_dlq')") is None:
            return 0, 0
        t = self.table
        rows = await self.conn.fetch("SELECT id, value FROM cdcpipe_dlq WHERE key = $1 AND (table_name = $2 OR "
                                     "right(topic, length($3)) = $3)", key.partition, t.name,
                                     f".{t.keyspace}.{t.table}")
        ids, unreadable = [r["id"] for r in rows], 0
        if key.clustering is not None and rows:
            ids, unreadable = await asyncio.to_thread(self._of_row, key, [(r["id"], r["value"]) for r in rows])
        if ids and not dry_run:
            await self.conn.execute("DELETE FROM cdcpipe_dlq WHERE id = ANY($1::bigint[])", ids)
        return len(ids), unreadable

    def _of_row(self, key: EraseKey, letters: list[tuple[int, bytes | None]]) -> tuple[list[int], int]:
        from cdcpipe.apply.decode import SchemaReader, decode_record

        topic = schemas_topic(self.settings.kafka.topic_prefix)
        reader = SchemaReader.open(self.settings.kafka.client_config(), topic)
        try:
            if not reader.catch_up(30.0):
                log.warning("erase: event schemas not read to their end; dead letters not read count as the row's",
                            topic=topic)
            ids, unreadable = [], 0
            for letter_id, value in letters:
                try:
                    event, table = decode_record(bytes(value or b""), reader)
                except Exception:  # not readable: its content may be of the row
                    ids.append(letter_id)
                    unreadable += 1
                    continue
                if event.op in (Op.UPSERT, Op.ROW_DELETE) and not event.static \
                        and clustering_bytes(table, event.clustering) == key.clustering:
                    ids.append(letter_id)
            return ids, unreadable
        finally:
            reader.close()

    async def scrub_reconcile(self, key: EraseKey, *, dry_run: bool = False) -> int:
        """Remove the key's rows (they hold both sides' values) from ``cdcpipe_reconcile_mismatches``."""
        if await self.conn.fetchval("SELECT to_regclass('cdcpipe_reconcile_mismatches')") is None:
            return 0
        cond = "table_name = $1 AND partition_key = $2 AND ($3::bytea IS NULL OR clustering = $3)"
        if dry_run:
            return int(await self.conn.fetchval(f"SELECT count(*) FROM cdcpipe_reconcile_mismatches WHERE {cond}",
                                                self.table.name, key.partition, key.clustering))
        status = await self.conn.execute(f"DELETE FROM cdcpipe_reconcile_mismatches WHERE {cond}", self.table.name,
                                         key.partition, key.clustering)
        return int(status.split()[-1])

    async def audit(self, actor: str, reason: str, key: EraseKey, status: str, details: dict[str, Any]) -> int:
        await self.conn.execute(AUDIT_DDL)
        found: int = await self.conn.fetchval(
            "INSERT INTO cdcpipe_audit_log (actor, action, table_name, key, reason, status, details) "
            "VALUES ($1, 'erase', $2, $3::jsonb, $4, $5, $6::jsonb) RETURNING id",
            actor, self.table.name, key.given, reason, status, json.dumps(details, sort_keys=True))
        return found


def _has_values(row: Any) -> bool:
    return any(not v.tombstone for v in row.cells.values()) or any(
        not v.tombstone for c in row.complex.values() for v in c.elements.values())


async def erase(eraser: Eraser, keys: list[EraseKey], args: Any) -> list[Outcome]:
    """Steps 1-6 of the module docstring for ``keys`` (all deleted first, then waited for together)."""
    actor = args.actor or operator_name()
    for key in keys:
        await asyncio.to_thread(eraser.check, key)
    before = [await eraser.look(key) for key in keys]
    if args.dry_run:
        planned = []
        for key, look in zip(keys, before, strict=True):
            dlq, unreadable = await eraser.scrub_dlq(key, dry_run=True)
            planned.append(Outcome(key, "dry_run", look, None, dlq, unreadable,
                                   await eraser.scrub_reconcile(key, dry_run=True), 0.0))
        return planned
    await eraser.conn.execute(AUDIT_DDL)  # before anything is deleted: a failure later can still be recorded
    deleted: list[EraseKey] = []
    outcomes: list[Outcome] = []
    try:
        for key in keys:
            await asyncio.to_thread(eraser.delete, key)
            deleted.append(key)
            log.info("erase: deleted in Cassandra", table=key.table, key=key.given, scope=key.scope)
        start = time.monotonic()
        waited = {i: args.wait_s for i in range(len(keys))}
        pending = set(waited)
        while pending:
            for i in sorted(pending):
                if await eraser.in_postgres(keys[i]) == 0:
                    waited[i] = time.monotonic() - start
                    pending.discard(i)
            if not pending or time.monotonic() - start >= args.wait_s:
                break
            await asyncio.sleep(0.25)
        for i, key in enumerate(keys):
            dlq, unreadable = await eraser.scrub_dlq(key)
            mismatches = await eraser.scrub_reconcile(key)
            after = await eraser.look(key)
            status = "erased" if after.erased else "not_confirmed"
            done = Outcome(key, status, before[i], after, dlq, unreadable, mismatches, waited[i])
            audit_id = await eraser.audit(actor, args.reason, key, status, done.details())
            outcomes.append(dataclasses.replace(done, audit_id=audit_id))
        return outcomes
    except Exception as exc:
        for key in deleted[len(outcomes):]:  # deleted in Cassandra, not audited yet
            try:
                await eraser.audit(actor, args.reason, key, "failed", {"scope": key.scope, "error": str(exc)})
            except Exception as again:
                log.error("erase: audit row not written", table=key.table, key=key.given, error=str(again))
        raise


def show(out: IO[str], mode: str, outcomes: list[Outcome]) -> None:
    tty = mode == "tty" or (mode == "auto" and out.isatty())
    for o in outcomes:
        left = o.after or o.before
        if tty:
            out.write(f"{o.key.table} {o.key.given}: {o.status.upper().replace('_', ' ')} — {o.key.scope}, "
                      f"{o.before.cassandra_rows} row(s) in Cassandra and {o.before.postgres_rows} in PostgreSQL "
                      f"before, {o.dlq_rows} dead letter(s) and {o.reconcile_rows} reconcile mismatch row(s) "
                      + ("to remove" if o.status == "dry_run" else f"removed, applied in {o.waited_s:.1f} s")
                      + (f"; audit #{o.audit_id}" if o.audit_id is not None else "") + "\n")
            if o.status == "not_confirmed":
                out.write(f"  left: {left.cassandra_rows} row(s) in Cassandra, {left.postgres_rows} in PostgreSQL, "
                          f"{left.stored_values} stored state(s) with values; {list(left.differences)[:5]}\n")
        else:
            out.write(json.dumps({"table": o.key.table, "key": o.key.shown(), "status": o.status,
                                  "audit_id": o.audit_id, **o.details()}) + "\n")
    out.flush()


async def run(settings: Settings, args: Any, out: IO[str]) -> int:

    source = connect_system_schema(settings.cassandra)
    try:
        table = next((t for t in source.load() if t.name == args.table), None)
    finally:
        getattr(source.session, "cluster").shutdown()  # noqa: B009 (a driver Session; the Protocol omits it)
    if table is None:
        raise ValueError(f"no table {args.table!r} in Cassandra (give keyspace.table)")
    keys = [parse_key(table, k) for k in args.keys]  # every key checked before anything is deleted
    consistency = consistency_level(args.consistency)
    options = cluster_options(settings.cassandra)
    cluster, session = raw_session(options.pop("contact_points"), options.pop("port"), **options)
    try:
        conn = await pgconn.connect(settings)
        try:
            outcomes = await erase(Eraser(settings, table, session, conn, consistency), keys, args)
        finally:
            await conn.close()
    finally:
        cluster.shutdown()
    show(out, args.output, outcomes)
    return NOT_CONFIRMED if any(o.status == "not_confirmed" for o in outcomes) else ERASED


def main(settings: Settings, args: Any, out: IO[str] | None = None) -> int:
    """The ``cdcpipe erase`` command (see the module for the exit codes); logs go to stderr."""
    from cdcpipe.observability import configure_logging

    configure_logging(settings.observability.log_level, settings.observability.log_format)
    try:
        return asyncio.run(run(settings, args, out or sys.stdout))
    except Exception as exc:  # a bad key, no such table, cannot connect, a server refusing: could not run
        print(f"cdcpipe erase: could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return FAILED


def add_arguments(parser: Any) -> None:
    parser.add_argument("table", help="keyspace.table")
    parser.add_argument("keys", nargs="+", metavar="KEY", help="a JSON object of primary-key column values, e.g. "
                        "'{\"id\": 42}': every partition-key column (the whole partition) and, to erase one row "
                        "only, every clustering column")
    parser.add_argument("--reason", required=True, help="why (kept in cdcpipe_audit_log), e.g. a request's id")
    parser.add_argument("--actor", help="who asks (kept in cdcpipe_audit_log; default: the OS user)")
    parser.add_argument("--consistency", default="LOCAL_QUORUM", help="Cassandra consistency of the deletion "
                        "and of the reads")
    parser.add_argument("--wait-s", type=float, default=120.0, help="how long to wait for apply to remove the "
                        "key from PostgreSQL")
    parser.add_argument("--dry-run", action="store_true", help="show what each key holds and what would be "
                        "removed; delete nothing, audit nothing")
    parser.add_argument("--output", choices=["auto", "tty", "json"], default="auto",
                        help="lines for a person (tty) or JSON lines (json); auto: tty on a terminal")
