"""``cdcpipe apply``'s ``/health`` and ``/metrics`` on the real stack: 503 naming Kafka when its bootstrap port is
dead; 503 naming the open circuit while batch writes keep failing (statement timeouts behind a held lock), 200
once they succeed; the issue's metrics (events by table and operation, duplicates/stale, batch size and latency,
lag per partition, DLQ count, retries)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from cdcpipe import avro
from cdcpipe.config import Settings
from tests.support.applykit import (
    ApplyProcess,
    TxProducer,
    checkpoints,
    create_topics,
    drop_schemas,
    encode,
    end_offsets,
    publish_schemas,
)
from tests.support.mergekit import TABLES, delete_row, insert, update
from tests.support.processes import free_port, metric

pytestmark = pytest.mark.timeout(120)


async def wait_health(proc: ApplyProcess, status: int, timeout: float = 30) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.running, proc.tail()
        try:
            code, body = proc.health()
            if code == status:
                return dict(body["conditions"])
        except OSError:
            pass
        assert time.monotonic() < deadline, f"/health never answered {status}:\n{proc.tail()}"
        await asyncio.sleep(0.2)


async def applied_all(proc: ApplyProcess, pool: Any, group: str, kafka: dict[str, Any], topic: str) -> None:
    ends = {k: v for k, v in end_offsets(kafka, [topic]).items() if v}
    deadline = time.monotonic() + 40
    while await checkpoints(pool, group) != ends:
        assert proc.running and time.monotonic() < deadline, proc.tail()
        await asyncio.sleep(0.2)


async def test_health_503_when_kafka_unreachable(settings: Settings, tmp_path: Path) -> None:
    prefix = f"ith{uuid.uuid4().hex[:8]}"
    dead = f"127.0.0.1:{free_port()}"
    proc = ApplyProcess(tmp_path / "apply.log", CDCPIPE_KAFKA__BOOTSTRAP_SERVERS=dead,
                        CDCPIPE_KAFKA__TOPIC_PREFIX=prefix, CDCPIPE_APPLY__GROUP_ID=prefix).start()
    try:
        proc.wait_http()
        conditions = await wait_health(proc, 503)
        deadline = time.monotonic() + 30
        while "unreachable" not in conditions.get("kafka", ""):  # first "not reached yet", then the error
            assert time.monotonic() < deadline, conditions
            await asyncio.sleep(0.3)
            conditions = await wait_health(proc, 503)
        print(f"/health with Kafka down: {conditions}")
        assert conditions["postgres"] == "ok"
        assert "cdcpipe_apply_events_applied_total" in proc.metrics_text()
        rc, took = proc.terminate()  # still stoppable while waiting for Kafka
        assert rc == 0 and took < 10, (rc, took)
    finally:
        proc.kill()


async def test_circuit_opens_and_closes_and_metrics(settings: Settings, tmp_path: Path) -> None:
    prefix = f"ith{uuid.uuid4().hex[:8]}"
    kafka = settings.kafka.client_config()
    kv = TABLES["kv"]
    schema = avro.table_schema(kv)
    topic = f"{prefix}.ks.kv"
    create_topics(kafka, [topic, f"{prefix}.schemas", f"{prefix}.dlq"], 2)
    publish_schemas(kafka, prefix, [kv])
    producer = TxProducer(kafka)

    def send(*events: object) -> None:
        producer.send([(topic, *encode(kv, schema, e)) for e in events])  # type: ignore[arg-type]

    dsn = settings.require("postgres.dsn").get_secret_value()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=3)
    # apply's statements time out after 1 s (SQLSTATE 57014, retriable) while the test holds a lock
    proc = ApplyProcess(tmp_path / "apply.log", CDCPIPE_KAFKA__TOPIC_PREFIX=prefix, CDCPIPE_APPLY__GROUP_ID=prefix,
                        CDCPIPE_POSTGRES__SCHEMA_PREFIX=prefix + "_", CDCPIPE_APPLY__CIRCUIT_FAILURES="2",
                        CDCPIPE_APPLY__BATCH__MAX_WAIT_MS="50",
                        CDCPIPE_POSTGRES__DSN=dsn + ("&" if "?" in dsn else "?") + "statement_timeout=1000")
    target = f'"{prefix}_ks"."kv"'
    try:
        proc.start().wait_http()
        first = insert("kv", (2,), 10, v="b")
        send(insert("kv", (1,), 10, v="a", n=1), first)
        await applied_all(proc, pool, prefix, kafka, topic)
        send(update("kv", (1,), 5, v="old"), first)  # stale, then a replica duplicate: both change nothing
        await applied_all(proc, pool, prefix, kafka, topic)
        conditions = await wait_health(proc, 200)
        assert conditions == {"kafka": "ok", "postgres": "ok", "circuit": "ok"}

        async with pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            await conn.execute(f"LOCK TABLE {target} IN ACCESS EXCLUSIVE MODE")
            send(update("kv", (1,), 20, n=2), delete_row("kv", (2,), 20))
            conditions = await wait_health(proc, 503, timeout=40)
            deadline = time.monotonic() + 40
            while "circuit open" not in conditions.get("circuit", ""):
                assert time.monotonic() < deadline, conditions
                await asyncio.sleep(0.3)
                conditions = await wait_health(proc, 503)
            print(f"/health while writes fail: {conditions}")
            assert "QueryCanceledError" in conditions["circuit"] and conditions["postgres"] == "ok"
            await tx.rollback()
        await wait_health(proc, 200, timeout=70)  # the next retry (backoff <= 8 s here) succeeds
        await applied_all(proc, pool, prefix, kafka, topic)
        rows = await pool.fetch(f"SELECT k, v, n FROM {target} ORDER BY k")
        assert [tuple(r) for r in rows] == [(1, "a", 2)]

        producer.send([(topic, b"k", b"not an avro event")])  # poison: a dead letter
        deadline = time.monotonic() + 30
        while await pool.fetchval("SELECT count(*) FROM cdcpipe_dlq WHERE group_id = $1", prefix) < 1:
            assert time.monotonic() < deadline, proc.tail()
            await asyncio.sleep(0.2)
        await asyncio.sleep(2.5)  # one more lag update
        text = proc.metrics_text()
        applied = {op: metric(text, "cdcpipe_apply_events_applied_total", table="ks.kv", op=op)
                   for op in ("upsert", "partition_delete")}
        print("metrics:", applied, {n: metric(text, n) for n in (
            "cdcpipe_apply_duplicates_total", "cdcpipe_apply_retries_total", "cdcpipe_apply_dlq_events_total",
            "cdcpipe_apply_batch_events_count", "cdcpipe_apply_batch_seconds_count")})
        assert applied == {"upsert": 5, "partition_delete": 1}
        assert metric(text, "cdcpipe_apply_duplicates_total", table="ks.kv", kind="unchanged_row") == 2
        assert metric(text, "cdcpipe_apply_retries_total", table="ks.kv") >= 2
        assert metric(text, "cdcpipe_apply_dlq_events_total") == 1
        assert metric(text, "cdcpipe_apply_batch_events_count") >= 3
        assert metric(text, "cdcpipe_apply_batch_seconds_count") >= 3
        # every committed batch's oldest event: Kafka timestamp → PostgreSQL commit (the retried one waited > 0.3 s)
        assert metric(text, "cdcpipe_apply_delay_seconds_count", table="ks.kv") >= 3
        assert metric(text, "cdcpipe_apply_delay_seconds_sum", table="ks.kv") > 0.3
        lags = [line for line in text.splitlines() if line.startswith("cdcpipe_apply_consumer_lag{")]
        assert lags and all(line.endswith(" 0.0") for line in lags), lags
        rc, took = proc.terminate()
        assert rc == 0 and took < 10, (rc, took)
    finally:
        proc.kill()
        await drop_schemas(pool, prefix)
        await pool.execute("DELETE FROM cdcpipe_checkpoints WHERE group_id = $1", prefix)
        if await pool.fetchval("SELECT to_regclass('cdcpipe_dlq')") is not None:
            await pool.execute("DELETE FROM cdcpipe_dlq WHERE group_id = $1", prefix)
        await pool.close()
