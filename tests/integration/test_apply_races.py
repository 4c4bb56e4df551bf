"""BatchWriter transactions that touch the same Cassandra partition at the same time, against the real PostgreSQL.

Batches of one Cassandra partition never run concurrently (its events share a Kafka partition), but the
maintenance pass that re-views rows changed by TTL expiry runs beside them — in this process or another apply
process.  Under READ COMMITTED a statement does not see rows a concurrent transaction inserted and committed while
the statement waited for a row lock, so the later transaction must not even start reading before the earlier one
committed.  (Found by test_postgres_restart: a static value missing in PostgreSQL.)
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from cdcpipe.apply.checkpoint import Checkpoint
from cdcpipe.apply.tables import ident
from cdcpipe.apply.writer import BatchWriter, Positioned
from tests.support.applykit import Clock, content
from tests.support.mergekit import NOW, TABLES, insert, update


async def slow_next_commit(pool: Any, schema: str, table: str, seconds: float) -> None:
    """The next transaction that writes a row of ``table`` sleeps ``seconds`` in its commit, holding its locks
    (a deferred constraint trigger; the first transaction to fire it consumes the flag)."""
    s = ident(schema)
    await pool.execute(f"CREATE TABLE {s}.slow_flag (x int); INSERT INTO {s}.slow_flag VALUES (1)")
    await pool.execute(
        f"CREATE FUNCTION {s}.slow_once() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF EXISTS (SELECT 1 FROM {s}.slow_flag) THEN DELETE FROM {s}.slow_flag; PERFORM pg_sleep({seconds}); "
        "END IF; RETURN NULL; END $$")
    await pool.execute(f"CREATE CONSTRAINT TRIGGER slow_once AFTER INSERT OR UPDATE ON {s}.{ident(table)} "
                       f"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {s}.slow_once()")


async def test_expiry_pass_beside_a_first_static_write_keeps_the_static(pool: Any, prefix: str,
                                                                          cleanup: None) -> None:
    clock = Clock(NOW + 1)
    writer = BatchWriter(pool, schema_prefix=prefix, clock=clock)
    st = TABLES["st"]
    # row (1, 1) lives (row marker); its v expires at NOW + 60; the partition has no static value yet
    await writer.write(st, [Positioned(insert("st", (1, 1), 10), 0),
                            Positioned(update("st", (1, 1), 11, ttl=59, v="a"), 1)], None)
    await slow_next_commit(pool, prefix + "ks", "st", 3.0)
    clock.now = NOW + 100  # v has expired: the expiry pass will re-view the row
    first_static = asyncio.create_task(writer.write(st, [Positioned(update("st", (1,), 12, s="S"), 2)], None))
    await asyncio.sleep(1.0)  # the static write is in its commit: partition state inserted, row (1, 1) locked
    started = time.monotonic()
    assert await writer.expire(st) == 1
    await first_static
    assert time.monotonic() - started > 1.0  # the expiry pass did wait for the static write
    assert await content(pool, prefix, "st") == [{"k": 1, "c": 1, "s": "S", "v": None}]


async def test_two_owners_of_a_partition_during_a_rebalance_lose_nothing(pool: Any, prefix: str,
                                                                         cleanup: None) -> None:
    """During a rebalance the old owner of a Kafka partition may still commit a batch while the new owner, which
    read the older checkpoint, writes the same offsets and more.  The checkpoint makes the new owner skip what the
    old one applied; it must also see the rows the old one inserted, or it rewrites them without their cells."""
    kv = TABLES["kv"]
    old_owner, new_owner = (BatchWriter(pool, schema_prefix=prefix, clock=Clock(NOW + 1)) for _ in range(2))
    await old_owner.write(kv, [Positioned(insert("kv", (0,), 9, v="z"), 0)], Checkpoint(prefix, "tp", 0, 1))
    await slow_next_commit(pool, prefix + "ks", "kv", 3.0)
    inserted = Positioned(insert("kv", (1,), 10, v="a"), 1)
    first = asyncio.create_task(old_owner.write(kv, [inserted], Checkpoint(prefix, "tp", 0, 2)))
    await asyncio.sleep(1.0)  # the old owner is in its commit: row 1 inserted, checkpoint row locked
    second = await new_owner.write(kv, [inserted, Positioned(update("kv", (1,), 11, n=3), 2)],
                                   Checkpoint(prefix, "tp", 0, 3))
    await first
    assert (second.applied, second.already_applied) == (1, 1)
    assert await content(pool, prefix, "kv") == [{"k": 0, "v": "z", "n": None}, {"k": 1, "v": "a", "n": 3}]
