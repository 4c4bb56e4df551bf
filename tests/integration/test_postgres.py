"""PostgreSQL: asyncpg connects with the stack's DSN and COPYs 10,000 rows."""

from __future__ import annotations

import asyncpg

from cdcpipe.config import Settings


async def test_copy_10000_rows(settings: Settings) -> None:
    conn = await asyncpg.connect(settings.require("postgres.dsn").get_secret_value(), timeout=10)
    try:
        await conn.execute("CREATE TEMP TABLE copy_probe (id bigint PRIMARY KEY, name text, score double precision)")
        rows = [(i, f"row {i}", i / 7) for i in range(10_000)]
        async with conn.transaction():
            result = await conn.copy_records_to_table("copy_probe", records=rows)
        assert result == "COPY 10000"
        count, total = await conn.fetchrow("SELECT count(*), sum(id) FROM copy_probe")
        assert count == 10_000
        assert total == sum(range(10_000))
    finally:
        await conn.close()
