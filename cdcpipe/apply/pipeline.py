"""Wires the apply process: consumer → decode → merge → batcher → writer → checkpoint (asyncio + uvloop).

One TaskGroup: a poller (Kafka consume in a thread), a dispatcher (ready batches into a bounded queue), writers
(``apply.concurrency`` of them), a maintenance task (TTL expiry and grace purge every ``apply.purge_interval_s``)
and a watcher (every ``WATCH_S``: probes Kafka and PostgreSQL for ``/health``, publishes consumer lag).  A task
that dies stops the others and the process says why.  ``stop`` (SIGTERM, SIGINT) stops polling, applies what was
read, commits, and returns 0 within 10 s.

``/health`` conditions: ``kafka`` and ``postgres`` (reachable, with the error when not) and ``circuit`` (the batch
writes' breaker: the last failure while failing).  While a dependency is down at start, the process waits for it
(``/health`` 503 says which) instead of exiting; during an outage batches are retried, maintenance waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import structlog

from cdcpipe.apply import checkpoint, metrics
from cdcpipe.apply.applier import BatchApplier, CircuitBreaker
from cdcpipe.apply.batcher import Batch, Batcher
from cdcpipe.apply.consumer import EventConsumer
from cdcpipe.apply.deadletter import DeadLetterer
from cdcpipe.apply.decode import SchemaReader
from cdcpipe.apply.writer import BatchWriter
from cdcpipe.config import Settings
from cdcpipe.errors import CdcpipeError
from cdcpipe.runtime import Health, tune_gc

T = TypeVar("T")

log = structlog.get_logger(__name__)
DRAIN_S = 8.0
WATCH_S = 2.0  # period of the health probes and lag gauge
PROBE_TIMEOUT_S = 5.0
POLL_MAX = 2000  # records per consume call; a call that returns fewer means the consumer has caught up
POLL_S = 0.025  # how long one consume call waits for records (bounds the latency it adds)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


async def _until_up(name: str, step: Callable[[], Awaitable[T]], health: Health, stop: asyncio.Event) -> T | None:
    """Run a start-up ``step`` until it succeeds (None if ``stop`` is set first); while it fails, ``name`` is
    unhealthy with the error.  Backoff 1 s → 30 s."""
    delay = 1.0
    while True:
        try:
            result = await step()
            health.ok(name)
            return result
        except Exception as exc:  # any failure to reach the dependency: report and wait
            health.fail(name, f"unreachable: {_reason(exc)}")
            log.warning("dependency unreachable at start, retrying", dependency=name, error=_reason(exc),
                        retry_in_s=delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return None
        delay = min(delay * 2, 30.0)


async def run(settings: Settings, health: Health, stop: asyncio.Event) -> int:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient

    cfg, group = settings.apply, settings.apply.group_id
    dsn = settings.require("postgres.dsn").get_secret_value()
    kafka = settings.kafka.client_config()
    admin = AdminClient(kafka)
    health.fail("kafka", "not reached yet")
    health.fail("postgres", "not reached yet")

    async def connect() -> Any:
        p = await asyncpg.create_pool(dsn, min_size=settings.postgres.pool_min_size,
                                      max_size=settings.postgres.pool_max_size, timeout=PROBE_TIMEOUT_S)
        try:
            await checkpoint.ensure(p)
        except BaseException:
            await p.close()
            raise
        return p
    pool = await _until_up("postgres", connect, health, stop)
    if pool is None:
        return 0
    dlq = DeadLetterer(pool, Producer({**kafka, "enable.idempotence": True}),
                       cfg.dlq_topic or f"{settings.kafka.topic_prefix}.dlq", group)
    reader = SchemaReader.open(kafka, f"{settings.kafka.topic_prefix}.schemas")

    async def ensure_dlq() -> bool:
        await dlq.ensure()
        return True

    async def catch_up() -> int:
        await asyncio.to_thread(dlq.ensure_topic_blocking, admin, PROBE_TIMEOUT_S)
        return await asyncio.to_thread(reader.catch_up, PROBE_TIMEOUT_S)
    if await _until_up("postgres", ensure_dlq, health, stop) is None or \
            await _until_up("kafka", catch_up, health, stop) is None:
        await pool.close()
        return 0
    tune_gc()
    loop = asyncio.get_running_loop()
    batcher = Batcher(cfg.batch.max_rows, cfg.batch.max_wait_ms / 1000)

    def revoked(parts: list[tuple[str, int]]) -> None:
        loop.call_soon_threadsafe(batcher.drop, parts)
    consumer = EventConsumer(
        settings,
        lambda topic, parts: asyncio.run_coroutine_threadsafe(checkpoint.load(pool, group, topic, parts),
                                                              loop).result(60),
        on_revoke=revoked)
    writer = BatchWriter(pool, grace_s=cfg.tombstone_grace_s, schema_prefix=settings.postgres.schema_prefix)
    applier = BatchApplier(writer, reader, dlq, group, CircuitBreaker(health, "circuit", cfg.circuit_failures))
    queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=cfg.concurrency)
    polling_done = asyncio.Event()
    wake = asyncio.Event()  # set when records arrive or a batch finishes: the dispatcher looks again
    caught_up = False  # the last consume call returned everything there was

    async def poll() -> None:
        nonlocal caught_up
        while not stop.is_set():
            if batcher.buffered >= cfg.batch.max_rows * cfg.concurrency:
                await asyncio.sleep(0.01)  # backpressure: writers are behind
                continue
            records = await asyncio.to_thread(consumer.poll, POLL_MAX, POLL_S)
            for rec in records:
                batcher.add(rec)
            caught_up = len(records) < POLL_MAX
            if records:
                wake.set()
        polling_done.set()
        wake.set()

    async def dispatch() -> None:
        # A batch closes at max_rows, max_wait_ms after its first record, or as soon as the consumer has caught
        # up (nothing more to wait for: waiting would only add latency).  Under a backlog consume calls return
        # full and batches fill up; while a partition's batch is in flight its next one keeps filling.
        while True:
            done = polling_done.is_set()
            for batch in batcher.ready(force=done or caught_up):
                await queue.put(batch)
            if done and batcher.idle:
                break
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), min(0.02, cfg.batch.max_wait_ms / 4000))
        for _ in range(cfg.concurrency):
            await queue.put(None)

    async def write() -> None:
        while (batch := await queue.get()) is not None:
            try:
                if consumer.current(batch.topic, batch.partition, batch.generation):
                    await applier.apply(batch)
                    consumer.commit(batch.topic, batch.partition, batch.next_offset)
            finally:
                batcher.done(batch.topic, batch.partition)
                wake.set()

    async def maintain() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), cfg.purge_interval_s)
            try:
                for table in list(applier.tables.values()):
                    while await writer.expire(table) > 0 and not stop.is_set():
                        pass
                    await writer.purge(table)
            except CdcpipeError as exc:  # PostgreSQL down: the next round catches up
                if not exc.retriable:
                    raise
                log.warning("maintenance failed, retrying next round", error=str(exc))

    def probe_kafka() -> None:
        meta = admin.list_topics(timeout=PROBE_TIMEOUT_S)
        if not meta.brokers:
            raise ConnectionError("no broker in the metadata")

    async def probe(name: str, check: Callable[[], Awaitable[object]]) -> None:
        try:
            await asyncio.wait_for(check(), PROBE_TIMEOUT_S + 1)
            health.ok(name)
        except Exception as exc:
            health.fail(name, f"unreachable: {_reason(exc) or type(exc).__name__}")

    async def watch() -> None:
        while not stop.is_set():
            await asyncio.gather(probe("kafka", lambda: asyncio.to_thread(probe_kafka)),
                                 probe("postgres", lambda: pool.fetchval("SELECT 1", timeout=PROBE_TIMEOUT_S)))
            for (topic, partition), lag in (await asyncio.to_thread(consumer.lag)).items():
                metrics.LAG.labels(topic, str(partition)).set(lag)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), WATCH_S)

    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(poll())
            tasks.create_task(dispatch())
            for _ in range(cfg.concurrency):
                tasks.create_task(write())
            tasks.create_task(maintain())
            tasks.create_task(watch())
    finally:
        await asyncio.to_thread(consumer.close)
        await pool.close()
    log.info("apply stopped")
    return 0


def main(settings: Settings) -> int:
    """``cdcpipe apply``: serve /metrics and /health, run until SIGTERM/SIGINT."""
    import uvloop

    from cdcpipe.observability import configure_logging
    from cdcpipe.runtime import OpsServer

    obs = settings.observability
    configure_logging(obs.log_level, obs.log_format)
    # Batches allocate millions of short-lived, acyclic objects (events, cells, versions): the default gen-0
    # threshold (700) makes the cyclic GC rescan the batches in flight over and over (~25% of decode CPU).
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    health = Health()
    server = OpsServer(health, obs.http_host, obs.http_port).start()

    async def supervised() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await run(settings, health, stop)

    try:
        return uvloop.run(supervised())
    finally:
        server.close()
