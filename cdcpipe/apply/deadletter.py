"""Dead letters: events apply cannot apply, kept with their coordinates instead of being dropped.

A poison event goes (1) to the Kafka topic ``<prefix>.dlq`` with its original key and bytes and headers naming
the error type, message, table, topic, partition, offset and retry count (delivery awaited), then (2) into the
table ``cdcpipe_dlq`` in the same PostgreSQL transaction that moves the partition's checkpoint past it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cdcpipe.apply import checkpoint as ckpt
from cdcpipe.apply.checkpoint import Checkpoint
from cdcpipe.apply.consumer import Record
from cdcpipe.config import KafkaSettings, replication_factor
from cdcpipe.errors import KafkaProduceError, postgres_error

DDL = (
    "CREATE TABLE IF NOT EXISTS cdcpipe_dlq (id bigserial PRIMARY KEY, group_id text NOT NULL, topic text NOT NULL, "
    "partition integer NOT NULL, kafka_offset bigint NOT NULL, table_name text, error_type text NOT NULL, "
    "message text NOT NULL, retry_count integer NOT NULL, key bytea, value bytea, "
    "created_at timestamptz NOT NULL DEFAULT now(), UNIQUE (group_id, topic, partition, kafka_offset))"
)
# What an operator did with a dead letter (``cdcpipe dlq``): added to tables made before 0.3 too.
DDL_RESOLUTION = (
    "ALTER TABLE cdcpipe_dlq ADD COLUMN IF NOT EXISTS status text NOT NULL DEFAULT 'pending', "
    "ADD COLUMN IF NOT EXISTS resolved_at timestamptz, ADD COLUMN IF NOT EXISTS resolved_by text, "
    "ADD COLUMN IF NOT EXISTS note text, ADD COLUMN IF NOT EXISTS result text, "
    "ADD COLUMN IF NOT EXISTS replays integer NOT NULL DEFAULT 0"
)


async def ensure_table(pool: Any) -> None:
    """Create ``cdcpipe_dlq``, or add the resolution columns to one made before them (one at a time: a lock)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('cdcpipe_dlq ddl'))")
        await conn.execute(DDL)
        exists = await conn.fetchval("SELECT 1 FROM information_schema.columns WHERE table_name = 'cdcpipe_dlq' "
                                     "AND column_name = 'replays' AND table_schema = current_schema()")
        if not exists:
            await conn.execute(DDL_RESOLUTION)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: Record
    table: str
    error: BaseException
    retries: int

    @property
    def error_type(self) -> str:
        """The error's code where it has one (``SCHEMA_MISMATCH``), else its class name."""
        code = getattr(self.error, "code", None)
        return code if isinstance(code, str) else type(self.error).__name__

    def headers(self) -> list[tuple[str, bytes]]:
        return [("error_type", self.error_type.encode()), ("error_message", str(self.error).encode()),
                ("table", self.table.encode()), ("topic", self.record.topic.encode()),
                ("partition", str(self.record.partition).encode()), ("offset", str(self.record.offset).encode()),
                ("retry_count", str(self.retries).encode())]


class DeadLetterer:
    """``producer`` is a confluent-kafka Producer; :meth:`send_blocking` runs in a thread, :meth:`store` on the
    loop."""

    def __init__(self, pool: Any, producer: Any, topic: str, group: str) -> None:
        self._pool = pool
        self._producer = producer
        self.topic = topic
        self._group = group

    async def ensure(self) -> None:
        await ensure_table(self._pool)

    def ensure_topic_blocking(self, admin: Any, timeout_s: float = 30.0, *, kafka: KafkaSettings | None = None,
                              replication: int | None = None) -> None:
        """Create the dead-letter topic unless it exists (the broker may not auto-create topics): it takes the
        largest event (``kafka.max_message_bytes``; without ``kafka``, its default) and is replicated
        ``replication`` times (None: min(3, brokers), see :func:`cdcpipe.config.replication_factor`)."""
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.cimpl import NewTopic

        if replication is None:
            replication = replication_factor(None, len(admin.list_topics(timeout=timeout_s).brokers))
        config = (kafka or KafkaSettings()).topic_config()
        new = NewTopic(self.topic, num_partitions=1, replication_factor=replication, config=config)
        future = admin.create_topics([new], operation_timeout=timeout_s)[self.topic]
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise KafkaProduceError(f"create dead-letter topic: {err.str()}", topic=self.topic,
                                        retriable=err.retriable()) from exc

    def send_blocking(self, letter: DeadLetter, timeout_s: float = 30.0) -> None:
        errors: list[Any] = []
        self._producer.produce(self.topic, key=letter.record.key, value=letter.record.value,
                               headers=letter.headers(), on_delivery=lambda err, msg: errors.append(err))
        remaining = self._producer.flush(timeout_s)
        if remaining or not errors or errors[0] is not None:
            raise KafkaProduceError(f"dead letter not delivered: {errors[0] if errors else 'timeout'}",
                                    topic=self.topic, retriable=True)

    async def store(self, letter: DeadLetter) -> None:
        r = letter.record
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO cdcpipe_dlq (group_id, topic, partition, kafka_offset, table_name, error_type, "
                    "message, retry_count, key, value) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) "
                    "ON CONFLICT (group_id, topic, partition, kafka_offset) DO NOTHING",
                    self._group, r.topic, r.partition, r.offset, letter.table, letter.error_type,
                    str(letter.error), letter.retries, r.key, r.value)
                await conn.execute(ckpt.UPSERT, self._group, r.topic, r.partition, r.offset + 1)
        except Exception as exc:
            raise postgres_error(exc, table=letter.table, topic=r.topic, partition=r.partition,
                                 offset=r.offset) from exc

    def checkpoint_after(self, letter: DeadLetter) -> Checkpoint:
        r = letter.record
        return Checkpoint(self._group, r.topic, r.partition, r.offset + 1)
