"""Safe defaults and the health endpoints, on the real stack (issue 13, items 7 and 8).

- ``/livez`` stays 200 while ``/readyz`` (and its alias ``/health``) answers 503 naming an unreachable Kafka;
- ``cdcpipe capture`` and ``cdcpipe apply`` started side by side with default settings both serve (9400, 9401);
- the topics capture and apply create take the largest event and are replicated min(3, brokers) times;
- secrets planted in ``kafka.extra`` (and ``kafka.sasl_password``) appear nowhere a run writes: ``cdcpipe config``,
  the processes' output, ``/metrics``, ``/livez``, ``/readyz``, the Kafka topics of the run (values, keys, headers,
  dead letters included) and the dead-letter table.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cassandra.cluster import Session
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource

from cdcpipe.apply.deadletter import DeadLetterer
from cdcpipe.capture.producer import EventProducer
from cdcpipe.config import DEFAULT_HTTP_PORTS, Settings
from cdcpipe.topics import capture_dlq_topic, positions_topic, schemas_topic
from tests.support.processes import CdcpipeProcess, unique

pytestmark = pytest.mark.timeout(180)

PLANTED = {"ssl.key.password": "pl4nted-ssl-key-pw-7c1e", "sasl.oauthbearer.client.secret": "pl4nted-oauth-9d2f",
           "ssl.key.pem": "pl4nted-pem-5a0b"}
PLANTED_SASL = "pl4nted-sasl-pw-3e8a"


def wait_status(proc: CdcpipeProcess, path: str, want: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: tuple[int, bytes] = (0, b"")
    while time.monotonic() < deadline:
        assert proc.running, proc.tail()
        try:
            last = proc.get(path)
            if last[0] == want:
                return dict(json.loads(last[1]))
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{proc.name} {path} did not answer {want} within {timeout}s; last: {last}\n{proc.tail()}")


def test_livez_stays_up_while_readyz_names_the_unreachable_kafka(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens once the socket is closed
    cap = CdcpipeProcess("capture", {**os.environ, "CDCPIPE_KAFKA__TOPIC_PREFIX": unique("itops"),
                                     "CDCPIPE_CAPTURE__INCLUDE_TABLES": "none.none",
                                     "CDCPIPE_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{dead}"},
                         tmp_path / "capture.log", http=True).start()
    try:
        ready = wait_status(cap, "/readyz", 503, 30)
        assert ready["status"] == "unhealthy" and f"127.0.0.1:{dead}" in ready["conditions"]["kafka"]
        status, body = cap.get("/health")
        assert status == 503 and json.loads(body)["conditions"]["kafka"] == ready["conditions"]["kafka"]
        for _ in range(5):  # an outage of a dependency is no reason to restart: alive all along
            status, body = cap.get("/livez")
            assert status == 200 and json.loads(body)["status"] == "ok", body
            time.sleep(0.3)
    finally:
        assert cap.stop() == 0, cap.tail()


def test_capture_and_apply_side_by_side_with_default_ports(stack_env: dict[str, str], tmp_path: Path) -> None:
    """The first thing a new user does: both processes with default settings on one machine."""
    busy = [p for p in DEFAULT_HTTP_PORTS.values() if _listening(p)]
    assert not busy, f"ports {busy} are in use on this machine: this test needs the defaults free"
    prefix = unique("itports")
    env = {k: v for k, v in os.environ.items() if k != "CDCPIPE_OBSERVABILITY__HTTP_PORT"}
    env.update({"CDCPIPE_KAFKA__TOPIC_PREFIX": prefix, "CDCPIPE_OBSERVABILITY__HTTP_HOST": "127.0.0.1"})
    cap = CdcpipeProcess("capture", {**env, "CDCPIPE_CAPTURE__INCLUDE_TABLES": "none.none"}, tmp_path / "cap.log")
    app = CdcpipeProcess("apply", {**env, "CDCPIPE_APPLY__GROUP_ID": prefix}, tmp_path / "apply.log")
    cap.port, app.port = DEFAULT_HTTP_PORTS["capture"], DEFAULT_HTTP_PORTS["apply"]
    try:
        cap.start()
        app.start()
        for proc in (cap, app):
            wait_status(proc, "/livez", 200, 60)
            wait_status(proc, "/readyz", 200, 90)
        assert "Address already in use" not in cap.log.read_text() + app.log.read_text()
        assert "cdcpipe_capture" in cap.metrics_text() and "cdcpipe_apply" in app.metrics_text()
    finally:
        assert cap.stop() == 0, cap.tail()
        assert app.stop() == 0, app.tail()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_topics_take_the_largest_event_and_replicate_by_cluster_size(settings: Settings) -> None:
    kafka = settings.kafka.model_copy(update={"topic_prefix": unique("itdef")})
    admin = AdminClient(kafka.client_config())
    brokers = len(admin.list_topics(timeout=10).brokers)
    producer = EventProducer(kafka, "node-defaults", partitions=1, replication=None)
    try:
        producer.start()
        producer.ensure_topic(f"{kafka.topic_prefix}.ks.t")
    finally:
        producer.close()
    dlq = DeadLetterer(None, None, f"{kafka.topic_prefix}.dlq", "g")
    dlq.ensure_topic_blocking(admin, kafka=kafka)
    topics = [positions_topic(kafka.topic_prefix), schemas_topic(kafka.topic_prefix),
              capture_dlq_topic(kafka.topic_prefix), f"{kafka.topic_prefix}.ks.t", f"{kafka.topic_prefix}.dlq"]
    meta = admin.list_topics(timeout=10).topics
    want = min(3, brokers)
    for topic in topics:
        assert len(meta[topic].partitions[0].replicas) == want, topic
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in topics]
    for res, future in admin.describe_configs(resources).items():
        configs = future.result(timeout=10)
        assert int(configs["max.message.bytes"].value) == settings.kafka.message_bytes(), res
    assert settings.kafka.message_bytes() == 2 * (settings.capture.commitlog_segment_size // 2) + 1024 * 1024


# ---------------------------------------------------------------------------------------------- secrets


def test_planted_secrets_appear_nowhere_a_run_writes(stack_env: dict[str, str], session: Session,
                                                     settings: Settings, tmp_path: Path) -> None:
    prefix = unique("itsecret")
    ks = prefix.lower()
    secrets = [*PLANTED.values(), PLANTED_SASL]
    env = {**os.environ, "CDCPIPE_KAFKA__EXTRA": json.dumps(PLANTED), "CDCPIPE_KAFKA__SASL_PASSWORD": PLANTED_SASL,
           "CDCPIPE_KAFKA__TOPIC_PREFIX": prefix, "CDCPIPE_OBSERVABILITY__LOG_LEVEL": "DEBUG"}
    written: dict[str, bytes] = {}

    for fmt in ("yaml", "json"):
        out = subprocess.run([sys.executable, "-m", "cdcpipe", "config", "--format", fmt], env=env,
                             capture_output=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert b"**********" in out.stdout and b"ssl.key.password" in out.stdout
        written[f"config {fmt}"] = out.stdout + out.stderr

    session.execute(f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    session.execute(f"CREATE TABLE {ks}.t (k int PRIMARY KEY, v text) WITH cdc = true")
    cap = CdcpipeProcess("capture", {**env, "CDCPIPE_CAPTURE__INCLUDE_TABLES": f"{ks}.*",
                                     "CDCPIPE_CAPTURE__NODE_ID": "node-secrets"}, tmp_path / "capture.log",
                         http=True)
    app = CdcpipeProcess("apply", {**env, "CDCPIPE_APPLY__GROUP_ID": prefix}, tmp_path / "apply.log", http=True)
    dsn = settings.require("postgres.dsn").get_secret_value()
    try:
        cap.start()
        app.start()
        for proc in (cap, app):
            wait_status(proc, "/readyz", 200, 90)
        for k in range(20):
            session.execute(f"INSERT INTO {ks}.t (k, v) VALUES (%s, %s)", (k, f"value {k}"))
        deadline = time.monotonic() + 90
        while _count(dsn, f'"{ks}".t') < 20:
            assert time.monotonic() < deadline, f"rows did not arrive\n{cap.tail()}\n{app.tail()}"
            assert cap.running and app.running, f"{cap.tail()}\n{app.tail()}"
            time.sleep(0.5)
        for proc in (cap, app):
            for path in ("/metrics", "/livez", "/readyz", "/health"):
                written[f"{proc.name} {path}"] = proc.get(path)[1]
    finally:
        cap.stop()
        app.stop()
        session.execute(f"DROP KEYSPACE IF EXISTS {ks}")
    written["capture output"] = cap.log.read_bytes()
    written["apply output"] = app.log.read_bytes()
    assert b"value 19" not in written["capture output"]  # sanity: the logs are there, not the data
    written.update(_topics_content(settings, prefix))
    written["cdcpipe_dlq"] = _dlq_rows(dsn, prefix)
    assert any(name.endswith(".t") for name in written), f"no event topic read: {sorted(written)}"
    leaks = [(where, s) for where, data in written.items() for s in secrets if s.encode() in data]
    assert not leaks, f"planted secrets found in: {leaks}"


def _count(dsn: str, table: str) -> int:
    import asyncio

    async def go() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            if await conn.fetchval("SELECT to_regclass($1)", table) is None:
                return 0
            return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
        finally:
            await conn.close()
    return asyncio.run(go())


def _dlq_rows(dsn: str, group: str) -> bytes:
    import asyncio

    async def go() -> bytes:
        conn = await asyncpg.connect(dsn)
        try:
            if await conn.fetchval("SELECT to_regclass('cdcpipe_dlq')") is None:
                return b""
            rows = await conn.fetch("SELECT * FROM cdcpipe_dlq WHERE group_id = $1", group)
            return repr([dict(r) for r in rows]).encode()
        finally:
            await conn.close()
    return asyncio.run(go())


def _topics_content(settings: Settings, prefix: str) -> dict[str, bytes]:
    """Every record of every topic of ``prefix`` (uncommitted ones included): key, value and headers."""
    conf = {"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": unique("itsecret-read"),
            "enable.auto.commit": False, "isolation.level": "read_uncommitted", "enable.partition.eof": True}
    consumer = Consumer(conf)
    out: dict[str, bytes] = {}
    try:
        topics = {n: t for n, t in consumer.list_topics(timeout=10).topics.items() if n.startswith(prefix + ".")}
        parts = [TopicPartition(n, p, -2) for n, t in topics.items() for p in t.partitions]
        consumer.assign(parts)
        pending = {(tp.topic, tp.partition) for tp in parts}
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                assert err.code() == KafkaError._PARTITION_EOF, err
                pending.discard((msg.topic() or "", msg.partition() or 0))
                continue
            chunk = (msg.key() or b"") + (msg.value() or b"") + repr(msg.headers()).encode()
            out[msg.topic() or ""] = out.get(msg.topic() or "", b"") + chunk
        assert not pending, f"topics not read to their end: {pending}"
    finally:
        consumer.close()
    return out
