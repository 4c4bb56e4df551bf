"""``cdcpipe reconcile`` on the real stack (issue 17): an unchanged mirror under a concurrent write load reports no
drift (changes on their way are not drift); then the seed's drift — rows deleted, modified and added in PostgreSQL
by hand — is found exactly (kind and count), stored, repaired through the pipeline, and the mirror equals
Cassandra again."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.e2e.test_schema_changes import running
from tests.support.harness import Pipeline, wait_for, wait_until_equal
from tests.support.processes import free_port
from tests.support.stack import ROOT

pytestmark = pytest.mark.timeout(600)


def reconcile(pipeline: Pipeline, *args: str) -> tuple[int, list[dict[str, Any]]]:
    cmd = [sys.executable, "-m", "cdcpipe", "reconcile", "--tables", f"{pipeline.keyspace}.*", "--progress", "json",
           "--splits", "8", *args]
    done = subprocess.run(cmd, env=pipeline.env, cwd=ROOT, capture_output=True, text=True, timeout=400)
    with (pipeline.workdir / "reconcile.log").open("a") as f:
        f.write(f"==== {' '.join(cmd[3:])} (exit {done.returncode})\n{done.stdout}{done.stderr}")
    lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    return done.returncode, lines


async def _pg(dsn: str, *statements: str) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return [await conn.fetch(s) for s in statements]
    finally:
        await conn.close()


def test_reconcile_finds_repairs_and_ignores_in_flight(stack_env: dict[str, str], tmp_path: Path) -> None:
    with running(stack_env, tmp_path, "e2erc", "t (k int PRIMARY KEY, v text, n int)") as (
            stack, keyspace, session, pipeline):
        insert = session.prepare(f"INSERT INTO {keyspace}.t (k, v, n) VALUES (?, ?, ?)")
        for k in range(1000):
            session.execute(insert, (k, f"v{k}", k))
        wait_until_equal(session, keyspace, stack.hosts, stack.dsn, pipeline.procs, 120)

        # 1. unchanged, while rows keep changing: no drift reported
        stop = threading.Event()

        def write() -> None:
            n = 0
            while not stop.is_set():
                session.execute(insert, (n % 1000, f"w{n}", n))
                n += 1
                time.sleep(0.005)
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        try:
            rc, out = reconcile(pipeline, "--settle-s", "20")
        finally:
            stop.set()
            writer.join(10)
        assert rc == 0, out
        assert out[0]["differences"] == 0 and out[0]["cassandra_rows"] >= 1000, out
        wait_until_equal(session, keyspace, stack.hosts, stack.dsn, pipeline.procs, 120)

        # 2. drift made by hand in PostgreSQL: 50 rows deleted, 10 modified, 5 added
        target = f'"{keyspace}"."t"'
        asyncio.run(_pg(stack.dsn,
                        f"DELETE FROM {target} WHERE k < 50",
                        f"UPDATE {target} SET v = 'by hand' WHERE k >= 100 AND k < 110",
                        f"INSERT INTO {target} (k, v, n, _cdc_partition, _cdc_clustering, _cdc_meta, _cdc_inexact, "
                        "_cdc_expires_at) SELECT k + 100000, v, n, int4send(k + 100000), _cdc_clustering, _cdc_meta, "
                        f"_cdc_inexact, _cdc_expires_at FROM {target} WHERE k >= 200 AND k < 205"))
        rc, out = reconcile(pipeline, "--settle-s", "3")
        assert rc == 1, out
        table = out[0]
        assert table["kinds"] == {"MISSING_IN_POSTGRES": 50, "DATA_MISMATCH": 10, "MISSING_IN_CASSANDRA": 5}, table
        assert abs(table["drift_ratio"] - 65 / 1000) < 1e-9, table  # of max(rows in Cassandra, rows in PostgreSQL)
        assert table["differing_leaves"] <= 65 and table["transferred_ratio"] < 0.2, table  # only those leaves read
        run_id = out[-1]["run_id"]
        stored = asyncio.run(_pg(stack.dsn, "SELECT kind, count(*) FROM cdcpipe_reconcile_mismatches WHERE "
                                 f"run_id = '{run_id}' GROUP BY kind",
                                 f"SELECT status FROM cdcpipe_reconcile_runs WHERE run_id = '{run_id}'"))
        assert dict(stored[0]) == {"MISSING_IN_POSTGRES": 50, "DATA_MISMATCH": 10, "MISSING_IN_CASSANDRA": 5}
        assert stored[1][0]["status"] == "drift"
        mismatch = asyncio.run(_pg(stack.dsn, "SELECT cassandra, postgres FROM cdcpipe_reconcile_mismatches WHERE "
                                   f"run_id = '{run_id}' AND kind = 'DATA_MISMATCH' LIMIT 1"))[0][0]
        assert json.loads(mismatch["postgres"])["v"] == "by hand"
        assert json.loads(mismatch["cassandra"])["v"] != "by hand"

        # 3. repaired through the pipeline: equal again, and a later run finds nothing
        rc, out = reconcile(pipeline, "--repair", "--settle-s", "3")
        assert rc == 0, out
        assert out[0]["differences"] == 0 and out[0]["repaired"], out
        wait_for("the mirror to equal Cassandra", lambda: reconcile(pipeline, "--settle-s", "3")[0] == 0, 60,
                 pipeline)
        report = wait_until_equal(session, keyspace, stack.hosts, stack.dsn, pipeline.procs, 120)
        assert report.tables[0].cassandra_rows == 1000


def test_statics_and_inexact_values(stack_env: dict[str, str], tmp_path: Path) -> None:
    """Rows PostgreSQL cannot hold exactly (a timestamp beyond year 9999, which cassandra-driver cannot decode;
    text with NUL) and partitions with only static data are compared row by row (their leaves are dirty): an
    equal mirror is reported equal, and a static partition deleted by hand is found."""
    with running(stack_env, tmp_path, "e2erh",
                 "s (k int, c int, st text static, v text, ts timestamp, l list<int>, PRIMARY KEY (k, c))") as (
            stack, keyspace, session, pipeline):
        insert = session.prepare(f"INSERT INTO {keyspace}.s (k, c, st, v, ts, l) VALUES (?, ?, ?, ?, ?, ?)")
        for k in range(40):
            if k % 4 == 0:  # static data only
                session.execute(f"INSERT INTO {keyspace}.s (k, st) VALUES ({k}, 'only static {k}')")
                continue
            for c in range(3):
                session.execute(insert, (k, c, f"s{k}", f"nul\x00{c}" if (k + c) % 5 == 0 else f"v{c}",
                                         253402300800000 + k if c == 1 else k * 1000, [k, c]))
        wait_until_equal(session, keyspace, stack.hosts, stack.dsn, pipeline.procs, 120)
        rc, out = reconcile(pipeline, "--settle-s", "3")
        assert rc == 0, out
        assert out[0]["differences"] == 0 and out[0]["cassandra_rows"] == 100, out
        assert 0 < out[0]["differing_leaves"] <= 40, out  # the leaves of the 30 partitions with a far timestamp
        target = f'"{keyspace}"."s$partition"'
        asyncio.run(_pg(stack.dsn, f"DELETE FROM {target} WHERE _cdc_partition = int4send(8)"))
        rc, out = reconcile(pipeline, "--settle-s", "3")
        assert rc == 1 and out[0]["kinds"] == {"MISSING_IN_POSTGRES": 1}, out

        # scheduled: a run every 2 s, its metrics and readiness served; SIGTERM stops it cleanly
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "cdcpipe", "reconcile", "--tables", f"{keyspace}.*",
                                 "--splits", "4", "--settle-s", "1", "--every", "2", "--progress", "json"],
                                env={**pipeline.env, "CDCPIPE_OBSERVABILITY__HTTP_PORT": str(port)}, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            def scraped() -> str | None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                        text: str = r.read().decode()
                except OSError:
                    return None
                return text if 'cdcpipe_reconcile_runs_total{status="drift"} 2.0' in text else None
            wait_for("two scheduled runs", lambda: scraped() is not None, 90, pipeline)
            text = scraped() or ""
            assert f'cdcpipe_reconcile_drift_ratio{{table="{keyspace}.s"}} 0.01' in text, text
            assert f'cdcpipe_reconcile_mismatches_total{{kind="MISSING_IN_POSTGRES",table="{keyspace}.s"}}' in text
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                assert r.status == 200
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-2000:]


def test_bench_small() -> None:
    """``bench/reconcile.py`` at CI size: an equal mirror of 5,000 rows reconciles equal, transferring nothing."""
    done = subprocess.run([sys.executable, "bench/reconcile.py", "--rows", "5000", "--splits", "8"], cwd=ROOT,
                          capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT "), done.stdout
    result = dict(kv.split("=") for kv in last.split()[1:])
    assert int(result["rows"]) == 5000 and float(result["transferred_ratio"]) < 0.01, done.stdout
