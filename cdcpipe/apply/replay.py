"""A dead letter replayed through apply's own path: its original event bytes decoded with the schemas topic
(:class:`cdcpipe.apply.decode.SchemaReader`) and written by apply's writer (:class:`cdcpipe.apply.writer.
BatchWriter`, under the table's lock), so the merge's rules decide: an event older than what the mirror holds
changes nothing.  The outcome is recorded on the dead letter in the same breath: ``replayed``, or ``failed`` with
its retry count increased — a failing event stays where it is and is never sent round again by itself."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cdcpipe.apply import dlqstore as store
from cdcpipe.apply import metrics
from cdcpipe.apply.capture_letters import GROUP as CAPTURE_GROUP
from cdcpipe.apply.decode import SchemaReader, decode_delta
from cdcpipe.apply.dlqstore import Letter
from cdcpipe.apply.writer import BatchWriter, Positioned
from cdcpipe.config import Settings
from cdcpipe.errors import EventDecodeError
from cdcpipe.topics import schemas_topic

APPLIED, ALREADY, FAILED, NOT_OPEN = "applied", "already_replayed", "failed", "not_open"
ELSEWHERE = "needs_capture_code"  # a capture dead letter: read again by ``cdcpipe dlq replay``, not by apply


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one replay did: ``result`` is ``applied``, ``already_replayed`` (a no-op), ``not_open`` (resolved
    without a replay: replay refused), ``failed`` (``error`` says why; the dead letter stays) or
    ``needs_capture_code`` (a capture dead letter: only ``cdcpipe dlq replay`` reads it again; nothing changed)."""

    id: int
    result: str
    table: str | None
    error: str | None = None


async def settled(pool: Any, letter: Letter, note: str | None, actor: str,
                  attempt: Callable[[Letter], Awaitable[tuple[str, str]]]) -> Outcome:
    """Replay ``letter`` with ``attempt`` (which returns the outcome's result and the result text to record) unless
    it is replayed already (a no-op) or resolved, and record what happened on it: ``replayed``, or ``failed`` with
    the error and its retry count increased — a failing one stays and is never sent round again by itself."""
    if letter.status == store.REPLAYED:
        return Outcome(letter.id, ALREADY, letter.table)
    if letter.status not in store.OPEN:
        return Outcome(letter.id, NOT_OPEN, letter.table, f"status {letter.status}")
    try:
        result, recorded = await attempt(letter)
    except Exception as exc:  # it fails again: it stays, with its retry counted
        error = f"{type(exc).__name__}: {exc}"
        async with pool.acquire() as conn:
            await store.settle(conn, letter.id, store.FAILED, actor, note, error[:2000])
        return Outcome(letter.id, FAILED, letter.table, error)
    async with pool.acquire() as conn:
        await store.settle(conn, letter.id, store.REPLAYED, actor, note, recorded[:2000])
    return Outcome(letter.id, result, letter.table)


class Replayer:
    """Replays, one at a time, with one schema reader and one writer: ``pool`` an asyncpg pool, ``reader``
    caught up (:meth:`open` makes both)."""

    def __init__(self, pool: Any, reader: SchemaReader, writer: BatchWriter) -> None:
        self._pool = pool
        self._reader = reader
        self._writer = writer
        self._one_at_a_time = asyncio.Lock()  # the reader catches up for one caller at a time

    @classmethod
    async def open(cls, settings: Settings, pool: Any) -> Replayer:
        """A replayer for ``settings``' topics and mirror, its schema reader caught up."""
        reader = SchemaReader.open(settings.kafka.client_config(), schemas_topic(settings.kafka.topic_prefix))
        await asyncio.to_thread(reader.catch_up, 30.0)
        return cls(pool, reader, BatchWriter(pool, grace_s=settings.apply.tombstone_grace_s,
                                             schema_prefix=settings.postgres.schema_prefix))

    async def close(self) -> None:
        await asyncio.to_thread(self._reader.close)

    async def replay(self, letter_id: int, note: str | None, actor: str) -> Outcome:
        """Replay one dead letter, recording ``actor`` and ``note`` on it."""
        async with self._one_at_a_time:
            async with self._pool.acquire() as conn:
                letter = await store.get(conn, letter_id)
            if letter is None:
                raise LookupError(f"no dead letter {letter_id}")
            outcome = await self._replay(letter, note, actor)
        metrics.DLQ_REPLAYS.labels(outcome.result).inc()
        return outcome

    async def _replay(self, letter: Letter, note: str | None, actor: str) -> Outcome:
        if letter.group_id == CAPTURE_GROUP and letter.status in store.OPEN:
            return Outcome(letter.id, ELSEWHERE, letter.table, "a capture dead letter: replay it with `cdcpipe dlq "
                           "replay`, which reads the entry again with capture's code")

        async def attempt(letter: Letter) -> tuple[str, str]:
            await self._apply(letter)
            return APPLIED, APPLIED

        return await settled(self._pool, letter, note, actor, attempt)

    async def _apply(self, letter: Letter) -> None:
        if letter.value is None:
            raise ValueError("the dead letter kept no event bytes")
        try:
            delta, table = decode_delta(letter.value, self._reader)
        except EventDecodeError as exc:
            if not exc.retriable:
                raise
            await asyncio.to_thread(self._reader.catch_up)  # a schema written after the reader caught up
            delta, table = decode_delta(letter.value, self._reader)
        await self._writer.write(table, [Positioned(delta, letter.offset)], None)
