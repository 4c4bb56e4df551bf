"""Applies one batch: decode, write with retries behind a circuit breaker, isolate poison events.

Contract of :meth:`BatchApplier.apply`: when it returns, every record of the batch is either applied or stored
as a dead letter, and PostgreSQL's checkpoint for the partition is the batch's ``next_offset``.  Transient
failures (``retriable`` errors: lost connection, serialization failure, deadlock, restart) are retried forever
with exponential backoff from 1 s to 60 s; the circuit opens (``/health`` 503) after ``threshold`` consecutive
failures and closes on the next success.  A permanent failure splits the batch in halves, applied in order,
until the poison records are alone; a lone record becomes a dead letter only if PostgreSQL, answering again,
refuses it a second time and a known-good probe write to the same table succeeds (:meth:`BatchWriter.probe`).

Whose fault a failure is decides what happens (:mod:`cdcpipe.errors`): a record's (data exception, constraint)
is isolated and dead-lettered; a table's or the server's (:class:`TableFaultError`: read-only server, revoked
privilege, table or column dropped by hand, disk full, shutdown — or a record refused again while the probe is
refused too) holds the batch: its partition's checkpoint stays where it is, the write is retried with backoff
(1 s → ``max_wait_s``), ``/health`` fails the condition ``paused:<table>`` naming the SQLSTATE, the gauge
``cdcpipe_apply_paused{table,sqlstate}`` is 1, nothing is dead-lettered; the first write that succeeds resumes it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

import structlog
from tenacity import AsyncRetrying, retry_if_exception, wait_exponential

from cdcpipe.apply import metrics
from cdcpipe.apply.batcher import Batch
from cdcpipe.apply.checkpoint import Checkpoint
from cdcpipe.apply.consumer import Record
from cdcpipe.apply.deadletter import DeadLetter, DeadLetterer
from cdcpipe.apply.decode import SchemaReader, decode_delta
from cdcpipe.apply.merge import Delta
from cdcpipe.apply.writer import BatchWriter, Positioned
from cdcpipe.errors import ApplyError, CdcpipeError, EventDecodeError, TableFaultError, UnsupportedTableError
from cdcpipe.runtime import Health
from cdcpipe.schema import TableSchema

log = structlog.get_logger(__name__)


class CircuitBreaker:
    """Counts consecutive failures of one dependency; open (unhealthy) at ``threshold``."""

    def __init__(self, health: Health, name: str, threshold: int) -> None:
        self._health = self.health = health
        self._name = name
        self._threshold = threshold
        self.failures = 0
        health.ok(name)

    @property
    def open(self) -> bool:
        return self.failures >= self._threshold

    def failure(self, reason: str) -> None:
        self.failures += 1
        self._health.fail(self._name, f"{reason} (circuit {'open' if self.open else 'closed'}, "
                                      f"{self.failures} consecutive failures)")

    def success(self) -> None:
        if self.failures:
            self.failures = 0
            self._health.ok(self._name)


def _retriable(exc: BaseException) -> bool:
    return isinstance(exc, CdcpipeError) and exc.retriable and not isinstance(exc, UnsupportedTableError)


def _transient(exc: BaseException) -> bool:
    """Retriable, and not a table's or server's fault (lost connection, serialization failure, timeout)."""
    return _retriable(exc) and not isinstance(exc, TableFaultError)


def _poison(exc: CdcpipeError) -> bool:
    """Whether a write error is the records' fault (isolate them), not the table's or the connection's."""
    return not exc.retriable and not isinstance(exc, UnsupportedTableError)


class _Item(NamedTuple):  # one per record: a NamedTuple is cheaper to build than a frozen dataclass
    record: Record
    event: Delta


