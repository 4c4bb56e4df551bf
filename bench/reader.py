#!/usr/bin/env python3
"""Commit-log reader throughput on one core, against the disk/memory ceiling, on >= 100 MB of real segments.

Starts a dedicated single-node Cassandra 5.0 (CDC on) on 127.0.0.13 with the project's stack script, writes a
mixed workload (small rows, wide rows with collections, blobs of a few KB, deletions) until its cdc_raw holds
at least ``--mb`` MB of durable commit log, then, pinned to one CPU, measures alternately:

- ceiling: reading the same bytes sequentially from the files (what any reader must at least do);
- reader: SegmentReader + MutationDecoder over every entry (framing, CRCs, full mutation decoding).

Medians of ``--rounds`` rounds.  The last line is ``RESULT mutations_per_s=... mb_per_s=... ceiling_ratio=...``.
Run it with the stack up (``deploy/local/stack up``): ``.venv/bin/python bench/reader.py``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cassandra.cluster import Cluster  # noqa: E402
from cassandra.concurrent import execute_concurrent_with_args  # noqa: E402

from cdcpipe.capture.mutation import MutationDecoder  # noqa: E402
from cdcpipe.capture.registry import SchemaRegistry  # noqa: E402
from cdcpipe.capture.segment import SegmentReader  # noqa: E402
from cdcpipe.errors import MutationDecodeError, SegmentError  # noqa: E402
from cdcpipe.schema_source import CqlFileSchemaSource, connect_system_schema  # noqa: E402

STACK = ROOT / "deploy" / "local" / "stack"
OCTET = 13
HOST = f"127.0.0.{OCTET}"


def stack(state: Path, *args: str) -> None:
    env = {**os.environ, "CDCPIPE_STACK_DIR": str(state / "aux" / "bench"), "CDCPIPE_STACK_CACHE": str(state / "cache"),
           "CDCPIPE_STACK_SERVICES": "cassandra", "CDCPIPE_STACK_CASSANDRA_FIRST": str(OCTET)}
    subprocess.run([str(STACK), *args], env=env, check=True)


def durable(cdc_raw: Path) -> list[tuple[Path, int]]:
    out = []
    for idx in sorted(cdc_raw.glob("CommitLog-*_cdc.idx")):
        first = idx.read_text().split("\n", 1)[0].strip()
        if first.isdigit():
            out.append((idx.with_name(idx.name.replace("_cdc.idx", ".log")), int(first)))
    return out


def generate(cdc_raw: Path, target_mb: int) -> None:
    cluster = Cluster([HOST], protocol_version=5)
    s = cluster.connect()
    s.execute("CREATE KEYSPACE IF NOT EXISTS bench WITH replication = "
              "{'class': 'SimpleStrategy', 'replication_factor': 1}")
    s.execute("CREATE TABLE IF NOT EXISTS bench.small (k bigint PRIMARY KEY, a int, b text, c double) WITH cdc = true")
    s.execute("CREATE TABLE IF NOT EXISTS bench.wide (k text, c int, v text, tags set<text>, attrs map<text, int>, "
              "PRIMARY KEY (k, c)) WITH cdc = true")
    s.execute("CREATE TABLE IF NOT EXISTS bench.blobs (k uuid PRIMARY KEY, payload blob, ts timestamp) "
              "WITH cdc = true")
    small = s.prepare("INSERT INTO bench.small (k, a, b, c) VALUES (?, ?, ?, ?)")
    wide = s.prepare("UPDATE bench.wide SET v = ?, tags = tags + ?, attrs[?] = ? WHERE k = ? AND c = ?")
    blob = s.prepare("INSERT INTO bench.blobs (k, payload, ts) VALUES (uuid(), ?, toTimestamp(now()))")
    delete = s.prepare("DELETE FROM bench.wide WHERE k = ? AND c = ?")
    rng = random.Random(42)
    written, started = 0, time.monotonic()
    while sum(off for _, off in durable(cdc_raw)) < target_mb * 1_000_000:
        n = 2000
        execute_concurrent_with_args(s, small, [(rng.getrandbits(62), rng.randint(0, 1 << 30), "x" * rng.randint(5, 60),
                                                 rng.random()) for _ in range(n)], concurrency=64)
        execute_concurrent_with_args(s, wide, [("v" * rng.randint(10, 200), {"t" + str(rng.randint(0, 9))},
                                                "a" + str(rng.randint(0, 9)), rng.randint(0, 99),
                                                "p" + str(rng.randint(0, 500)), rng.randint(0, 1000))
                                               for _ in range(n)], concurrency=64)
        execute_concurrent_with_args(s, blob, [(rng.randbytes(rng.randint(500, 3000)),) for _ in range(n // 4)],
                                     concurrency=64)
        execute_concurrent_with_args(s, delete, [("p" + str(rng.randint(0, 500)), rng.randint(0, 1000))
                                                 for _ in range(n // 10)], concurrency=64)
        written += n * 2 + n // 4 + n // 10
        total = sum(off for _, off in durable(cdc_raw))
        print(f"  {written} writes, {total / 1e6:.0f} MB durable, {time.monotonic() - started:.0f} s", flush=True)
    cluster.shutdown()
    time.sleep(1.5)  # one more commit-log sync


def keep(files: list[tuple[Path, int]], registry: SchemaRegistry, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    for path, _ in files:
        shutil.copy(path, into / path.name)
        idx = path.with_name(path.name.replace(".log", "_cdc.idx"))
        shutil.copy(idx, into / idx.name)
    lines = []
    for table in registry.tables():
        if table.keyspace != "bench":
            continue
        cols = [*(f"{c.name} {c.type.cql()}" for c in (*table.partition_key, *table.clustering, *table.regular)),
                *(f"{c.name} {c.type.cql()} STATIC" for c in table.static)]
        pk = ", ".join(c.name for c in table.partition_key)
        ck = "".join(f", {c.name}" for c in table.clustering)
        lines.append(f"CREATE TABLE bench.{table.table} ({', '.join(cols)}, PRIMARY KEY (({pk}){ck})) "
                     f"WITH id = {table.table_id} AND cdc = true;")
    (into / "schema.cql").write_text("CREATE KEYSPACE bench WITH replication = {'class': 'SimpleStrategy', "
                                     "'replication_factor': 1};\n" + "\n".join(lines) + "\n")


def ceiling(files: list[tuple[Path, int]]) -> tuple[float, int]:
    t0 = time.perf_counter()
    total = 0
    for path, limit in files:
        with path.open("rb") as f:
            total += len(f.read(limit))
    return time.perf_counter() - t0, total


def read_all(files: list[tuple[Path, int]], decoder: MutationDecoder) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    mutations = errors = 0
    for path, limit in files:
        reader = SegmentReader(path)
        version = reader.descriptor.messaging_version
        assert version is not None
        for item in reader.read(limit=limit):
            if isinstance(item, SegmentError):
                errors += 1
                continue
            try:
                decoder.decode(item.data, version, item.position, str(path))
                mutations += 1
            except MutationDecodeError:
                errors += 1
    return time.perf_counter() - t0, mutations, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=100, help="durable commit log to generate (MB)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep the generated segments, their _cdc.idx files and schema.cql in DIR")
    parser.add_argument("--segments", type=Path, metavar="DIR",
                        help="measure segments kept earlier with --keep instead of generating new ones")
    args = parser.parse_args()
    state = Path(os.environ.get("CDCPIPE_STACK_DIR", ROOT / ".stack"))
    cdc_raw = state / "aux" / "bench" / "cassandra" / "cdc_raw"
    if args.segments is None:
        stack(state, "down", "--purge")
        stack(state, "up")
    try:
        if args.segments is None:
            print(f"generating >= {args.mb} MB of commit log on {HOST} ...", flush=True)
            generate(cdc_raw, args.mb)
            registry = SchemaRegistry(connect_system_schema(f"{HOST}:9042"))
        else:
            cdc_raw = args.segments
            registry = SchemaRegistry(CqlFileSchemaSource(cdc_raw / "schema.cql"))
        files = durable(cdc_raw)
        if args.keep is not None:
            keep(files, registry, args.keep)
        decoder = MutationDecoder(registry)
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
        ceilings, reads = [], []
        mutations = errors = size = 0
        for r in range(args.rounds):
            secs, size = ceiling(files)
            ceilings.append(secs)
            secs, mutations, errors = read_all(files, decoder)
            reads.append(secs)
            print(f"  round {r + 1}: ceiling {size / 1e6 / ceilings[-1]:.0f} MB/s, reader {size / 1e6 / secs:.1f} MB/s "
                  f"{mutations / secs:.0f} mutations/s ({errors} errors)", flush=True)
    finally:
        if args.segments is None:
            stack(state, "down", "--purge")
    read_s, ceil_s = statistics.median(reads), statistics.median(ceilings)
    print(f"{len(files)} segments, {size / 1e6:.1f} MB durable, {mutations} mutations, {errors} errors")
    print(f"RESULT mutations_per_s={mutations / read_s:.0f} mb_per_s={size / 1e6 / read_s:.1f} "
          f"ceiling_mb_per_s={size / 1e6 / ceil_s:.0f} ceiling_ratio={ceil_s / read_s:.4f}")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
