"""Kafka stopped mid-stream under ``cdcpipe apply``: the process stays up, ``/readyz`` and ``/health`` answer 503
naming Kafka for the whole outage while ``/livez`` stays 200, and once Kafka is back apply reads on with nothing lost,
nothing dead-lettered and nothing applied twice (content = the merge model of every event produced before and after
the outage; per partition the committed checkpoints step up to the end offset once each).

The Kafka is a private one (``deploy/local/stack`` with its own state folder and port: the shared broker is never
stopped), ``down`` for the outage and ``up`` again with its data, purged at the end; PostgreSQL is a database of the
test's own on the shared server.  The live stream is held while Kafka is down (nothing can be committed to it) and
runs before and after.  The outage lasts ``CDCPIPE_TEST_KAFKA_OUTAGE_S`` seconds: the issue's 120 by default."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path

import asyncpg
import pytest

from cdcpipe.apply import checkpoint
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
    private_database,
    publish_schemas,
    watch_readiness,
)
from tests.support.mergekit import TABLES, select
from tests.support.processes import metric
from tests.support.stack import private_stack, stack_cmd, stack_dir

OUTAGE_S = float(os.environ.get("CDCPIPE_TEST_KAFKA_OUTAGE_S", "120"))
pytestmark = pytest.mark.timeout(900 + 2 * OUTAGE_S)  # the private Kafka's first start downloads nothing but is slow


def kafka_knobs() -> dict[str, str]:
    """A Kafka-only stack of this test's own (capture's outage test uses 19192, the e2e faults 19092)."""
    base = stack_dir()
    return {"CDCPIPE_STACK_DIR": str(base / "aux" / "apply-kafka-outage"),
            "CDCPIPE_STACK_CACHE": str(base / "cache"), "CDCPIPE_STACK_SERVICES": "kafka",
            "CDCPIPE_STACK_KAFKA_PORT": "19292"}


async def test_apply_waits_out_a_kafka_outage_and_loses_nothing(settings: Settings, tmp_path: Path) -> None:
    knobs = kafka_knobs()
    with private_stack(knobs) as env:
        async with private_database(settings.require("postgres.dsn").get_secret_value()) as dsn:
            await _outage(settings, env.bootstrap, dsn, knobs, tmp_path)


async def _outage(settings: Settings, bootstrap: str, dsn: str, knobs: dict[str, str], tmp_path: Path) -> None:
    prefix = f"itko{uuid.uuid4().hex[:8]}"
    kafka = settings.kafka.model_copy(update={"bootstrap_servers": bootstrap}).client_config()
    tables = {name: TABLES[name] for name in Workload.TABLES}
    topics = {name: f"{prefix}.ks.{name}" for name in tables}
    create_topics(kafka, [*topics.values(), f"{prefix}.schemas"], 2)
    publish_schemas(kafka, prefix, tables.values())
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    await checkpoint.ensure(pool)
    await install_audit(pool, "audit", prefix)

    work = Workload(13, int(time.time()))
    stream = LiveStream(kafka, work, topics)
    proc = ApplyProcess(tmp_path / "apply.log", CDCPIPE_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
                        CDCPIPE_KAFKA__TOPIC_PREFIX=prefix, CDCPIPE_APPLY__GROUP_ID=prefix,
                        CDCPIPE_POSTGRES__DSN=dsn, CDCPIPE_APPLY__BATCH__MAX_WAIT_MS="100")
    try:
        stream.start()
        proc.start().wait_http()
        deadline = time.monotonic() + 60
        while sum((await checkpoints(pool, prefix)).values()) < 300:
            assert proc.running and time.monotonic() < deadline, proc.tail()
            await asyncio.sleep(0.2)
        code, body = proc.health()
        assert code == 200, body

        stream.hold()  # no transaction in flight when the broker stops, but a backlog just sent:
        await asyncio.to_thread(stream.send_now, 2000)  # apply is still reading or writing it when Kafka goes
        before = await checkpoints(pool, prefix)
        down = stack_cmd(knobs, "down", "--service", "kafka", timeout=120)
        assert down.returncode == 0, down.stderr
        seen = await watch_readiness(proc, OUTAGE_S)
        print(f"outage {OUTAGE_S:.0f}s, first 503 after {seen.first_503_s}s, /readyz during it: "
              f"{json.dumps(seen.last)}")
        assert seen.first_503_s is not None and seen.first_503_s < 20, seen
        assert not seen.wrong, seen.wrong
        assert "kafka" in seen.not_ready and "unreachable" in seen.last["kafka"], seen.last
        assert seen.last["postgres"] == "ok", seen.last
        during = await checkpoints(pool, prefix)
        assert all(during.get(tp, 0) >= off for tp, off in before.items()), (before, during)
        print(f"applied while Kafka was down: {sum(during.values()) - sum(before.values())} offsets")

        up = stack_cmd(knobs, "up", timeout=400)
        assert up.returncode == 0, up.stderr
        back_at = time.monotonic()
        stream.release()  # events after the outage, from a new producer
        await asyncio.sleep(10)
        stream.stop()

        ends = {k: v for k, v in end_offsets(kafka, topics.values()).items() if v}
        deadline = time.monotonic() + 120
        while await checkpoints(pool, prefix) != ends:
            assert proc.running and time.monotonic() < deadline, proc.tail()
            await asyncio.sleep(0.3)
        print(f"drained {sum(ends.values()) - sum(before.values())} offsets {time.monotonic() - back_at:.1f}s "
              f"after Kafka was back; {len(work.sent)} events in all")
        deadline = time.monotonic() + 30
        while proc.health()[0] != 200:
            assert time.monotonic() < deadline, proc.health()
            await asyncio.sleep(0.3)
        text = proc.metrics_text()
        assert metric(text, "cdcpipe_apply_dlq_events_total") == 0
        rc, _ = proc.terminate()
        assert rc == 0, proc.tail()
        assert await dead_letters(pool, kafka, prefix, apply_dlq_topic(prefix)) == (0, 0)

        chains = await audit_chains(pool, "audit")
        assert set(chains) == set(ends)
        for tp, chain in chains.items():
            assert chain == sorted(set(chain)) and chain[-1] == ends[tp], (tp, chain)
        now = int(time.time())
        for name in tables:
            expected = as_pg(name, select(name, work.sent, now=now))
            assert jsonb_parsed(await content(pool, "", name)) == expected, name
    finally:
        stream.stop(check=False)
        proc.kill()
        await pool.close()
