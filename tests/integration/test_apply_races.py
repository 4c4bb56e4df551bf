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

from cdcpipe.apply.tables import ident
from cdcpipe.apply.writer import BatchWriter, Positioned
from tests.integration.test_apply_writer import Clock, cleanup, content, pool, prefix
from tests.unit.mergekit import NOW, TABLES, insert, update

__all__ = ["cleanup", "pool", "prefix"]


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
