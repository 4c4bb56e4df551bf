"""``cdcpipe snapshot``, wired in order: tables → token ranges (less those an earlier run finished) → pages of
rows with write times → change events → Kafka → the range recorded as done.

Run it while capture and apply run, after ``ALTER TABLE … WITH cdc = true``: every write from then on reaches
Kafka through CDC, every older cell through the snapshot with its real write timestamp, and apply keeps the newer
of the two whichever arrives last (``docs/delivery.md``, "Snapshot").  :meth:`Snapshot.emit_partitions` is the same
work for a set of partitions (the repair of a later reconcile).
"""

from __future__ import annotations

import fnmatch
import signal
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import IO, Any

import structlog
from cassandra.metadata import Murmur3Token

from cdcpipe.avro import EventSchema, encode, table_schema
from cdcpipe.config import Settings
from cdcpipe.errors import CdcpipeError, SnapshotError
from cdcpipe.schema import TableSchema
from cdcpipe.schema_source import SystemSchemaSource
from cdcpipe.snapshot import metrics
from cdcpipe.snapshot.emit import Batch, Emitter
from cdcpipe.snapshot.progress import ProgressStore, Reporter, TableProgress
from cdcpipe.snapshot.ranges import TokenRange, ring_ranges, split, subtract
from cdcpipe.snapshot.reader import RangeReader, RateLimit, connect
from cdcpipe.snapshot.rows import Layout, RowConverter, layout, source_of
from cdcpipe.topics import table_topic

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Options:
    tables: tuple[str, ...] = ()  # keyspace.table names or shell patterns; none: every captured table
    splits: int = 256  # about this many token ranges per table
    concurrency: int = 4  # ranges read at once
    consistency: str = "LOCAL_QUORUM"
    rate: float | None = None  # rows per second over all ranges; None: no limit
    resume: bool = False
    page_size: int = 1000
    progress: str = "auto"  # auto | tty | json
    metrics_port: int | None = None


@dataclass
class Summary:
    tables: list[str] = field(default_factory=list)
    rows: int = 0
    events: int = 0
    ranges_read: int = 0
    ranges_resumed: int = 0
    seconds: float = 0.0


@dataclass
class _Job:
    table: TableSchema
    layout: Layout
    schema: EventSchema
    topic: str
    reader: RangeReader
    progress: TableProgress
    todo: list[TokenRange]


