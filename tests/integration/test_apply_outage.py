"""PostgreSQL stopped mid-stream: ``cdcpipe apply`` retries (the process stays up), ``/health`` answers 503 naming
PostgreSQL and the open circuit during the outage, and once PostgreSQL is back it drains with nothing lost (content
= the merge model of every event; per partition the committed checkpoints step up to the end offset once each).

The PostgreSQL is a private one (``deploy/local/stack`` with its own state folder and port, ``down`` for the outage,
``up`` again, ``down --purge`` at the end) so other tests keep the shared one.  The outage lasts
``CDCPIPE_TEST_PG_OUTAGE_S`` seconds: 20 by default, to keep the test under about a minute and a half (retries back
off up to 60 s, so after a 60 s outage the drain can wait ~60 s more); the issue's 60 s is
``CDCPIPE_TEST_PG_OUTAGE_S=60``."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from cdcpipe import avro
from cdcpipe.config import Settings
from tests.support.applykit import (
    ApplyProcess,
    TxProducer,
    Workload,
    as_pg,
    audit_chains,
    checkpoints,
    content,
    create_topics,
    encode,
    end_offsets,
    install_audit,
    jsonb_parsed,
    publish_schemas,
)
from tests.support.mergekit import TABLES, select
from tests.support.processes import free_port, metric
from tests.support.stack import ROOT
from tests.support.stack import stack as stack_script

OUTAGE_S = float(os.environ.get("CDCPIPE_TEST_PG_OUTAGE_S", "20"))
pytestmark = pytest.mark.timeout(120 + 2 * OUTAGE_S)


class PrivatePostgres:
    """A PostgreSQL of its own, started and stopped with ``deploy/local/stack``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.env = {**os.environ, "CDCPIPE_STACK_DIR": str(ROOT / ".stack" / "aux" / f"pg-outage-{self.port}"),
                    "CDCPIPE_STACK_CACHE": str(ROOT / ".stack" / "cache"), "CDCPIPE_STACK_SERVICES": "postgres",
                    "CDCPIPE_STACK_PG_PORT": str(self.port)}
        self.dsn = f"postgresql://cdcpipe:cdcpipe@127.0.0.1:{self.port}/cdcpipe"

    def stack(self, *args: str) -> float:
        started = time.monotonic()
        res = stack_script(*args, env=self.env, timeout=120)
        assert res.returncode == 0, res.stderr
        return time.monotonic() - started


@pytest.fixture
async def private_pg() -> AsyncIterator[PrivatePostgres]:
    pg = PrivatePostgres()
    try:
        pg.stack("up")
        yield pg
    finally:
        pg.stack("down", "--purge")


async def test_postgres_outage_mid_stream(settings: Settings, private_pg: PrivatePostgres, tmp_path: Path) -> None:
    prefix = f"ito{uuid.uuid4().hex[:8]}"
    kafka = settings.kafka.client_config()
    tables = {name: TABLES[name] for name in Workload.TABLES}
    topics = {name: f"{prefix}.ks.{name}" for name in tables}
    schemas = {name: avro.table_schema(t) for name, t in tables.items()}
    create_topics(kafka, [*topics.values(), f"{prefix}.schemas", f"{prefix}.dlq"], 2)
    publish_schemas(kafka, prefix, tables.values())
    pool = await asyncpg.create_pool(private_pg.dsn, min_size=1, max_size=2)
    await pool.execute("CREATE TABLE IF NOT EXISTS cdcpipe_checkpoints (group_id text NOT NULL, topic text NOT "
                       "NULL, partition integer NOT NULL, next_offset bigint NOT NULL, updated_at timestamptz NOT "
                       "NULL DEFAULT now(), PRIMARY KEY (group_id, topic, partition))")
    await install_audit(pool, "audit", prefix)
    await pool.close()

    work = Workload(7, int(time.time()))
    producing = threading.Event()
    producing.set()

    def produce() -> None:  # a steady live stream for the whole test
        p = TxProducer(kafka)
        while producing.is_set():
            batch = []
            for _ in range(20):
                ev = work.next()
                batch.append((topics[ev.source.table], *encode(tables[ev.source.table], schemas[ev.source.table],
                                                              ev)))
            p.send(batch)
            time.sleep(0.1)

    producer = threading.Thread(target=produce, daemon=True)
    proc = ApplyProcess(tmp_path / "apply.log", CDCPIPE_KAFKA__TOPIC_PREFIX=prefix, CDCPIPE_APPLY__GROUP_ID=prefix,
                        CDCPIPE_POSTGRES__DSN=private_pg.dsn, CDCPIPE_APPLY__BATCH__MAX_WAIT_MS="100",
                        CDCPIPE_APPLY__CIRCUIT_FAILURES="2")
    try:
        producer.start()
        proc.start().wait_http()
        pool = await asyncpg.create_pool(private_pg.dsn, min_size=1, max_size=2)
        deadline = time.monotonic() + 40
        while sum((await checkpoints(pool, prefix)).values()) < 300:
            assert proc.running and time.monotonic() < deadline, proc.tail()
            await asyncio.sleep(0.2)
        before = await checkpoints(pool, prefix)
        await pool.close()

        took = private_pg.stack("down")
        down_at = time.monotonic()
        seen: set[str] = set()
        worst: dict[str, str] = {}
        while time.monotonic() - down_at < OUTAGE_S:
            assert proc.running, proc.tail()
            code, body = proc.health()
            if code == 503:
                worst = body["conditions"]
                seen |= {name for name, reason in worst.items() if reason != "ok"}
            await asyncio.sleep(0.5)
        print(f"outage {OUTAGE_S:.0f}s (stop took {took:.1f}s), /health during it: {json.dumps(worst)}")
        assert {"postgres", "circuit"} <= seen, worst
        assert "unreachable" in worst["postgres"] and "circuit open" in worst["circuit"], worst
        private_pg.stack("up")
        back_at = time.monotonic()
        await asyncio.sleep(2)
        producing.clear()
        producer.join(30)

        ends = {k: v for k, v in end_offsets(kafka, topics.values()).items() if v}
        pool = await asyncpg.create_pool(private_pg.dsn, min_size=1, max_size=2)
        deadline = time.monotonic() + 60 + OUTAGE_S
        while await checkpoints(pool, prefix) != ends:
            assert proc.running and time.monotonic() < deadline, proc.tail()
            await asyncio.sleep(0.3)
        print(f"drained {sum(ends.values()) - sum(before.values())} offsets {time.monotonic() - back_at:.1f}s "
              f"after PostgreSQL was back; {len(work.sent)} events in all")
        deadline = time.monotonic() + 10
        while proc.health()[0] != 200:
            assert time.monotonic() < deadline, proc.health()
            await asyncio.sleep(0.3)
        text = proc.metrics_text()
        assert metric(text, "cdcpipe_apply_retries_total") >= 2
        assert metric(text, "cdcpipe_apply_dlq_events_total") == 0
        rc, _ = proc.terminate()
        assert rc == 0

        chains = await audit_chains(pool, "audit")
        assert set(chains) == set(ends)
        for tp, chain in chains.items():
            assert chain == sorted(set(chain)) and chain[-1] == ends[tp], (tp, chain)
        now = int(time.time())
        for name in tables:
            expected = as_pg(name, select(name, work.sent, now=now))
            assert jsonb_parsed(await content(pool, "", name)) == expected, name
        await pool.close()
    finally:
        producing.clear()
        proc.kill()
