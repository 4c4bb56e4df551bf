"""Capture fails loud and never loses, against the real stack: a table switched to ``cdc = true`` while capture runs
is captured from its first write after the switch (and again after switching off and on); a damaged segment is
shipped up to its damage, its damaged entry dead-lettered with its bytes, and the segment moved to the quarantine
with a readiness reason naming it."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from cassandra.cluster import Session
from confluent_kafka import Consumer, KafkaError, TopicPartition

from cdcpipe.capture.segment import Entry, SegmentReader
from cdcpipe.config import Settings
from cdcpipe.model import ChangeEvent
from tests.support.capturekit import CaptureProcess, EventReader, get, ops_env, segment_with_durable_data, wait_for
from tests.support.processes import free_port, metric_value, unique
from tests.support.stack import private_stack, stack_cmd, stack_dir

pytestmark = pytest.mark.timeout(180)


def keys_of(events: list[ChangeEvent]) -> set[int]:
    return {int(e.partition_key[0]) for e in events}


def test_a_table_switched_to_cdc_while_capture_runs_is_captured(session: Session, settings: Settings,
                                                                tmp_path: Path) -> None:
    ks = unique("itfs")
    session.execute(f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    session.execute(f"CREATE TABLE {ks}.on_t (k int PRIMARY KEY, v text) WITH cdc = true")
    session.execute(f"CREATE TABLE {ks}.late (k int PRIMARY KEY, v text) WITH cdc = false")
    prefix, port = unique("itfs"), free_port()
    cap = CaptureProcess(prefix, f"{ks}.*", tmp_path / "capture.log", **ops_env(port)).start()
    on = EventReader(settings.kafka.bootstrap_servers, prefix, f"{prefix}.{ks}.on_t")
    late = EventReader(settings.kafka.bootstrap_servers, prefix, f"{prefix}.{ks}.late")
    try:
        wait_for(port, "/health", 200, 60)
        session.execute(f"INSERT INTO {ks}.late (k, v) VALUES (-1, 'before the switch')")
        session.execute(f"INSERT INTO {ks}.on_t (k, v) VALUES (1, 'x')")
        on.poll_until(lambda ev: len(ev) >= 1, 60)  # capture has read this keyspace's schema: late is cdc = false
        session.execute(f"ALTER TABLE {ks}.late WITH cdc = true")
        for k in range(10):
            session.execute(f"INSERT INTO {ks}.late (k, v) VALUES ({k}, 'after the switch')")
        events = late.poll_until(lambda ev: keys_of(ev) >= set(range(10)), 60)
        assert keys_of(events) >= set(range(10)), keys_of(events)

        session.execute(f"ALTER TABLE {ks}.late WITH cdc = false")
        session.execute(f"INSERT INTO {ks}.late (k, v) VALUES (-2, 'while off')")
        session.execute(f"ALTER TABLE {ks}.late WITH cdc = true")
        for k in range(100, 110):
            session.execute(f"INSERT INTO {ks}.late (k, v) VALUES ({k}, 'after switching on again')")
        events = late.poll_until(lambda ev: keys_of(ev) >= set(range(100, 110)), 60)
        assert keys_of(events) >= set(range(100, 110)), keys_of(events)
        assert not keys_of(events) & {-1, -2}, "a write logged while the table's CDC was off was captured"
        _, text = get(port, "/metrics")
        reloads = sum(metric_value(text, "cdcpipe_capture_schema_reloads_total", trigger=t) or 0
                      for t in ("event", "recheck"))
        assert reloads >= 2
        rc, _ = cap.terminate()
        assert rc == 0
    finally:
        cap.kill()
        on.close()
        late.close()
        session.execute(f"DROP KEYSPACE IF EXISTS {ks}")


def test_writes_logged_before_the_switch_are_left_to_the_snapshot(session: Session, settings: Settings,
                                                                   tmp_path: Path) -> None:
    """The segment active when ``cdc = true`` takes effect reaches cdc_raw whole; capture, started after the switch,
    sends only what was written after it, and the writes of a table already captured before a later schema change
    in the same segment (and across a restart) are all sent."""
    ks = unique("itsw")
    session.execute(f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    session.execute(f"CREATE TABLE {ks}.t (k int PRIMARY KEY, v text) WITH cdc = false")
    session.execute(f"CREATE TABLE {ks}.u (k int PRIMARY KEY, v text) WITH cdc = true")
    for k in range(-20, 0):
        session.execute(f"INSERT INTO {ks}.t (k, v) VALUES ({k}, 'before the switch')")
    session.execute(f"DELETE FROM {ks}.t WHERE k = -20")
    session.execute(f"ALTER TABLE {ks}.t WITH cdc = true")
    for k in range(10):
        session.execute(f"INSERT INTO {ks}.t (k, v) VALUES ({k}, 'after the switch')")
        session.execute(f"INSERT INTO {ks}.u (k, v) VALUES ({k}, 'before a change')")
    session.execute(f"ALTER TABLE {ks}.u WITH comment = 'changed'")
    for k in range(10, 20):
        session.execute(f"INSERT INTO {ks}.u (k, v) VALUES ({k}, 'after a change')")
    prefix, port = unique("itsw"), free_port()
    t = EventReader(settings.kafka.bootstrap_servers, prefix, f"{prefix}.{ks}.t")
    u = EventReader(settings.kafka.bootstrap_servers, prefix, f"{prefix}.{ks}.u")
    cap = CaptureProcess(prefix, f"{ks}.*", tmp_path / "capture.log", **ops_env(port)).start()
    try:
        wait_for(port, "/health", 200, 60)
        events = t.poll_until(lambda ev: keys_of(ev) >= set(range(10)), 60)
        assert keys_of(events) == set(range(10)), sorted(keys_of(events))
        assert keys_of(u.poll_until(lambda ev: keys_of(ev) >= set(range(20)), 60)) == set(range(20))
        _, text = get(port, "/metrics")
        assert (metric_value(text, "cdcpipe_capture_pre_switch_windows_total") or 0) >= 1
        rc, _ = cap.terminate()
        assert rc == 0
        for k in range(20, 30):  # while capture is down: u changes again in the segment of its writes
            session.execute(f"INSERT INTO {ks}.u (k, v) VALUES ({k}, 'before a change while down')")
        session.execute(f"ALTER TABLE {ks}.u WITH comment = 'changed again'")
        session.execute(f"INSERT INTO {ks}.u (k, v) VALUES (30, 'after it')")
        session.execute(f"INSERT INTO {ks}.t (k, v) VALUES (30, 'after it')")
        cap = CaptureProcess(prefix, f"{ks}.*", tmp_path / "capture2.log", **ops_env(port)).start()
        assert keys_of(u.poll_until(lambda ev: keys_of(ev) >= set(range(31)), 60)) == set(range(31))
        assert keys_of(t.poll_until(lambda ev: 30 in keys_of(ev), 60)) == set(range(10)) | {30}
        rc, _ = cap.terminate()
        assert rc == 0
    finally:
        cap.kill()
        t.close()
        u.close()
        session.execute(f"DROP KEYSPACE IF EXISTS {ks}")


def test_a_backdated_write_shadowed_by_a_deletion_before_the_switch_gets_that_deletion(
        session: Session, settings: Settings, tmp_path: Path) -> None:
    """A write logged after the switch with an older timestamp than a deletion made before it: Cassandra hides it,
    no event carries that deletion, so capture produces one at the write's timestamp; a backdated write nothing
    hides gets none."""
    ks = unique("itbd")
    session.execute(f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    session.execute(f"CREATE TABLE {ks}.t (k int PRIMARY KEY, v text, s set<int>) WITH cdc = false")
    session.execute(f"INSERT INTO {ks}.t (k, v) VALUES (1, 'a')")
    session.execute(f"DELETE FROM {ks}.t WHERE k = 1")
    session.execute(f"INSERT INTO {ks}.t (k, v, s) VALUES (2, 'a', {{1}})")
    session.execute(f"DELETE v FROM {ks}.t WHERE k = 2")
    session.execute(f"UPDATE {ks}.t SET s = s - {{2}} WHERE k = 2")
    session.execute(f"ALTER TABLE {ks}.t WITH cdc = true")
    past = int(time.time() * 1e6) - 10_000_000
    session.execute(f"INSERT INTO {ks}.t (k, v) VALUES (1, 'back') USING TIMESTAMP {past}")
    session.execute(f"UPDATE {ks}.t USING TIMESTAMP {past} SET v = 'back', s = s + {{2, 3}} WHERE k = 2")
    session.execute(f"INSERT INTO {ks}.t (k, v) VALUES (3, 'back') USING TIMESTAMP {past}")
    assert session.execute(f"SELECT * FROM {ks}.t WHERE k = 1").one() is None
    assert tuple(session.execute(f"SELECT v, s FROM {ks}.t WHERE k = 2").one()) == (None, {1})  # s = {1} at T-1
    prefix, port = unique("itbd"), free_port()
    t = EventReader(settings.kafka.bootstrap_servers, prefix, f"{prefix}.{ks}.t")
    cap = CaptureProcess(prefix, f"{ks}.*", tmp_path / "capture.log", **ops_env(port)).start()
    try:
        events = t.poll_until(lambda ev: len(ev) >= 5, 60)
        time.sleep(2)
        events = t.poll_until(lambda ev: False, 1)
        by_key: dict[int, list[ChangeEvent]] = {}
        for e in events:
            by_key.setdefault(int(e.partition_key[0]), []).append(e)
        assert sorted(by_key) == [1, 2, 3], events
        assert [e.op.value for e in by_key[3]] == ["upsert"]
        deletes = [e for e in by_key[1] if e.op.value == "partition_delete"]
        assert len(deletes) == 1 and deletes[0].deletion is not None and deletes[0].deletion.timestamp == past
        tombstones = {(cc.name, c.path) for e in by_key[2] for cc in e.columns for c in cc.cells if c.deleted}
        assert tombstones == {("v", None), ("s", 2), ("s", 3)}, by_key[2]
        _, text = get(port, "/metrics")
        assert metric_value(text, "cdcpipe_capture_backdated_deletions_total") == 2
    finally:
        cap.kill()
        t.close()
        session.execute(f"DROP KEYSPACE IF EXISTS {ks}")


def capture_dlq(bootstrap: str, prefix: str, want: int, timeout: float) -> list[dict[str, object]]:
    topic = f"{prefix}.capture-dlq"
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("itfs"), "isolation.level": "read_committed",
                  "enable.partition.eof": True, "auto.offset.reset": "earliest"})
    out: list[dict[str, object]] = []
    try:
        c.assign([TopicPartition(topic, 0, -2)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(out) < want:
            msg = c.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                assert err.code() in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART), err
                continue
            out.append(json.loads(msg.value() or b"{}"))
    finally:
        c.close()
    return out


def test_a_damaged_segment_is_shipped_dead_lettered_and_quarantined(settings: Settings, tmp_path: Path) -> None:
    source: Path = settings.require("capture.cdc_raw_dir")
    cdc_raw = tmp_path / "cdc_raw"
    cdc_raw.mkdir()
    seg = segment_with_durable_data(settings, source, 64 * 1024)
    copy = cdc_raw / seg.log.name
    shutil.copy(seg.log, copy)
    (cdc_raw / seg.idx.name).write_text(f"{seg.offset}\nCOMPLETED")
    entries = [e for e in SegmentReader(copy).read(limit=seg.offset) if isinstance(e, Entry)]
    victim = entries[len(entries) // 2]
    with open(copy, "r+b") as f:  # one byte of one entry's data: its CRC fails, its size is intact
        f.seek(victim.start + 8 + 3)
        byte = f.read(1)
        f.seek(victim.start + 8 + 3)
        f.write(bytes([byte[0] ^ 0xFF]))
    damaged = bytearray(victim.data)
    damaged[3] ^= 0xFF
    prefix, port = unique("itfs"), free_port()
    cap = CaptureProcess(prefix, "none.none", tmp_path / "capture.log",
                         **ops_env(port, CDCPIPE_CAPTURE__CDC_RAW_DIR=str(cdc_raw))).start()
    try:
        status, body = wait_for(port, "/health", 503, 60)
        deadline = time.monotonic() + 30
        while "quarantine" not in json.loads(body)["conditions"] or json.loads(body)["conditions"][
                "quarantine"] == "ok":
            assert time.monotonic() < deadline, body
            time.sleep(0.5)
            status, body = get(port, "/health")
        assert status == 503 and seg.log.name in json.loads(body)["conditions"]["quarantine"]
        records = [r for r in capture_dlq(settings.kafka.bootstrap_servers, prefix, 10_000, 20)
                   if r.get("cause") == "entry_crc"]
        assert len(records) == 1, records
        [record] = records
        assert bytes.fromhex(str(record["entry_hex"])) == bytes(damaged)
        assert record["position"] == f"{seg.segment_id}:{victim.start}"
        deadline = time.monotonic() + 30
        while not (tmp_path / "cdc_quarantine" / seg.log.name).exists():
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert not copy.exists()
        info = json.loads((tmp_path / "cdc_quarantine" / f"{seg.log.name}.json").read_text())
        assert info["cause"] == "entry_crc"
        _, text = get(port, "/metrics")
        assert metric_value(text, "cdcpipe_capture_dead_letter_records_total", cause="entry_crc") == 1
        assert metric_value(text, "cdcpipe_capture_segments_quarantined_total", cause="entry_crc") == 1
        assert metric_value(text, "cdcpipe_capture_segments_deleted_total") == 0
        rc, _ = cap.terminate()
        assert rc == 0
    finally:
        cap.kill()


def kafka_knobs() -> dict[str, str]:
    base = stack_dir()
    return {"CDCPIPE_STACK_DIR": str(base / "aux" / "capture-failsafe-kafka"),
            "CDCPIPE_STACK_CACHE": str(base / "cache"), "CDCPIPE_STACK_SERVICES": "kafka",
            "CDCPIPE_STACK_KAFKA_PORT": "19192"}


@pytest.mark.timeout(900)
def test_capture_waits_out_a_kafka_outage_and_loses_nothing(session: Session, tmp_path: Path, long_run: bool) -> None:
    """A private Kafka (the shared one is never stopped) goes down mid-stream, 45 s (120 s with ``--long``): capture
    stays up, /health says 503 naming Kafka, and every write made before, during and after the outage arrives once
    Kafka is back.  (Before: capture gave up after 5 failed attempts of 30 s and exited.)"""
    knobs = kafka_knobs()
    with private_stack(knobs) as env:
        bootstrap = env.bootstrap
        ks = unique("itfs")
        session.execute(f"CREATE KEYSPACE {ks} WITH replication = "
                        "{'class': 'SimpleStrategy', 'replication_factor': 1}")
        session.execute(f"CREATE TABLE {ks}.t (k int PRIMARY KEY, v text) WITH cdc = true")
        prefix, port = unique("itfs"), free_port()
        cap = CaptureProcess(prefix, f"{ks}.*", tmp_path / "capture.log",
                             **ops_env(port, CDCPIPE_KAFKA__BOOTSTRAP_SERVERS=bootstrap)).start()
        try:
            wait_for(port, "/health", 200, 120)
            for k in range(20):
                session.execute(f"INSERT INTO {ks}.t (k, v) VALUES ({k}, 'before')")
            reader = EventReader(bootstrap, prefix, f"{prefix}.{ks}.t")
            try:
                reader.poll_until(lambda ev: keys_of(ev) >= set(range(20)), 60)
            finally:
                reader.close()
            down = stack_cmd(knobs, "down", "--service", "kafka", timeout=120)
            assert down.returncode == 0, down.stderr
            for k in range(20, 40):
                session.execute(f"INSERT INTO {ks}.t (k, v) VALUES ({k}, 'during')")
            _, body = wait_for(port, "/health", 503, 60)
            assert json.loads(body)["conditions"]["kafka"] != "ok"
            time.sleep(120 if long_run else 45)
            assert cap.proc is not None and cap.proc.poll() is None, cap.tail()
            up = stack_cmd(knobs, "up", timeout=400)
            assert up.returncode == 0, up.stderr
            for k in range(40, 60):
                session.execute(f"INSERT INTO {ks}.t (k, v) VALUES ({k}, 'after')")
            reader = EventReader(bootstrap, prefix, f"{prefix}.{ks}.t")
            try:
                events = reader.poll_until(lambda ev: keys_of(ev) >= set(range(60)), 180)
            finally:
                reader.close()
            assert keys_of(events) >= set(range(60)), sorted(set(range(60)) - keys_of(events))
            wait_for(port, "/health", 200, 60)
            _, text = get(port, "/metrics")
            print("kafka retries:", metric_value(text, "cdcpipe_capture_kafka_retries_total"),
                  "failed transactions:", metric_value(text, "cdcpipe_capture_transactions_total", outcome="failed"))
            rc, _ = cap.terminate()
            assert rc == 0
        finally:
            cap.kill()
            session.execute(f"DROP KEYSPACE IF EXISTS {ks}")


def test_the_nodes_sizes_are_read_from_the_node(session: Session, settings: Settings) -> None:
    """capture takes cdc_total_space and commitlog_segment_size from the node's ``system_views.settings`` (the
    local stack's node runs 1024 MiB and 8 MiB), and a node whose largest mutation fits starts."""
    from cdcpipe.capture.pipeline import _check_message_size, node_cdc_total_space, node_size

    mib = 1024 * 1024
    assert node_cdc_total_space(session) == 1024 * mib
    segment = node_size(session, "commitlog_segment_size")
    assert segment == 8 * mib
    _check_message_size(settings, segment)
    assert node_size(session, "no_such_setting") is None