class Snapshot:
    """One snapshot run (or partition re-sync) against the configured cluster and Kafka."""

    def __init__(self, settings: Settings, options: Options = Options(), *, out: IO[str] | None = None) -> None:
        self.settings = settings
        self.options = options
        self.out = out
        self._stop = threading.Event()
        self.limit = RateLimit(options.rate)
        self.cluster, plain, self.session = connect(settings.cassandra, options.consistency)
        try:
            local = next(iter(plain.execute("SELECT cluster_name, data_center FROM system.local")))
            self.all_tables = SystemSchemaSource(plain).load()
        except BaseException:
            self.cluster.shutdown()
            raise
        c = settings.capture
        self.cluster_name, self.datacenter = c.cluster or local.cluster_name, c.datacenter or local.data_center
        self.emitter = Emitter(settings.kafka, settings.capture)
        self.store = ProgressStore(settings.kafka, self.emitter)

    def close(self) -> None:
        self.emitter.close()
        self.cluster.shutdown()

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------------------------------- tables

    def tables(self) -> list[TableSchema]:
        """The tables to read: ``--tables`` (each must exist and have ``cdc = true``), else every table capture
        captures (``cdc = true``, ``capture.include_tables``/``exclude_tables``)."""
        by_name = {t.name: t for t in self.all_tables if not t.keyspace.startswith("system")}
        if self.options.tables:
            chosen: dict[str, TableSchema] = {}
            for pattern in self.options.tables:
                found = [t for n, t in by_name.items() if fnmatch.fnmatchcase(n, pattern)]
                if not found:
                    raise SnapshotError(f"no table matches {pattern!r}")
                chosen.update((t.name, t) for t in found)
            off = sorted(n for n, t in chosen.items() if not t.cdc)
            if off:
                raise SnapshotError(f"cdc is off for {off}: run ALTER TABLE … WITH cdc = true (and keep capture "
                                    "running) first, or the changes made during the snapshot are lost")
            return list(chosen.values())
        c = self.settings.capture
        return [t for n, t in sorted(by_name.items()) if t.cdc
                and not any(fnmatch.fnmatchcase(n, p) for p in c.exclude_tables)
                and (not c.include_tables or any(fnmatch.fnmatchcase(n, p) for p in c.include_tables))]

    def _prepare(self, table: TableSchema) -> tuple[Layout, EventSchema, str, RangeReader]:
        lay = layout(table)
        schema = table_schema(table)
        topic = table_topic(self.settings.kafka.topic_prefix, table.keyspace, table.table)
        self.emitter.ensure_topic(topic)
        self.emitter.publish_schema(schema)
        reader = RangeReader(self.session, lay, page_size=self.options.page_size, limit=self.limit,
                             stop=self._stop.is_set)
        return lay, schema, topic, reader

    def _ring(self) -> list[TokenRange]:
        token_map = self.cluster.metadata.token_map
        tokens = [t.value for t in token_map.ring] if token_map is not None else []
        return split(ring_ranges(tokens), self.options.splits)

    # ---------------------------------------------------------------------------------------------- run

    def run(self) -> Summary:
        """Read every chosen table; raises SnapshotError (or a Kafka error) when a range cannot be finished."""
        started = time.monotonic()
        summary = Summary()
        earlier = self.store.load() if self.options.resume else {}
        self.store.ensure()
        planned = self._ring()
        jobs: list[_Job] = []
        for table in self.tables():
            lay, schema, topic, reader = self._prepare(table)
            prior = earlier.get(table.name)
            if prior is not None:
                todo = subtract(planned, prior.done)
                progress = prior
                log.info("snapshot resumes", table=table.name, run=prior.run, ranges_done=len(prior.done),
                         ranges_left=len(todo))
            else:
                progress = self.store.begin(table.name, self.options.splits)
                todo = list(planned)
            done = len(progress.done)
            metrics.RANGES_TOTAL.labels(table.name).set(done + len(todo))
            metrics.RANGES_DONE.labels(table.name).set(done)
            metrics.RANGES_SKIPPED.labels(table.name).inc(done)
            summary.ranges_resumed += done
            summary.tables.append(table.name)
            jobs.append(_Job(table, lay, schema, topic, reader, progress, todo))
        reporter = Reporter(sum(len(j.todo) + len(j.progress.done) for j in jobs), summary.ranges_resumed,
                            out=self.out, mode=self.options.progress).start()
        grace = self.settings.apply.tombstone_grace_s
        lock = threading.Lock()

        def one(job: _Job, r: TokenRange) -> None:
            if self._stop.is_set():
                raise SnapshotError("stopped; run again with --resume to finish", table=job.table.name,
                                    token_range=str(r), retriable=True)
            if time.monotonic() - started > grace:
                raise SnapshotError(f"the snapshot has run longer than apply.tombstone_grace_s ({grace} s): a "
                                    "deletion made during it may already be purged by apply, and an older "
                                    "snapshot row would bring it back; raise the grace or snapshot fewer tables "
                                    "at a time", table=job.table.name)
            rows, events = self._read_range(job, r, reporter)
            self.store.finished(job.table.name, job.progress.run, r, rows)
            reporter.add(ranges=1)
            metrics.RANGES_DONE.labels(job.table.name).inc()
            with lock:
                summary.rows += rows
                summary.events += events
                summary.ranges_read += 1

        try:
            with ThreadPoolExecutor(self.options.concurrency, thread_name_prefix="snapshot") as pool:
                futures: list[Future[None]] = [pool.submit(one, j, r) for j in jobs for r in j.todo]
                finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
                failed = [f for f in finished if f.exception() is not None]
                if failed:
                    self._stop.set()
                    for f in futures:
                        f.cancel()
                    raise failed[0].exception()  # type: ignore[misc]
        finally:
            reporter.stop()
            summary.seconds = time.monotonic() - started
        return summary

    def _read_range(self, job: _Job, r: TokenRange, reporter: Reporter | None,
                    keys: frozenset[bytes] | None = None) -> tuple[int, int]:
        """Read ``r`` and produce its events; return (rows, events) once Kafka acknowledged all of them.
        ``keys``: only these stored partition keys."""
        converter = RowConverter(job.layout, source_of(job.table, self.cluster_name, self.datacenter))
        batch = Batch()
        rows = events = 0
        name = job.table.name
        for page, now_s in job.reader.pages(r):
            for emitted in converter.convert(page, now_s):
                if keys is not None and emitted.key not in keys:
                    continue
                value = encode(emitted.event, job.schema, emitted.raw_key, emitted.raw_clustering)
                self.emitter.produce(job.topic, emitted.key, value, batch)
                events += 1
            rows += len(page)
            metrics.ROWS.labels(name).inc(len(page))
            if reporter is not None:
                reporter.add(rows=len(page))
        self.emitter.wait(batch)
        metrics.EVENTS.labels(name).inc(events)
        return rows, events

    def output(self, table: TableSchema) -> tuple[EventSchema, str]:
        """The event schema (published) and topic that events of ``table`` are produced with."""
        _, schema, topic, _ = self._prepare(table)
        return schema, topic

    def emit_partitions(self, table: TableSchema, keys: Iterable[bytes]) -> int:
        """Produce the current Cassandra state of the partitions with these stored keys (as capture's Kafka keys)
        of ``table``; returns the events produced, all acknowledged.  A partition that no longer exists produces
        nothing (its deletion reached Kafka through CDC)."""
        lay, schema, topic, reader = self._prepare(table)
        job = _Job(table, lay, schema, topic, reader, TableProgress("", 0.0), [])
        by_token: dict[int, set[bytes]] = {}
        for key in keys:
            by_token.setdefault(Murmur3Token.from_key(key).value, set()).add(key)
        events = 0
        for token, wanted in sorted(by_token.items()):
            r = TokenRange(token - 1, token)  # Murmur3 gives no key the token -2^63
            events += self._read_range(job, r, None, frozenset(wanted))[1]
        return events


