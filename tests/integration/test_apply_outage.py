"""PostgreSQL stopped mid-stream: ``cdcpipe apply`` retries (the process stays up), ``/readyz`` and ``/health`` answer
503 naming PostgreSQL and the open circuit for the whole outage while ``/livez`` stays 200, and once PostgreSQL is
back it drains with nothing lost and nothing dead-lettered (content = the merge model of every event produced before,
during and after the outage; per partition the committed checkpoints step up to the end offset once each).

The PostgreSQL is a private one (``deploy/local/stack`` with its own state folder and port, ``down`` for the outage,
``up`` again, ``down --purge`` at the end) so other tests keep the shared one; Kafka is the shared one, and the live
stream goes on during the outage.  The outage lasts ``CDCPIPE_TEST_PG_OUTAGE_S`` seconds: by default 45 (CI size), the
issue's 120 with ``--long`` (retries back off up to ``apply.retry_max_wait_s``, 60 s, so the drain may start up to
~60 s after PostgreSQL is back: about four minutes in all); e.g. ``CDCPIPE_TEST_PG_OUTAGE_S=20`` for a quick run."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from cdcpipe.config import Settings
from cdcpipe.topics import apply_dlq_topic
from tests.support.applykit import (
    ApplyProcess,
    LiveStream,
    Workload,
    as_pg,
    audit_chains,
    checkpoints,
    content,
    create_topics,
    dead_letters,
    end_offsets,
    install_audit,
    jsonb_parsed,
    publish_schemas,
    watch_readiness,
)
from tests.support.mergekit import TABLES, select
from tests.support.processes import free_port, metric
from tests.support.stack import ROOT
from tests.support.stack import stack as stack_script

OUTAGE_S = float(os.environ.get("CDCPIPE_TEST_PG_OUTAGE_S", "120" if os.environ.get("CDCPIPE_TEST_LONG") else "45"))
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
    create_topics(kafka, [*topics.values(), f"{prefix}.schemas", f"{prefix}.dlq"], 2)
    publish_schemas(kafka, prefix, tables.values())
    pool = await asyncpg.create_pool(private_pg.dsn, min_size=1, max_size=2)
    await pool.execute("CREATE TABLE IF NOT EXISTS cdcpipe_checkpoints (group_id text NOT NULL, topic text NOT "
                       "NULL, partition integer NOT NULL, next_offset bigint NOT NULL, updated_at timestamptz NOT "
                       "NULL DEFAULT now(), PRIMARY KEY (group_id, topic, partition))")
    await install_audit(pool, "audit", prefix)
    await pool.close()

    work = Workload(7, int(time.time()))
    stream = LiveStream(kafka, work, topics)  # a steady live stream for the whole test, outage included
    proc = ApplyProcess(tmp_path / "apply.log", CDCPIPE_KAFKA__TOPIC_PREFIX=prefix, CDCPIPE_APPLY__GROUP_ID=prefix,
                        CDCPIPE_POSTGRES__DSN=private_pg.dsn, CDCPIPE_APPLY__BATCH__MAX_WAIT_MS="100",
                        CDCPIPE_APPLY__CIRCUIT_FAILURES="2")
    try:
        stream.start()
        proc.start().wait_http()
        pool = await asyncpg.create_pool(private_pg.dsn, min_size=1, max_size=2)
        deadline = time.monotonic() + 40
        while sum((await checkpoints(pool, prefix)).values()) < 300:
            assert proc.running and time.monotonic() < deadline, proc.tail()
            await asyncio.sleep(0.2)
        before = await checkpoints(pool, prefix)
        await pool.close()

        took = private_pg.stack("down")
        seen = await watch_readiness(proc, OUTAGE_S)
        worst = seen.last
        print(f"outage {OUTAGE_S:.0f}s (stop took {took:.1f}s), first 503 after {seen.first_503_s}s, "
              f"/readyz during it: {json.dumps(worst)}")
        assert seen.first_503_s is not None and seen.first_503_s < 20, seen
        assert not seen.wrong, seen.wrong
        assert {"postgres", "circuit"} <= seen.not_ready, worst
        assert "unreachable" in worst["postgres"] and "circuit open" in worst["circuit"], worst
        private_pg.stack("up")
        back_at = time.monotonic()
        await asyncio.sleep(5)  # events after the outage too
        stream.stop()

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
        assert await dead_letters(pool, kafka, prefix, apply_dlq_topic(prefix)) == (0, 0)

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
        stream.stop(check=False)
        proc.kill()
