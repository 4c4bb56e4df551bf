#!/usr/bin/env python3
"""Apply throughput from Kafka into PostgreSQL, against its peer and three references, on >= 500,000 events of a
10-column table.

Pre-produces ``--events`` change events (INSERTs of distinct keys, every column written, the real capture
encoding: ``cdcpipe.avro`` single-object Avro + the ``<prefix>.schemas`` topic; ``--copies 3``: every event three
times, as RF=3 replicas deliver it) into a fresh topic of ``--partitions`` partitions under a unique topic prefix,
then measures alternately, ``--rounds`` times:

- apply: ``cdcpipe apply`` as a subprocess (fresh consumer group and PostgreSQL schema each round) until its
  checkpoints reach the end of every partition; events/s from its first checkpoint to its last (steady state;
  the figure from process start is printed too), and its peak RSS (``VmHWM`` from ``/proc``); ``--processes N``
  runs N of them in one consumer group, the way apply scales (RSS is then the largest process's);
- (a) ceiling: the same rows, typed, straight from memory, merged into a fresh table of the same 10 columns by
  batches of ``COPY`` into a temporary staging table + one ``INSERT … SELECT … ON CONFLICT DO UPDATE``
  (what any sink must at least pay PostgreSQL);
- (c) converging ceiling: the same, with the least state a mirror needs to converge under duplicates and
  reordering — each cell's write timestamp beside it — merged by one statement that keeps the newer cell (the
  physical limit of a converging PostgreSQL mirror; no Kafka, no decoding);
- (b) executemany: the same rows written by batched ``executemany`` of ``INSERT … ON CONFLICT DO UPDATE`` (what
  JDBC sinks do).

Then, once per ``--peer-tasks`` value, the peer a user would pick instead: the Debezium JDBC sink in Kafka Connect
(``bench/peer_jdbc.py``) on the same rows (and copies).  The references use apply's batch size and number of
connections.  CPU time per event is printed for each, split into the client (the apply processes; this script's
asyncpg for the references; the JVM for the peer) and PostgreSQL (all its processes, read from ``/proc``: the
stack's server is local).  The machine is a noisy shared 2-core one: medians of rounds, and ratios rather than
absolute figures.  The last line is ``RESULT apply_per_s=... peer_per_s=... peer_ratio=... (the peer at its
defaults, tasks.max 1) converging_ceiling_per_s=... converging_ratio=... ceiling_per_s=... ceiling_ratio=...
executemany_per_s=... executemany_ratio=... client_us=... pg_us=... rss_mb=... copies=...``.  Run it with the
stack up: ``eval "$(deploy/local/stack env)"; .venv/bin/python bench/apply.py`` (``--events 100000 --rounds 1``
for a quick run; ``--copies 3`` for the duplicate-heavy variant).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import multiprocessing
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import peer_jdbc  # noqa: E402  (bench/ is this script's directory: on sys.path)
from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from cdcpipe import avro  # noqa: E402
from cdcpipe.config import load_settings  # noqa: E402
from cdcpipe.model import Cell, ChangeEvent, ColumnChange, Liveness, Op, Source  # noqa: E402
from cdcpipe.schema_source import parse_cql_schema  # noqa: E402
from cdcpipe.typemap import serialize  # noqa: E402
from tests.support.topics import delete_topics, topics_with_prefix  # noqa: E402

(TABLE,) = parse_cql_schema(
    "CREATE TABLE bench.t10 (id bigint PRIMARY KEY, c1 int, c2 text, c3 double, c4 bigint, c5 boolean, "
    "c6 timestamp, c7 uuid, c8 text, c9 int) WITH id = 00000000-0000-0000-0000-0000000b0010;")
COLUMNS = ("id", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9")
PG_TYPES = ("bigint", "integer", "text", "double precision", "bigint", "boolean", "timestamptz", "uuid", "text",
            "integer")
_UTC = datetime.UTC
STAMPS = tuple(f"{c}_ts" for c in COLUMNS[1:])  # reference (c): each cell's write timestamp beside it
TS0 = 1_700_000_000_000_000  # the events' timestamps: TS0 + the row's index (see _produce_slice)


def make_rows(n: int, seed: int = 7) -> list[tuple[Any, ...]]:
    """``n`` rows of distinct keys, values as cassandra-driver types them (timestamps naive UTC)."""
    rng = random.Random(seed)
    base = datetime.datetime(2024, 1, 1)
    keys = rng.sample(range(1, 1 << 62), n)
    return [(k, rng.randint(-(1 << 31), (1 << 31) - 1), "name-" + str(rng.getrandbits(40)), rng.random() * 1e6,
             rng.getrandbits(63), rng.random() < 0.5, base + datetime.timedelta(milliseconds=rng.getrandbits(34)),
             uuid.UUID(int=rng.getrandbits(128), version=4), "x" * rng.randint(10, 60), rng.randint(0, 1000))
            for k in keys]


def _produce_slice(args: tuple[list[tuple[Any, ...]], int, str, dict[str, Any], int]) -> int:
    """Produce one slice of the rows; ``copies`` > 1: the whole slice again that many times (the same events, as
    the captures of RF replicas deliver them), so a row's copies are a slice apart."""
    rows, first, topic, kafka, copies = args
    schema = avro.table_schema(TABLE)
    producer = Producer({**kafka, "linger.ms": 50, "batch.size": 1_000_000, "compression.type": "lz4",
                         "queue.buffering.max.messages": 1_000_000})
    types = [c.type for c in TABLE.regular]
    names = [c.name for c in TABLE.regular]
    src = Source("bench", "dc1", "n1", "bench", "t10", TABLE.table_id, 1, 0)
    ts = TS0
    for i, row in itertools.chain.from_iterable(enumerate(rows, first) for _ in range(copies)):
        cells = tuple(ColumnChange(n, (Cell(v, ts + i, raw=serialize(t, v)),))
                      for n, t, v in zip(names, types, row[1:], strict=True))
        key = serialize(TABLE.partition_key[0].type, row[0])
        ev = ChangeEvent(i.to_bytes(16, "big"), Op.UPSERT, ts + i, src, (row[0],), liveness=Liveness(ts + i),
                         columns=cells)
        while True:
            try:
                producer.produce(topic, key=key, value=avro.encode(ev, schema, (key,)))
                break
            except BufferError:
                producer.poll(0.1)
        if i % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(120) == 0
    return len(rows) * copies