def run(settings: Settings, options: Options, *, out: IO[str] | None = None) -> Summary:
    """A whole run, stopped cleanly (exit with --resume possible) by SIGINT or SIGTERM."""
    snap = Snapshot(settings, options, out=out)
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: snap.stop())
    try:
        if options.metrics_port is not None:
            from prometheus_client import start_http_server

            start_http_server(options.metrics_port)
        return snap.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        snap.close()


def parse_tables(text: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in (text or "").split(",") if t.strip())


def main(settings: Settings, args: Any, out: IO[str] | None = None) -> int:
    """The ``cdcpipe snapshot`` command: 0 when every range is done, 1 (with the range printed) otherwise."""
    options = Options(tables=parse_tables(args.tables), splits=args.splits, concurrency=args.concurrency,
                      consistency=args.consistency, rate=args.rate, resume=args.resume, page_size=args.page_size,
                      progress=args.progress, metrics_port=args.metrics_port)
    try:
        summary = run(settings, options, out=out)
    except CdcpipeError as exc:
        hint = " (run again with --resume to continue)" if exc.retriable else ""
        print(f"cdcpipe snapshot: {exc}{hint}", file=sys.stderr)
        return 1
    print(f"snapshot done: {len(summary.tables)} tables, {summary.rows} rows, {summary.events} events, "
          f"{summary.ranges_read} ranges read, {summary.ranges_resumed} finished earlier, {summary.seconds:.1f} s",
          file=out or sys.stderr)
    return 0


def add_arguments(parser: Any) -> None:
    parser.add_argument("--tables", help="keyspace.table names or patterns, comma-separated (default: every table "
                        "capture captures)")
    parser.add_argument("--splits", type=int, default=256, help="about this many token ranges per table")
    parser.add_argument("--concurrency", type=int, default=4, help="token ranges read at once")
    parser.add_argument("--consistency", default="LOCAL_QUORUM", help="read consistency level")
    parser.add_argument("--rate", type=float, default=None, help="at most this many rows per second")
    parser.add_argument("--resume", action="store_true", help="continue the latest run: skip the ranges it finished")
    parser.add_argument("--page-size", type=int, default=1000, help="rows per page")
    parser.add_argument("--progress", choices=["auto", "tty", "json"], default="auto",
                        help="progress as a live line (tty) or JSON lines (json); auto: tty on a terminal")
    parser.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")
