"""``cdcpipe reconcile``, wired in order: tables → partition tokens filled in the mirror → token ranges compared
(:mod:`cdcpipe.reconcile.compare`) → differences settled (changes on their way are not drift) → with ``--repair``,
repairs produced through the pipeline (:mod:`cdcpipe.reconcile.repair`) and the repaired keys checked again; rows
whose merge state is right but whose columns were edited by hand are viewed again from that state → the run
stored (:mod:`cdcpipe.reconcile.store`) → a summary (lines on a terminal, JSON lines otherwise).

Exit code: 0 — PostgreSQL equals Cassandra (or every difference was repaired); 1 — drift remains; 2 — the
comparison could not run.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fnmatch
import json
import sys
import time
import uuid
from typing import IO, Any

import structlog

from cdcpipe import pgconn
from cdcpipe.apply import migrate
from cdcpipe.apply.tables import layout
from cdcpipe.config import Settings
from cdcpipe.reconcile import metrics, store
from cdcpipe.reconcile.canonical import raw_session, typed_session
from cdcpipe.reconcile.compare import DATA_MISMATCH, TableResult, compare_table, settle
from cdcpipe.runtime import Health
from cdcpipe.schema import TableSchema
from cdcpipe.schema_source import cluster_options, connect_system_schema
from cdcpipe.snapshot.reader import RateLimit, consistency_level

log = structlog.get_logger(__name__)
EQUAL, DRIFT, FAILED = 0, 1, 2
CONDITION = "reconcile"  # the readiness condition of --every


def choose(all_tables: list[TableSchema], settings: Settings, patterns: tuple[str, ...]) -> list[TableSchema]:
    """``patterns`` (each must match a table), else every table capture captures."""
    by_name = {t.name: t for t in all_tables if not t.keyspace.startswith("system")}
    if patterns:
        chosen: dict[str, TableSchema] = {}
        for p in patterns:
            found = {n: t for n, t in by_name.items() if fnmatch.fnmatchcase(n, p)}
            if not found:
                raise ValueError(f"no table matches {p!r}")
            chosen.update(found)
        return [chosen[n] for n in sorted(chosen)]
    c = settings.capture
    return [t for n, t in sorted(by_name.items()) if t.cdc
            and not any(fnmatch.fnmatchcase(n, p) for p in c.exclude_tables)
            and (not c.include_tables or any(fnmatch.fnmatchcase(n, p) for p in c.include_tables))]


class _Out:
    def __init__(self, out: IO[str], mode: str) -> None:
        self.out = out
        self.tty = mode == "tty" or (mode == "auto" and out.isatty())
        self._last = 0.0

    def progress(self, table: str, done: int, total: int) -> None:
        if self.tty and (time.monotonic() - self._last > 0.5 or done == total):
            self._last = time.monotonic()
            self.out.write(f"\r{table}: {done}/{total} token ranges compared")
            self.out.flush()
            if done == total:
                self.out.write("\n")

    def table(self, r: TableResult, repaired: bool) -> None:
        kinds: dict[str, int] = {}
        for d in r.differences:
            kinds[d.kind] = kinds.get(d.kind, 0) + 1
        if self.tty:
            state = "EQUAL" if not r.differences else "DRIFT"
            self.out.write(f"{r.table}: {state} — cassandra {r.cassandra_rows} rows, postgres {r.postgres_rows} rows, "
                           f"{len(r.differences)} differing ({r.drift_ratio:.3%}) {kinds or ''}; "
                           f"{r.settled} settled while in flight{'; after repair' if repaired else ''}\n")
            for d in r.differences[:20]:
                self.out.write(f"  {d.kind} key={list(d.shown)!r} columns={list(d.columns)}\n")
            if len(r.differences) > 20:
                self.out.write(f"  ... and {len(r.differences) - 20} more (cdcpipe_reconcile_mismatches)\n")
        else:
            self.out.write(json.dumps({"table": r.table, "cassandra_rows": r.cassandra_rows,
                                       "postgres_rows": r.postgres_rows, "differences": len(r.differences),
                                       "drift_ratio": r.drift_ratio, "kinds": kinds, "settled": r.settled,
                                       "ranges": r.ranges, "leaves": r.leaves, "differing_leaves": r.differing_leaves,
                                       "transferred_ratio": round(r.transferred_ratio, 6),
                                       "repaired": repaired}) + "\n")
        self.out.flush()


async def run(settings: Settings, args: Any, out: IO[str]) -> int:

    show = _Out(out, args.progress)
    source = connect_system_schema(settings.cassandra)
    try:
        tables = choose(source.load(), settings, tuple(t.strip() for t in (args.tables or "").split(",")
                                                        if t.strip()))
    finally:
        getattr(source.session, "cluster").shutdown()  # noqa: B009 (a driver Session; the Protocol omits it)
    options = cluster_options(settings.cassandra)
    hosts, port = options.pop("contact_points"), options.pop("port")
    cluster, session = raw_session(hosts, port, **options)
    fresh = cluster_options(settings.cassandra)  # its own execution profiles: typed_session sets their row factory
    typed_cluster, typed = typed_session(fresh.pop("contact_points"), fresh.pop("port"), **fresh)
    conn = await pgconn.connect(settings)
    prefix = settings.postgres.schema_prefix
    consistency = consistency_level(args.consistency)
    limit = RateLimit(args.rate)
    run_id, started, began = uuid.uuid4(), datetime.datetime.now(datetime.UTC), time.monotonic()
    results: list[TableResult] = []
    repaired = False
    try:
        for table in tables:
            lay = layout(table, prefix)
            if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", lay.target):
                while await migrate.fill_tokens(conn, lay) > 0:  # rows mirrored before the token was kept
                    pass
            r = await compare_table(session, conn, table, schema_prefix=prefix, splits=args.splits,
                                    consistency=consistency, typed=typed, pace=limit.take, progress=show.progress)
            await settle(session, conn, table, r, schema_prefix=prefix, consistency=consistency,
                         settle_s=args.settle_s)
            results.append(r)
        if args.repair and any(r.differences for r in results):
            from cdcpipe.reconcile.repair import repair

            repaired = True
            for r in results:
                if not r.differences:
                    continue
                table = next(t for t in tables if t.name == r.table)
                edited = [d.key for d in r.differences if d.kind == DATA_MISMATCH and d.key[1] is not None]
                if edited:  # a merge state equal to Cassandra's with columns edited by hand: viewed again from it
                    await _review(settings, table, edited)
                emitted, deleted, left = await asyncio.to_thread(repair, settings, table, r.differences,
                                                                 args.consistency)
                log.info("repair produced", table=r.table, events=emitted, deletions=deleted, viewed_again=len(edited),
                         left_to_operator=left)
                await settle(session, conn, table, r, schema_prefix=prefix, consistency=consistency,
                             settle_s=args.repair_wait_s)
        drift = any(r.differences for r in results)
        status = ("drift" if drift else "repaired") if repaired else ("drift" if drift else "equal")
        await store.record(conn, run_id, started, results, status, repaired)
        metrics.observe(results, time.monotonic() - began, status)
        for r in results:
            show.table(r, repaired)
        if show.tty:
            out.write(f"reconcile run {run_id}: {status}, {len(results)} tables\n")
        else:
            out.write(json.dumps({"run_id": str(run_id), "status": status, "tables": len(results)}) + "\n")
        return DRIFT if drift else EQUAL
    finally:
        await conn.close()
        cluster.shutdown()
        typed_cluster.shutdown()


async def _review(settings: Settings, table: TableSchema, keys: list[tuple[bytes, bytes | None]]) -> None:
    """Apply's own view of ``keys`` written again from their stored merge state (as its TTL pass does, under the
    table's lock): the normal merge, no value from outside it."""

    from cdcpipe.apply.writer import BatchWriter

    pool = await pgconn.create_pool(settings, min_size=1, max_size=1)
    try:
        writer = BatchWriter(pool, grace_s=settings.apply.tombstone_grace_s,
                             schema_prefix=settings.postgres.schema_prefix)
        await writer.write(table, [], None, extra_keys=[(p, c) for p, c in keys if c is not None])
    finally:
        await pool.close()


