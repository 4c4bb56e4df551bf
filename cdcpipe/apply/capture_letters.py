"""Capture's dead letters kept beside apply's: the records of ``<prefix>.capture-dlq`` (commit-log entries capture
could not decode, damage met in a segment it kept in its quarantine directory) copied into ``cdcpipe_dlq``, so
``cdcpipe dlq`` and the admin API list, show, resolve and count them with apply's own.

Every few seconds each apply process reads the topic (``read_committed``: capture writes it in its transactions)
from past the highest offset already copied, to its end, and inserts what it read; several processes may copy the
same record: the row is unique by (``capture``, topic, partition, offset), so it is kept once.  A copied row has
``group_id`` ``capture``, ``error_type`` ``capture.<cause>`` (``capture.entry_crc``, ``capture.undecodable``,
``capture.unknown_table``, ``capture.section`` ...), ``key`` the record's key (its position) and ``value`` the
record itself (JSON: where, why, the entry's bytes as hex).  Records that Kafka's retention removed before they
were copied are not lost silently: one ``capture.expired`` row names the offsets that went.  Their replay reads the
entries again with capture's code (``cdcpipe dlq replay``, :mod:`cdcpipe.capture.reread`); apply cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

import structlog

from cdcpipe import kafka_clients
from cdcpipe.config import Settings
from cdcpipe.topics import capture_dlq_topic

log = structlog.get_logger(__name__)
GROUP = "capture"  # the group_id of capture's dead letters in cdcpipe_dlq
EXPIRED = "capture.expired"
INTERVAL_S = 5.0
_MAX_PER_ROUND = 5000


@dataclass(frozen=True, slots=True)
class Copied:
    """One row to insert: a record of the capture dead-letter topic, or (``expired``) the offsets that went."""

    partition: int
    offset: int
    table: str | None
    error_type: str
    message: str
    key: bytes | None
    value: bytes | None


def row_of(partition: int, offset: int, key: bytes | None, value: bytes | None) -> Copied:
    """The ``cdcpipe_dlq`` row of one capture dead-letter record (a record that is not JSON is kept as it is)."""
    try:
        body = json.loads(value or b"")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return Copied(partition, offset, None, "capture.unreadable_record", "a capture dead-letter record that is "
                      "not a JSON object", key, value)
    where = f"{body.get('segment') or '?'} at {body.get('position') or '?'}"
    table = body.get("table")
    return Copied(partition, offset, table if isinstance(table, str) else None,
                  f"capture.{body.get('cause') or 'unknown'}", f"{body.get('error') or 'no error given'} ({where})",
                  key, value)


class CaptureLetters:
    """Copies capture's dead letters into ``cdcpipe_dlq`` (``run`` until stopped; ``copy`` one round)."""

    def __init__(self, settings: Settings, pool: Any) -> None:
        self.pool = pool
        self.topic = capture_dlq_topic(settings.kafka.topic_prefix)
        self._config = {**settings.kafka.client_config(), "group.id": f"{settings.apply.group_id}.capture-dlq",
                        "enable.auto.commit": False, "isolation.level": "read_committed",
                        "enable.partition.eof": True}
        self._consumer: Any = None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.copy()
            except Exception as exc:  # Kafka or PostgreSQL away: the next round copies what this one did not
                log.warning("capture dead letters not copied, trying again", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), INTERVAL_S)
        await self.close()

    async def close(self) -> None:
        if self._consumer is not None:
            await asyncio.to_thread(self._consumer.close)
            self._consumer = None

    async def copy(self) -> int:
        """Copy what is new; the number of rows inserted."""
        async with self.pool.acquire() as conn:
            stored = {r[0]: r[1] for r in await conn.fetch(
                "SELECT partition, max(kafka_offset) FROM cdcpipe_dlq WHERE group_id = $1 AND topic = $2 "
                "GROUP BY partition", GROUP, self.topic)}
        rows = await asyncio.to_thread(self._read, stored)
        if not rows:
            return 0
        async with self.pool.acquire() as conn:
            await conn.executemany(
                "INSERT INTO cdcpipe_dlq (group_id, topic, partition, kafka_offset, table_name, error_type, message, "
                "retry_count, key, value) VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9) "
                "ON CONFLICT (group_id, topic, partition, kafka_offset) DO NOTHING",
                [(GROUP, self.topic, r.partition, r.offset, r.table, r.error_type, r.message, r.key, r.value)
                 for r in rows])
        log.info("capture dead letters copied", rows=len(rows), topic=self.topic)
        return len(rows)

    def _read(self, stored: dict[int, int]) -> list[Copied]:
        from confluent_kafka import KafkaError, TopicPartition

        if self._consumer is None:

            self._consumer = kafka_clients.consumer(self._config)
        c = self._consumer
        meta = c.list_topics(self.topic, timeout=10).topics.get(self.topic)
        if meta is None or meta.error is not None:
            return []  # no capture has created it yet
        out: list[Copied] = []
        wanted: list[Any] = []
        for p in sorted(meta.partitions):
            low, high = c.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)
            start = stored[p] + 1 if p in stored else low
            if start < low:
                out.append(Copied(p, low - 1, None, EXPIRED, f"capture dead-letter records at offsets {start}.."
                                  f"{low - 1} of partition {p} were removed by Kafka's retention before apply "
                                  "copied them: read capture's log for what they were", None, None))
                log.error("capture dead letters expired before they were copied", topic=self.topic, partition=p,
                          first=start, last=low - 1)
                start = low
            if start < high:
                wanted.append(TopicPartition(self.topic, p, start))
        if not wanted:
            return out
        c.assign(wanted)
        open_parts = {tp.partition for tp in wanted}
        try:
            while open_parts and len(out) < _MAX_PER_ROUND:
                msg = c.poll(2.0)
                if msg is None:
                    break
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        open_parts.discard(msg.partition())
                        continue
                    raise RuntimeError(err.str())
                out.append(row_of(msg.partition(), msg.offset(), msg.key(), msg.value()))
        finally:
            c.unassign()
        return out
