"""capture's operations endpoints against the real stack: ``/health`` (200 when reading and connected to Kafka, 503
with the reason otherwise) and ``/metrics`` (every metric the issue lists exists and moves)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from cassandra.cluster import Session

from cdcpipe.config import Settings
from tests.support.capturekit import (
    CaptureProcess,
    EventReader,
    get,
    ops_env,
    segment_with_durable_data,
    wait_for,
)
from tests.support.processes import free_port, metric_value, unique

pytestmark = pytest.mark.timeout(120)


def test_health_is_503_with_the_reason_while_kafka_is_unreachable(tmp_path: Path) -> None:
    port, dead = free_port(), free_port()  # nothing listens on ``dead``
    cap = CaptureProcess(unique("itops"), "none.none", tmp_path / "capture.log",
                         **ops_env(port, CDCPIPE_KAFKA__BOOTSTRAP_SERVERS=f"127.0.0.1:{dead}")).start()
    try:
        status, body = wait_for(port, "/health", 503, 30)
        conditions = json.loads(body)["conditions"]
        assert status == 503 and json.loads(body)["status"] == "unhealthy"
        assert f"127.0.0.1:{dead}" in conditions["kafka"] and conditions["reading"] != "ok"
        deadline = time.monotonic() + 30  # the probe's failure reason replaces "connecting to ..."
        while "unreachable" not in conditions["kafka"] and time.monotonic() < deadline:
            time.sleep(0.5)
            status, body = get(port, "/health")
            conditions = json.loads(body)["conditions"]
        assert status == 503 and "unreachable" in conditions["kafka"], conditions
        time.sleep(3)  # it keeps waiting for Kafka (and keeps saying why) rather than exiting
        assert cap.proc is not None and cap.proc.poll() is None
        assert get(port, "/health")[0] == 503
        rc, took = cap.terminate()
        assert rc == 0 and took < 10
    finally:
        cap.kill()


def test_health_is_503_with_the_reason_while_cassandra_is_unreachable(stack_env: dict[str, str],
                                                                     tmp_path: Path) -> None:
    port, dead = free_port(), free_port()
    cap = CaptureProcess(unique("itops"), "none.none", tmp_path / "capture.log",
                         **ops_env(port, CDCPIPE_CASSANDRA__HOSTS=f"127.0.0.1:{dead}",
                                   CDCPIPE_CASSANDRA__CONNECT_TIMEOUT_S="2")).start()
    try:
        deadline = time.monotonic() + 60
        conditions: dict[str, str] = {}
        status = 0
        while "cassandra" not in conditions and time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                status, body = get(port, "/health")
            except OSError:  # not listening yet
                continue
            conditions = json.loads(body)["conditions"]
        assert status == 503 and "cassandra" in conditions and conditions["cassandra"] != "ok", conditions
        assert f"127.0.0.1:{dead}" in conditions["cassandra"]
        time.sleep(3)  # it keeps waiting for Cassandra rather than exiting
        assert cap.proc is not None and cap.proc.poll() is None
        rc, took = cap.terminate()
        assert rc == 0 and took < 10
    finally:
        cap.kill()


def test_health_is_200_when_reading_and_connected(session: Session, settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    cap = CaptureProcess(unique("itops"), "none.none", tmp_path / "capture.log", **ops_env(port)).start()
    try:
        _, body = wait_for(port, "/health", 200, 60)
        assert json.loads(body) == {"status": "ok", "conditions": {"reading": "ok", "kafka": "ok", "cassandra": "ok",
                                                                   "quarantine": "ok", "stalled": "ok"}}
        rc, _ = cap.terminate()
        assert rc == 0
    finally:
        cap.kill()


def test_metrics_exist_and_move(session: Session, settings: Settings, tmp_path: Path) -> None:
    ks = unique("itops")
    session.execute(f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    session.execute(f"CREATE TABLE {ks}.t (k int, c int, v text, PRIMARY KEY (k, c)) WITH cdc = true")
    prefix, port = unique("itops"), free_port()
    cap = CaptureProcess(prefix, f"{ks}.*", tmp_path / "capture.log", **ops_env(port)).start()
    reader = EventReader(settings.kafka.bootstrap_servers, prefix, f"{prefix}.{ks}.t")
    try:
        wait_for(port, "/health", 200, 60)
        _, before = get(port, "/metrics")
        for i in range(20):
            session.execute(f"INSERT INTO {ks}.t (k, c, v) VALUES ({i}, 1, 'x')")
        session.execute(f"DELETE FROM {ks}.t WHERE k = 0 AND c = 1")
        session.execute(f"DELETE FROM {ks}.t WHERE k = 1")
        reader.poll_until(lambda ev: len(ev) >= 22, 60)
        lags = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            _, text = get(port, "/metrics")
            lags.append(metric_value(text, "cdcpipe_capture_lag_seconds"))
            if metric_value(text, "cdcpipe_capture_events_produced_total", keyspace=ks, table="t", op="upsert") == 20:
                break
            time.sleep(0.1)
        events = {op: metric_value(text, "cdcpipe_capture_events_produced_total", keyspace=ks, table="t", op=op)
                  for op in ("upsert", "row_delete", "partition_delete")}
        assert events == {"upsert": 20, "row_delete": 1, "partition_delete": 1}
        assert (metric_value(text, "cdcpipe_capture_mutations_read_total") or 0) > (
            metric_value(before, "cdcpipe_capture_mutations_read_total") or 0)
        assert (metric_value(text, "cdcpipe_capture_transactions_total", outcome="committed") or 0) > (
            metric_value(before, "cdcpipe_capture_transactions_total", outcome="committed") or 0)
        assert (metric_value(text, "cdcpipe_capture_cdc_raw_bytes") or 0) > 0
        assert all(lag is not None and 0 <= lag < 60 for lag in lags)
        assert metric_value(text, "cdcpipe_capture_section_errors_total") == 0
        assert metric_value(text, "cdcpipe_capture_segments_deleted_total") is not None
        rc, _ = cap.terminate()
        assert rc == 0
    finally:
        cap.kill()
        reader.close()
        session.execute(f"DROP KEYSPACE IF EXISTS {ks}")


def test_section_errors_and_segments_quarantined_move(settings: Settings, tmp_path: Path) -> None:
    """A copy of a real segment, damaged in the middle and marked COMPLETED: the damage is counted, the segment
    is shipped past it and moved to the quarantine (never deleted), and /health says so."""
    source: Path = settings.require("capture.cdc_raw_dir")
    cdc_raw = tmp_path / "cdc_raw"
    cdc_raw.mkdir()
    seg = segment_with_durable_data(settings, source, 64 * 1024)
    shutil.copy(seg.log, cdc_raw / seg.log.name)
    (cdc_raw / seg.idx.name).write_text(f"{seg.offset}\nCOMPLETED")
    with open(cdc_raw / seg.log.name, "r+b") as f:
        f.seek(seg.offset // 2)
        byte = f.read(1)
        f.seek(seg.offset // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    port = free_port()
    cap = CaptureProcess(unique("itops"), "none.none", tmp_path / "capture.log",
                         **ops_env(port, CDCPIPE_CAPTURE__CDC_RAW_DIR=str(cdc_raw))).start()
    try:
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline:
            try:
                _, text = get(port, "/metrics")
            except OSError:  # not listening yet
                time.sleep(0.2)
                continue
            if (metric_value(text, "cdcpipe_capture_segments_moved_to_quarantine_total") or 0) >= 1:
                break
            time.sleep(0.2)
        assert (metric_value(text, "cdcpipe_capture_section_errors_total") or 0) >= 1
        assert metric_value(text, "cdcpipe_capture_segments_moved_to_quarantine_total") == 1
        assert metric_value(text, "cdcpipe_capture_segments_deleted_total") == 0
        assert (metric_value(text, "cdcpipe_capture_mutations_read_total") or 0) > 0
        assert not (cdc_raw / seg.log.name).exists() and not (cdc_raw / seg.idx.name).exists()
        assert (tmp_path / "cdc_quarantine" / seg.log.name).exists()
        _, body = wait_for(port, "/health", 503, 10)
        assert seg.log.name in json.loads(body)["conditions"]["quarantine"]
        rc, _ = cap.terminate()
        assert rc == 0
    finally:
        cap.kill()
