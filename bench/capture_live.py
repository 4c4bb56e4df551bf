"""The live half of ``bench/capture.py``: the bench node's settings, and ``cdcpipe capture`` following its live
cdc_raw, for the latency run (with where the latency goes) and the sustained-load run (cdc_raw usage)."""

from __future__ import annotations

import itertools
import os
import random
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cassandra import OperationTimedOut  # noqa: E402
from cassandra.cluster import Cluster, Session  # noqa: E402
from cassandra.query import BatchStatement, BatchType  # noqa: E402
from confluent_kafka import Consumer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402
from confluent_kafka.cimpl import NewTopic  # noqa: E402

from cdcpipe.capture.cdc_index import disk_usage, scan  # noqa: E402
from cdcpipe.capture.inotify import DirectoryWatcher  # noqa: E402
from tests.support.topics import delete_topics, topics_with_prefix  # noqa: E402

STACK = ROOT / "deploy" / "local" / "stack"
OCTET = 14
HOST = f"127.0.0.{OCTET}"
PARTITIONS = 6
TABLES = ("orders", "items")


def stack(state: Path, *args: str) -> None:
    env = {**os.environ, "CDCPIPE_STACK_DIR": str(state / "aux" / "bench-capture"),
           "CDCPIPE_STACK_CACHE": str(state / "cache"), "CDCPIPE_STACK_SERVICES": "cassandra",
           "CDCPIPE_STACK_CASSANDRA_FIRST": str(OCTET)}
    subprocess.run([str(STACK), *args], env=env, check=True)


def one_core() -> int:
    return max(os.sched_getaffinity(0))


def pin() -> None:
    """preexec_fn of the measured child: every thread it starts inherits one CPU."""
    os.sched_setaffinity(0, {one_core()})


def capture_env(cdc_raw: Path, prefix: str, http_port: int = 0) -> dict[str, str]:
    return {**os.environ, "CDCPIPE_CAPTURE__CDC_RAW_DIR": str(cdc_raw), "CDCPIPE_CASSANDRA__HOSTS": f"{HOST}:9042",
            "CDCPIPE_KAFKA__TOPIC_PREFIX": prefix, "CDCPIPE_CAPTURE__NODE_ID": "bench",
            "CDCPIPE_CAPTURE__INCLUDE_TABLES": "bench.*", "CDCPIPE_CAPTURE__TOPIC_PARTITIONS": str(PARTITIONS),
            "CDCPIPE_OBSERVABILITY__HTTP_PORT": str(http_port), "CDCPIPE_OBSERVABILITY__HTTP_HOST": "127.0.0.1",
            "CDCPIPE_OBSERVABILITY__LOG_LEVEL": "WARNING"}


def bootstrap() -> str:
    return os.environ.get("CDCPIPE_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9092")


def connect() -> tuple[Cluster, Session]:
    cluster = Cluster([HOST], protocol_version=5)
    s = cluster.connect()
    s.execute("CREATE KEYSPACE IF NOT EXISTS bench WITH replication = "
              "{'class': 'SimpleStrategy', 'replication_factor': 1}")
    s.execute("CREATE TABLE IF NOT EXISTS bench.orders (id bigint PRIMARY KEY, customer int, status text, "
              "amount double, placed timestamp) WITH cdc = true")
    s.execute("CREATE TABLE IF NOT EXISTS bench.items (order_id bigint, line int, sku text, qty int, "
              "tags set<text>, PRIMARY KEY (order_id, line)) WITH cdc = true")
    return cluster, s


