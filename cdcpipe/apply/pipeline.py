"""The apply process: the only place that wires the stages (asyncio + uvloop).

    EventConsumer.poll (Kafka, read_committed) → Batcher                               [worker thread]
        → bounded queue of ready batches (one per partition in flight)
        → BatchApplier × apply.concurrency: decode → merge → BatchWriter (rows + checkpoint, one transaction)
        → EventConsumer.commit (Kafka offsets, only after that transaction committed)

One TaskGroup: a poller (Kafka consume in a thread), a dispatcher (ready batches into a bounded queue), writers
(``apply.concurrency`` of them), a maintenance task (TTL expiry and grace purge every ``apply.purge_interval_s``),
the copier of capture's dead letters into ``cdcpipe_dlq`` (:mod:`cdcpipe.apply.capture_letters`) and a watcher
(every ``WATCH_S``: probes Kafka and PostgreSQL for ``/health``, publishes consumer lag).  A task that dies stops
the others and the process says why.  ``stop`` (SIGTERM, SIGINT) stops polling, applies what was
read, commits, and returns 0 within 10 s.

``/health`` conditions: ``kafka`` and ``postgres`` (reachable, with the error when not) and ``circuit`` (the batch
writes' breaker: the last failure while failing); ``paused:<table>`` (writes held by a fault of the table or the
server, naming the SQLSTATE: see :mod:`cdcpipe.apply.applier`); ``gap:<topic>/<partition>`` (a partition stopped
because offsets it needs are gone: retention, or the topic recreated; see :mod:`cdcpipe.apply.consumer`).
While a dependency is down at start, the process waits for it
(``/health`` 503 says which) instead of exiting; during an outage batches are retried, maintenance waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog

from cdcpipe import credentials, kafka_clients, pgconn
from cdcpipe.apply import checkpoint, dlqstore, metrics, migrate, schema_history, truncations
from cdcpipe.apply.applier import BatchApplier, CircuitBreaker
from cdcpipe.apply.batcher import Batch, Batcher
from cdcpipe.apply.capture_letters import CaptureLetters
from cdcpipe.apply.consumer import EventConsumer
from cdcpipe.apply.deadletter import DeadLetterer
from cdcpipe.apply.decode import SchemaReader
from cdcpipe.apply.schema_history import HistoryReader
from cdcpipe.apply.tables import DDL_LOCK
from cdcpipe.apply.truncations import TruncationReader
from cdcpipe.apply.writer import BatchWriter
from cdcpipe.config import Settings
from cdcpipe.credentials import Keeper
from cdcpipe.errors import ApplyError, CdcpipeError, ConfigError, CredentialsError, OffsetGapError, postgres_error
from cdcpipe.kafka_admin import kafka_reachable
from cdcpipe.runtime import Health, serve, tune_gc
from cdcpipe.schema import TableSchema
from cdcpipe.topics import apply_dlq_topic, schema_changes_topic, schemas_topic, truncations_topic
from cdcpipe.vault import Login

T = TypeVar("T")

log = structlog.get_logger(__name__)
DRAIN_S = 8.0
WATCH_S = 2.0  # period of the health probes and lag gauge
PROBE_TIMEOUT_S = 5.0
POLL_MAX = 2000  # records per consume call; a call that returns fewer means the consumer has caught up
POLL_S = 0.025  # how long one consume call waits for records (bounds the latency it adds)


class Apply:
    """One apply process; build it with :meth:`open` (waits for its dependencies), then ``await run(stop)``.

    Stages in data-flow order: :meth:`_poll` → :meth:`_dispatch` → :meth:`_write` (× ``apply.concurrency``);
    beside them :meth:`_maintain` and :meth:`_watch`.  A batch's Kafka offset is committed only after the PostgreSQL
    transaction that stored the same checkpoint; a batch whose partition was reassigned meanwhile is dropped."""

    def __init__(self, settings: Settings, health: Health, admin: Any, pool: Any, dlq: DeadLetterer,
                 reader: SchemaReader, truncs: TruncationReader | None = None,
                 applied: dict[str, int] | None = None, history: HistoryReader | None = None) -> None:
        cfg = settings.apply
        self.settings, self.health, self.pool, self._admin = settings, health, pool, admin
        self._loop = asyncio.get_running_loop()
        self.batcher = Batcher(cfg.batch.max_rows, cfg.batch.max_wait_ms / 1000)
        self.consumer = EventConsumer(settings, self._checkpoints, on_revoke=self._revoked, on_gap=self._gap)
        self.writer = BatchWriter(pool, grace_s=cfg.tombstone_grace_s, schema_prefix=settings.postgres.schema_prefix,
                                  drop_columns=cfg.on_column_drop == "drop")
        self.truncs, self.history = truncs, history
        self._marked: set[tuple[str, str, int, str]] = set()  # (table, node, seen at ms, change) marked
        self._tokens_filled: set[str] = set()  # tables with a token on every row
        self._applied = dict(applied or {})  # truncations applied to what is stored, per table
        self.writer.truncated.update(self._applied)
        self.applier = BatchApplier(self.writer, reader, dlq, cfg.group_id,
                                    CircuitBreaker(health, "circuit", cfg.circuit_failures),
                                    max_wait_s=cfg.retry_max_wait_s)
        if history is not None and cfg.on_table_drop == "drop":
            self.applier.gone = history.gone  # the same set: filled as the topic is read
        self._take_truncations()
        self._queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=cfg.concurrency)
        self._polling_done = asyncio.Event()
        self._wake = asyncio.Event()  # set when records arrive or a batch finishes: the dispatcher looks again
        self._caught_up = False  # the last consume call returned everything there was
        self._stop = asyncio.Event()  # run's stop event, once it runs
        self._gaps: set[tuple[str, int]] = set()  # partitions stopped by a gap (see _gap)

    @classmethod
    async def open(cls, settings: Settings, health: Health, stop: asyncio.Event) -> Apply | None:
        """Start-up, each step retried until it succeeds (see :func:`_until_up`): connect to PostgreSQL and create
        the checkpoint table, then the dead-letter table (``/health``: ``postgres``), then create the dead-letter
        topic and read the schemas topic to its end (``kafka``).  None, with the pool closed, if ``stop`` comes
        first."""

        pgconn.connect_kwargs(settings)  # a missing setting or an unloadable TLS file fails here, not in a retry
        kafka = settings.kafka.client_config()
        admin = kafka_clients.admin(kafka)
        health.fail("kafka", "not reached yet")
        health.fail("postgres", "not reached yet")
        pool = await _until_up("postgres", lambda: _connect(settings), health, stop)
        if pool is None:
            return None
        dlq = DeadLetterer(pool, kafka_clients.producer({**kafka, "enable.idempotence": True}),
                           apply_dlq_topic(settings.kafka.topic_prefix, settings.apply.dlq_topic),
                           settings.apply.group_id)
        reader = SchemaReader.open(kafka, schemas_topic(settings.kafka.topic_prefix))
        truncs = TruncationReader.open(kafka, truncations_topic(settings.kafka.topic_prefix))
        history = HistoryReader.open(kafka, schema_changes_topic(settings.kafka.topic_prefix))
        applied: dict[str, int] = {}

        async def dlq_table() -> bool:
            await dlq.ensure()
            async with pool.acquire() as conn:
                applied.update(await truncations.applied(conn, settings.postgres.schema_prefix))
            return True

        async def schemas() -> bool:
            reason = await asyncio.to_thread(kafka_reachable, settings.kafka, PROBE_TIMEOUT_S)  # TLS, SASL
            if reason is not None:
                raise ConnectionError(reason)
            await asyncio.to_thread(functools.partial(  # sized and replicated like capture's topics
                dlq.ensure_topic_blocking, admin, PROBE_TIMEOUT_S, kafka=settings.kafka,
                replication=settings.capture.topic_replication))
            if not await asyncio.to_thread(reader.catch_up, PROBE_TIMEOUT_S):
                return False
            await asyncio.to_thread(truncs.catch_up, PROBE_TIMEOUT_S)  # absent until a first truncation
            await asyncio.to_thread(history.catch_up, PROBE_TIMEOUT_S)  # absent until capture publishes one
            return True
        if await _until_up("postgres", dlq_table, health, stop) is None or \
                await _until_up("kafka", schemas, health, stop) is None:
            await pool.close()
            return None
        return cls(settings, health, admin, pool, dlq, reader, truncs, applied, history)

    async def rotated(self, store: str, login: Login, settings: Settings) -> None:
        """A login replaced in Vault (:class:`cdcpipe.credentials.Keeper`; Kafka's already reached every client):
        PostgreSQL's is used by every connection opened from now on, and the pool's connections opened with the old
        one are closed as they are released (a transaction under way finishes first)."""
        self.settings = settings
        if store == "postgres":
            self.pool.set_connect_args(**pgconn.connect_kwargs(settings))
            await self.pool.expire_connections()

    async def run(self, stop: asyncio.Event, keeper: Keeper | None = None) -> None:
        """Apply until ``stop``, then apply what was read, commit, and close the consumer and the pool.  Tunes this
        process's garbage collector first (an apply process runs one ``Apply``): see :func:`cdcpipe.runtime.tune_gc`.
        """
        tune_gc()
        self._stop = stop
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._poll(stop), name="poll")
                draining = [tasks.create_task(self._dispatch(), name="dispatch")]
                for i in range(self.settings.apply.concurrency):
                    draining.append(tasks.create_task(self._write(), name=f"write-{i}"))
                tasks.create_task(self._maintain(stop), name="maintain")
                tasks.create_task(self._watch(stop), name="watch")
                tasks.create_task(CaptureLetters(self.settings, self.pool).run(stop), name="capture-letters")
                tasks.create_task(self._deadline(stop, draining), name="deadline")
                if keeper is not None:
                    tasks.create_task(keeper.run(stop), name="credentials")
                if self.settings.admin.enabled:
                    from cdcpipe.apply.admin import serve

                    tasks.create_task(serve(self.settings, self.pool, self.health.report, stop), name="admin")
        finally:
            await asyncio.to_thread(self.consumer.close)
            await self.pool.close()
        log.info("apply stopped")

    async def _poll(self, stop: asyncio.Event) -> None:
        """Kafka → batcher until ``stop``; then tells the dispatcher that nothing more comes."""
        limit = self.settings.apply.batch.max_rows * self.settings.apply.concurrency
        while not stop.is_set():
            if self.batcher.buffered >= limit:
                await asyncio.sleep(0.01)  # backpressure: writers are behind
                continue
            records = await asyncio.to_thread(self.consumer.poll, POLL_MAX, POLL_S)
            for rec in records:
                self.batcher.add(rec)
            self._caught_up = len(records) < POLL_MAX
            if records:
                self._wake.set()
        self._polling_done.set()
        self._wake.set()

    async def _dispatch(self) -> None:
        """Ready batches → the writers' queue; once polling is done and every batch is out, one ``None`` per writer.

        A batch closes at max_rows, max_wait_ms after its first record, or as soon as the consumer has caught up
        (nothing more to wait for: waiting would only add latency).  Under a backlog consume calls return full and
        batches fill up; while a partition's batch is in flight its next one keeps filling."""
        cfg = self.settings.apply
        while True:
            done = self._polling_done.is_set()
            for batch in self.batcher.ready(force=done or self._caught_up):
                await self._queue.put(batch)
            if done and self.batcher.idle:
                break
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(0.02, cfg.batch.max_wait_ms / 4000))
        for _ in range(cfg.concurrency):
            await self._queue.put(None)

    async def _write(self) -> None:
        """Apply each queued batch still owned by this consumer (PostgreSQL first, then the Kafka commit)."""
        while (batch := await self._queue.get()) is not None:
            try:
                if self.consumer.current(batch.topic, batch.partition, batch.generation):
                    await self.applier.apply(batch)
                    self.consumer.commit(batch.topic, batch.partition, batch.next_offset)
            finally:
                self.batcher.done(batch.topic, batch.partition)
                self._wake.set()

    async def _deadline(self, stop: asyncio.Event, draining: list[asyncio.Task[None]]) -> None:
        """``DRAIN_S`` after ``stop``, cancel the writers and the dispatcher if a batch is still held (PostgreSQL
        unreachable, a table at fault): it was not applied, its checkpoint did not move, the next start applies it.
        So a process that is retrying forever still stops when asked."""
        await stop.wait()
        _, pending = await asyncio.wait(draining, timeout=DRAIN_S)
        if pending:
            log.warning("batches still held at shutdown are left to the next start (their checkpoints did not move)",
                        tasks=sorted(t.get_name() for t in pending))
            for task in pending:
                task.cancel()

    async def _maintain(self, stop: asyncio.Event) -> None:
        """Every ``apply.purge_interval_s``: expire TTL'd rows and purge tombstones past their grace, per table."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.apply.purge_interval_s)
            try:
                await self._schema_changes()
                await self._truncations()
                await self._count_dead_letters()
                for table in list(self.applier.tables.values()):
                    if table.table_id in self.applier.gone:
                        continue  # its mirror was dropped (apply.on_table_drop = drop)
                    while await self.writer.expire(table) > 0 and not stop.is_set():
                        pass
                    await self._fill_tokens(table)
                    await self.writer.purge(table)
            except CdcpipeError as exc:  # PostgreSQL down: the next round catches up
                if not exc.retriable:
                    raise
                log.warning("maintenance failed, retrying next round", error=str(exc))

    async def _count_dead_letters(self) -> None:
        """``cdcpipe_dlq_records``: every dead letter, of every group (the table is shared), by status."""
        try:
            rows = await dlqstore.counts(self.pool)
        except Exception as exc:  # a gauge is never worth stopping apply for: the next round counts again
            log.warning("dead letters not counted", error=f"{type(exc).__name__}: {exc}")
            return
        metrics.DLQ_RECORDS.clear()
        for table, error_type, status, n in rows:
            metrics.DLQ_RECORDS.labels(table, error_type, status).set(n)

    async def _fill_tokens(self, table: TableSchema) -> None:
        """Rows mirrored before ``_cdc_token`` was kept get their partition token, a chunk per round."""
        if table.name in self._tokens_filled:
            return
        lay = await self.writer.prepare(table)
        try:
            for _ in range(20):  # up to 100,000 partitions a round: the rest next round
                if await migrate.fill_tokens(self.pool, lay) == 0:
                    self._tokens_filled.add(table.name)
                    return
        except Exception as exc:
            raise postgres_error(exc, table=table.name) from exc

    def _take_truncations(self) -> None:
        """The latest truncation of each table, as read, becomes a floor of every batch of it; so does the creation
        time of a table created again after a drop (:mod:`cdcpipe.apply.schema_history`)."""
        floors = [*(self.truncs.latest.items() if self.truncs is not None else ()),
                  *(self.history.floors.items() if self.history is not None else ())]
        for name, at in floors:
            if at > self.writer.truncated.get(name, -1):
                self.writer.truncated[name] = at

    async def _schema_changes(self) -> None:
        """Read the schema-changes topic; record what is new in ``cdcpipe_schema_history``; mark (or drop) the mirror
        table of each table's latest marking change once it exists (a mirror created later is marked then; after a
        restart every table is marked once more).  A failure leaves both for the next round."""
        if self.history is None:
            return
        await asyncio.to_thread(self.history.catch_up, PROBE_TIMEOUT_S)
        recs = self.history.take_pending()
        if not recs and all((t, r.node, r.seen_at_ms, c) in self._marked for t, (r, c) in self.history.marks.items()):
            return
        drop = self.settings.apply.on_table_drop == "drop"
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", DDL_LOCK)
                new = await schema_history.record(conn, recs) if recs else set()
                marked = []
                for table, (rec, change) in list(self.history.marks.items()):
                    key = (table, rec.node, rec.seen_at_ms, change)
                    if key not in self._marked and await schema_history.mirror(
                            conn, self.settings.postgres.schema_prefix, rec, change, drop):
                        marked.append(key)
        except Exception as exc:  # retried next round, whatever PostgreSQL said: never fatal to the stream
            self.history.pending[:0] = recs
            found = postgres_error(exc)
            raise ApplyError(f"schema changes not recorded: {found}", sqlstate=found.sqlstate, retriable=True) \
                from exc
        self._marked.update(marked)
        for rec in recs:
            for ch in rec.changes:
                if (rec.table, rec.node, rec.seen_at_ms, ch.change) in new:
                    metrics.SCHEMA_CHANGES.labels(rec.table, ch.change).inc()
                    log.info("schema change recorded", table=rec.table, node=rec.node, change=ch.change,
                             subject=ch.subject, version=rec.version)
        for table, _, _, change in marked:
            log.info("mirror table marked" if change != "dropped" or not drop else "mirror table dropped",
                     table=table, change=change)

    async def _truncations(self) -> None:
        """Read the truncations topic; apply each truncation not yet applied to the stored state of its table
        (a table this process has not met yet is done once it has)."""
        if self.truncs is not None:
            await asyncio.to_thread(self.truncs.catch_up, PROBE_TIMEOUT_S)
        self._take_truncations()
        for name, at in list(self.writer.truncated.items()):
            table = self.applier.tables.get(name)
            if table is None or at <= self._applied.get(name, -1):
                continue
            rows = await self.writer.truncate(table, at)
            self._applied[name] = at
            metrics.TRUNCATIONS.labels(name).inc()
            log.info("truncation applied: rows written before it removed", table=name, truncated_at_us=at,
                     rows_rewritten=rows)

    async def _watch(self, stop: asyncio.Event) -> None:
        """Every ``WATCH_S``: ``/health`` ``kafka`` and ``postgres`` from a probe of each, and the consumer lag."""
        while not stop.is_set():
            await asyncio.gather(
                self._probe("kafka", lambda: asyncio.to_thread(self._probe_kafka)),
                self._probe("postgres", lambda: self.pool.fetchval("SELECT 1", timeout=PROBE_TIMEOUT_S)))
            for (topic, partition), lag in (await asyncio.to_thread(self.consumer.lag)).items():
                metrics.LAG.labels(topic, str(partition)).set(lag)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), WATCH_S)

    async def _probe(self, name: str, check: Callable[[], Awaitable[object]]) -> None:
        try:
            await asyncio.wait_for(check(), PROBE_TIMEOUT_S + 1)
            self.health.ok(name)
        except Exception as exc:
            self.health.fail(name, f"unreachable: {_reason(exc) or type(exc).__name__}")

    def _probe_kafka(self) -> None:
        meta = self._admin.list_topics(timeout=PROBE_TIMEOUT_S)
        if not meta.brokers:
            raise ConnectionError("no broker in the metadata")

    def _checkpoints(self, topic: str, partitions: list[int]) -> dict[int, int | OffsetGapError]:
        """PostgreSQL's next offsets, for the consumer's assignment callback (polling thread); loaded on the loop.
        A stored checkpoint of another topic id (the topic was deleted and recreated) is a gap; checkpoints without
        a topic id get the current one."""
        group = self.settings.apply.group_id
        delay = 1.0
        while True:  # PostgreSQL unreachable during a rebalance: wait for it (a crash would only restart into it)
            try:
                stored = asyncio.run_coroutine_threadsafe(
                    checkpoint.load_stored(self.pool, group, topic, partitions), self._loop).result(60)
                break
            except Exception as exc:
                self.health.fail("postgres", f"unreachable: {_reason(exc)}")
                if self._stop.is_set():
                    raise
                log.warning("checkpoints not readable at assignment, retrying", topic=topic, error=_reason(exc),
                            retry_in_s=delay)
                time.sleep(delay)
                delay = min(delay * 2, self.settings.apply.retry_max_wait_s)
        for p in partitions:  # assigned again: a gap still there is reported again by the consumer
            if (topic, p) in self._gaps:
                self._gaps.discard((topic, p))
                self.health.ok(f"gap:{topic}/{p}")
                metrics.GAPS.labels(topic, str(p)).set(0)
        topic_id = self._topic_id(topic)
        out: dict[int, int | OffsetGapError] = {}
        for p, found in stored.items():
            if topic_id is not None and found.topic_id is not None and found.topic_id != topic_id:
                out[p] = self.consumer.gap_error(topic, p, found.next_offset, -1,
                                                 f"the topic was deleted and recreated: topic id {found.topic_id} → "
                                                 f"{topic_id}; the old topic's events from the checkpoint on")
            else:
                out[p] = found.next_offset
        if topic_id is not None and any(f.topic_id is None for f in stored.values()):
            try:  # best effort: the next assignment records it
                asyncio.run_coroutine_threadsafe(checkpoint.record_topic_id(self.pool, group, topic, topic_id),
                                                 self._loop).result(60)
            except Exception as exc:
                log.warning("topic id not recorded", topic=topic, error=_reason(exc))
        return out

    def _topic_id(self, topic: str) -> str | None:
        """The topic's id (None if Kafka does not say: the check is skipped, never guessed)."""
        from confluent_kafka import TopicCollection

        try:
            found = self._admin.describe_topics(TopicCollection([topic]), request_timeout=PROBE_TIMEOUT_S)[topic]
            return str(found.result(PROBE_TIMEOUT_S + 1).topic_id)
        except Exception as exc:  # Kafka unreachable: the low-watermark check and auto.offset.reset still hold
            log.warning("topic id unknown at assignment", topic=topic, error=_reason(exc))
            return None

    def _gap(self, gap: OffsetGapError) -> None:
        """The consumer's gap callback (polling thread): not ready, with the error; the gauge of offsets gone."""
        self._gaps.add((gap.topic, gap.partition))
        self.health.fail(f"gap:{gap.topic}/{gap.partition}", str(gap))
        metrics.GAPS.labels(gap.topic, str(gap.partition)).set(gap.last - gap.first + 1 if gap.last >= gap.first
                                                               else -1)

    def _revoked(self, parts: list[tuple[str, int]]) -> None:
        """The consumer's revocation callback (polling thread): the batcher drops those partitions, on the loop."""
        self._loop.call_soon_threadsafe(self.batcher.drop, parts)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