async def scheduled(settings: Settings, health: Health, stop: asyncio.Event, args: Any, out: IO[str]) -> int:
    """``--every S``: a run every ``S`` seconds (from the end of the last) until ``stop``.  A run that cannot
    run is counted (``cdcpipe_reconcile_runs_total{status="failed"}``), reported in ``/readyz`` and tried again
    at the next one; drift is reported by the metrics, not by readiness."""
    health.fail(CONDITION, "no run finished yet")
    while not stop.is_set():
        began = time.monotonic()
        try:
            code = await run(settings, args, out)
            health.ok(CONDITION) if code in (EQUAL, DRIFT) else health.fail(CONDITION, f"last run exited {code}")
        except Exception as exc:  # a server down, a table gone: counted, shown, tried again next time
            metrics.failed(time.monotonic() - began)
            log.error("reconcile run failed", error=f"{type(exc).__name__}: {exc}")
            health.fail(CONDITION, f"last run failed: {type(exc).__name__}: {exc}"[:300])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=args.every)
    return 0


def main(settings: Settings, args: Any, out: IO[str] | None = None) -> int:
    """The ``cdcpipe reconcile`` command (see the module for the exit codes); logs go to stderr.  With ``--every``
    it runs until SIGTERM, serving ``/metrics`` and ``/readyz`` on ``observability.http_port`` (default 9402)."""
    from cdcpipe.observability import configure_logging

    if args.every:
        from cdcpipe.runtime import serve

        def scheduled_run(s: Settings, health: Health, stop: asyncio.Event) -> Any:
            return scheduled(s, health, stop, args, out or sys.stdout)

        return serve(settings, scheduled_run, process="reconcile")
    configure_logging(settings.observability.log_level, settings.observability.log_format)
    try:
        return asyncio.run(run(settings, args, out or sys.stdout))
    except Exception as exc:  # cannot connect, a table that does not exist, a server refusing: could not run
        print(f"cdcpipe reconcile: could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return FAILED


def add_arguments(parser: Any) -> None:
    parser.add_argument("--tables", help="keyspace.table names or patterns, comma-separated (default: every table "
                        "capture captures)")
    parser.add_argument("--repair", action="store_true", help="re-emit the differing partitions through the "
                        "pipeline (and delete rows Cassandra no longer has), then check them again")
    parser.add_argument("--splits", type=int, default=64, help="token ranges per table (a range's rows are held "
                        "in memory at once)")
    parser.add_argument("--rate", type=float, default=None, help="at most this many Cassandra rows per second")
    parser.add_argument("--consistency", default="LOCAL_QUORUM", help="Cassandra read consistency level")
    parser.add_argument("--settle-s", type=float, default=30.0, help="how long a difference may take to go away "
                        "(a change on its way to PostgreSQL) before it counts as drift")
    parser.add_argument("--repair-wait-s", type=float, default=120.0, help="how long to wait for apply to apply "
                        "the repairs")
    parser.add_argument("--every", type=float, default=None, metavar="SECONDS", help="run again every SECONDS "
                        "(from the end of the last run) until stopped, serving /metrics and /readyz on "
                        "observability.http_port (default 9402)")
    parser.add_argument("--progress", choices=["auto", "tty", "json"], default="auto",
                        help="lines for a person (tty) or JSON lines (json); auto: tty on a terminal")
