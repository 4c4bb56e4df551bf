"""capture across kill -9 (every write exactly once in the committed stream) and the segment life cycle
(segments leave cdc_raw once shipped, never before).

The kill -9 test's size is ``CDCPIPE_IT_CRASH_WRITES`` (default 10,000, about a minute on the project's 2-core
machine); the issue's acceptance size is 50,000: ``CDCPIPE_IT_CRASH_WRITES=50000 pytest -k kill_9``.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from cassandra.cluster import Session
from cassandra.concurrent import execute_concurrent_with_args

from cdcpipe.capture.cdc_index import scan
from cdcpipe.config import Settings
from tests.support.capturekit import CaptureProcess, EventReader
from tests.support.processes import unique

CRASH_WRITES = int(os.environ.get("CDCPIPE_IT_CRASH_WRITES", "10000"))
KILLS = 5
pytestmark = pytest.mark.timeout(180 + CRASH_WRITES // 100)


def make_table(session: Session) -> tuple[str, str]:
    ks = unique("itrec")
    session.execute(f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    session.execute(f"CREATE TABLE {ks}.t (k int PRIMARY KEY, v text) WITH cdc = true")
    return ks, "t"


def test_kill_9_and_restart_loses_and_repeats_nothing(session: Session, settings: Settings, tmp_path: Path) -> None:
    """kill -9 at KILLS random moments of a CRASH_WRITES-write workload, restarting each time: every write's
    event is in the committed stream exactly once, counted by event_id and by content."""
    ks, table = make_table(session)
    prefix = unique("itrec")
    total = CRASH_WRITES
    insert = session.prepare(f"INSERT INTO {ks}.{table} (k, v) VALUES (?, ?)")
    cap = CaptureProcess(prefix, f"{ks}.{table}", tmp_path / "capture.log").start()
    reader = EventReader(settings.kafka.bootstrap_servers, prefix, f"{prefix}.{ks}.{table}")
    written = 0

    def write() -> None:
        nonlocal written
        for start in range(0, total, 500):
            execute_concurrent_with_args(session, insert, [(i, f"v{i}") for i in range(start, min(start + 500, total))],
                                         concurrency=50)
            written = min(start + 500, total)

    writer = threading.Thread(target=write)
    rng = random.Random(4)
    moments = sorted(rng.uniform(0.05, 0.95) * total for _ in range(KILLS))  # by writes done, spread over the run
    try:
        t0 = time.monotonic()
        writer.start()
        for m in moments:
            while written < m and writer.is_alive():
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.3))
            cap.kill()  # SIGKILL: no chance to finish anything
            cap.start()
        writer.join(600)
        write_s = time.monotonic() - t0
        events = reader.poll_until(lambda ev: len(ev) >= total, 120)
        time.sleep(1.5)  # anything duplicated would arrive now
        events = reader.poll_until(lambda ev: False, 1.0)
        ids = Counter(e.event_id for e in events)
        content = Counter((e.partition_key[0], e.columns[0].cells[0].value) for e in events)
        print(f"{total} writes in {write_s:.1f} s, {KILLS} kills, {len(events)} events")
        assert len(events) == total, f"{len(events)} events for {total} writes"
        assert len(ids) == total and max(ids.values()) == 1
        assert content == Counter((i, f"v{i}") for i in range(total))
        rc, took = cap.terminate()
        assert rc == 0 and took < 10
    finally:
        writer.join(60)
        cap.kill()
        reader.close()
        session.execute(f"DROP KEYSPACE IF EXISTS {ks}")


def test_segments_are_deleted_once_shipped(session: Session, settings: Settings, tmp_path: Path) -> None:
    ks, table = make_table(session)
    prefix = unique("itgc")
    cdc_raw: Path = settings.require("capture.cdc_raw_dir")
    first = max((s.segment_id for s in scan(cdc_raw)), default=0)
    cap = CaptureProcess(prefix, f"{ks}.{table}", tmp_path / "capture.log").start()
    reader = EventReader(settings.kafka.bootstrap_servers, prefix, f"{prefix}.{ks}.{table}")
    insert = session.prepare(f"INSERT INTO {ks}.{table} (k, v) VALUES (?, ?)")
    rows = 9000  # ~9 MB of commit log: more than one 8 MiB segment, so at least one is COMPLETED
    try:
        blob = "x" * 1000
        for start in range(0, rows, 500):
            execute_concurrent_with_args(session, insert, [(i, blob) for i in range(start, start + 500)],
                                         concurrency=30)
        events = reader.poll_until(lambda ev: len(ev) >= rows, 120)
        assert len({e.event_id for e in events}) == rows
        ours = {e.source.segment_id for e in events}
        assert len(ours) >= 2
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            left = {s.segment_id: s for s in scan(cdc_raw) if s.segment_id in ours}
            if all(not s.completed for s in left.values()):
                break
            time.sleep(0.2)
        completed_left = [s for s in left.values() if s.completed]
        assert not completed_left, f"shipped COMPLETED segments still in cdc_raw: {completed_left}"
        assert min(ours) >= first or first == 0
        # the live segment (not COMPLETED) is never deleted
        active = [s for s in scan(cdc_raw) if not s.completed]
        assert active and all((cdc_raw / s.log.name).exists() for s in active)
        rc, _ = cap.terminate()
        assert rc == 0
    finally:
        cap.kill()
        reader.close()
        session.execute(f"DROP KEYSPACE IF EXISTS {ks}")