def produce(rows: list[tuple[Any, ...]], prefix: str, partitions: int, kafka: dict[str, Any], procs: int,
            copies: int = 1) -> str:
    """Encode and produce every row as an INSERT event (``copies`` times), in ``procs`` processes (Avro encoding is
    the slow part)."""
    topic, schemas_topic = f"{prefix}.bench.t10", f"{prefix}.schemas"
    admin = AdminClient(kafka)
    for f in admin.create_topics([NewTopic(topic, partitions, 1), NewTopic(schemas_topic, 1, 1)]).values():
        f.result(30)
    schema = avro.table_schema(TABLE)
    producer = Producer(kafka)
    producer.produce(schemas_topic, key=schema.fingerprint, value=schema.to_json())
    assert producer.flush(30) == 0
    step = -(-len(rows) // procs)
    slices = [(rows[i:i + step], i, topic, kafka, copies) for i in range(0, len(rows), step)]
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        assert sum(pool.map(_produce_slice, slices)) == len(rows) * copies
    return topic


def _pg_rows(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [(*r[:6], r[6].replace(tzinfo=_UTC), *r[7:]) for r in rows]




async def _fresh_table(conn: Any, schema: str, stamps: bool = False) -> str:
    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    cols = ", ".join(f"{c} {t}" for c, t in zip(COLUMNS, PG_TYPES, strict=True))
    if stamps:
        cols += "".join(f", {c} bigint NOT NULL" for c in STAMPS)
    await conn.execute(f'CREATE TABLE "{schema}".t10 ({cols}, PRIMARY KEY (id))')
    return f'"{schema}".t10'


async def _run_batches(dsn: str, rows: list[tuple[Any, ...]], batch: int, concurrency: int, schema: str,
                       write: Any) -> float:
    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
    try:
        async with pool.acquire() as conn:
            target = await _fresh_table(conn, schema, stamps=write is _converging_merge)
        chunks = [rows[i:i + batch] for i in range(0, len(rows), batch)]
        queue: asyncio.Queue[list[tuple[Any, ...]]] = asyncio.Queue()
        for c in chunks:
            queue.put_nowait(c)

        async def worker() -> None:
            async with pool.acquire() as conn:
                while not queue.empty():
                    chunk = queue.get_nowait()
                    async with conn.transaction():
                        await write(conn, target, chunk)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        secs = time.perf_counter() - t0
        async with pool.acquire() as conn:
            assert await conn.fetchval(f"SELECT count(*) FROM {target}") == len(rows)
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        return secs
    finally:
        await pool.close()


_UPDATE = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS[1:])


async def _copy_merge(conn: Any, target: str, chunk: list[tuple[Any, ...]]) -> None:
    await conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS stg_t10 ON COMMIT DELETE ROWS AS "
                       f"SELECT * FROM {target} WITH NO DATA")
    await conn.copy_records_to_table("stg_t10", records=chunk, columns=list(COLUMNS))
    await conn.execute(f"INSERT INTO {target} SELECT * FROM stg_t10 ON CONFLICT (id) DO UPDATE SET {_UPDATE}")


