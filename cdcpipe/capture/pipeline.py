"""The capture process: the only place that wires the stages.

    cdc_index.SegmentFollower → batches.BatchBuilder (segment → mutation → events → avro)   [worker thread]
        → bounded queue → ship: EventProducer.commit (events + position, one transaction)   [worker thread]
        → SegmentCollector.collect (delete what the committed position covers)

One ``asyncio.TaskGroup``: ``read``, ``ship`` and ``watch`` (cdc_raw usage, quarantine, stall); if one fails the
others are cancelled and the error propagates.  Faults capture waits out instead of failing (``/readyz`` 503 with
the reason meanwhile): Kafka unreachable (``kafka``: the transaction is retried with capped backoff, forever),
Cassandra unreachable for a schema reload (``cassandra``: the chunk is read again), reading blocked on durable data
(``stalled``).  Damaged segments are kept in the quarantine directory (``quarantine``), see
:mod:`cdcpipe.capture.quarantine`.  Checkpoint steps, in order: (1) produce the batch's records, (2) produce the
position, (3) commit the transaction, (4) only then delete segments.  ``stop`` (SIGTERM/SIGINT, see :func:`main`):
reading stops, ``ship`` commits the batches already read, and :func:`run` returns — well within 10 s (the
integration tests check it).
When idle, reading sleeps until inotify reports a new segment or a rewritten ``_cdc.idx`` in cdc_raw (or, without
inotify, until ``capture.poll_interval_ms`` passes).  A transaction is committed as soon as the read has caught up
with what is durable (the batch says so and the queue is empty), when it holds ``capture.batch_max_events``, or
``capture.flush_ms`` after its first batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Any

import structlog

from cdcpipe import credentials
from cdcpipe.capture import metrics
from cdcpipe.capture.backdated import BackdatedCheck
from cdcpipe.capture.batches import Batch, BatchBuilder, TableFilter
from cdcpipe.capture.cdc_index import SegmentFollower
from cdcpipe.capture.cdc_switch import CdcLog
from cdcpipe.capture.checkpoint import read_checkpoint_record
from cdcpipe.capture.events import Origin
from cdcpipe.capture.inotify import DirectoryWatcher
from cdcpipe.capture.producer import EventProducer
from cdcpipe.capture.quarantine import Quarantine, describe
from cdcpipe.capture.registry import SchemaRegistry
from cdcpipe.capture.schema_changes import SchemaChangeWatch
from cdcpipe.capture.schema_watch import SchemaWatcher
from cdcpipe.capture.segment import KeyProvider, Position, StaticKeyProvider
from cdcpipe.capture.segment_gc import SegmentCollector
from cdcpipe.capture.truncation import TruncationWatch
from cdcpipe.config import Settings, env_name, max_message_bytes_for
from cdcpipe.credentials import Keeper
from cdcpipe.errors import (
    CassandraReadError,
    ConfigError,
    CredentialsError,
    KafkaProduceError,
    SchemaError,
    SegmentQuarantineError,
)
from cdcpipe.kafka_admin import kafka_reachable
from cdcpipe.runtime import Health, serve, tune_gc
from cdcpipe.schema_source import SystemSchemaSource, connect_system_schema
from cdcpipe.topics import positions_topic
from cdcpipe.vault import Login

log = structlog.get_logger(__name__)
_QUEUE_BATCHES = 4
_SLOW_COMMIT_S = 10.0  # a transaction not committed this long: /readyz reports Kafka as failing meanwhile
_SAFETY_POLL_S = 1.0  # while inotify works: a poll only in case an event was missed (an idle poll costs ~1 ms CPU)


def _origin(source: SystemSchemaSource, settings: Settings) -> Origin:
    row = next(iter(source.session.execute("SELECT cluster_name, data_center, host_id FROM system.local")))
    c = settings.capture
    return Origin(c.cluster or row.cluster_name, c.datacenter or row.data_center, c.node_id or str(row.host_id))


def _local_address(settings: Settings) -> str:
    """The address of the node capture runs beside (the first configured host)."""
    return settings.cassandra.hosts[0].rsplit(":", 1)[0]


def key_provider(settings: Settings) -> KeyProvider | None:
    c = settings.capture
    if c.encryption_key is not None:
        return StaticKeyProvider.from_hex(c.encryption_key.get_secret_value())
    if c.keystore is not None and c.keystore_password is not None:
        kp = c.key_password.get_secret_value() if c.key_password is not None else None
        return StaticKeyProvider.from_keystore(c.keystore, c.keystore_password.get_secret_value(), kp)
    return None


class Capture:
    """One capture process; build it with :meth:`open` (blocking set-up), then ``await run(stop)``."""

    def __init__(self, settings: Settings, health: Health, producer: EventProducer, builder: BatchBuilder,
                 collector: SegmentCollector, start: Position | None,
                 truncations: TruncationWatch | None = None, changes: SchemaChangeWatch | None = None) -> None:
        self.settings, self.health, self.producer = settings, health, producer
        self.truncations, self.changes = truncations, changes
        self.builder, self.collector = builder, collector
        self.committed = start
        self._queue: asyncio.Queue[Batch | None] = asyncio.Queue(_QUEUE_BATCHES)
        self._stop = asyncio.Event()  # run's stop: ends the wait for Kafka (the checkpoint resumes the batch)
        self._next_truncations = 0.0
        self._watch_failed: set[str] = set()  # health conditions the schema-change/truncation rounds failed

    @classmethod
    def open(cls, settings: Settings, health: Health) -> Capture:
        c = settings.capture
        cdc_raw = settings.require("capture.cdc_raw_dir")
        source = connect_system_schema(settings.cassandra)
        origin = _origin(source, settings)
        producer = EventProducer(settings.kafka, origin.node, partitions=c.topic_partitions,
                                 replication=c.topic_replication)
        producer.start()  # fences a previous instance: the checkpoint read next is final
        health.ok("kafka")
        start, switches = read_checkpoint_record(settings.kafka, positions_topic(settings.kafka.topic_prefix),
                                                 origin.node)
        log.info("capture starting", node=origin.node, cluster=origin.cluster, datacenter=origin.datacenter,
                 position=str(start) if start else None, cdc_raw=str(cdc_raw))
        schemas = SchemaRegistry(source)
        quarantine = Quarantine.open(c.quarantine_dir, cdc_raw)
        watcher = SchemaWatcher(source.session, schemas.mark_stale)
        watcher.ensure()
        follower = SegmentFollower(cdc_raw, start, key_provider(settings), quarantine,
                                   stall_timeout_s=c.stall_timeout_s)
        builder = BatchBuilder(follower, schemas, TableFilter(c.include_tables, c.exclude_tables), origin,
                               settings.kafka.topic_prefix, producer.ensure_topic, watcher=watcher,
                               recheck_s=c.schema_recheck_s, off_grace_s=c.schema_off_grace_s,
                               cdc_log=CdcLog(switches),
                               backdated=BackdatedCheck(source.session, _local_address(settings), c.backdated_check_s))
        _check_message_size(settings, node_size(source.session, "commitlog_segment_size"))
        total = c.cdc_total_space or node_cdc_total_space(source.session) or DEFAULT_CDC_TOTAL_SPACE
        log.info("cdc_raw limit", cdc_total_space=total, quarantine_dir=str(quarantine.directory),
                 source="capture.cdc_total_space" if c.cdc_total_space else "node or default")
        tables = TableFilter(c.include_tables, c.exclude_tables)
        changes = SchemaChangeWatch(source.session, settings.kafka.client_config(), settings.kafka.topic_prefix,
                                    origin.node, source.load, tables, producer.ensure_topic)
        truncations = TruncationWatch(source.session, settings.kafka.client_config(), settings.kafka.topic_prefix,
                                      origin.node, source.load, tables, producer.ensure_topic, changes.truncated)
        return cls(settings, health, producer, builder, SegmentCollector(cdc_raw, total, quarantine), start,
                   truncations, changes)

    async def run(self, stop: asyncio.Event) -> None:
        """Follow cdc_raw and ship until ``stop``.  Tunes this process's garbage collector first (a capture process
        runs one ``Capture``): see :func:`cdcpipe.runtime.tune_gc`."""
        tune_gc()
        self._stop = stop
        self.health.ok("quarantine")
        self.health.ok("stalled")
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._read(stop), name="read")
                tg.create_task(self._ship(), name="ship")
                tg.create_task(self._watch(stop), name="watch")
        finally:
            if self.builder.watcher is not None:
                self.builder.watcher.close()
            if self.truncations is not None:
                await asyncio.to_thread(self.truncations.close)
            if self.changes is not None:
                await asyncio.to_thread(self.changes.close)
            await asyncio.to_thread(self.producer.close)
        log.info("capture stopped", position=str(self.committed) if self.committed else None)

    async def _read(self, stop: asyncio.Event) -> None:
        """Read while there is something durable to read; when idle, sleep until cdc_raw changes (inotify) or a
        poll is due: every ``capture.poll_interval_ms`` where inotify is unavailable (or its watch is gone), else
        every ``_SAFETY_POLL_S`` (inotify is a hint; the safety poll bounds the cost of a missed event)."""
        c = self.settings.capture
        wake = asyncio.Event()
        watcher = DirectoryWatcher.open(self.builder.follower.cdc_raw)
        loop = asyncio.get_running_loop()
        if watcher is not None:
            def on_event() -> None:
                if watcher.drain():
                    wake.set()
                if watcher.dead:
                    loop.remove_reader(watcher.fileno())
            loop.add_reader(watcher.fileno(), on_event)
        relay = asyncio.create_task(_relay(stop, wake))
        try:
            failures = 0
            while not stop.is_set():
                wake.clear()  # a change seen while reading wakes the next wait at once
                try:
                    batch = await asyncio.to_thread(self.builder.next, c.batch_max_events)
                except (KafkaProduceError, SchemaError, CassandraReadError, TimeoutError) as exc:  # read again: wait
                    if isinstance(exc, KafkaProduceError | SchemaError | CassandraReadError) and not exc.retriable:
                        raise
                    failures += 1
                    name = "cassandra" if isinstance(exc, SchemaError | CassandraReadError) else "kafka"
                    self.health.fail(name, str(exc))
                    log.warning("reading waits for a dependency", dependency=name, error=str(exc), attempt=failures)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), _backoff(failures, c.kafka_retry_max_wait_s))
                    continue
                if failures:
                    self.health.ok("cassandra")
                    failures = 0
                self.health.ok("reading")
                if batch.position is None:
                    if self._queue.empty():
                        metrics.LAG_SECONDS.set(0)
                    poll = c.poll_interval_ms / 1000
                    if watcher is not None and not watcher.dead:
                        poll = max(poll, _SAFETY_POLL_S)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), poll)
                    continue
                await self._queue.put(batch)
        finally:
            relay.cancel()
            if watcher is not None:
                loop.remove_reader(watcher.fileno())  # False when already removed
                watcher.close()
            await self._queue.put(None)

    async def _ship(self) -> None:
        c = self.settings.capture
        pending, since = Batch(), 0.0
        while True:
            timeout = None if pending.position is None else max(0.0, since + c.flush_ms / 1000 - time.monotonic())
            try:
                item = await asyncio.wait_for(self._queue.get(), timeout)
            except TimeoutError:
                item = Batch()
            if item is None:
                if pending.position is not None:
                    await self._commit(pending)
                return
            if pending.position is None:
                since = time.monotonic()
            pending.extend(item)
            due = time.monotonic() >= since + c.flush_ms / 1000
            idle = pending.caught_up and self._queue.empty()  # nothing more to wait for: commit now
            if pending.position is not None and (due or idle or len(pending.records) >= c.batch_max_events):
                await self._commit(pending)
                pending = Batch()

    async def _commit(self, batch: Batch) -> None:
        """Commit ``batch``; while Kafka fails retriably, retry it indefinitely with capped backoff
        (``capture.kafka_retry_max_wait_s``), ``kafka`` failing in ``/readyz`` — capture never gives up on Kafka.
        Only a non-retriable failure (fenced by another instance, a fatal producer error) raises."""
        assert batch.position is not None
        failures = 0
        while True:
            task = asyncio.ensure_future(asyncio.to_thread(
                self.producer.commit, batch.records, list(batch.schemas.values()), batch.position, batch.cdc_log))
            done, _ = await asyncio.wait({task}, timeout=_SLOW_COMMIT_S)
            if not done:  # say so now: one attempt may wait for Kafka for a while before it fails
                self.health.fail("kafka", f"transaction at position {batch.position} not committed after "
                                          f"{_SLOW_COMMIT_S:.0f}s: Kafka slow or unreachable")
            try:
                await task
                break
            except KafkaProduceError as exc:
                self.health.fail("kafka", str(exc))
                if not exc.retriable or self._stop.is_set():
                    raise
                failures += 1
                metrics.KAFKA_RETRIES.inc()
                wait = _backoff(failures, self.settings.capture.kafka_retry_max_wait_s)
                log.warning("kafka unavailable: the transaction waits and is retried", error=str(exc),
                            attempt=failures, wait_s=round(wait, 1), position=str(batch.position))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), wait)
        self.health.ok("kafka")
        if batch.durable_ns:
            metrics.DELAY_SECONDS.labels("read").observe(max(0.0, (batch.read_ns - batch.durable_ns) / 1e9))
            metrics.DELAY_SECONDS.labels("encoded").observe(max(0.0, (batch.encoded_ns - batch.durable_ns) / 1e9))
            metrics.DELAY_SECONDS.labels("committed").observe(max(0.0, time.time() - batch.durable_ns / 1e9))
        self.committed = batch.position
        for (ks, table, op), n in batch.counts.items():
            metrics.EVENTS_PRODUCED.labels(ks, table, op).inc(n)
        metrics.POSITION_SEGMENT.set(batch.position.segment_id)
        metrics.POSITION_OFFSET.set(batch.position.offset)
        if batch.newest_micros:
            metrics.LAG_SECONDS.set(max(0.0, time.time() - batch.newest_micros / 1e6))
        if batch.records:
            log.debug("transaction committed", position=str(batch.position), events=len(batch.records))
        if batch.end is not None:
            await asyncio.to_thread(self.collector.collect, batch.position)

    async def _truncations(self) -> None:
        """Every ``capture.schema_recheck_s``: publish this node's new schema changes and truncations
        (``TRUNCATE``); a failure is retried at the next round (the node keeps what it shows)."""
        now = time.monotonic()
        if now < self._next_truncations:
            return
        self._next_truncations = now + self.settings.capture.schema_recheck_s
        for watch, what, name in ((self.changes, "schema changes", "schema_changes"),
                                  (self.truncations, "truncations", "truncations")):
            if watch is None:
                continue
            try:
                await asyncio.to_thread(watch.poll)
            except (CassandraReadError, KafkaProduceError) as exc:
                log.warning(f"{what} not published yet, retrying", error=str(exc))
            except Exception as exc:  # a fault of ours or a schema we do not handle: loud, retried, not fatal
                self._watch_failed.add(name)
                self.health.fail(name, f"{what} not published: {type(exc).__name__}: {exc} (retried every "
                                       f"{self.settings.capture.schema_recheck_s:g} s; events are still captured)")
                log.error(f"{what} not published, retrying", error=str(exc), exc_info=True)
            else:
                if name in self._watch_failed:
                    self._watch_failed.discard(name)
                    self.health.ok(name)

    async def _watch(self, stop: asyncio.Event) -> None:
        """Every second: cdc_raw usage, collection, the ``quarantine`` and ``stalled`` conditions."""
        quarantine = self.builder.follower.quarantine
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.collector.usage)
                if self.committed is not None:
                    await asyncio.to_thread(self.collector.collect, self.committed)
            except OSError as exc:
                self.health.fail("reading", f"cdc_raw: {exc}")
            except SegmentQuarantineError as exc:
                self.health.fail("quarantine", f"cannot move a damaged segment (kept in cdc_raw): {exc}")
            else:
                if quarantine is not None:
                    held = await asyncio.to_thread(quarantine.held)
                    if held:
                        self.health.fail("quarantine", describe(held, quarantine.directory))
                    else:
                        self.health.ok("quarantine")
            await self._truncations()
            stalled = self.builder.follower.stalled()
            metrics.STALLED.set(1 if stalled else 0)
            if stalled:
                self.health.fail("stalled", stalled)
            else:
                self.health.ok("stalled")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


DEFAULT_CDC_TOTAL_SPACE = 4096 * 1024 * 1024  # Cassandra's default cap (it takes min(this, 1/8 of the volume))
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|TiB)?\s*$")
_UNITS = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3, "TiB": 1024 ** 4}


def node_cdc_total_space(session: Any) -> int | None:
    """The node's ``cdc_total_space`` in bytes, from ``system_views.settings`` (Cassandra 4.0+); None when it
    cannot be read (blocking)."""
    return node_size(session, "cdc_total_space")


def node_size(session: Any, setting: str) -> int | None:
    """A size setting of the node in bytes (``setting``, or its pre-4.1 ``<setting>_in_mb``) from
    ``system_views.settings``; None when it cannot be read (blocking)."""
    for name, unit in ((setting, None), (f"{setting}_in_mb", "MiB")):
        try:
            row = next(iter(session.execute(f"SELECT value FROM system_views.settings WHERE name = '{name}'")), None)
        except Exception as exc:  # driver errors: fall back to the default
            log.warning("cannot read a setting of the node", setting=name, error=str(exc))
            return None
        size = size_bytes(str(row.value), unit) if row is not None and row.value is not None else None
        if size is not None:
            return size
    return None


def size_bytes(text: str, unit: str | None = None) -> int | None:
    """A size as ``system_views.settings`` shows it (``1024MiB``; a bare number is in ``unit``, bytes when None) in
    bytes; None for anything else or zero."""
    m = _SIZE.match(text)
    return int(m.group(1)) * _UNITS[m.group(2) or unit] if m is not None and int(m.group(1)) > 0 else None


def _check_message_size(settings: Settings, node_segment: int | None) -> None:
    """Refuse to start when the node logs mutations larger than ``kafka.max_message_bytes`` can carry: such an
    event could never be produced, and capture would stop at it (fail at start, with what to set, instead)."""
    if node_segment is None or max_message_bytes_for(node_segment) <= settings.kafka.message_bytes():
        return
    raise ConfigError(
        f"the node's commitlog_segment_size is {node_segment} bytes: its largest mutation makes an event of up to "
        f"{max_message_bytes_for(node_segment)} bytes, above kafka.max_message_bytes "
        f"({settings.kafka.message_bytes()}); set {env_name('capture.commitlog_segment_size')}={node_segment}")


def _backoff(failures: int, cap: float) -> float:
    """0.5 s doubling to ``cap``."""
    return float(min(cap, 0.5 * 2 ** min(failures - 1, 16)))


async def _relay(stop: asyncio.Event, wake: asyncio.Event) -> None:
    await stop.wait()
    wake.set()


async def _waited(stop: asyncio.Event, health: Health, dependency: str, reason: str) -> bool:
    """``dependency`` is not there yet: say so in ``/health`` and the log, wait 2 s; True when ``stop`` came."""
    health.fail(dependency, reason)
    log.warning("dependency not ready at start, waiting", dependency=dependency, reason=reason)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), 2.0)
    return stop.is_set()


async def run(settings: Settings, health: Health, stop: asyncio.Event) -> int:
    """Run capture until ``stop`` is set, then return 0; raises the first stage error.  While Kafka or Cassandra is
    unreachable at start it waits (``/health`` answers 503 with the reason) instead of exiting; ``stop`` during
    that wait returns 0."""
    health.fail("reading", "starting")
    resolved = None
    while settings.vault.url and resolved is None:  # its logins from Vault first (cdcpipe.credentials)
        try:
            resolved = await asyncio.to_thread(credentials.resolve, settings)
            settings = resolved.settings
        except CredentialsError as exc:
            if not exc.retriable:
                raise
            if await _waited(stop, health, "credentials", str(exc)):
                return 0
    health.fail("kafka", f"connecting to {settings.kafka.bootstrap_servers}")
    while (reason := await asyncio.to_thread(kafka_reachable, settings.kafka)) is not None:
        if await _waited(stop, health, "kafka", reason):
            return 0
    while True:  # Cassandra (its system_schema) must be reachable too; wait for it the same way
        try:
            capture = await asyncio.to_thread(Capture.open, settings, health)
            break
        except SchemaError as exc:
            if not exc.retriable:
                raise
            if await _waited(stop, health, "cassandra", str(exc)):
                return 0
    health.ok("cassandra")
    if resolved is None:
        await capture.run(stop)
        return 0

    async def rotated(store: str, login: Login, settings: Settings) -> None:
        capture.settings = settings  # Kafka's and Cassandra's logins already reached every client

    keeper = asyncio.create_task(Keeper(resolved, rotated, health).run(stop), name="credentials")
    try:
        await capture.run(stop)
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
    return 0


def main(settings: Settings) -> int:
    """``cdcpipe capture``: :func:`run` under :func:`cdcpipe.runtime.serve`, on the standard library's event loop."""
    return serve(settings, run, process="capture")
