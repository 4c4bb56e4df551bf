"""cdc_raw full (issue 13, item 6): with capture stopped, CDC writes fill cdc_raw until Cassandra rejects them
(``cdc_block_writes: true``); once capture starts it ships and deletes the segments, Cassandra accepts writes
again, and every acknowledged write reaches PostgreSQL exactly.

Cassandra 5.0 counts every CDC-permitted segment in cdc_raw at its full size; a new segment whose size would take
that count over ``cdc_total_space`` is FORBIDDEN, and a write to a CDC table that lands in a forbidden segment fails
("Rejecting mutation to keyspace …", a WriteFailure for the client).  Each rejection makes Cassandra measure
cdc_raw again (at most every ``cdc_free_space_check_interval``, 250 ms here), and a write after capture freed
enough space is accepted.

Runs on a PRIVATE single-node Cassandra with a small ``cdc_total_space`` (32 MiB of 8 MiB segments; 127.0.0.17,
state in ``<stack dir>/aux/cdc-raw-full``, purged afterwards) so the shared node is never blocked; Kafka and
PostgreSQL are the shared stack's.  Capture reads ``cdc_total_space`` from the node and reports cdc_raw use against
it (``cdcpipe_capture_cdc_raw_usage_ratio``), which must be high at its start and drop as it drains.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from cassandra import WriteFailure
from cassandra.cluster import Session
from cassandra.concurrent import execute_concurrent_with_args

from cdcpipe.config import MIB
from cdcpipe.demo import fidelity
from tests.support.harness import connect, dlq_messages, dlq_rows, wait_until_equal
from tests.support.processes import CdcpipeProcess, metric_sum, unique
from tests.support.stack import StackEnv, private_stack, stack_dir

pytestmark = pytest.mark.timeout(600)  # the node's start (about a minute) counts

SEGMENT = 8 * MIB  # the stack's default commitlog_segment_size
TOTAL = 32 * MIB  # cdc_total_space: four segments
ROW = 64 * 1024  # blob bytes per row
FILL_TIMEOUT_S = 120
RESUME_TIMEOUT_S = 120
AFTER = 100  # rows written once Cassandra accepts writes again
CONCURRENCY = 16
USAGE = "cdcpipe_capture_cdc_raw_usage_ratio"


def knobs() -> dict[str, str]:
    base = stack_dir()
    return {"CDCPIPE_STACK_DIR": str(base / "aux" / "cdc-raw-full"), "CDCPIPE_STACK_CACHE": str(base / "cache"),
            "CDCPIPE_STACK_SERVICES": "cassandra", "CDCPIPE_STACK_CASSANDRA_FIRST": "17",
            "CASSANDRA_CDC_TOTAL_SPACE": f"{TOTAL // MIB}MiB"}


@pytest.fixture(scope="module")
def node(stack_env: dict[str, str]) -> Iterator[StackEnv]:
    """The private node, with the shared stack's Kafka and PostgreSQL."""
    with private_stack(knobs()) as cass:
        yield StackEnv({**stack_env, **{k: v for k, v in cass.env.items() if "CASSANDRA" in k or "CDC_RAW" in k}})


def test_full_cdc_raw_drains_and_writes_resume(node: StackEnv, tmp_path: Path) -> None:
    cluster, session = connect(node)
    try:
        run(node, session, tmp_path)
    finally:
        cluster.shutdown()


def cdc_raw_listing(node: StackEnv) -> str:
    raw = Path(node.cdc_raw_dirs[0])
    return ", ".join(f"{p.name} {p.stat().st_size}" for p in sorted(raw.iterdir()))