_NEWER = ", ".join(f"{c} = CASE WHEN EXCLUDED.{c}_ts > t.{c}_ts THEN EXCLUDED.{c} ELSE t.{c} END, "
                   f"{c}_ts = GREATEST(t.{c}_ts, EXCLUDED.{c}_ts)" for c in COLUMNS[1:])


async def _converging_merge(conn: Any, target: str, chunk: list[tuple[Any, ...]]) -> None:
    """Reference (c): the rows and the least state a converging mirror keeps (each cell's write timestamp), staged
    by COPY and merged by one statement that keeps the newer cell."""
    await conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS stg_c10 ON COMMIT DELETE ROWS AS "
                       f"SELECT * FROM {target} WITH NO DATA")
    await conn.copy_records_to_table("stg_c10", records=chunk, columns=[*COLUMNS, *STAMPS])
    await conn.execute(f"INSERT INTO {target} AS t SELECT * FROM stg_c10 ON CONFLICT (id) DO UPDATE SET {_NEWER}")


def _stamped(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [(*r, *([TS0 + i] * len(STAMPS))) for i, r in enumerate(rows)]


async def _executemany(conn: Any, target: str, chunk: list[tuple[Any, ...]]) -> None:
    params = ", ".join(f"${i + 1}" for i in range(len(COLUMNS)))
    await conn.executemany(f"INSERT INTO {target} ({', '.join(COLUMNS)}) VALUES ({params}) "
                           f"ON CONFLICT (id) DO UPDATE SET {_UPDATE}", chunk)


def _cpu_s(pid: int, children: bool = False) -> float:
    """CPU seconds of process ``pid`` (user + system), with ``children`` also those of its reaped children."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def pg_cpu_s(postmaster: int) -> float:
    """CPU seconds PostgreSQL has used so far: the postmaster, its live children, and the children it reaped
    (connections that closed).  The stack's PostgreSQL is on this machine, so its cost per event can be shown."""
    total = _cpu_s(postmaster, children=True)
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    total += _cpu_s(int(d.name))
            except (OSError, ValueError, IndexError):
                continue
    return total


async def postmaster_pid(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:  # read while the backend lives
        backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
        return int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
    finally:
        await conn.close()


def _vm(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


async def run_apply(dsn: str, prefix: str, total: int, batch: int, concurrency: int, rnd: int,
                    profile: Path | None, processes: int = 1, copies: int = 1) -> tuple[float, float, int, float]:
    """(steady events/s, events/s from process start, peak RSS bytes of one process, CPU seconds of the
    processes) of one run of ``processes`` ``cdcpipe apply`` processes in one consumer group."""
    run = f"{prefix}_{uuid.uuid4().hex[:6]}_r{rnd}"  # fresh consumer group and schema, also on kept topics
    group = run
    env = {**os.environ, "CDCPIPE_KAFKA__TOPIC_PREFIX": prefix, "CDCPIPE_APPLY__GROUP_ID": group,
           "CDCPIPE_POSTGRES__SCHEMA_PREFIX": run + "_", "CDCPIPE_APPLY__BATCH__MAX_ROWS": str(batch),
           "CDCPIPE_APPLY__CONCURRENCY": str(concurrency), "CDCPIPE_OBSERVABILITY__HTTP_PORT": "0",
           "CDCPIPE_OBSERVABILITY__LOG_LEVEL": "WARNING"}
    cmd = [sys.executable, "-m", "cdcpipe", "apply"]
    if profile is not None:
        cmd = [sys.executable, "-m", "pyinstrument", "-o", str(profile), "-r", "text", "-m", "cdcpipe", "apply"]
    conn = await asyncpg.connect(dsn)
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd if i == 0 else [sys.executable, "-m", "cdcpipe", "apply"], env=env, cwd=ROOT)
             for i in range(processes)]
    first: tuple[float, int] | None = None
    peak = 0
    cpu: dict[int, float] = {}
    try:
        while True:
            await asyncio.sleep(0.05)
            for proc in procs:
                if proc.poll() is not None:
                    raise SystemExit(f"cdcpipe apply exited with {proc.returncode}")
                peak = max(peak, _vm(proc.pid, "VmHWM"))
                cpu[proc.pid] = _cpu_s(proc.pid)
            done = await conn.fetchval("SELECT sum(next_offset) FROM cdcpipe_checkpoints WHERE group_id = $1", group)
            now = time.perf_counter()
            if done is not None and first is None:
                first = (now, int(done))
            if done is not None and int(done) >= total:
                break
        assert first is not None
        rows = await conn.fetchval(f'SELECT count(*) FROM "{run}_bench".t10')
        if rows != total // copies:  # e.g. events dead-lettered: the figure would be meaningless
            raise SystemExit(f"apply wrote {rows} rows for {total} events")
        steady = (total - first[1]) / (now - first[0]) if now > first[0] and total > first[1] else total / (now - t0)
        return steady, total / (now - t0), peak, sum(cpu.values())
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        await conn.execute("DELETE FROM cdcpipe_checkpoints WHERE group_id = $1", group)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{run}_bench" CASCADE')
        await conn.close()


async def amain(args: argparse.Namespace) -> int:
    settings = load_settings()
    dsn = settings.require("postgres.dsn").get_secret_value()
    kafka = settings.kafka.client_config()
    rows = make_rows(args.events)
    prefix = args.prefix or f"bench{uuid.uuid4().hex[:8]}"
    if args.prefix is None:
        t0 = time.perf_counter()
        produce(rows, prefix, args.partitions, kafka, os.cpu_count() or 2, args.copies)
        print(f"produced {len(rows) * args.copies} events to {prefix}.bench.t10 ({args.partitions} partitions) in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
    pg_rows = _pg_rows(rows)
    applies, starts, ceilings, manys, peaks = [], [], [], [], []
    postmaster = await postmaster_pid(dsn)
    # CPU µs per event, per run: (this client or the apply processes, PostgreSQL)
    costs: dict[str, list[tuple[float, float]]] = {"apply": [], "ceiling": [], "converging": [], "executemany": []}
    stamped = _stamped(pg_rows)
    convergings: list[float] = []

    events = len(rows) * args.copies  # apply's and the peer's input (the references write each row once)

    def cost(name: str, client_s: float, pg_s: float) -> None:
        n = events if name == "apply" else len(rows)
        costs[name].append((client_s / n * 1e6, pg_s / n * 1e6))

    async def reference(name: str, batch: int, write: Any) -> float:
        c0, p0 = time.process_time(), pg_cpu_s(postmaster)
        secs = await _run_batches(dsn, stamped if write is _converging_merge else pg_rows, batch, args.concurrency,
                                  f"{prefix}_{name}", write)
        cost(name, time.process_time() - c0, pg_cpu_s(postmaster) - p0)
        return len(rows) / secs
    try:
        for r in range(args.rounds):
            ceilings.append(await reference("ceiling", args.batch, _copy_merge))
            convergings.append(await reference("converging", args.batch, _converging_merge))
            manys.append(await reference("executemany", args.batch_executemany, _executemany))
            p0 = pg_cpu_s(postmaster)
            steady, start, peak, apply_cpu = await run_apply(dsn, prefix, events, args.batch, args.concurrency,
                                                             r, args.profile if r == 0 else None, args.processes,
                                                             args.copies)
            cost("apply", apply_cpu, pg_cpu_s(postmaster) - p0)
            applies.append(steady)
            starts.append(start)
            peaks.append(peak)
            print(f"  round {r + 1}: apply {steady:.0f}/s ({start:.0f}/s from start, peak RSS "
                  f"{peak / 2**20:.0f} MB), ceiling {ceilings[-1]:.0f}/s, converging ceiling {convergings[-1]:.0f}/s, "
                  f"executemany {manys[-1]:.0f}/s", flush=True)
    finally:
        if args.keep:
            print(f"kept topics: rerun with --prefix {prefix} --events {args.events}", flush=True)
        else:
            existing = topics_with_prefix(kafka, [f"{prefix}."])
            delete_topics(kafka, existing & {f"{prefix}.bench.t10", f"{prefix}.schemas", f"{prefix}.dlq"})
    if not applies:
        return 0  # --rounds 0: produce (and --keep) only
    peers: list[Any] = []
    for tasks in (int(t) for t in args.peer_tasks.split(",") if t):
        peer = await peer_jdbc.run_peer(rows, partitions=args.partitions, tasks=tasks, kafka_conf=kafka, dsn=dsn,
                                        copies=args.copies)
        print("  " + peer.line(), flush=True)
        peers.append(peer)
    a, c, m = statistics.median(applies), statistics.median(ceilings), statistics.median(manys)
    conv = statistics.median(convergings)
    print(f"{len(rows)} rows, {events} events ({args.copies} cop{'y' if args.copies == 1 else 'ies'} each), batch "
          f"{args.batch}, concurrency {args.concurrency}, {args.partitions} partitions, {args.processes} apply "
          f"process(es); apply from process start {statistics.median(starts):.0f}/s")
    print("CPU per event, medians (client = the apply processes or this script's asyncpg; PostgreSQL = all its "
          "processes): " + ", ".join(
              f"{name} client {statistics.median(c for c, _ in v):.1f} µs + PostgreSQL "
              f"{statistics.median(p for _, p in v):.1f} µs" for name, v in costs.items()))
    client_us = statistics.median(c for c, _ in costs["apply"])
    pg_us = statistics.median(p for _, p in costs["apply"])
    peer_part = ""
    if peers:  # the defaults (tasks.max 1) if run, else the first
        peer = next((p for p in peers if p.tasks == 1), peers[0])
        peer_part = f"peer_per_s={peer.per_s:.0f} peer_ratio={a / peer.per_s:.2f} "
    print(f"RESULT apply_per_s={a:.0f} {peer_part}converging_ceiling_per_s={conv:.0f} converging_ratio={a / conv:.3f} "
          f"ceiling_per_s={c:.0f} ceiling_ratio={a / c:.3f} executemany_per_s={m:.0f} executemany_ratio={a / m:.2f} "
          f"client_us={client_us:.1f} pg_us={pg_us:.1f} rss_mb={max(peaks) / 2**20:.0f} copies={args.copies}")
    return 0


def decode_only(n: int, rounds: int) -> int:
    """In-process A/B of apply's decoding, no Kafka or PostgreSQL: ``n`` of the bench's events decoded into merge
    deltas by fastavro + ``decode._Plan.delta`` (the path before the compiled reader) and by ``decode_delta``,
    alternating rounds; medians of CPU µs per event, their ratio and the load average."""
    import io

    import fastavro

    from cdcpipe.apply import decode

    schema = avro.table_schema(TABLE)
    types = [c.type for c in TABLE.regular]
    names = [c.name for c in TABLE.regular]
    src = Source("bench", "dc1", "n1", "bench", "t10", TABLE.table_id, 1, 0)
    ts = TS0
    messages = []
    for i, row in enumerate(make_rows(n)):
        cells = tuple(ColumnChange(nm, (Cell(v, ts + i, raw=serialize(t, v)),))
                      for nm, t, v in zip(names, types, row[1:], strict=True))
        ev = ChangeEvent(i.to_bytes(16, "big"), Op.UPSERT, ts + i, src, (row[0],), liveness=Liveness(ts + i),
                         columns=cells)
        messages.append(avro.encode(ev, schema, (serialize(TABLE.partition_key[0].type, row[0]),)))
    reader = decode.SchemaReader(None, "")
    reader.cache.add(schema.to_json())
    plan = decode._Plan(reader.cache.get(schema.fingerprint))  # type: ignore[arg-type]

    def fastavro_path() -> list[Any]:
        return [plan.delta(fastavro.schemaless_reader(io.BytesIO(m[10:]), plan.schema.plain, None))
                for m in messages]

    def compiled() -> list[Any]:
        return [decode.decode_delta(m, reader)[0] for m in messages]

    assert fastavro_path() == compiled()
    times: dict[str, list[float]] = {"fastavro": [], "compiled": []}
    for r in range(rounds):
        for name, f in (("fastavro", fastavro_path), ("compiled", compiled))[::1 if r % 2 else -1]:
            t0 = time.process_time()
            f()
            times[name].append((time.process_time() - t0) / n * 1e6)
    old, new = statistics.median(times["fastavro"]), statistics.median(times["compiled"])
    print(f"decode into merge deltas, {n} events x {rounds} rounds: fastavro {old:.1f} µs/event, compiled "
          f"{new:.1f} µs/event, ratio {old / new:.2f}, load {os.getloadavg()[0]:.2f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=3, help="0: only produce (with --keep, for later runs)")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the event topic")
    parser.add_argument("--batch", type=int, default=5000, help="rows per batch (apply.batch.max_rows, COPY)")
    parser.add_argument("--batch-executemany", type=int, default=1000, help="rows per executemany batch")
    parser.add_argument("--concurrency", type=int, default=4, help="apply.concurrency and reference connections")
    parser.add_argument("--processes", type=int, default=1,
                        help="apply processes in the consumer group (scale = partitions; RSS is per process)")
    parser.add_argument("--copies", type=int, default=1, help="deliver every event this many times (3: the "
                        "duplicate-heavy variant, as RF=3 replicas deliver a change), to apply and to the peer")
    parser.add_argument("--peer-tasks", default="1,4", help="tasks.max values to run the Debezium JDBC sink peer "
                        "with (bench/peer_jdbc.py), comma-separated; empty: no peer")
    parser.add_argument("--keep", action="store_true", help="keep the produced topics for later runs")
    parser.add_argument("--prefix", help="measure topics kept earlier with --keep (same --events) instead of "
                        "producing new ones")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="run the first apply round under pyinstrument, text report to FILE")
    parser.add_argument("--decode-only", action="store_true",
                        help="only the in-process A/B of event decoding (fastavro vs compiled), --events events, "
                        "--rounds rounds (no stack needed)")
    args = parser.parse_args()
    if args.decode_only:
        return decode_only(args.events, max(args.rounds, 1))
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
