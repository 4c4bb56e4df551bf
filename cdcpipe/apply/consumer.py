"""The Kafka side of apply: a consumer-group member reading change-event topics with ``read_committed``.

Contract: auto-commit is off; on every assignment the consumer seeks each partition to the checkpoint stored in
PostgreSQL (``load_checkpoints``; Kafka's own committed offset is used only where PostgreSQL has none), so a crash
anywhere never loses or repeats an applied batch.  Kafka offsets are committed (:meth:`EventConsumer.commit`)
only after the PostgreSQL transaction that stored the same checkpoint committed.  Each assignment bumps the
partition's ``generation``; records of an older generation are dropped by the pipeline (their partition moved).
Every method here except :meth:`EventConsumer.commit` and :meth:`EventConsumer.current` blocks: the pipeline calls
them in a thread.  Those two never call the Kafka client, so the event loop may call them while a rebalance
callback runs (the callback waits for the event loop to load checkpoints; a Kafka call from the loop that waited
for the callback would deadlock).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from cdcpipe.config import Settings
from cdcpipe.topics import events_pattern

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Record:
    """One Kafka record of an event topic, as read."""

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
    next offsets; it is called from the polling thread during a rebalance."""

    def __init__(self, settings: Settings, load_checkpoints: Callable[[str, list[int]], dict[int, int]],
                 on_revoke: Callable[[list[tuple[str, int]]], None] = lambda parts: None) -> None:
        from confluent_kafka import Consumer

        conf: dict[str, Any] = {
            **settings.kafka.client_config(),
            "group.id": settings.apply.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "queued.max.messages.kbytes": 16384,  # bounds librdkafka's prefetch (default 64 MB) for apply's RSS
            "topic.metadata.refresh.interval.ms": 5000,
            "on_commit": _committed,
        }
        self._consumer = Consumer(conf)
        self._load = load_checkpoints
        self._on_revoke = on_revoke
        self._lock = threading.Lock()
        self.generations: dict[tuple[str, int], int] = {}
        self._commits: dict[tuple[str, int], int] = {}  # next offsets to commit, handed to the polling thread
        self._consumer.subscribe([events_pattern(settings.kafka.topic_prefix)], on_assign=self._assigned,
                                 on_revoke=self._revoked)

    def _assigned(self, consumer: Any, partitions: list[Any]) -> None:
        by_topic: dict[str, list[int]] = {}
        for tp in partitions:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        stored: dict[tuple[str, int], int] = {}
        for topic, parts in by_topic.items():
            for p, off in self._load(topic, parts).items():
                stored[(topic, p)] = off
        with self._lock:
            for tp in partitions:
                key = (tp.topic, tp.partition)
                self.generations[key] = self.generations.get(key, 0) + 1
                if key in stored:
                    tp.offset = stored[key]
        consumer.assign(partitions)
        log.info("partitions assigned", partitions=[f"{t.topic}[{t.partition}]@{t.offset}" for t in partitions])

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
        for m in self._consumer.consume(max_records, timeout=timeout_s):
            err = m.error()
            if err is not None:
                if err.code() != -191:  # _PARTITION_EOF
                    log.warning("kafka consumer error", error=str(err))
                continue
            topic, partition, offset = str(m.topic()), int(m.partition() or 0), int(m.offset() or 0)
            with self._lock:
                gen = self.generations.get((topic, partition), 0)
            key = m.key()
            kind, stamp = m.timestamp()
            out.append(Record(topic, partition, offset, bytes(key) if key is not None else None,
                              bytes(m.value() or b""), gen, stamp if kind != 0 and stamp > 0 else 0))
        return out

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
