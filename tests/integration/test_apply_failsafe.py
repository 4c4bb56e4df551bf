"""Faults of a table or of the server never dead-letter a healthy stream (issue 13, item 2).

Apply runs in the test's event loop against a PostgreSQL database of the test's own (created here, so a read-only
database or a revoked privilege touches no other test on the shared server).  Mid-stream, one fault at a time:
the database turned read-only (``default_transaction_read_only`` + its sessions ended, as a failover to a standby
looks), ``REVOKE`` on the mirror table, ``ALTER TABLE … DROP COLUMN`` by hand, a trigger that refuses every row
with a data-exception SQLSTATE.  Each time: the partition is held at its checkpoint, the ``paused:ks.tx`` health
condition names the SQLSTATE, the gauge ``cdcpipe_apply_paused`` is 1, nothing is dead-lettered; after the fix,
apply resumes by itself and the table holds exactly what was produced."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr

from cdcpipe.apply import pipeline
from cdcpipe.apply.tables import ident
from cdcpipe.config import Settings
from cdcpipe.runtime import Health
from tests.support.applykit import TX, drop_run, encode_tx, event, next_offset, run_settings, tx_topics, wait_for

pytestmark = pytest.mark.timeout(240)


def _dsn(dsn: str, database: str) -> str:
    base, _, rest = dsn.rpartition("/")
    query = rest.partition("?")[2]
    return f"{base}/{database}" + (f"?{query}" if query else "")


@pytest.fixture
async def private_db(settings: Settings) -> AsyncIterator[tuple[str, Any]]:
    """(dsn, admin pool on the shared database) of a database of the test's own, dropped afterwards."""
    dsn = settings.require("postgres.dsn").get_secret_value()
    name = f"cdcpipe_fs_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        yield _dsn(dsn, name), admin
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def _end_sessions(admin: Any, database: str) -> None:
    await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 "
                        "AND pid <> pg_backend_pid()", database)


def _paused(sqlstate: str) -> float:
    return REGISTRY.get_sample_value("cdcpipe_apply_paused", {"table": "ks.tx", "sqlstate": sqlstate}) or 0.0


