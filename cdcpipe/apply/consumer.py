"""The Kafka side of apply: a consumer-group member reading change-event topics with ``read_committed``.

Contract: auto-commit is off; on every assignment the consumer seeks each partition to the checkpoint stored in
PostgreSQL (``load_checkpoints``; a partition PostgreSQL has none for starts at its beginning: Kafka's own committed
offsets are only for tools that read consumer-group lag, and would skip what a restored database lacks), so a
crash anywhere never loses or repeats an applied batch.  Kafka offsets are committed (:meth:`EventConsumer.commit`)
only after the PostgreSQL transaction that stored the same checkpoint committed.  Each assignment bumps the
partition's ``generation``; records of an older generation are dropped by the pipeline (their partition moved).
Every method here except :meth:`EventConsumer.commit` and :meth:`EventConsumer.current` blocks: the pipeline calls
them in a thread.  Those two never call the Kafka client, so the event loop may call them while a rebalance
callback runs (the callback waits for the event loop to load checkpoints; a Kafka call from the loop that waited
for the callback would deadlock).

Never a silent reset (issue 13): a partition whose stored next offset is below the earliest offset Kafka still has
(retention deleted what apply had not read), or whose stored topic id is not the topic's (deleted and recreated;
the loader reports that), is not assigned: ``on_gap`` gets an :class:`cdcpipe.errors.OffsetGapError` and the
partition stays stopped.  ``auto.offset.reset`` is ``error``, so a position that falls out of range while running
stops its partition the same way instead of jumping to the earliest offset; a partition with no stored checkpoint
starts at the beginning explicitly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import structlog
from confluent_kafka import KafkaError

from cdcpipe import kafka_clients
from cdcpipe.config import Settings
from cdcpipe.errors import OffsetGapError
from cdcpipe.topics import events_pattern, table_of

log = structlog.get_logger(__name__)


class Record(NamedTuple):
    """One Kafka record of an event topic, as read (a NamedTuple, not a frozen dataclass: one is built per record,
    at a third of the cost)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    generation: int
    timestamp_ms: int = 0  # the record's Kafka timestamp (capture's produce time); 0 when the broker gave none


def _committed(err: Any, partitions: list[Any]) -> None:
    """librdkafka's report of an asynchronous offset commit (served by the polling thread)."""
    failed = [f"{tp.topic}[{tp.partition}]" for tp in partitions if tp.error is not None]
    if err is not None or failed:
        log.warning("kafka offset commit failed", error=str(err), partitions=failed)


