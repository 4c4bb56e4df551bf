#!/usr/bin/env python3
"""``cdcpipe reconcile`` of an equal mirror, against a plain page-through of the same table on each side.

Loads ``--rows`` rows into a table of mixed column types (``bench/snapshot.py``'s: partition key ``id``,
clustering column ``c``, 10 rows a partition; cdc off while loading), mirrors them into PostgreSQL with
``cdcpipe snapshot`` and a running ``cdcpipe apply`` (until PostgreSQL holds every row), stops apply, then measures
in one sitting, one after another (never two at once):

- Cassandra ceiling: ``SELECT * … WHERE token(id) > ? AND token(id) <= ?`` over the ``--splits`` ranges reconcile
  hashes, one thread, cassandra-driver's default (Cython) row parsing, tuple rows discarded;
- Cassandra hashed: :func:`cdcpipe.reconcile.digest.hash_cassandra` over the same ranges (the driver's row
  parsing, the digest form, row digests into leaves);
- PostgreSQL ceiling: ``SELECT *`` of the mirror through an asyncpg cursor, range by range on ``_cdc_token``;
- PostgreSQL hashed: :func:`cdcpipe.reconcile.digest.hash_postgres` over the same ranges;
- the command: ``cdcpipe reconcile --tables ks.t --splits S --progress json`` as a child: its wall time, its
  exit code (0: equal), and what it transferred — the canonical values it read again to compare rows, of what
  it hashed (``transferred_ratio``).

The machine is a noisy shared 2-core one: one run, read the ratios rather than absolute figures.  The last line is
``RESULT rows=… seconds=… rows_per_s=… transferred_ratio=… ceiling_ratio=… cassandra_ratio=… postgres_ratio=…``,
where ``ceiling_ratio`` is the lower of the two sides' hashed/ceiling rates.  Run it with the stack up:
``eval "$(deploy/local/stack env)"; .venv/bin/python bench/reconcile.py`` (``--rows 20000`` for a quick run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import snapshot as snapbench  # noqa: E402  (bench/snapshot.py: the table, its load and its mirror)
from cassandra.cluster import Cluster  # noqa: E402
from cassandra.query import tuple_factory  # noqa: E402

from cdcpipe.config import load_settings  # noqa: E402
from cdcpipe.reconcile.canonical import Columns, raw_session, typed_session  # noqa: E402
from cdcpipe.reconcile.compare import token_ranges  # noqa: E402
from cdcpipe.reconcile.digest import Tree, hash_cassandra, hash_postgres  # noqa: E402
from cdcpipe.schema import TableSchema  # noqa: E402
from cdcpipe.schema_source import cluster_options, connect_system_schema  # noqa: E402

LEAVES = 256


def cassandra_ceiling(session: Any, ks: str, ranges: list[tuple[int, int]]) -> tuple[int, float]:
    select = session.prepare(f"SELECT * FROM {ks}.t WHERE token(id) > ? AND token(id) <= ?")
    select.fetch_size = 5000
    n, t0 = 0, time.perf_counter()
    for lo, hi in ranges:
        for _ in session.execute(select, (lo, hi)):
            n += 1
    return n, time.perf_counter() - t0


def table_of(settings: Any, ks: str) -> TableSchema:
    source = connect_system_schema(settings.cassandra)
    try:
        return next(t for t in source.load() if t.name == f"{ks}.t")
    finally:
        source.session.cluster.shutdown()


def cassandra_hashed(settings: Any, table: TableSchema, ranges: list[tuple[int, int]]) -> tuple[int, float]:
    options = cluster_options(settings.cassandra)
    cluster, session = raw_session(options.pop("contact_points"), options.pop("port"), **options)
    options = cluster_options(settings.cassandra)
    typed_cluster, typed = typed_session(options.pop("contact_points"), options.pop("port"), **options)
    try:
        cols, n, t0 = Columns(table), 0, time.perf_counter()
        for lo, hi in ranges:
            tree = Tree(lo, hi, LEAVES)
            hash_cassandra(typed, table, tree, None, None, cols, session)
            n += tree.rows
        return n, time.perf_counter() - t0
    finally:
        cluster.shutdown()
        typed_cluster.shutdown()


async def postgres_side(dsn: str, table: TableSchema, ranges: list[tuple[int, int]]) -> dict[str, float]:
    ks = table.keyspace
    conn = await asyncpg.connect(dsn)
    try:
        n, t0 = 0, time.perf_counter()
        for lo, hi in ranges:
            async with conn.transaction():
                async for _ in conn.cursor(f'SELECT * FROM "{ks}"."t" WHERE _cdc_token > $1 AND _cdc_token <= $2',
                                           lo, hi, prefetch=5000):
                    n += 1
        ceiling = (n, time.perf_counter() - t0)
        cols, m, t0 = Columns(table), 0, time.perf_counter()
        for lo, hi in ranges:
            tree = Tree(lo, hi, LEAVES)
            await hash_postgres(conn, table, "", tree, cols)
            m += tree.rows
        return {"ceiling_rows": ceiling[0], "ceiling_s": ceiling[1], "hashed_rows": m,
                "hashed_s": time.perf_counter() - t0}
    finally:
        await conn.close()


def run_reconcile(env: dict[str, str], ks: str, splits: int) -> tuple[int, float, dict[str, Any]]:
    cmd = [sys.executable, "-m", "cdcpipe", "reconcile", "--tables", f"{ks}.t", "--splits", str(splits),
           "--progress", "json", "--settle-s", "5"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    secs = time.perf_counter() - t0
    lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    table = next((x for x in lines if x.get("table") == f"{ks}.t"), None)
    if table is None:
        raise SystemExit(f"cdcpipe reconcile exited {done.returncode} without a table line:\n{done.stdout}"
                         f"{done.stderr[-3000:]}")
    return done.returncode, secs, table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--splits", type=int, default=64, help="token ranges (reconcile --splits)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds mirroring the rows may take")
    parser.add_argument("--keep", action="store_true", help="keep the keyspace, topics and mirror schema")
    args = parser.parse_args()
    settings = load_settings()
    dsn = settings.require("postgres.dsn").get_secret_value()
    kafka = settings.kafka.client_config()
    run, log, env = snapbench.run_of("benchrc")
    cluster = Cluster(**cluster_options(settings.cassandra))
    session = cluster.connect()
    session.row_factory = tuple_factory
    try:
        load_s = snapbench.load(session, run, args.rows)
        print(f"loaded {args.rows} rows into {run}.t in {load_s:.1f} s", flush=True)
        mirrored = asyncio.run(snapbench.end_to_end(dsn, env, run, args.rows, 16, 2, log, args.timeout))
        print(f"mirrored into PostgreSQL in {mirrored['e2e_s']:.1f} s", flush=True)
        ranges = token_ranges(args.splits)
        c_rows, c_s = cassandra_ceiling(session, run, ranges)
        print(f"cassandra ceiling: {c_rows} rows in {c_s:.2f} s ({c_rows / c_s:.0f} rows/s)", flush=True)
        table = table_of(settings, run)
        h_rows, h_s = cassandra_hashed(settings, table, ranges)
        print(f"cassandra hashed: {h_rows} rows in {h_s:.2f} s ({h_rows / h_s:.0f} rows/s)", flush=True)
        pg = asyncio.run(postgres_side(dsn, table, ranges))
        print(f"postgres ceiling: {pg['ceiling_rows']:.0f} rows in {pg['ceiling_s']:.2f} s; hashed: "
              f"{pg['hashed_rows']:.0f} rows in {pg['hashed_s']:.2f} s", flush=True)
        if not c_rows == h_rows == pg["ceiling_rows"] == pg["hashed_rows"] == args.rows:
            raise SystemExit(f"rows differ: {c_rows}, {h_rows}, {pg}")
        code, secs, table = run_reconcile(env, run, args.splits)
        print(f"cdcpipe reconcile: exit {code} in {secs:.1f} s: {json.dumps(table)}", flush=True)
        if code != 0 or table["differences"] != 0:
            raise SystemExit("reconcile of an equal mirror did not report it equal")
        c_ratio = (h_rows / h_s) / (c_rows / c_s)
        p_ratio = (pg["hashed_rows"] / pg["hashed_s"]) / (pg["ceiling_rows"] / pg["ceiling_s"])
        result = (f"RESULT rows={args.rows} seconds={secs:.1f} rows_per_s={args.rows / secs:.0f} "
              f"transferred_ratio={table['transferred_ratio']:.6f} ceiling_ratio={min(c_ratio, p_ratio):.3f} "
              f"cassandra_ratio={c_ratio:.3f} postgres_ratio={p_ratio:.3f} "
              f"cassandra_hashed_per_s={h_rows / h_s:.0f} cassandra_ceiling_per_s={c_rows / c_s:.0f} "
              f"postgres_hashed_per_s={pg['hashed_rows'] / pg['hashed_s']:.0f} "
              f"postgres_ceiling_per_s={pg['ceiling_rows'] / pg['ceiling_s']:.0f}")
    finally:
        snapbench.finish(session, kafka, dsn, run, log, args.keep)
        cluster.shutdown()
    print(result, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
