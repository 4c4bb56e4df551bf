#!/usr/bin/env python3
"""capture on one core: events/s from segments to committed Kafka (against the Kafka ceiling), and the latency
from a Cassandra write to its event being visible to a read_committed consumer at a steady write rate.

Starts a dedicated single-node Cassandra 5.0 (CDC on, commit-log sync every 500 ms) on 127.0.0.14 with the
project's stack script, so the shared node's cdc_raw is untouched; Kafka is the shared local broker.

- throughput: writes ``--writes`` rows (a mix of inserts, collection updates and row deletes over two tables),
  keeps a copy of the durable segments, then ``--rounds`` times, in a child process pinned to one CPU: the capture
  pipeline (``Capture.open`` untimed, then follower → decode → events → Avro → transactional producer, commits
  of ``capture.batch_max_events``) from an empty position until the committed position covers every segment;
  then, in the same pinned child, the ceiling: a plain confluent-kafka transactional producer sending the very
  same (key, value) messages, read back from the committed stream, in transactions of the same size.
- latency: ``cdcpipe capture`` as a child pinned to one CPU (``--unpinned``: not) follows the node's live cdc_raw
  while this process writes ``--rate`` rows/s: ``--warmup`` s not measured (the node is freshly started: its JIT
  compiler is still busy), then ``--seconds`` s measured; latency = arrival at a read_committed consumer - the
  write's acknowledgement (both wall clock on this machine).  The rows go ``--batch`` (10) at a time in UNLOGGED
  batches: still one partition, one commit-log entry and one event per row, at the same rate, but a tenth of the
  requests, whose cost (this process's driver, the node's request path) otherwise starves the 2-core machine
  and with it Cassandra's sync thread; ``--batch 1`` sends one request per row.
- ``--sustain SECONDS`` instead runs only a sustained write load (larger rows) with ``cdcpipe capture`` running,
  sampling cdc_raw every second: shipped segments are deleted, so usage stays bounded.

The live runs are in ``bench/capture_live.py``, which also reports where the latency goes: the intervals between
Cassandra's syncs that exposed data, and capture's own share (``cdcpipe_capture_delay_seconds``).

Medians over rounds.  The last line is ``RESULT events_per_s=... p50_ms=... p99_ms=... ceiling_events_per_s=...``
(with ``--sustain``: ``RESULT sustain_s=... cdc_raw_max_bytes=... cdc_raw_final_bytes=... ...``).
Run it with the stack up (``deploy/local/stack up``): ``.venv/bin/python bench/capture.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from capture_live import (  # noqa: E402  (bench/ is the script's directory)
    HOST,
    PARTITIONS,
    TABLES,
    bootstrap,
    capture_env,
    connect,
    delete_run_topics,
    latency,
    new_prefix,
    pin,
    stack,
    sustain,
)
from cassandra.cluster import Session  # noqa: E402
from cassandra.concurrent import execute_concurrent_with_args  # noqa: E402
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402
from confluent_kafka.cimpl import NewTopic  # noqa: E402

from cdcpipe.capture.cdc_index import scan  # noqa: E402

# ------------------------------------------------------------------------------------------------ workload

def generate(s: Session, writes: int) -> int:
    """``writes`` writes: 70 % order inserts, 20 % item updates adding a set element, 10 % item row deletes."""
    order = s.prepare("INSERT INTO bench.orders (id, customer, status, amount, placed) VALUES (?, ?, ?, ?, ?)")
    item = s.prepare("UPDATE bench.items SET sku = ?, qty = ?, tags = tags + ? WHERE order_id = ? AND line = ?")
    delete = s.prepare("DELETE FROM bench.items WHERE order_id = ? AND line = ?")
    rng = random.Random(42)
    done, started, n = 0, time.monotonic(), 5000
    placed = int(time.time() * 1000)
    while done < writes:
        k = min(n, writes - done)
        orders, items, deletes = k * 7 // 10, k * 2 // 10, k - k * 7 // 10 - k * 2 // 10
        execute_concurrent_with_args(s, order, [(rng.getrandbits(62), rng.randint(0, 99999), "paid" if i % 3 else "new",
                                                 rng.random() * 500, placed + i) for i in range(orders)],
                                     concurrency=96)
        execute_concurrent_with_args(s, item, [(f"sku-{rng.randint(0, 9999)}", rng.randint(1, 9),
                                                {f"t{rng.randint(0, 9)}"}, rng.randint(0, 20000), rng.randint(0, 20))
                                               for _ in range(items)], concurrency=96)
        execute_concurrent_with_args(s, delete, [(rng.randint(0, 20000), rng.randint(0, 20)) for _ in range(deletes)],
                                     concurrency=96)
        done += k
        if done % 50000 < n:
            print(f"  {done} writes, {time.monotonic() - started:.0f} s", flush=True)
    return done


def snapshot(cdc_raw: Path, into: Path) -> int:
    """Copy every segment with durable data and its idx; the total durable bytes."""
    into.mkdir(parents=True)
    total = 0
    for st in scan(cdc_raw):
        if st.offset is None:
            continue
        shutil.copy(st.log, into / st.log.name)
        shutil.copy(st.idx, into / st.idx.name)
        total += st.offset
    return total


# ------------------------------------------------------------------------------------------------ throughput child

def child_throughput(cdc_raw: Path, prefix: str) -> dict[str, Any]:
    """Pinned child: capture from an empty position until the committed position covers cdc_raw, then the
    ceiling with the same messages."""
    os.environ.update(capture_env(cdc_raw, prefix))
    from cdcpipe.capture import metrics
    from cdcpipe.capture.pipeline import Capture
    from cdcpipe.capture.segment import Position
    from cdcpipe.config import load_settings
    from cdcpipe.observability import configure_logging
    from cdcpipe.runtime import Health
    from cdcpipe.topics import table_topic

    configure_logging("WARNING", "json")
    target = max(Position(s.segment_id, s.offset) for s in scan(cdc_raw) if s.offset is not None)
    settings = load_settings()
    cap = Capture.open(settings, Health())
    topics = [table_topic(prefix, "bench", t) for t in TABLES]
    for t in topics:
        cap.producer.ensure_topic(t)

    async def drive() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(cap.run(stop))
        while cap.committed is None or cap.committed < target:
            if task.done():
                task.result()
                raise RuntimeError("capture stopped early")
            await asyncio.sleep(0.002)
        t1 = time.perf_counter()
        stop.set()
        await task
        return t1

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    t1 = asyncio.run(drive())
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime  # every thread: reader, librdkafka
    events = int(sum(s.value for m in metrics.EVENTS_PRODUCED.collect() for s in m.samples
                     if s.name.endswith("_total")))
    messages = read_back(topics)
    if len(messages) != events:
        raise RuntimeError(f"{events} events produced but {len(messages)} committed")
    return {"events": events, "seconds": t1 - t0, "cpu_seconds": cpu, "ceiling_seconds": ceiling(messages, prefix,
                                                                             settings.capture.batch_max_events)}


def read_back(topics: list[str]) -> list[tuple[bytes, bytes]]:
    c = Consumer({"bootstrap.servers": bootstrap(), "group.id": f"bench-{uuid.uuid4()}", "enable.auto.commit": False,
                  "isolation.level": "read_committed", "enable.partition.eof": True})
    parts = [TopicPartition(t, p, -2) for t in topics for p in range(PARTITIONS)]
    c.assign(parts)
    pending = {(p.topic, p.partition) for p in parts}
    out: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + 120
    while pending and time.monotonic() < deadline:
        for m in c.consume(10000, 0.5):
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard((m.topic(), m.partition()))
                continue
            out.append((m.key() or b"", m.value() or b""))
    c.close()
    return out


def ceiling(messages: list[tuple[bytes, bytes]], prefix: str, per_txn: int) -> float:
    """A plain transactional producer sending ``messages`` (pre-encoded) in transactions of ``per_txn``."""
    topic = f"{prefix}.ceiling"
    admin = AdminClient({"bootstrap.servers": bootstrap()})
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])[topic].result(30)
    p = Producer({"bootstrap.servers": bootstrap(), "transactional.id": f"bench-ceiling-{uuid.uuid4()}",
                  "enable.idempotence": True, "linger.ms": 5, "compression.type": "lz4",
                  "partitioner": "murmur2_random"})
    p.init_transactions(30)
    t0 = time.perf_counter()
    for i in range(0, len(messages), per_txn):
        p.begin_transaction()
        for key, value in messages[i:i + per_txn]:
            while True:
                try:
                    p.produce(topic, key=key, value=value)
                    break
                except BufferError:
                    p.poll(0.05)
        p.commit_transaction(30)
    took = time.perf_counter() - t0
    p.flush(10)
    return took


def throughput(state: Path, cdc_raw: Path, writes: int, rounds: int) -> tuple[float, float, float, int]:
    cluster, s = connect()
    print(f"throughput: writing {writes} rows on {HOST} ...", flush=True)
    generate(s, writes)
    cluster.shutdown()
    time.sleep(1.5)  # one more commit-log sync: every write is durable
    work = state / "aux" / "bench-capture" / "work"
    shutil.rmtree(work, ignore_errors=True)
    size = snapshot(cdc_raw, work / "segments")
    print(f"  {size / 1e6:.0f} MB of durable commit log in {len(list((work / 'segments').glob('*.log')))} segments",
          flush=True)
    rates, cpu_rates, ceilings, events = [], [], [], 0
    for r in range(rounds):
        run = work / f"round{r}"
        shutil.copytree(work / "segments", run)
        prefix = new_prefix("benchcap")
        out = subprocess.run([sys.executable, __file__, "--child-throughput", str(run), prefix],
                             preexec_fn=pin, capture_output=True, text=True,
                             check=False, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"throughput child failed:\n{out.stderr[-3000:]}")
        res = json.loads(out.stdout.strip().splitlines()[-1])
        events = res["events"]
        rates.append(events / res["seconds"])
        cpu_rates.append(events / res["cpu_seconds"])
        ceilings.append(events / res["ceiling_seconds"])
        print(f"  round {r + 1}: capture {rates[-1]:.0f} events/s ({events} events in {res['seconds']:.2f} s, "
              f"{cpu_rates[-1]:.0f} per CPU-second), "
              f"ceiling {ceilings[-1]:.0f} events/s", flush=True)
        shutil.rmtree(run)
    shutil.rmtree(work, ignore_errors=True)
    return statistics.median(rates), statistics.median(cpu_rates), statistics.median(ceilings), events


# ------------------------------------------------------------------------------------------------ main

def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--child-throughput":
        print(json.dumps(child_throughput(Path(sys.argv[2]), sys.argv[3])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=120_000, help="rows written for the throughput rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60, help="duration of the steady-rate latency run")
    parser.add_argument("--rate", type=int, default=2000, help="writes/s of the latency run")
    parser.add_argument("--warmup", type=float, default=60, help="unmeasured seconds at --rate before the latency run")
    parser.add_argument("--batch", type=int, default=10,
                        help="latency run: rows per UNLOGGED batch request (one partition, one entry each)")
    parser.add_argument("--unpinned", action="store_true", help="latency run: capture not pinned to one CPU")
    parser.add_argument("--latency-only", action="store_true", help="skip the throughput rounds")
    parser.add_argument("--sustain", type=float, metavar="SECONDS",
                        help="only run a sustained write load this long and report cdc_raw usage")
    parser.add_argument("--sustain-rate", type=int, default=3000, help="writes/s of the sustained load")
    parser.add_argument("--keep-node", action="store_true", help="leave the bench Cassandra node running")
    args = parser.parse_args()
    state = Path(os.environ.get("CDCPIPE_STACK_DIR", ROOT / ".stack"))
    node = state / "aux" / "bench-capture"
    cdc_raw = node / "cassandra" / "cdc_raw"
    stack(state, "down", "--purge")
    stack(state, "up")
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-capture-{os.getpid()}.log"
    try:
        if args.sustain is not None:
            result = sustain(cdc_raw, args.sustain, args.sustain_rate, log)
        else:
            # latency first: its capture starts from an empty position, so cdc_raw must hold nothing older
            p50, p99, _ = latency(cdc_raw, args.seconds, args.rate, log, args.warmup, args.batch,
                                   not args.unpinned)
            if args.latency_only:
                result = f"RESULT p50_ms={p50:.0f} p99_ms={p99:.0f}"
            else:
                rate, cpu_rate, ceil, events = throughput(state, cdc_raw, args.writes, args.rounds)
                print(f"{events} events per round; capture log {log}")
                result = (f"RESULT events_per_s={rate:.0f} p50_ms={p50:.0f} p99_ms={p99:.0f} "
                          f"ceiling_events_per_s={ceil:.0f} events_per_cpu_s={cpu_rate:.0f}")
    finally:
        try:
            print(f"deleted this run's {delete_run_topics()} Kafka topics", flush=True)
        except Exception as exc:  # never hide the run's own error behind a cleanup failure
            print(f"could not delete this run's Kafka topics: {exc}", flush=True)
        if not args.keep_node:
            stack(state, "down", "--purge")
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
