#!/usr/bin/env python3
"""``cdcpipe snapshot`` end to end into PostgreSQL, against a plain driver read of the same token ranges.

Creates a keyspace (unique name, RF 1) with one table of mixed column types (int, text, bigint, double, timestamp,
set<text>, map<int,text>; partition key ``id``, clustering column ``c``, 10 rows a partition), loads ``--rows`` rows
with concurrent prepared inserts (cdc off while loading, so the shared node's cdc_raw is not filled; then
``ALTER TABLE … WITH cdc = true``, which the snapshot requires), then measures once:

- ceiling: ``SELECT * … WHERE token(id) > ? AND token(id) <= ?`` over the ranges the snapshot reads
  (``ring_ranges`` + ``split`` of the cluster's token map, ``--splits``), by ``--concurrency`` threads each paging
  its ranges (fetch size 1000, tuple rows, discarded): rows/s;
- end to end: ``cdcpipe apply`` as a child (unique topic prefix and consumer group), ready, then ``cdcpipe snapshot
  --tables ks.t --splits S --concurrency C --progress json`` as a child; rows/s = rows / the time from the
  snapshot's start until the mirror table in PostgreSQL holds every row (``SELECT count(*)`` polled); the
  snapshot's peak RSS (``VmHWM``) and its own read rate (rows / its wall time, process start to exit).

The machine is a noisy shared 2-core one: one run, read the ratio rather than absolute figures.  The last line is
``RESULT snapshot_rows_per_s=... ceiling_rows_per_s=... ratio=... rss_mb=... snapshot_read_rows_per_s=...``.
Run it with the stack up: ``eval "$(deploy/local/stack env)"; .venv/bin/python bench/snapshot.py``
(``--rows 20000`` for a quick run).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import queue
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
from cassandra.cluster import Cluster, Session  # noqa: E402
from cassandra.concurrent import execute_concurrent_with_args  # noqa: E402
from cassandra.query import tuple_factory  # noqa: E402

from cdcpipe.config import load_settings  # noqa: E402
from cdcpipe.schema_source import cluster_options  # noqa: E402
from cdcpipe.snapshot.ranges import TokenRange, ring_ranges, split  # noqa: E402
from tests.support.processes import CdcpipeProcess  # noqa: E402
from tests.support.topics import delete_topics, topics_with_prefix  # noqa: E402

PER_PARTITION = 10
DDL = ("CREATE TABLE {ks}.t (id int, c int, a text, b bigint, d double, t timestamp, s set<text>, "
       "m map<int, text>, PRIMARY KEY (id, c)) WITH cdc = false")
_DONE = re.compile(r"snapshot done: .*?(\d+) rows, (\d+) events, (\d+) ranges read.*?([\d.]+) s")


def load(s: Session, ks: str, n: int, seed: int = 11) -> float:
    """Create ``ks.t`` and write ``n`` rows (cdc off, then on); the seconds the writes took."""
    s.execute(f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    s.execute(DDL.format(ks=ks))
    insert = s.prepare(f"INSERT INTO {ks}.t (id, c, a, b, d, t, s, m) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
    rng = random.Random(seed)
    base = datetime.datetime(2024, 1, 1)
    t0 = time.perf_counter()
    for start in range(0, n, 20_000):
        rows = [(i // PER_PARTITION, i % PER_PARTITION, "name-" + str(rng.getrandbits(40)), rng.getrandbits(63),
                 rng.random() * 1e6, base + datetime.timedelta(milliseconds=rng.getrandbits(34)),
                 {f"tag{rng.randint(0, 20)}" for _ in range(rng.randint(0, 3))},
                 {k: "v" * rng.randint(1, 20) for k in range(rng.randint(0, 3))})
                for i in range(start, min(n, start + 20_000))]
        for ok, res in execute_concurrent_with_args(s, insert, rows, concurrency=64, raise_on_first_error=True):
            assert ok, res
    secs = time.perf_counter() - t0
    s.execute(f"ALTER TABLE {ks}.t WITH cdc = true")
    return secs


def token_ranges(cluster: Cluster, splits: int) -> list[TokenRange]:
    """The ranges ``cdcpipe snapshot --splits`` reads (``Snapshot._ring``)."""
    token_map = cluster.metadata.token_map
    tokens = [t.value for t in token_map.ring] if token_map is not None else []
    return split(ring_ranges(tokens), splits)


def ceiling(s: Session, ks: str, ranges: list[TokenRange], concurrency: int) -> tuple[int, float]:
    """(rows, seconds) of ``concurrency`` threads paging through ``ranges``, rows discarded."""
    select = s.prepare(f"SELECT * FROM {ks}.t WHERE token(id) > ? AND token(id) <= ?")
    select.fetch_size = 1000
    todo: queue.SimpleQueue[TokenRange] = queue.SimpleQueue()
    for r in ranges:
        todo.put(r)
    counts: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        n = 0
        try:
            while True:
                try:
                    r = todo.get_nowait()
                except queue.Empty:
                    break
                for _ in s.execute(select, (r.start, r.end)):
                    n += 1
        except BaseException as exc:  # reported by the caller
            errors.append(exc)
        counts.append(n)

    threads = [threading.Thread(target=worker, name=f"ceiling-{i}") for i in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return sum(counts), secs


def _vm(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


async def _count(conn: Any, table: str) -> int:
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
        return 0  # apply creates the mirror on the table's first event


async def end_to_end(dsn: str, env: dict[str, str], ks: str, n: int, splits: int, concurrency: int,
                     log: Path, timeout_s: float) -> dict[str, Any]:
    """apply running and ready, then the snapshot; seconds until PostgreSQL holds ``n`` rows, the snapshot's
    wall time, peak RSS and summary line."""
    apply = CdcpipeProcess("apply", env, log, http=True).start()
    conn = await asyncpg.connect(dsn)
    table = f'"{ks}"."t"'
    try:
        deadline = time.monotonic() + 60
        while True:  # ready: Kafka and PostgreSQL reached
            await asyncio.sleep(0.2)
            if not apply.running:
                raise SystemExit(f"cdcpipe apply exited:\n{apply.tail()}")
            try:
                if apply.get("/readyz", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"cdcpipe apply not ready after 60 s:\n{apply.tail()}")
        cmd = [sys.executable, "-m", "cdcpipe", "snapshot", "--tables", f"{ks}.t", "--splits", str(splits),
               "--concurrency", str(concurrency), "--progress", "json"]
        t0 = time.perf_counter()
        snap = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.extend(snap.stdout or []), daemon=True)
        reader.start()
        peak, snap_secs, rows, last = 0, None, 0, time.perf_counter()
        try:
            while rows < n:
                await asyncio.sleep(0.05)
                now = time.perf_counter()
                if snap_secs is None:
                    peak = max(peak, _vm(snap.pid, "VmHWM"))
                    if snap.poll() is not None:
                        snap_secs = now - t0
                        if snap.returncode != 0:
                            reader.join(10)
                            raise SystemExit(f"cdcpipe snapshot exited with {snap.returncode}:\n"
                                             + "".join(out[-30:]))
                if not apply.running:
                    raise SystemExit(f"cdcpipe apply exited:\n{apply.tail()}")
                if now - last >= 0.25 or snap_secs is not None:  # count(*) costs PostgreSQL, not every tick
                    rows, last = await _count(conn, table), now
                if now - t0 > timeout_s:
                    raise SystemExit(f"PostgreSQL holds {rows} of {n} rows after {timeout_s:.0f} s")
            e2e = time.perf_counter() - t0
            if snap_secs is None:  # every row applied before the snapshot process exited
                snap.wait(120)
                snap_secs = time.perf_counter() - t0
        finally:
            if snap.poll() is None:
                snap.kill()
                snap.wait(10)
        reader.join(10)
        summary = next((m for m in map(_DONE.search, reversed(out)) if m is not None), None)
        if summary is None:
            raise SystemExit("no 'snapshot done' line:\n" + "".join(out[-30:]))
        return {"e2e_s": e2e, "snap_s": snap_secs, "rss": peak, "rows": int(summary.group(1)),
                "events": int(summary.group(2)), "ranges": int(summary.group(3)),
                "snap_own_s": float(summary.group(4)), "pg_rows": rows}
    finally:
        apply.stop()
        await conn.close()


async def cleanup_pg(dsn: str, ks: str, group: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{ks}" CASCADE')  # drop_mirror in cdcpipe/demo/fidelity.py
        await conn.execute("DELETE FROM cdcpipe_checkpoints WHERE group_id = $1", group)
    except asyncpg.UndefinedTableError:
        pass
    finally:
        await conn.close()


def run_of(kind: str) -> tuple[str, Path, dict[str, str]]:
    """A bench run's name (its keyspace, topic prefix, consumer group and mirror schema), apply's log file, and
    the environment of its cdcpipe children."""
    run = f"{kind}_{uuid.uuid4().hex[:8]}"
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"{run}-apply.log"
    env = {**os.environ, "CDCPIPE_KAFKA__TOPIC_PREFIX": run, "CDCPIPE_APPLY__GROUP_ID": run,
           "CDCPIPE_POSTGRES__SCHEMA_PREFIX": "", "CDCPIPE_OBSERVABILITY__LOG_LEVEL": "WARNING"}
    return run, log, env


def finish(session: Session, kafka: dict[str, Any], dsn: str, run: str, log: Path, keep: bool) -> None:
    """Drop the run's keyspace, topics, mirror schema and log, unless ``keep``; a cleanup failure is printed,
    never raised over the run's own error."""
    if keep:
        print(f"kept keyspace {run}, topics {run}.*, PostgreSQL schema {run}; apply log {log}", flush=True)
        return
    try:
        session.execute(f"DROP KEYSPACE IF EXISTS {run}", timeout=120)
        deleted = delete_topics(kafka, topics_with_prefix(kafka, [f"{run}."]))
        asyncio.run(cleanup_pg(dsn, run, run))
        log.unlink(missing_ok=True)
        print(f"cleaned up: keyspace, {deleted} topics, PostgreSQL schema {run}", flush=True)
    except Exception as exc:  # never hide the run's own error behind a cleanup failure
        print(f"cleanup failed: {exc}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--splits", type=int, default=64, help="about this many token ranges (snapshot --splits)")
    parser.add_argument("--concurrency", type=int, default=4, help="ranges read at once (snapshot --concurrency)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds the end-to-end run may take")
    parser.add_argument("--keep", action="store_true", help="keep the keyspace, topics and mirror schema")
    args = parser.parse_args()
    settings = load_settings()
    dsn = settings.require("postgres.dsn").get_secret_value()
    kafka = settings.kafka.client_config()
    run, log, env = run_of("benchsnap")
    cluster = Cluster(**cluster_options(settings.cassandra))
    session = cluster.connect()
    session.row_factory = tuple_factory
    try:
        load_s = load(session, run, args.rows)
        print(f"loaded {args.rows} rows into {run}.t in {load_s:.1f} s ({args.rows / load_s:.0f} rows/s)", flush=True)
        ranges = token_ranges(cluster, args.splits)
        got, ceil_s = ceiling(session, run, ranges, args.concurrency)
        if got != args.rows:
            raise SystemExit(f"the ceiling read {got} rows of {args.rows}")
        ceil = got / ceil_s
        print(f"ceiling: {got} rows over {len(ranges)} ranges in {ceil_s:.2f} s ({ceil:.0f} rows/s)", flush=True)
        r = asyncio.run(end_to_end(dsn, env, run, args.rows, args.splits, args.concurrency, log, args.timeout))
        if r["rows"] != args.rows:
            raise SystemExit(f"the snapshot read {r['rows']} rows of {args.rows}")
    finally:
        finish(session, kafka, dsn, run, log, args.keep)
        cluster.shutdown()
    e2e, read = args.rows / r["e2e_s"], args.rows / r["snap_s"]
    rss = r["rss"] / 2**20
    rows = [("ceiling (driver SELECT *, discarded)", ceil_s, ceil, ""),
            ("snapshot process (start to exit)", r["snap_s"], read, f"peak RSS {rss:.0f} MB"),
            ("snapshot's own summary", r["snap_own_s"], args.rows / r["snap_own_s"],
             f"{r['events']} events, {r['ranges']} ranges"),
            ("snapshot -> PostgreSQL (end to end)", r["e2e_s"], e2e, f"{r['pg_rows']} rows in PostgreSQL")]
    print(f"\n{args.rows} rows ({PER_PARTITION} a partition), --splits {args.splits} ({len(ranges)} ranges), "
          f"--concurrency {args.concurrency}, load {os.getloadavg()[0]:.2f}")
    print(f"{'':38} {'seconds':>8} {'rows/s':>9}")
    for name, secs, rate, note in rows:
        print(f"{name:38} {secs:8.2f} {rate:9.0f}  {note}")
    print(f"RESULT snapshot_rows_per_s={e2e:.0f} ceiling_rows_per_s={ceil:.0f} ratio={e2e / ceil:.2f} "
          f"rss_mb={rss:.0f} snapshot_read_rows_per_s={read:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