# ------------------------------------------------------------------------------------------------ live capture

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveCapture:
    """``cdcpipe capture`` (pinned to one CPU unless ``pinned`` is False), following the bench node's live cdc_raw."""

    def __init__(self, cdc_raw: Path, prefix: str, log: Path, pinned: bool = True) -> None:
        self.port = free_port()
        env = capture_env(cdc_raw, prefix, self.port)
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "cdcpipe", "capture"], env=env, stdout=out,
                                         stderr=out, cwd=ROOT, preexec_fn=pin if pinned else None)
        deadline = time.monotonic() + 60
        while self.get("/health") is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"capture did not become healthy; see {log}")
            time.sleep(0.2)

    def get(self, path: str) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return str(r.read().decode())
        except (urllib.error.URLError, OSError):
            return None

    def metric(self, name: str) -> float:
        text = self.get("/metrics") or ""
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name) and not line.startswith("#"))

    def cpu_seconds(self) -> float:
        """CPU time the capture process has used so far (all its threads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


def _buckets(text: str, name: str, stage: str) -> dict[float, float]:
    return {float(line.split('le="')[1].split('"')[0]): float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith(f"{name}_bucket{{") and f'"{stage}"' in line}


def quantiles(text: str, name: str, stage: str, qs: tuple[float, ...], since: str = "") -> list[float]:
    """Quantiles of one labelled Prometheus histogram (linear within a bucket, as ``histogram_quantile``) over
    the observations made after the scrape ``since`` (cumulative buckets: the difference of two scrapes)."""
    base = _buckets(since, name, stage)
    buckets = sorted((le, c - base.get(le, 0.0)) for le, c in _buckets(text, name, stage).items())
    out = []
    for q in qs:
        lo, below, rank = 0.0, 0.0, q * (buckets[-1][1] if buckets else 0.0)
        le, count = next(((le, c) for le, c in buckets if c >= rank), (float("nan"), 0.0))
        for b_le, b_count in buckets:
            if b_le >= le:
                break
            lo, below = b_le, b_count
        out.append(le if le == float("inf") else lo + (le - lo) * (rank - below) / max(count - below, 1e-9))
    return out


def watch_syncs(cdc_raw: Path, stop: threading.Event, advances: list[float]) -> None:
    """Thread: when the newest durable offset in cdc_raw advances (woken by inotify, else every 5 ms), i.e.
    Cassandra's commit-log syncs that expose data."""
    watcher, last = DirectoryWatcher.open(cdc_raw), None
    while not stop.is_set():
        if watcher is not None and select.select([watcher.fileno()], [], [], 0.1)[0]:
            watcher.drain()
        elif watcher is None:
            time.sleep(0.005)
        head = max(((st.segment_id, st.offset) for st in scan(cdc_raw) if st.offset is not None), default=None)
        if last is not None and head is not None and head > last:
            advances.append(time.time())
        last = head or last
    if watcher is not None:
        watcher.close()


PREFIXES: list[str] = []  # topic prefixes of this run, whose topics :func:`delete_topics` removes at the end


def new_prefix(kind: str) -> str:
    prefix = f"{kind}{uuid.uuid4().hex[:8]}"
    PREFIXES.append(prefix)
    return prefix


def delete_run_topics() -> int:
    """Delete every topic of this run's prefixes (leftovers accumulate on the shared broker otherwise)."""
    kafka = {"bootstrap.servers": bootstrap()}
    return delete_topics(kafka, topics_with_prefix(kafka, PREFIXES))


def create_topics(prefix: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap()})
    news = [NewTopic(f"{prefix}.bench.{t}", num_partitions=PARTITIONS, replication_factor=1) for t in TABLES]
    for f in admin.create_topics(news).values():
        f.result(30)


