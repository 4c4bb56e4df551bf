#!/usr/bin/env python3
"""End-to-end latency: from the Cassandra write to the PostgreSQL commit, at a steady write rate.

On the stack in the environment (``eval "$(deploy/local/stack env)"``) it creates a probe keyspace, starts
``cdcpipe capture`` and ``cdcpipe apply`` as processes (unique topic prefix and consumer group), lets them warm
up, then writes ``--rate`` rows per second for ``--seconds`` seconds into ``probe (id bigint PRIMARY KEY, v text)``.
Each write's time is taken just before it is sent; a poller reads the mirrored table in PostgreSQL every
``--poll-ms`` and stamps each id when it first becomes visible (that is, committed).  Latency = visible − sent
(so it is at most ``--poll-ms`` pessimistic).  Writes that do not reach PostgreSQL within ``--settle`` seconds
count as lost and make the run fail.  A ``read_committed`` consumer stamps each id when its event becomes readable
in Kafka, which splits the figure into capture's share and apply's.
The last line is ``RESULT p50_ms=... p95_ms=... p99_ms=... max_ms=...``.

The figure includes Cassandra's commit-log sync period (``commitlog_sync_period``: CDC sees a write only once it
is synced), capture's wake-up and transaction, apply's batching and its transaction.  ``--sync-ms`` (default 1000,
the period the goal is stated for) runs the probe on a dedicated single-node Cassandra on 127.0.0.15 started with
that period (its own state folder under the stack's ``aux/``; the stack's Kafka and PostgreSQL are used);
``--sync-ms 0`` uses the stack's own node (500 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
from cassandra.cluster import Cluster  # noqa: E402
from cassandra.query import BatchStatement, BatchType  # noqa: E402
from confluent_kafka import Consumer  # noqa: E402

from tests.support.harness import Pipeline  # noqa: E402
from tests.support.processes import metric_sum, unique  # noqa: E402
from tests.support.stack import StackEnv, stack_cmd, stack_env_of  # noqa: E402
from tests.support.topics import delete_topics, topics_with_prefix  # noqa: E402

OCTET = 15  # the dedicated node (bench/reader.py uses 13, bench/capture.py 14)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def poll_visible(dsn: str, table: str, total: int, seen: dict[int, float], stop: threading.Event,
                       poll_s: float) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        low = 0
        while not stop.is_set() and len(seen) < total:
            if await conn.fetchval("SELECT to_regclass($1)", table) is not None:
                # one array per poll (cheap to decode); only ids not seen before are stamped
                ids = await conn.fetchval(f"SELECT array_agg(id) FROM {table} WHERE id >= $1", low)
                now = time.time()
                for i in set(ids or ()).difference(seen):
                    seen[i] = now
                while low in seen:
                    low += 1
            await asyncio.sleep(poll_s)
    finally:
        await conn.close()


def consume_visible(bootstrap: str, topic: str, total: int, seen: dict[int, float], stop: threading.Event) -> None:
    """Stamps each id when its event is first readable in Kafka with ``read_committed`` (capture's share)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("latency"),
                         "isolation.level": "read_committed", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, "topic.metadata.refresh.interval.ms": 1000})
    consumer.subscribe([topic])
    try:
        while not stop.is_set() and len(seen) < total:
            msgs = consumer.consume(1000, 0.005)
            now = time.time()
            for m in msgs:
                key = m.key()
                if m.error() is None and key is not None:
                    k = int.from_bytes(key, "big", signed=True)
                    if k >= 0:  # the warm-up's ids are negative: they must not count towards ``total``
                        seen.setdefault(k, now)
    finally:
        consumer.close()


def distribution(latencies: list[float]) -> str:
    return (f"p50_ms={percentile(latencies, 0.50):.0f} p95_ms={percentile(latencies, 0.95):.0f} "
            f"p99_ms={percentile(latencies, 0.99):.0f} max_ms={max(latencies):.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=2000.0, help="writes per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to write")
    parser.add_argument("--poll-ms", type=float, default=20.0, help="PostgreSQL visibility poll interval")
    parser.add_argument("--settle", type=float, default=60.0, help="seconds to wait for the last writes")
    parser.add_argument("--batch", type=int, default=10,
                        help="rows per request (an unlogged batch of distinct partitions; 1: single inserts): "
                             "keeps the Python client's CPU off the measured path on a small machine")
    parser.add_argument("--warmup", type=float, default=60.0,
                        help="seconds of unmeasured writes at the rate (a fresh node's JIT needs about a minute)")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".stack" / "run" / "latency")
    parser.add_argument("--sync-ms", type=int, default=1000,
                        help="commit-log sync period of a dedicated node (0: the stack's own node)")
    args = parser.parse_args(argv)

    import os

    env = {k: v for k, v in os.environ.items() if k.startswith("CDCPIPE_")}
    knobs: dict[str, str] = {}
    if args.sync_ms:
        state = Path(env.get("CDCPIPE_STACK_DIR", str(ROOT / ".stack")))
        knobs = {"CDCPIPE_STACK_DIR": str(state / "aux" / "bench-latency"),
                 "CDCPIPE_STACK_CACHE": str(state / "cache"), "CDCPIPE_STACK_SERVICES": "cassandra",
                 "CDCPIPE_STACK_CASSANDRA_FIRST": str(OCTET),
                 "CASSANDRA_COMMITLOG_SYNC_PERIOD": f"{args.sync_ms}ms"}
        up = stack_cmd(knobs, "up")
        if up.returncode != 0:
            raise SystemExit(f"dedicated Cassandra node did not start:\n{up.stdout}{up.stderr}")
        node = stack_env_of(knobs).env
        env.update({k: node[k] for k in ("CDCPIPE_CASSANDRA__HOSTS", "CDCPIPE_STACK_CDC_RAW_DIR_1")})
        try:
            return measure(args, StackEnv(env))
        finally:
            stack_cmd(knobs, "down")
    return measure(args, StackEnv(env))


