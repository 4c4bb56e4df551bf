"""Apply's checkpoints: per (consumer group, topic, partition) the Kafka offset of the next event to apply.

The row is written in the same PostgreSQL transaction as the batch it follows (:mod:`cdcpipe.apply.writer`), so
PostgreSQL's content and its checkpoint never disagree.  Kafka's committed offsets are only a hint: on assignment
the consumer seeks to the PostgreSQL checkpoint (:func:`load`).  The writer takes an advisory lock per (group,
topic, partition) before it reads, then skips events below ``next_offset``, so a batch applied by another worker
during a rebalance is never applied twice, and its rows are seen whole.

Each row also keeps ``topic_id``: the Kafka topic id its offsets belong to, recorded when the partition is assigned
(:func:`record_topic_id`).  A topic deleted and recreated under the same name has a new id, and its offsets are not
the old ones: apply then stops the partition instead of reading the new topic from an old offset.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

DDL = (
    "CREATE TABLE IF NOT EXISTS cdcpipe_checkpoints (group_id text NOT NULL, topic text NOT NULL, "
    "partition integer NOT NULL, next_offset bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(), "
    "topic_id text, PRIMARY KEY (group_id, topic, partition))"
)
_HAS_TOPIC_ID = ("SELECT 1 FROM pg_attribute WHERE attrelid = 'cdcpipe_checkpoints'::regclass "
                 "AND attname = 'topic_id' AND NOT attisdropped")

UPSERT = (
    "INSERT INTO cdcpipe_checkpoints (group_id, topic, partition, next_offset) VALUES ($1, $2, $3, $4) "
    "ON CONFLICT (group_id, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now() "
    "WHERE cdcpipe_checkpoints.next_offset < EXCLUDED.next_offset"
)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """After a batch commits, ``next_offset`` is the first offset of ``topic[partition]`` not yet applied."""

    group: str
    topic: str
    partition: int
    next_offset: int


class Executor(Protocol):
    """The part of an asyncpg connection or pool this module uses."""

    async def execute(self, query: str, *args: Any) -> str: ...

    async def fetch(self, query: str, *args: Any) -> list[Any]: ...


async def ensure(db: Executor) -> None:
    """Create the table, or add ``topic_id`` to one created by an earlier version (``ALTER TABLE`` only then: it
    takes an exclusive lock)."""
    await db.execute(DDL)
    if not await db.fetch(_HAS_TOPIC_ID):
        await db.execute("ALTER TABLE cdcpipe_checkpoints ADD COLUMN IF NOT EXISTS topic_id text")


async def load(db: Executor, group: str, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    """The stored ``next_offset`` of each of ``partitions`` that has one."""
    rows = await db.fetch(
        "SELECT partition, next_offset FROM cdcpipe_checkpoints WHERE group_id = $1 AND topic = $2 "
        "AND partition = ANY($3::int[])", group, topic, list(partitions))
    return {int(r["partition"]): int(r["next_offset"]) for r in rows}


@dataclass(frozen=True, slots=True)
class Stored:
    """A partition's stored checkpoint: the next offset, and the id of the topic it belongs to (None: not
    recorded yet)."""

    next_offset: int
    topic_id: str | None


async def load_stored(db: Executor, group: str, topic: str, partitions: Iterable[int]) -> dict[int, Stored]:
    """The stored checkpoint of each of ``partitions`` that has one, with its topic id."""
    rows = await db.fetch(
        "SELECT partition, next_offset, topic_id FROM cdcpipe_checkpoints WHERE group_id = $1 AND topic = $2 "
        "AND partition = ANY($3::int[])", group, topic, list(partitions))
    return {int(r["partition"]): Stored(int(r["next_offset"]), r["topic_id"]) for r in rows}


async def record_topic_id(db: Executor, group: str, topic: str, topic_id: str) -> None:
    """Record ``topic_id`` on the group's checkpoints of ``topic`` that have none yet (rows written since the last
    assignment, or by an earlier version)."""
    await db.execute("UPDATE cdcpipe_checkpoints SET topic_id = $3 WHERE group_id = $1 AND topic = $2 "
                     "AND topic_id IS NULL", group, topic, topic_id)