class EventConsumer:
    """Wraps a confluent-kafka Consumer.  ``load_checkpoints(topic, partitions)`` returns PostgreSQL's
    next offsets (or, for a partition whose offsets are gone, the error saying so); it is called from the polling
    thread during a rebalance.  ``on_gap`` is called (polling thread) for each partition stopped by a gap."""

    def __init__(self, settings: Settings,
                 load_checkpoints: Callable[[str, list[int]], Mapping[int, int | OffsetGapError]],
                 on_revoke: Callable[[list[tuple[str, int]]], None] = lambda parts: None,
                 on_gap: Callable[[OffsetGapError], None] = lambda gap: None) -> None:

        conf: dict[str, Any] = {
            **settings.kafka.client_config(),
            **settings.kafka.fetch_config(),  # a fetch may return the largest event (kafka.max_message_bytes)
            "group.id": settings.apply.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "error",  # never jump over offsets that are gone: see the module's docstring
            "queued.max.messages.kbytes": 16384,  # bounds librdkafka's prefetch (default 64 MB) for apply's RSS
            "topic.metadata.refresh.interval.ms": 5000,
            "on_commit": _committed,
        }
        self._consumer = kafka_clients.consumer(conf)
        self._load = load_checkpoints
        self._on_revoke = on_revoke
        self._on_gap = on_gap
        self._prefix = settings.kafka.topic_prefix
        self._next: dict[tuple[str, int], int] = {}  # per partition: the offset after the last record read
        self._lock = threading.Lock()
        self.generations: dict[tuple[str, int], int] = {}
        self._commits: dict[tuple[str, int], int] = {}  # next offsets to commit, handed to the polling thread
        self._consumer.subscribe([events_pattern(settings.kafka.topic_prefix)], on_assign=self._assigned,
                                 on_revoke=self._revoked)

    def _assigned(self, consumer: Any, partitions: list[Any]) -> None:
        from confluent_kafka import OFFSET_BEGINNING

        by_topic: dict[str, list[int]] = {}
        for tp in partitions:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        stored: dict[tuple[str, int], int | OffsetGapError] = {}
        for topic, parts in by_topic.items():
            for p, off in self._load(topic, parts).items():
                stored[(topic, p)] = off
        gaps: list[OffsetGapError] = []
        assign = []
        with self._lock:
            for tp in partitions:
                key = (tp.topic, tp.partition)
                self.generations[key] = self.generations.get(key, 0) + 1
                found = stored.get(key)
                if isinstance(found, int):
                    found = self._below_earliest(consumer, tp, found)
                if isinstance(found, OffsetGapError):
                    gaps.append(found)
                    continue
                tp.offset = OFFSET_BEGINNING if found is None else found
                self._next[key] = found or 0
                assign.append(tp)
        consumer.assign(assign)
        log.info("partitions assigned", partitions=[f"{t.topic}[{t.partition}]@{t.offset}" for t in assign])
        for gap in gaps:
            self._gap(gap)

    def _below_earliest(self, consumer: Any, tp: Any, next_offset: int) -> int | OffsetGapError:
        """``next_offset``, or the gap when Kafka's earliest offset of ``tp`` is above it (or its end offset below
        it: a topic recreated, or a log truncated, before its id was recorded).  When the broker does not say, the
        offset is kept: a position out of range still stops the partition (``auto.offset.reset``)."""
        from confluent_kafka import KafkaException

        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
        except KafkaException as exc:
            log.warning("earliest offset unknown at assignment", topic=tp.topic, partition=tp.partition,
                        error=str(exc))
            return next_offset
        if next_offset < low:
            return self.gap_error(tp.topic, tp.partition, next_offset, low - 1, "deleted by retention before apply "
                                  "read them")
        if next_offset > high >= 0:
            return self.gap_error(tp.topic, tp.partition, next_offset, -1, f"the partition ends at {high}, below "
                                  "the checkpoint: the topic was recreated or its log truncated")
        return next_offset

    def gap_error(self, topic: str, partition: int, first: int, last: int, cause: str) -> OffsetGapError:
        table = table_of(self._prefix, topic)
        return OffsetGapError(topic, partition, first, last, cause, table=table)

    def _gap(self, gap: OffsetGapError) -> None:
        log.error("partition stopped: offsets are gone", topic=gap.topic, partition=gap.partition, first=gap.first,
                  last=gap.last, error=str(gap))
        self._on_gap(gap)

    def _revoked(self, consumer: Any, partitions: list[Any]) -> None:
        with self._lock:
            for tp in partitions:
                key = (tp.topic, tp.partition)
                self.generations[key] = self.generations.get(key, 0) + 1
        self._on_revoke([(tp.topic, tp.partition) for tp in partitions])
        consumer.unassign()
        log.info("partitions revoked", partitions=[f"{t.topic}[{t.partition}]" for t in partitions])

    def current(self, topic: str, partition: int, generation: int) -> bool:
        with self._lock:
            return self.generations.get((topic, partition)) == generation

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        """Send the offset commits queued by :meth:`commit`, then read up to ``max_records`` records (errors are
        logged; partition EOFs skipped)."""
        self._send_commits()
        out = []
        messages = self._consumer.consume(max_records, timeout=timeout_s)
        with self._lock:  # generations change only in this thread's rebalance callbacks, inside consume
            generations = dict(self.generations)
        for m in messages:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._AUTO_OFFSET_RESET and m.topic() is not None:  # the position is gone
                    self._out_of_range(str(m.topic()), int(m.partition() or 0), str(err))
                elif err.code() != KafkaError._PARTITION_EOF:
                    log.warning("kafka consumer error", error=str(err))
                continue
            topic, partition, offset = str(m.topic()), int(m.partition() or 0), int(m.offset() or 0)
            self._next[(topic, partition)] = offset + 1
            gen = generations.get((topic, partition), 0)
            key = m.key()
            kind, stamp = m.timestamp()
            out.append(Record(topic, partition, offset, bytes(key) if key is not None else None,
                              bytes(m.value() or b""), gen, stamp if kind != 0 and stamp > 0 else 0))
        return out

    def _out_of_range(self, topic: str, partition: int, reason: str) -> None:
        """The partition's position fell below Kafka's earliest offset while running: pause it, report the gap."""
        from confluent_kafka import KafkaException, TopicPartition

        tp = TopicPartition(topic, partition)
        self._consumer.pause([tp])
        first = self._next.get((topic, partition), 0)
        try:
            low, _ = self._consumer.get_watermark_offsets(tp, timeout=10)
        except KafkaException:
            low = -1
        self._gap(self.gap_error(topic, partition, first, low - 1 if low > first else -1,
                                 f"deleted by retention while apply was behind: {reason}"))

    def commit(self, topic: str, partition: int, next_offset: int) -> None:
        """Queue ``next_offset`` of one partition for the polling thread, which commits it asynchronously at its
        next :meth:`poll` (never blocks, never calls Kafka).  A failed commit is only logged: PostgreSQL holds the
        checkpoint that counts, Kafka's offset is for tools that read consumer-group lag."""
        with self._lock:
            key = (topic, partition)
            if next_offset > self._commits.get(key, -1):
                self._commits[key] = next_offset

    def _send_commits(self) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        with self._lock:
            pending, self._commits = self._commits, {}
        if not pending:
            return
        try:
            self._consumer.commit(offsets=[TopicPartition(t, p, off) for (t, p), off in pending.items()],
                                  asynchronous=True)
        except KafkaException as exc:
            log.warning("kafka offset commit failed", partitions=[f"{t}[{p}]" for t, p in pending],
                        error=str(exc))

    def lag(self) -> dict[tuple[str, int], int]:
        """High watermark minus position, per assigned partition (from the client's cached statistics)."""
        out = {}
        for tp in self._consumer.assignment():
            try:
                _, high = self._consumer.get_watermark_offsets(tp, cached=True)
                (pos,) = self._consumer.position([tp])
                if pos.offset >= 0 and high >= 0:
                    out[(tp.topic, tp.partition)] = max(0, high - pos.offset)
            except Exception:  # watermarks unknown yet
                continue
        return out

    def close(self) -> None:
        """Send the queued offset commits and leave the group."""
        self._send_commits()
        self._consumer.close()