def measure(args: argparse.Namespace, stack: StackEnv) -> int:
    """One run against ``stack``'s Cassandra (first node), Kafka and PostgreSQL."""
    keyspace = unique("bench_latency")
    table = f'"{keyspace}"."probe"'
    cluster = Cluster(stack.hosts, protocol_version=5)
    session = cluster.connect()
    pipeline = Pipeline(stack, keyspace, args.workdir, extra={"CDCPIPE_OBSERVABILITY__LOG_LEVEL": "WARNING"})
    total = int(args.rate * args.seconds)
    sent: list[float] = [0.0] * total
    seen: dict[int, float] = {}
    stop = threading.Event()
    try:
        session.execute(f"CREATE KEYSPACE {keyspace} WITH replication = "
                        "{'class': 'SimpleStrategy', 'replication_factor': 1}")
        session.execute(f"CREATE TABLE {keyspace}.probe (id bigint PRIMARY KEY, v text) WITH cdc = true")
        insert = session.prepare(f"INSERT INTO {keyspace}.probe (id, v) VALUES (?, ?)")
        pipeline.start()
        # warm-up: both processes running and one row through
        session.execute(insert, (-1, "warm-up"))
        deadline = time.monotonic() + 120
        while metric_sum(pipeline.apply.metrics(), "cdcpipe_apply_events_applied_total") < 1:
            pipeline.check_alive()
            assert time.monotonic() < deadline, "warm-up row never applied"
            time.sleep(0.5)
        # warm-up at the measured rate (a fresh node's JIT and the processes' caches), not measured
        started = time.monotonic()
        warm = []
        for j in range(int(args.rate * args.warmup)):
            time.sleep(max(0.0, started + j / args.rate - time.monotonic()))
            warm.append(session.execute_async(insert, (-2 - j, "x" * 40)))
        for f in warm:
            f.result()
        poller = threading.Thread(target=lambda: asyncio.run(
            poll_visible(stack.dsn, table, total, seen, stop, args.poll_ms / 1000)), daemon=True)
        poller.start()
        in_kafka: dict[int, float] = {}
        consumer = threading.Thread(target=consume_visible, args=(
            stack.bootstrap, f"{pipeline.prefix}.{keyspace}.probe", total, in_kafka, stop), daemon=True)
        consumer.start()
        errors: list[BaseException] = []
        in_flight = threading.BoundedSemaphore(256)
        started = time.monotonic()
        for first in range(0, total, args.batch):
            ahead = started + first / args.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            in_flight.acquire()
            ids = range(first, min(total, first + args.batch))
            if args.batch == 1:
                statement: Any = insert.bind((first, "x" * 40))
            else:  # rows of distinct partitions: one mutation (and one event) each
                statement = BatchStatement(BatchType.UNLOGGED)
                for i in ids:
                    statement.add(insert, (i, "x" * 40))
            now = time.time()
            for i in ids:
                sent[i] = now
            future = session.execute_async(statement)
            future.add_callbacks(lambda _, s=in_flight: s.release(),
                                 lambda exc, s=in_flight: (errors.append(exc), s.release()))
        achieved = total / (time.monotonic() - started)
        deadline = time.monotonic() + args.settle
        while len(seen) < total and time.monotonic() < deadline:
            time.sleep(0.2)
        stop.set()
        poller.join(10)
        consumer.join(10)
        latencies = [(seen[i] - sent[i]) * 1000 for i in range(total) if i in seen]
        to_kafka = [(in_kafka[i] - sent[i]) * 1000 for i in range(total) if i in in_kafka]
        lost = total - len(latencies)
        print(f"writes={total} achieved_rate={achieved:.0f}/s errors={len(errors)} lost={lost} "
              f"mean_ms={statistics.fmean(latencies):.0f} poll_ms={args.poll_ms:.0f} "
              f"commitlog_sync_ms={args.sync_ms or 500} rows_per_request={args.batch}")
        if to_kafka:
            print(f"write -> readable in Kafka (read_committed): {distribution(to_kafka)}")
        m = pipeline.apply.metrics()
        batches = metric_sum(m, "cdcpipe_apply_batch_seconds_count") or 1
        print(f"apply: {batches:.0f} batches of {metric_sum(m, 'cdcpipe_apply_batch_events_sum') / batches:.0f} "
              f"events on average, {metric_sum(m, 'cdcpipe_apply_batch_seconds_sum') / batches * 1000:.0f} ms "
              f"per batch transaction, oldest event's Kafka timestamp -> commit "
              f"{metric_sum(m, 'cdcpipe_apply_delay_seconds_sum') / batches * 1000:.0f} ms on average")
        print(f"RESULT {distribution(latencies)}")
        return 0 if lost == 0 and not errors else 1
    finally:
        stop.set()
        pipeline.stop()
        session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=120)

        async def drop() -> None:
            conn = await asyncpg.connect(stack.dsn)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{keyspace}" CASCADE')
            finally:
                await conn.close()
        asyncio.run(drop())
        cluster.shutdown()
        kafka = {"bootstrap.servers": stack.bootstrap}  # this run's topics: leave no leftovers
        delete_topics(kafka, topics_with_prefix(kafka, [f"{pipeline.prefix}."]))


if __name__ == "__main__":
    sys.exit(main())