def run(node: StackEnv, session: Session, tmp_path: Path) -> None:
    ks = unique("e2efull", 8)
    prefix = ks
    session.execute(f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    session.execute(f"CREATE TABLE {ks}.t (k int PRIMARY KEY, phase text, v blob) WITH cdc = true")
    insert = session.prepare(f"INSERT INTO {ks}.t (k, phase, v) VALUES (?, ?, ?)")
    rng = random.Random(6)
    acked: set[int] = set()

    # 1. capture stopped: write until Cassandra rejects writes to the CDC table (16 at a time)
    k, t0 = 0, time.monotonic()
    rejected: list[int] = []
    while not rejected:
        assert time.monotonic() - t0 < FILL_TIMEOUT_S, (
            f"Cassandra accepted {k} rows ({k * ROW // MIB} MiB) in {FILL_TIMEOUT_S}s without rejecting one; "
            f"cdc_raw: {cdc_raw_listing(node)}")
        keys = range(k, k + CONCURRENCY)
        results = execute_concurrent_with_args(session, insert, [(n, "before", rng.randbytes(ROW)) for n in keys],
                                               concurrency=CONCURRENCY, raise_on_first_error=False)
        for n, (ok, outcome) in zip(keys, results, strict=True):
            if ok:
                acked.add(n)
            elif isinstance(outcome, WriteFailure):
                rejected.append(n)
                first_failure = outcome
            else:
                raise outcome
        k += CONCURRENCY
    assert acked, "the very first writes were rejected"
    print(f"{len(rejected)} of rows {k - CONCURRENCY}-{k - 1} rejected after {time.monotonic() - t0:.1f}s, "
          f"{len(acked)} rows ({len(acked) * ROW // MIB} MiB) acknowledged: {first_failure}")
    # the cause is cdc_raw, and without capture it stays full: rejected again after Cassandra re-measured it
    time.sleep(1.0)
    with pytest.raises(WriteFailure):
        session.execute(insert, (rejected[0], "before", rng.randbytes(ROW)), timeout=30)
    server_log = Path(node.env["CDCPIPE_STACK_CASSANDRA_LOG"]).read_text(errors="replace")
    assert f"Rejecting mutation to keyspace {ks}" in server_log
    print(f"cdc_raw when full: {cdc_raw_listing(node)}")

    # 2. capture and apply start: capture ships and deletes segments, Cassandra accepts the rejected row
    base = {**os.environ, **node.env, "CDCPIPE_KAFKA__TOPIC_PREFIX": prefix,
            "CDCPIPE_OBSERVABILITY__LOG_FORMAT": "json",
            "CDCPIPE_CAPTURE__COMMITLOG_SEGMENT_SIZE": str(SEGMENT)}
    cap = CdcpipeProcess("capture", {**base, "CDCPIPE_CAPTURE__INCLUDE_TABLES": f"{ks}.*",
                                     "CDCPIPE_CAPTURE__NODE_ID": "node-full"}, tmp_path / "capture.log", http=True)
    app = CdcpipeProcess("apply", {**base, "CDCPIPE_APPLY__GROUP_ID": prefix}, tmp_path / "apply.log", http=True)
    try:
        cap.start()
        app.start()
        samples: list[float] = []  # capture's cdc_raw usage ratio, as measured (the gauge is 0 until then)
        t1 = next_write = time.monotonic()
        while True:
            assert cap.running and app.running, f"{cap.tail()}\n{app.tail()}"
            ratio = cap.metrics().get(USAGE)
            if ratio:
                samples.append(ratio)
            if time.monotonic() >= next_write:
                try:
                    session.execute(insert, (rejected[0], "retried", rng.randbytes(ROW)), timeout=30)
                    acked.add(rejected[0])
                    break
                except WriteFailure:
                    next_write = time.monotonic() + 0.5
            assert time.monotonic() - t1 < RESUME_TIMEOUT_S, (
                f"Cassandra still rejects writes {RESUME_TIMEOUT_S}s after capture started; cdc_raw: "
                f"{cdc_raw_listing(node)}; usage samples {samples[-5:]}\n{cap.tail(20)}")
            time.sleep(0.1)
        print(f"writes accepted again {time.monotonic() - t1:.1f}s after capture started; "
              f"usage samples {[round(s, 3) for s in samples]}")
        more = [*rejected[1:], *range(k, k + AFTER)]
        execute_concurrent_with_args(session, insert, [(n, "after", rng.randbytes(ROW)) for n in more],
                                     concurrency=CONCURRENCY, raise_on_first_error=True)
        acked.update(more)

        # 3. every acknowledged row is in PostgreSQL exactly; Cassandra holds nothing else
        report = wait_until_equal(session, ks, node.hosts, node.dsn, [cap, app], 180)
        print("\n".join(report.lines(5)))
        assert asyncio.run(_keys(node.dsn, f'SELECT k FROM "{ks}".t')) == acked
        assert {r.k for r in session.execute(f"SELECT k FROM {ks}.t")} == acked

        # 4. capture measured cdc_raw against the node's cdc_total_space: high at its start, then drained
        metrics = cap.metrics()
        end = metrics.get(USAGE)
        assert end is not None
        print(f"cdc_raw usage: peak {max(samples):.3f}, end {end:.3f}; cdc_raw at the end: {cdc_raw_listing(node)}")
        assert metric_sum(metrics, "cdcpipe_capture_cdc_total_space_bytes") == TOTAL
        assert max(samples) > 0.5, samples
        assert end < max(samples) / 2, (end, samples)
        assert metric_sum(metrics, "cdcpipe_capture_segments_deleted_total") >= 3
        assert dlq_messages(node.bootstrap, prefix) == {f"{prefix}.dlq": 0, f"{prefix}.capture-dlq": 0}
        assert asyncio.run(dlq_rows(node.dsn, prefix)) == 0
        assert cap.health()[0] == 200, cap.health()
        assert cap.starts == 1 and app.starts == 1
    finally:
        cap.stop()
        app.stop()
        session.execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=120)
        asyncio.run(fidelity.drop_mirror(node.dsn, ks))


async def _keys(dsn: str, query: str) -> set[int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {int(r[0]) for r in await conn.fetch(query)}
    finally:
        await conn.close()