class BatchApplier:
    def __init__(self, writer: BatchWriter, reader: SchemaReader, dlq: DeadLetterer, group: str,
                 breaker: CircuitBreaker, max_wait_s: float = 60.0) -> None:
        self._writer = writer
        self._reader = reader
        self._dlq = dlq
        self._group = group
        self._breaker = breaker
        self._health = breaker.health
        self._max_wait = max_wait_s
        self.tables: dict[str, TableSchema] = {}
        self.paused: dict[str, str] = {}  # table → SQLSTATE of the fault holding its batches
        self.gone: set[uuid.UUID] = set()  # ids of tables whose mirror was dropped (apply.on_table_drop = drop)

    async def apply(self, batch: Batch) -> None:
        run: list[_Item] = []
        table: TableSchema | None = None
        reader = self._reader
        for rec in batch.records:
            try:
                try:
                    event, t = decode_delta(rec.value, reader)
                except EventDecodeError as exc:
                    if not exc.retriable:
                        raise
                    event, t = await self._decode(rec)  # a schema not read yet: wait for it
            except EventDecodeError as exc:
                if run and table is not None:
                    await self._isolate(table, run)
                run, table = [], None
                await self._dead_letter(DeadLetter(rec, "", exc, 0))
                continue
            if t is not table:
                if table is not None and t != table:
                    await self._isolate(table, run)
                    run = []
                table = t
                self.tables[t.name] = t
            run.append(_Item(rec, event))
        if run and table is not None:
            await self._isolate(table, run)

    async def _decode(self, rec: Record) -> tuple[Delta, TableSchema]:
        """The delta and table of a record whose schema fingerprint was not known when it was first decoded:
        the schema reader reads to the end of the schemas topic, again and again (backing off like a write)
        while Kafka is unreachable or the end is not reached; only a fingerprint still unknown once the topic was
        read to its end raises (not retriable: the record becomes a dead letter).  Capture publishes a schema in
        the transaction of the first event that uses it, so for its events that never happens."""
        async for attempt in self._retrying(on_retry=lambda rs: self._unknown_schema(rec, rs)):
            with attempt:
                complete = await asyncio.to_thread(self._reader.catch_up)
                try:
                    return decode_delta(rec.value, self._reader)
                except EventDecodeError as exc:
                    if exc.retriable and complete:
                        raise EventDecodeError(f"{exc.reason}, not in the schemas topic read to its end",
                                               topic=rec.topic, partition=rec.partition, offset=rec.offset) \
                            from exc
                    raise
        raise AssertionError("unreachable: the retry loop returns or raises")

    def _unknown_schema(self, rec: Record, state: Any) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        self._breaker.failure(f"{type(exc).__name__}: {exc}")
        log.warning("schema not readable yet, retrying", topic=rec.topic, partition=rec.partition,
                    offset=rec.offset, attempt=state.attempt_number, error=str(exc))

    async def _isolate(self, table: TableSchema, items: list[_Item]) -> None:
        try:
            await self._write(table, items)
        except CdcpipeError as exc:
            if not _poison(exc):
                raise
            if len(items) == 1:
                await self._lone(table, items)
                return
            mid = len(items) // 2
            await self._isolate(table, items[:mid])
            await self._isolate(table, items[mid:])

    async def _reproduce(self, table: TableSchema, items: list[_Item]) -> CdcpipeError | None:
        """Before a record becomes a dead letter: wait until PostgreSQL answers, then write it once more.
        Returns the error if a reachable server refuses it again, ``None`` if it was applied this time — so
        an error that the client raised while the server was going away never dead-letters a good event."""
        async for attempt in self._retrying(table):
            with attempt:
                await self._writer.ping()
        try:
            await self._write(table, items)
        except CdcpipeError as exc:
            if not _poison(exc):
                raise
            return exc
        return None

    async def _lone(self, table: TableSchema, items: list[_Item]) -> None:
        """A record PostgreSQL refused alone: dead-letter it if the refusal is confirmed and a known-good probe write
        to its table succeeds; while the probe is refused too, the table is at fault: hold the record (pause,
        retry with backoff) until either it is applied or the probe succeeds."""
        delay = 1.0
        rec = items[0].record
        cp = Checkpoint(self._group, rec.topic, rec.partition, rec.offset + 1)
        while True:
            confirmed = await self._reproduce(table, items)
            if confirmed is None:
                return
            try:
                async for attempt in AsyncRetrying(  # a transient failure of the probe itself: try again
                        retry=retry_if_exception(_transient), reraise=True,
                        wait=wait_exponential(multiplier=1, min=1, max=self._max_wait)):
                    with attempt:
                        await self._writer.probe(table, cp)
            except CdcpipeError as exc:
                if isinstance(exc, UnsupportedTableError):
                    raise
                sqlstate = exc.sqlstate if isinstance(exc, ApplyError) else None
                fault = TableFaultError(f"{confirmed} (and a known-good probe write failed: {exc})",
                                        table=table.name, topic=rec.topic, partition=rec.partition,
                                        offset=rec.offset, sqlstate=sqlstate or getattr(confirmed, "sqlstate", None))
                metrics.RETRIES.labels(table.name).inc()
                self._pause(table, fault)
                log.warning("record and probe refused: table at fault, holding", table=table.name,
                            topic=rec.topic, partition=rec.partition, offset=rec.offset, error=str(fault),
                            retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_wait)
                continue
            await self._dead_letter(DeadLetter(rec, table.name, confirmed, 0))
            return

    def _pause(self, table: TableSchema, exc: BaseException) -> None:
        """Report ``table`` held by ``exc`` (a table's or server's fault): health, gauge."""
        sqlstate = getattr(exc, "sqlstate", None) or "?"
        was = self.paused.get(table.name)
        if was is not None and was != sqlstate:
            metrics.PAUSED.labels(table.name, was).set(0)
        self.paused[table.name] = sqlstate
        metrics.PAUSED.labels(table.name, sqlstate).set(1)
        where = f" at {exc.topic}[{exc.partition}]" if isinstance(exc, ApplyError) and exc.topic else ""
        self._health.fail(f"paused:{table.name}",
                          f"writes to {table.name}{where} paused by SQLSTATE {sqlstate}: {exc}; nothing is skipped, "
                          f"retrying every <= {self._max_wait:g} s until it is fixed")

    def _resume(self, table: TableSchema) -> str | None:
        """Report ``table`` no longer held; returns the SQLSTATE that held it (None: it was not held)."""
        sqlstate = self.paused.pop(table.name, None)
        if sqlstate is not None:
            metrics.PAUSED.labels(table.name, sqlstate).set(0)
            self._health.ok(f"paused:{table.name}")
            log.info("table writes resumed", table=table.name, sqlstate=sqlstate)
        return sqlstate

    def _retrying(self, table: TableSchema | None = None,
                  on_retry: Callable[[Any], None] | None = None) -> AsyncRetrying:
        """The retry policy: retriable errors, forever, backing off 1 s → ``max_wait_s``; with ``table``, each
        failure is counted and fed to the circuit breaker; ``on_retry`` (else) is called before each wait."""
        return AsyncRetrying(retry=retry_if_exception(_retriable), reraise=True,
                             wait=wait_exponential(multiplier=1, min=1, max=self._max_wait),
                             before_sleep=on_retry if table is None else lambda rs: self._failed(table, rs))

    async def _write(self, table: TableSchema, items: list[_Item]) -> None:
        last = items[-1].record
        cp = Checkpoint(self._group, last.topic, last.partition, last.offset + 1)
        if table.table_id in self.gone:  # dropped in Cassandra, and its mirror with it: nothing to write to
            async for attempt in self._retrying(table):
                with attempt:
                    await self._writer.advance(cp)
            metrics.DROPPED_TABLE_EVENTS.labels(table.name).inc(len(items))
            return
        positioned = [Positioned(i.event, i.record.offset) for i in items]
        started = time.monotonic()
        async for attempt in self._retrying(table):
            with attempt:
                result = await self._writer.write(table, positioned, cp)
        self._breaker.success()
        if self._resume(table) == "42703":  # a column dropped by hand is back: refill it from the stored state
            async for attempt in self._retrying(table):
                with attempt:
                    rows = await self._writer.refresh(table)
            log.info("table re-written from its stored state after a dropped column came back", table=table.name,
                     rows=rows)
        if self._writer.refill_pending(table):
            async for attempt in self._retrying(table):
                with attempt:
                    refilled = await self._writer.refill(table)
            log.info("column added again after a drop in Cassandra: rows re-written without the values written "
                     "before the drop", table=table.name, rows=refilled)
        metrics.BATCH_SIZE.observe(len(items))
        metrics.BATCH_SECONDS.observe(time.monotonic() - started)
        oldest = min((i.record.timestamp_ms for i in items if i.record.timestamp_ms), default=0)
        if oldest:
            metrics.DELAY.labels(table.name).observe(max(0.0, time.time() - oldest / 1000))
        if result.already_applied:
            metrics.DUPLICATES.labels(table.name, "already_applied").inc(result.already_applied)
        if result.unchanged:
            metrics.DUPLICATES.labels(table.name, "unchanged_row").inc(result.unchanged)
        if result.redundant:
            metrics.DUPLICATES.labels(table.name, "in_batch").inc(result.redundant)
        by_op: dict[str, int] = {}
        for i in items[result.already_applied:]:
            op = i.event.op.value
            by_op[op] = by_op.get(op, 0) + 1
        for op, n in by_op.items():  # one labelled increment per operation, not per event
            metrics.EVENTS_APPLIED.labels(table.name, op).inc(n)
        log.debug("batch applied", table=table.name, topic=last.topic, partition=last.partition,
                  offset=last.offset, events=len(items), upserted=result.upserted, removed=result.removed)

    def _failed(self, table: TableSchema, state: Any) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        metrics.RETRIES.labels(table.name).inc()
        self._breaker.failure(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, TableFaultError):
            self._pause(table, exc)
        log.warning("batch write failed, retrying", table=table.name, attempt=state.attempt_number,
                    error=str(exc))

    async def _dead_letter(self, letter: DeadLetter) -> None:
        r = letter.record
        log.error("dead letter", table=letter.table, topic=r.topic, partition=r.partition, offset=r.offset,
                  error_type=letter.error_type, error=str(letter.error))
        async for attempt in self._retrying(on_retry=self._dead_letter_failed):
            with attempt:
                await asyncio.to_thread(self._dlq.send_blocking, letter)
                await self._dlq.store(letter)
        if attempt.retry_state.attempt_number > 1:
            self._breaker.success()
        metrics.DLQ_EVENTS.labels(letter.table or "?").inc()

    def _dead_letter_failed(self, state: Any) -> None:
        """A dead letter not stored yet (Kafka or PostgreSQL unreachable or refusing): not ready until it is."""
        exc = state.outcome.exception() if state.outcome is not None else None
        self._breaker.failure(f"dead letter not stored yet: {type(exc).__name__}: {exc}")
        log.warning("dead letter not stored, retrying", attempt=state.attempt_number, error=str(exc))
