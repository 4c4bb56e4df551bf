"""``kill -9`` of ``cdcpipe apply`` at 5 random moments of a live stream, each time restarted: PostgreSQL ends with
exactly what one clean application gives (and what the merge model says), and every event was applied once —
proved by the checkpoint writes themselves (an audit trigger logs each committed checkpoint write: per partition
they form one strictly increasing chain from 0 to the end offset, so every offset is covered by exactly one
committed batch transaction)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from cdcpipe import avro
from cdcpipe.apply import pipeline
from cdcpipe.config import Settings
from cdcpipe.runtime import Health
from tests.support.applykit import (
    ApplyProcess,
    TxProducer,
    Workload,
    as_pg,
    audit_chains,
    checkpoints,
    content,
    create_topics,
    drop_audit,
    drop_schemas,
    dump,
    encode,
    end_offsets,
    install_audit,
    jsonb_parsed,
    publish_schemas,
)
from tests.support.mergekit import TABLES, select
from tests.support.processes import metric

pytestmark = pytest.mark.timeout(180)
KILLS = 5


def apply_env(prefix: str, group: str) -> dict[str, str]:
    return {"CDCPIPE_KAFKA__TOPIC_PREFIX": prefix, "CDCPIPE_APPLY__GROUP_ID": group,
            "CDCPIPE_POSTGRES__SCHEMA_PREFIX": prefix + "_", "CDCPIPE_APPLY__BATCH__MAX_ROWS": "40",
            "CDCPIPE_APPLY__BATCH__MAX_WAIT_MS": "50", "CDCPIPE_APPLY__CONCURRENCY": "3",
            # static membership: a restarted process takes its partitions back without waiting for the dead
            # member's session to time out
            "CDCPIPE_KAFKA__EXTRA": json.dumps({"group.instance.id": group, "session.timeout.ms": "6000"})}


async def clean_apply(settings: Settings, prefix: str, group: str, ends: dict[tuple[str, int], int],
                      pool: Any) -> None:
    """One uninterrupted application of the same topics into the schemas ``<prefix>c_*``."""
    cfg = settings.model_copy(update={
        "kafka": settings.kafka.model_copy(update={"topic_prefix": prefix}),
        "postgres": settings.postgres.model_copy(update={"schema_prefix": prefix + "c_"}),
        "apply": settings.apply.model_copy(update={"group_id": group}),
    })
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(cfg, Health(), stop))
    try:
        deadline = time.monotonic() + 60
        while await checkpoints(pool, group) != ends:
            assert not task.done(), task.result()
            assert time.monotonic() < deadline, "clean apply did not finish"
            await asyncio.sleep(0.3)
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 15) == 0


async def test_kill_9_at_random_moments(settings: Settings, tmp_path: Path) -> None:
    seed = int(os.environ.get("CDCPIPE_TEST_SEED", random.randrange(10**6)))
    print(f"seed {seed}")
    rnd = random.Random(seed)
    prefix = f"itk{uuid.uuid4().hex[:8]}"
    group, clean_group = prefix, prefix + "-clean"
    kafka = settings.kafka.client_config()
    tables = {name: TABLES[name] for name in Workload.TABLES}
    topics = {name: f"{prefix}.ks.{name}" for name in tables}
    schemas = {name: avro.table_schema(t) for name, t in tables.items()}
    create_topics(kafka, [*topics.values(), f"{prefix}.schemas", f"{prefix}.dlq"], 3)
    publish_schemas(kafka, prefix, tables.values())
    pool = await asyncpg.create_pool(settings.require("postgres.dsn").get_secret_value(), min_size=1, max_size=2)
    await pool.execute("CREATE TABLE IF NOT EXISTS cdcpipe_checkpoints (group_id text NOT NULL, topic text NOT "
                       "NULL, partition integer NOT NULL, next_offset bigint NOT NULL, updated_at timestamptz NOT "
                       "NULL DEFAULT now(), PRIMARY KEY (group_id, topic, partition))")
    audit = prefix + "_audit"
    await install_audit(pool, audit, group)

    work = Workload(seed, int(time.time()))
    producing = threading.Event()
    producing.set()
    produced: list[int] = [0]

    def produce() -> None:  # a live stream: small transactions until the kills are over
        p = TxProducer(kafka)
        while producing.is_set() or produced[0] < 2000:
            batch = []
            for _ in range(rnd.randint(1, 30)):
                ev = work.next()
                key, value = encode(tables[ev.source.table], schemas[ev.source.table], ev)
                batch.append((topics[ev.source.table], key, value))
            p.send(batch)
            produced[0] += len(batch)
            time.sleep(0.02)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    log = tmp_path / "apply.log"
    proc = ApplyProcess(log, **apply_env(prefix, group))
    started = time.monotonic()
    try:
        kills = []
        for i in range(KILLS):
            proc.start()
            # wait until this run has committed batches, then kill at a random moment
            before = sum((await checkpoints(pool, group)).values())
            deadline = time.monotonic() + 40
            while sum((await checkpoints(pool, group)).values()) < before + 50:
                assert proc.running, proc.tail()
                assert time.monotonic() < deadline, f"run {i} made no progress:\n{proc.tail()}"
                await asyncio.sleep(0.1)
            await asyncio.sleep(rnd.uniform(0.0, 2.0))
            text = proc.metrics_text()
            assert metric(text, "cdcpipe_apply_duplicates_total", kind="already_applied") == 0
            proc.kill()
            kills.append((round(time.monotonic() - started, 1), sum((await checkpoints(pool, group)).values()),
                          produced[0]))
        producing.clear()
        producer.join(60)
        assert not producer.is_alive()
        print(f"kills at (s, applied offsets, produced events): {kills}")
        ends = end_offsets(kafka, topics.values())
        ends = {k: v for k, v in ends.items() if v > 0}
        proc.start()
        deadline = time.monotonic() + 60
        while await checkpoints(pool, group) != ends:
            assert proc.running, proc.tail()
            assert time.monotonic() < deadline, f"not drained: {await checkpoints(pool, group)} vs {ends}"
            await asyncio.sleep(0.3)
        assert metric(proc.metrics_text(), "cdcpipe_apply_duplicates_total", kind="already_applied") == 0
        rc, took = proc.terminate()
        assert rc == 0 and took < 10, (rc, took)
        print(f"{len(work.sent)} events in {sum(ends.values())} offsets over {len(ends)} partitions, "
              f"stream + {KILLS} kills + drain in {time.monotonic() - started:.1f}s")

        # each event applied once: per partition, the committed checkpoint writes step strictly up to the end
        chains = await audit_chains(pool, audit)
        assert set(chains) == set(ends)
        for tp, chain in chains.items():
            assert chain == sorted(set(chain)), f"{tp}: a checkpoint was written twice or went back: {chain}"
            assert chain[-1] == ends[tp]
        assert await pool.fetchval("SELECT count(*) FROM cdcpipe_dlq WHERE group_id = $1", group) == 0

        # the same content as one clean application, shadow and partition stores included
        await clean_apply(settings, prefix, clean_group, ends, pool)
        for name in tables:
            crashed = await dump(pool, f"{prefix}_ks", name)
            clean = await dump(pool, f"{prefix}c_ks", name)
            assert crashed == clean, name
            # ... and what the merge model of Cassandra's rules selects
            expected = as_pg(name, select(name, work.sent, now=int(time.time())))
            assert jsonb_parsed(await content(pool, prefix + "_", name)) == expected, name
    finally:
        producing.clear()
        proc.kill()
        await drop_audit(pool, audit)
        await drop_schemas(pool, prefix)
        await pool.execute("DELETE FROM cdcpipe_checkpoints WHERE group_id = ANY($1::text[])", [group, clean_group])
        if await pool.fetchval("SELECT to_regclass('cdcpipe_dlq')") is not None:
            await pool.execute("DELETE FROM cdcpipe_dlq WHERE group_id = ANY($1::text[])", [group, clean_group])
        await pool.close()