async def test_table_faults_hold_the_partition_and_resume(settings: Settings,
                                                          private_db: tuple[str, Any]) -> None:
    dsn, admin = private_db
    database = dsn.rpartition("/")[2].partition("?")[0]
    prefix = f"itf{uuid.uuid4().hex[:8]}"
    topic, schemas_topic = f"{prefix}.ks.tx", f"{prefix}.schemas"
    kafka = settings.kafka.client_config()
    kadmin, producer, schema = tx_topics(kafka, topic, schemas_topic)
    assert producer.flush(30) == 0
    expected: dict[str, tuple[int | None, str | None]] = {}
    ts = iter(range(10, 10**6))
    sent = [0]

    def send(n: int, tag: str) -> None:
        for i in range(n):
            key = f"{tag}{i % 7}"
            v, text = len(expected) * 10 + i, f"{tag}-{i}"
            producer.produce(topic, key=key.encode(),
                             value=encode_tx(schema, event(TX, key, next(ts), insert=True, v=v, n=text)))
            expected[key] = (v, text)
        assert producer.flush(30) == 0
        sent[0] += n

    cfg = run_settings(settings, prefix, max_wait_ms=50)
    cfg = cfg.model_copy(update={
        "postgres": cfg.postgres.model_copy(update={"dsn": SecretStr(dsn)}),
        "apply": cfg.apply.model_copy(update={"retry_max_wait_s": 2.0, "circuit_failures": 2})})
    health = Health()
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(cfg, health, stop))
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    target = f"{ident(prefix + '_ks')}.{ident('tx')}"

    async def stored() -> int | None:
        if task.done():
            task.result()
        for _ in range(20):
            try:
                found = await pool.fetchval("SELECT next_offset FROM cdcpipe_checkpoints WHERE group_id = $1",
                                            prefix)
                return None if found is None else int(found)
            except asyncpg.UndefinedTableError:
                return None
            except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError):
                await asyncio.sleep(0.2)  # the test's own sessions were ended too
        raise AssertionError("checkpoint not readable")

    async def until(what: str, predicate: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not await predicate():
            assert time.monotonic() < deadline, f"{what}: not reached; health {health.report()}"
            await asyncio.sleep(0.3)

    async def caught_up() -> bool:  # a plain producer: the end offset is the number of events sent
        return await stored() == sent[0] and health.report()[1].get("paused:ks.tx", "ok") == "ok"

    async def dead_letters() -> int:
        return int(await pool.fetchval("SELECT count(*) FROM cdcpipe_dlq"))

    async def content() -> dict[str, tuple[int | None, str | None]]:
        return {r["k"]: (r["v"], r["n"]) for r in await pool.fetch(f"SELECT k, v, n FROM {target}")}

    async def held(sqlstate: str, fix: Any) -> None:
        """The stream is held by ``sqlstate``; ``fix`` repairs it; then everything is applied, nothing lost."""
        before = await stored()
        send(20, f"h{sqlstate}-")

        async def reported() -> bool:
            return sqlstate in health.report()[1].get("paused:ks.tx", "")
        await until(f"paused by {sqlstate}", reported)
        reason = health.report()[1]["paused:ks.tx"]
        print(f"health while held by {sqlstate}: {reason}")
        assert not health.report()[0] and "ks.tx" in reason
        assert _paused(sqlstate) == 1.0
        await asyncio.sleep(3)  # a few retries (backoff capped at 2 s): still held, nothing moved on
        assert await stored() == before and await dead_letters() == 0
        await fix()
        await until(f"resumed after {sqlstate}", caught_up)
        assert _paused(sqlstate) == 0.0
        assert await content() == expected and await dead_letters() == 0

    try:
        send(30, "a")
        await until("first rows", caught_up, timeout=90)
        assert await content() == expected

        # 1. read-only: the database turns read-only and its sessions end (a failover to a standby)
        await admin.execute(f"ALTER DATABASE {database} SET default_transaction_read_only = on")
        await _end_sessions(admin, database)

        async def writable() -> None:
            await admin.execute(f"ALTER DATABASE {database} RESET default_transaction_read_only")
            await _end_sessions(admin, database)
        await held("25006", writable)

        # 2. a privilege revoked on the mirror table
        await pool.execute(f"REVOKE INSERT, UPDATE, DELETE ON {target} FROM CURRENT_USER")

        async def granted() -> None:
            await pool.execute(f"GRANT INSERT, UPDATE, DELETE ON {target} TO CURRENT_USER")
        await held("42501", granted)

        # 3. a mirrored column dropped by hand: held (never re-added silently); added back, its values return
        await pool.execute(f"ALTER TABLE {target} DROP COLUMN n")

        async def re_added() -> None:
            await pool.execute(f"ALTER TABLE {target} ADD COLUMN n text")
        await held("42703", re_added)

        # 4. every row refused with a data exception (a trigger added by hand): a lone record is refused, and so is
        #    the known-good probe write: the table's fault, held, not a stream of dead letters
        await pool.execute(
            "CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'refused by hand' USING ERRCODE = '22023'; END $$")
        await pool.execute(f"CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON {target} "
                           "FOR EACH ROW EXECUTE FUNCTION public.refuse()")

        async def dropped_trigger() -> None:
            await pool.execute(f"DROP TRIGGER refuse ON {target}")
        await held("22023", dropped_trigger)

        failing = {k: v for k, v in health.report()[1].items() if v != "ok" and k != "loop"}  # no heartbeat here
        assert not failing, failing
        stop.set()
        assert await asyncio.wait_for(task, 15) == 0
    finally:
        stop.set()
        if not task.done():
            task.cancel()
        await pool.close()
        for f in kadmin.delete_topics([topic, schemas_topic, f"{prefix}.dlq"]).values():
            with contextlib.suppress(Exception):  # not created
                f.result(30)


async def test_column_dropped_while_apply_is_stopped_is_not_re_added(settings: Settings) -> None:
    """A restarted apply does not re-add a column dropped by hand (that would mirror NULLs): it holds the table
    (42703) until the column is added back, then refills it from the stored state."""
    prefix = f"itf{uuid.uuid4().hex[:8]}"
    topic, schemas_topic = f"{prefix}.ks.tx", f"{prefix}.schemas"
    kafka = settings.kafka.client_config()
    kadmin, producer, schema = tx_topics(kafka, topic, schemas_topic)
    for i in range(5):
        producer.produce(topic, key=b"k", value=encode_tx(schema, event(TX, f"k{i}", 10 + i, insert=True, v=i,
                                                                        n=f"n{i}")))
    assert producer.flush(30) == 0
    cfg = run_settings(settings, prefix, max_wait_ms=50)
    cfg = cfg.model_copy(update={"apply": cfg.apply.model_copy(update={"retry_max_wait_s": 2.0})})
    pool = await asyncpg.create_pool(settings.require("postgres.dsn").get_secret_value(), min_size=1, max_size=2)
    target = f"{ident(prefix + '_ks')}.{ident('tx')}"
    expected = [(f"k{i}", i, f"n{i}") for i in range(5)]
    health, stop = Health(), asyncio.Event()
    task = asyncio.create_task(pipeline.run(cfg, health, stop))

    async def applied(n: int) -> bool:
        return await next_offset(pool, prefix, task) == n
    try:
        await wait_for(lambda: applied(5), timeout=90)
        stop.set()
        assert await asyncio.wait_for(task, 15) == 0
        await pool.execute(f"ALTER TABLE {target} DROP COLUMN n")
        producer.produce(topic, key=b"k", value=encode_tx(schema, event(TX, "k9", 30, insert=True, v=9, n="n9")))
        assert producer.flush(30) == 0
        expected.append(("k9", 9, "n9"))
        health, stop = Health(), asyncio.Event()
        task = asyncio.create_task(pipeline.run(cfg, health, stop))

        async def held() -> bool:
            return "42703" in health.report()[1].get("paused:ks.tx", "")
        await wait_for(held, timeout=60)
        print(f"health: {health.report()[1]['paused:ks.tx']}")
        await asyncio.sleep(2)
        assert await pool.fetchval("SELECT count(*) FROM information_schema.columns WHERE table_schema = $1 "
                                   "AND table_name = 'tx' AND column_name = 'n'", prefix + "_ks") == 0
        assert await next_offset(pool, prefix, task) == 5
        await pool.execute(f"ALTER TABLE {target} ADD COLUMN n text")
        await wait_for(lambda: applied(6), timeout=60)
        rows = [tuple(r) for r in await pool.fetch(f"SELECT k, v, n FROM {target} ORDER BY k")]
        assert rows == expected
        assert health.report()[1]["paused:ks.tx"] == "ok"
        assert await pool.fetchval("SELECT count(*) FROM cdcpipe_dlq WHERE group_id = $1", prefix) == 0
        stop.set()
        assert await asyncio.wait_for(task, 15) == 0
    finally:
        stop.set()
        if not task.done():
            task.cancel()
        await drop_run(pool, prefix)
        await pool.close()
        for f in kadmin.delete_topics([topic, schemas_topic, f"{prefix}.dlq"]).values():
            with contextlib.suppress(Exception):  # not created
                f.result(30)


async def test_stop_while_held_leaves_the_batch_to_the_next_start(settings: Settings) -> None:
    """A process holding a batch (retrying forever) still stops when asked, within the drain deadline, with the
    checkpoint where it was; the next start applies the batch."""
    prefix = f"itf{uuid.uuid4().hex[:8]}"
    topic, schemas_topic = f"{prefix}.ks.tx", f"{prefix}.schemas"
    kafka = settings.kafka.client_config()
    kadmin, producer, schema = tx_topics(kafka, topic, schemas_topic)
    producer.produce(topic, key=b"k", value=encode_tx(schema, event(TX, "k0", 10, insert=True, v=0, n="a")))
    assert producer.flush(30) == 0
    cfg = run_settings(settings, prefix, max_wait_ms=50)
    cfg = cfg.model_copy(update={"apply": cfg.apply.model_copy(update={"retry_max_wait_s": 2.0})})
    pool = await asyncpg.create_pool(settings.require("postgres.dsn").get_secret_value(), min_size=1, max_size=2)
    target = f"{ident(prefix + '_ks')}.{ident('tx')}"
    health, stop = Health(), asyncio.Event()
    task = asyncio.create_task(pipeline.run(cfg, health, stop))

    async def applied(n: int) -> bool:
        return await next_offset(pool, prefix, task) == n
    try:
        await wait_for(lambda: applied(1), timeout=90)
        await pool.execute(f"REVOKE UPDATE ON {target} FROM CURRENT_USER")
        producer.produce(topic, key=b"k", value=encode_tx(schema, event(TX, "k0", 20, v=1)))
        assert producer.flush(30) == 0

        async def held() -> bool:
            return "42501" in health.report()[1].get("paused:ks.tx", "")
        await wait_for(held, timeout=60)
        stop.set()
        started = time.monotonic()
        assert await asyncio.wait_for(task, 20) == 0
        took = time.monotonic() - started
        print(f"stopped in {took:.1f} s while held")
        assert took < pipeline.DRAIN_S + 5
        assert await pool.fetchval("SELECT next_offset FROM cdcpipe_checkpoints WHERE group_id = $1", prefix) == 1
        await pool.execute(f"GRANT UPDATE ON {target} TO CURRENT_USER")
        health, stop = Health(), asyncio.Event()
        task = asyncio.create_task(pipeline.run(cfg, health, stop))
        await wait_for(lambda: applied(2), timeout=60)
        assert [tuple(r) for r in await pool.fetch(f"SELECT k, v, n FROM {target}")] == [("k0", 1, "a")]
        stop.set()
        assert await asyncio.wait_for(task, 15) == 0
    finally:
        stop.set()
        if not task.done():
            task.cancel()
        await drop_run(pool, prefix)
        await pool.close()
        for f in kadmin.delete_topics([topic, schemas_topic, f"{prefix}.dlq"]).values():
            with contextlib.suppress(Exception):  # not created
                f.result(30)