def latency(cdc_raw: Path, seconds: float, rate: int, log: Path, warmup: float,
            batch: int = 1, pinned: bool = True) -> tuple[float, float, int]:
    """``warmup`` s at the same rate first, not measured: the bench node is freshly started, and a JVM's first
    minute (JIT compilation, first memtable flushes) is not the steady state the goal is about.  Every write of
    the warm-up must still arrive exactly once; latency, Cassandra's sync intervals, capture's delay histogram
    and its CPU count only what follows it.  ``batch`` > 1 sends the rows ``batch`` at a time in UNLOGGED
    batches (same rows, same rate, one commit-log entry per row: each row is its own partition), which spares
    the machine the load generator's and the node's per-request cost."""
    cluster, s = connect()
    insert = s.prepare("INSERT INTO bench.orders (id, customer, status, amount, placed) VALUES (?, ?, ?, ?, ?)")
    prefix = new_prefix("benchlat")
    create_topics(prefix)
    cap = LiveCapture(cdc_raw, prefix, log, pinned)
    acked: dict[int, float] = {}
    arrived: dict[int, float] = {}
    dup = 0
    done = threading.Event()

    def consume() -> None:
        nonlocal dup
        c = Consumer({"bootstrap.servers": bootstrap(), "group.id": f"bench-{uuid.uuid4()}",
                      "enable.auto.commit": False, "isolation.level": "read_committed", "fetch.wait.max.ms": 10})
        c.assign([TopicPartition(f"{prefix}.bench.orders", p, -2) for p in range(PARTITIONS)])
        while not done.is_set():
            msgs = c.consume(1000, 0.02)
            now = time.time()
            for m in msgs:
                if m.error() is None:
                    k = int.from_bytes(m.key() or b"", "big", signed=True)
                    if k in arrived:
                        dup += 1
                    arrived.setdefault(k, now)
        c.close()

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    time.sleep(2)  # consumer assigned, capture idle and following
    advances: list[float] = []
    syncs = threading.Thread(target=watch_syncs, args=(cdc_raw, done, advances), daemon=True)
    syncs.start()
    print(f"latency: {rate} writes/s for {warmup:.0f} s of warm-up, then {seconds:.0f} s measured, with capture "
          "following the live cdc_raw ...", flush=True)
    warm = int(warmup * rate)  # writes 0 .. warm-1 are the warm-up
    scrape, cpu0, wall0, measured_from = "", 0.0, 0.0, float("inf")

    def on_ack(_: Any, k: int, n: int = 1) -> None:
        now = time.time()
        for i in range(k, k + n):
            acked[i] = now

    def on_err(exc: Exception, k: int, n: int = 1) -> None:
        print(f"  writes {k}..{k + n - 1} failed: {exc}", flush=True)

    base = random.Random(7).getrandbits(40) << 20
    t0 = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - t0) < warmup + seconds:
        due = int(elapsed * rate)
        if measured_from == float("inf") and due >= warm:  # the measured part begins now
            scrape, cpu0, wall0 = cap.get("/metrics") or "", cap.cpu_seconds(), time.monotonic()
            measured_from = time.time()
        while sent < due and batch == 1:
            k = base + sent
            f = s.execute_async(insert, (k, sent, "new", 1.0, int(time.time() * 1000)))
            f.add_callbacks(on_ack, on_err, callback_args=(k,), errback_args=(k,))
            sent += 1
        while due - sent >= batch > 1:
            b, k, placed = BatchStatement(BatchType.UNLOGGED), base + sent, int(time.time() * 1000)
            for i in range(batch):
                b.add(insert, (k + i, sent + i, "new", 1.0, placed))
            f = s.execute_async(b)
            f.add_callbacks(on_ack, on_err, callback_args=(k, batch), errback_args=(k, batch))
            sent += batch
        time.sleep(0.002)
    deadline = time.monotonic() + 30
    while len(arrived) < sent and time.monotonic() < deadline:
        time.sleep(0.1)
    done.set()
    consumer.join(5)
    syncs.join(5)
    intervals = sorted((b - a) * 1000 for a, b in itertools.pairwise(advances) if a >= measured_from)
    metrics = cap.get("/metrics") or ""
    entries = int(cap.metric("cdcpipe_capture_mutations_read_total"))
    cpu, wall = cap.cpu_seconds() - cpu0, time.monotonic() - wall0
    rc = cap.stop()
    cluster.shutdown()
    lat = sorted((arrived[k] - acked[k]) * 1000 for k in acked if k in arrived and k - base >= warm)
    missing = sent - len(arrived)
    print(f"  {sent} writes at {sent / (warmup + seconds):.0f}/s ({sent - warm} measured), {len(arrived)} events "
          f"received from {entries} commit-log entries, {missing} missing, {dup} "
          f"duplicates; capture exit {rc}", flush=True)
    if missing or dup or not lat:
        raise RuntimeError("latency run lost or repeated events")
    p50 = lat[len(lat) // 2]
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print(f"  latency ms: p50 {p50:.0f}, p90 {lat[int(len(lat) * 0.9)]:.0f}, p99 {p99:.0f}, max {lat[-1]:.0f}",
          flush=True)
    if intervals:
        n = len(intervals)
        print(f"  Cassandra: durable offset advanced {n + 1} times, interval ms p50 {intervals[n // 2]:.0f}, "
              f"p99 {intervals[min(n - 1, int(n * 0.99))]:.0f}, max {intervals[-1]:.0f}", flush=True)
    print(f"  capture CPU {cpu:.1f} s in {wall:.0f} s ({cpu / wall:.0%} of its core), "
          f"{cpu / max(sent - warm, 1) * 1e6:.0f} us/event; load average {os.getloadavg()[0]:.1f}", flush=True)
    for stage in ("read", "encoded", "committed"):
        q50, q99 = quantiles(metrics, "cdcpipe_capture_delay_seconds", stage, (0.5, 0.99), since=scrape)
        print(f"  capture: idx written -> {stage} ms p50 {q50 * 1000:.0f}, p99 {q99 * 1000:.0f} "
              f"(per transaction, from bucket bounds)", flush=True)
    return p50, p99, sent


def wait_all(futures: list[Any]) -> int:
    """Wait for the writes; how many failed (an overloaded node times out; the write may still have landed)."""
    failed = 0
    for f in futures:
        try:
            f.result()
        except OperationTimedOut:
            failed += 1
    futures.clear()
    return failed


def sustain(cdc_raw: Path, seconds: float, rate: int, log: Path) -> str:
    cluster, s = connect()
    insert = s.prepare("INSERT INTO bench.orders (id, customer, status, amount, placed) VALUES (?, ?, ?, ?, ?)")
    prefix = new_prefix("benchsus")
    create_topics(prefix)
    cap = LiveCapture(cdc_raw, prefix, log)
    samples: list[int] = []
    segments: set[int] = set()
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            samples.append(disk_usage(cdc_raw))
            segments.update(st.segment_id for st in scan(cdc_raw))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    print(f"sustain: {rate} writes/s of ~1 KB rows for {seconds:.0f} s, cdc_raw sampled every second ...", flush=True)
    payload = "x" * 1000
    rng = random.Random(3)
    t0 = time.monotonic()
    sent = 0
    futures: list[Any] = []
    failed = 0
    while (elapsed := time.monotonic() - t0) < seconds:
        due = int(elapsed * rate)
        while sent < due:
            futures.append(s.execute_async(insert, (rng.getrandbits(62), sent, payload, 1.0, 0)))
            sent += 1
        if len(futures) > 2000:
            failed += wait_all(futures)
        if sent % (rate * 30) < rate // 100 + 1 and samples:
            print(f"  {elapsed:.0f} s: cdc_raw {samples[-1] / 1e6:.1f} MB", flush=True)
        time.sleep(0.005)
    failed += wait_all(futures)
    deadline = time.monotonic() + 120
    while cap.metric("cdcpipe_capture_events_produced_total") < sent - failed and time.monotonic() < deadline:
        time.sleep(0.5)
    produced = cap.metric("cdcpipe_capture_events_produced_total")
    deleted = cap.metric("cdcpipe_capture_segments_deleted_total")
    time.sleep(2)
    stop.set()
    sampler.join(5)
    rc = cap.stop()
    cluster.shutdown()
    final = disk_usage(cdc_raw)
    left = len(scan(cdc_raw))
    print(f"  {sent} writes ({failed} timed out on the client), {int(produced)} events committed, "
          f"{len(segments)} segments seen, {int(deleted)} deleted, "
          f"{left} left; capture exit {rc}", flush=True)
    return (f"RESULT sustain_s={seconds:.0f} writes={sent} events={int(produced)} segments_seen={len(segments)} "
            f"segments_deleted={int(deleted)} cdc_raw_max_bytes={max(samples)} cdc_raw_final_bytes={final}")
