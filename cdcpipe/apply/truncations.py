"""``TRUNCATE`` mirrored: the truncations capture publishes, as apply reads and applies them.

Cassandra does not log a truncation in the commit log: each node records it, with its time, in ``system.local``'s
``truncated_at``; capture publishes what its node recorded to the compacted ``<prefix>.truncations`` topic (one
record per table and node, :func:`record_value`).  Apply reads that topic from the beginning (as it reads the
schemas topic) and keeps, per table, the latest truncation time.  A truncation is applied as a deletion of every
partition of the table at that time — everything written at or before it is gone, what was written after it stays:

- every batch of the table joins that deletion into the partitions it touches (so events written before the
  truncation and applied after it are shadowed);
- once per truncation, every row and partition state already stored is re-written with it (``BatchWriter.truncate``),
  and the truncation is recorded in ``cdcpipe_truncations`` so that it is not redone.

Cassandra drops what *reached the node* before the truncation, whatever its write timestamp: a write sent before
the truncation with a timestamp in the future survives here until that time, and one sent after it with a
timestamp in the past is dropped here (docs/delivery.md § Schema changes).
"""

from __future__ import annotations

from typing import Any

from cdcpipe.apply.decode import SchemaReader
from cdcpipe.truncated import TruncationRecord

DDL = ("CREATE TABLE IF NOT EXISTS cdcpipe_truncations (table_name text PRIMARY KEY, truncated_at_us bigint NOT NULL, "
       "applied_at timestamptz NOT NULL DEFAULT now())")


class TruncationReader(SchemaReader):
    """Reads ``<prefix>.truncations``; ``latest`` maps ``keyspace.table`` to its latest truncation (µs)."""

    def __init__(self, consumer: Any, topic: str) -> None:
        super().__init__(consumer, topic)
        self.latest: dict[str, int] = {}

    def take(self, key: bytes | None, value: bytes) -> None:
        found = TruncationRecord.from_value(value)
        if found is not None and found.truncated_at_ms * 1000 > self.latest.get(found.table, -1):
            self.latest[found.table] = found.truncated_at_ms * 1000


async def applied(conn: Any, schema_prefix: str = "") -> dict[str, int]:
    """The truncations already applied to the stored states, per table, of the mirror with ``schema_prefix``
    (``postgres.schema_prefix``: rows are keyed ``<schema_prefix><keyspace>.<table>``, so mirrors of two prefixes in
    one database keep their own)."""
    await conn.execute(DDL)
    found = await conn.fetch("SELECT table_name, truncated_at_us FROM cdcpipe_truncations WHERE starts_with("
                             "table_name, $1)", schema_prefix)
    return {r[0][len(schema_prefix):]: int(r[1]) for r in found}


async def record(conn: Any, table: str, truncated_at_us: int) -> None:
    await conn.execute(
        "INSERT INTO cdcpipe_truncations (table_name, truncated_at_us) VALUES ($1, $2) ON CONFLICT (table_name) DO "
        "UPDATE SET truncated_at_us = GREATEST(cdcpipe_truncations.truncated_at_us, EXCLUDED.truncated_at_us), "
        "applied_at = now()", table, truncated_at_us)