async def _until_up(name: str, step: Callable[[], Awaitable[T]], health: Health, stop: asyncio.Event) -> T | None:
    """Run a start-up ``step`` until it succeeds (None if ``stop`` is set first); while it fails, ``name`` is
    unhealthy with the error.  Backoff 1 s → 30 s.  A ConfigError is raised at once."""
    delay = 1.0
    while True:
        try:
            result = await step()
            health.ok(name)
            return result
        except (ConfigError, CredentialsError) as exc:  # what is configured cannot work: no outage to wait out
            if not exc.retriable:
                raise
            health.fail(name, f"unreachable: {_reason(exc)}")
            log.warning("dependency unreachable at start, retrying", dependency=name, error=_reason(exc),
                        retry_in_s=delay)
        except Exception as exc:  # any failure to reach the dependency: report and wait
            health.fail(name, f"unreachable: {_reason(exc)}")
            log.warning("dependency unreachable at start, retrying", dependency=name, error=_reason(exc),
                        retry_in_s=delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return None
        delay = min(delay * 2, 30.0)


async def _connect(settings: Settings) -> Any:
    """A PostgreSQL pool with the checkpoint table in place (the pool is closed again if creating it fails)."""
    pool = await pgconn.create_pool(settings, min_size=settings.postgres.pool_min_size,
                                    max_size=settings.postgres.pool_max_size, timeout=PROBE_TIMEOUT_S)
    try:
        await checkpoint.ensure(pool)
    except BaseException:
        await pool.close()
        raise
    return pool


async def run(settings: Settings, health: Health, stop: asyncio.Event) -> int:
    """Run apply until ``stop`` is set, then return 0; raises the first stage error.  While PostgreSQL or Kafka is
    unreachable at start it waits (``/health`` 503 says which); ``stop`` during that wait returns 0 at once."""
    resolved = None
    if settings.vault.url:
        resolved = await _until_up("credentials", lambda: asyncio.to_thread(credentials.resolve, settings), health,
                                   stop)
        if resolved is None:
            return 0
        settings = resolved.settings
    apply = await Apply.open(settings, health, stop)
    if apply is None:
        return 0
    await apply.run(stop, None if resolved is None else Keeper(resolved, apply.rotated, health))
    return 0


def main(settings: Settings) -> int:
    """``cdcpipe apply``: :func:`run` under :func:`cdcpipe.runtime.serve`, on uvloop."""
    import uvloop

    return serve(settings, run, loop_factory=uvloop.new_event_loop, process="apply")
