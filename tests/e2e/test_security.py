"""Issue 19's acceptance on the real stack: capture and apply run with TLS to all three stores and every login from
Vault (an AppRole; PostgreSQL's leased from the database secrets engine with a short TTL; Kafka's and Cassandra's
from KV v2), Kafka over SASL_SSL with SCRAM, each process its own user with only the ACLs docs/security.md lists,
under a steady write load.  PostgreSQL's login is replaced at least three times and the Kafka logins change once in
KV (to second SCRAM users, the first ones then deleted) while they run: PostgreSQL ends equal to Cassandra, no dead
letter, neither process restarted.  Then every file the run wrote and every message of its topics is searched for
the planted secrets (the secret id, the SCRAM passwords, Cassandra's KV password, the admin token): none is there."""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)

from tests.support.capturekit import get
from tests.support.harness import Pipeline, connect, create_keyspace, drop_keyspace, wait_until_equal
from tests.support.kafkaacl import apply_acls, capture_acls, grant
from tests.support.processes import metric_value, unique
from tests.support.stack import StackEnv
from tests.support.vaultkit import provision

pytestmark = pytest.mark.timeout(600)


def scram_user(bootstrap: str, user: str, password: str | None) -> None:
    """Create (or, with no password, delete) a SCRAM-SHA-512 user through the stack's plaintext listener."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    change: Any = (UserScramCredentialUpsertion(user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
                                                password.encode())
                   if password is not None else UserScramCredentialDeletion(user, ScramMechanism.SCRAM_SHA_512))
    for f in admin.alter_user_scram_credentials([change]).values():
        f.result(30)


def messages(bootstrap: str, prefix: str) -> list[bytes]:
    """Every key and value of every topic of the run (through the plaintext listener)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix + ".")]
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("e2esec"), "enable.partition.eof": True,
                  "isolation.level": "read_uncommitted"})
    out: list[bytes] = []
    try:
        parts = [TopicPartition(t, p, -2) for t in topics
                 for p in admin.list_topics(t, timeout=10).topics[t].partitions]
        c.assign(parts)
        open_parts = {(tp.topic, tp.partition) for tp in parts}
        deadline = time.monotonic() + 60
        while open_parts and time.monotonic() < deadline:
            msg = c.poll(1.0)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    open_parts.discard((msg.topic(), msg.partition()))
                continue
            out += [msg.key() or b"", msg.value() or b""]
            out += [v for _, v in (msg.headers() or []) if v]
    finally:
        c.close()
    return out


def test_tls_and_vault_credentials_rotating_under_load(stack_env: dict[str, str], tmp_path: Path) -> None:
    stack = StackEnv(stack_env)
    assert os.environ.get("CDCPIPE_STACK_TLS") == "on", "the stack runs without TLS: deploy/local/stack up --tls"
    ca = os.environ["CDCPIPE_STACK_TLS_CA"]
    vault = provision(stack.dsn, ttl="6s", max_ttl="12s")
    ks = unique("e2esec", 8)
    token = f"planted-admin-{uuid.uuid4().hex}"
    # one Kafka login per process, each with only its ACLs (docs/security.md), and a second one to rotate to
    users = {side: [(f"{vault.tag}-{side}-{n}", f"planted-scram-{uuid.uuid4().hex}") for n in (1, 2)]
             for side in ("capture", "apply")}
    cassandra_password = f"planted-cassandra-{uuid.uuid4().hex}"
    cluster, session = connect(stack)
    env = vault.env(
        CDCPIPE_VAULT__KAFKA_PATH=f"{vault.tag}/kafka-apply", CDCPIPE_VAULT__CASSANDRA_PATH=f"{vault.tag}/cassandra",
        CDCPIPE_VAULT__KV_REFRESH_S="2",
        CDCPIPE_KAFKA__BOOTSTRAP_SERVERS=os.environ["CDCPIPE_STACK_KAFKA_SASL_SSL"],
        CDCPIPE_KAFKA__SECURITY_PROTOCOL="SASL_SSL", CDCPIPE_KAFKA__SASL_MECHANISM="SCRAM-SHA-512",
        CDCPIPE_KAFKA__TLS__ENABLED="true", CDCPIPE_KAFKA__TLS__CA_FILE=ca,
        CDCPIPE_CASSANDRA__TLS__ENABLED="true", CDCPIPE_CASSANDRA__TLS__CA_FILE=ca,
        CDCPIPE_POSTGRES__TLS__ENABLED="true", CDCPIPE_POSTGRES__TLS__CA_FILE=ca,
        CDCPIPE_ADMIN__ENABLED="true", CDCPIPE_ADMIN__TOKEN=token, CDCPIPE_OBSERVABILITY__LOG_LEVEL="DEBUG")
    pipeline = Pipeline(stack, ks, tmp_path, partitions=2, extra=env)
    for c in pipeline.captures:
        c.env["CDCPIPE_VAULT__KAFKA_PATH"] = f"{vault.tag}/kafka-capture"
    for side, acls in (("capture", capture_acls(pipeline.prefix)),
                       ("apply", apply_acls(pipeline.prefix, pipeline.group))):
        for user, password in users[side]:
            scram_user(stack.bootstrap, user, password)
            grant(stack.bootstrap, user, acls)
        vault.put_kv(f"kafka-{side}", *users[side][0])
    vault.put_kv("cassandra", "cdcpipe", cassandra_password)
    planted = [vault.secret_id, token, cassandra_password, *(p for side in users.values() for _, p in side)]
    mirror = vault.reader_dsn
    try:
        create_keyspace(session, ks)
        session.execute(f"CREATE TABLE {ks}.t (k int PRIMARY KEY, v text, n int, tags set<text>) WITH cdc = true")
        pipeline.start()
        pids = {p.name: p.proc.pid for p in pipeline.procs if p.proc is not None}
        rng = random.Random(19)
        upsert = session.prepare(f"INSERT INTO {ks}.t (k, v, n, tags) VALUES (?, ?, ?, ?)")
        update = session.prepare(f"UPDATE {ks}.t SET n = ?, tags = tags + ? WHERE k = ?")
        delete = session.prepare(f"DELETE FROM {ks}.t WHERE k = ?")
        started, rotated_kafka, ops = time.monotonic(), False, 0
        while time.monotonic() - started < 45:  # ~40 writes a second for 45 s: several PostgreSQL leases
            k = rng.randrange(400)
            roll = rng.random()
            if roll < 0.6:
                session.execute(upsert, (k, f"v{ops}", ops, {f"t{ops % 7}"}))
            elif roll < 0.9:
                session.execute(update, (ops, {f"u{ops % 5}"}, k))
            else:
                session.execute(delete, (k,))
            ops += 1
            time.sleep(0.02)
            if not rotated_kafka and time.monotonic() - started > 20:
                for side in users:  # the operator rotates Kafka's logins ...
                    vault.put_kv(f"kafka-{side}", *users[side][1])
                rotated_kafka = True
            pipeline.check_alive()
        time.sleep(8)
        for side in users:  # ... and removes the old ones once read
            scram_user(stack.bootstrap, users[side][0][0], None)
        wait_until_equal(session, ks, stack.hosts, mirror, pipeline.procs, 120)
        for p in pipeline.procs:
            _, text = get(p.port, "/metrics")
            assert metric_value(text, "cdcpipe_credential_rotations_total", store="kafka") == 1, p.name
            if p.name == "apply":
                assert (metric_value(text, "cdcpipe_credential_rotations_total", store="postgres") or 0) >= 3
        assert {p.name: p.proc.pid for p in pipeline.procs if p.proc is not None} == pids  # no restart
        # no dead letter of apply, none of capture but the entries of tables dropped before it started (the shared
        # stack's cdc_raw holds other tests' writes; capture cannot decode a table it never knew, and says so)
        letters = asyncio.run(_rows(mirror, "SELECT group_id, error_type, message FROM cdcpipe_dlq"))
        assert [x for x in letters if x[1] != "capture.unknown_table"] == [], letters
        assert asyncio.run(_count(mirror, "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                                          "WHERE a.datname = current_database() AND a.usename LIKE 'v-%' "
                                          "AND NOT s.ssl")) == 0
    finally:
        stopped = pipeline.stop()
        drop_keyspace(session, stack.dsn, ks)
        cluster.shutdown()
        vault.drop()
    assert all(code == 0 for code in stopped.values()), stopped
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written, "the run wrote no file"
    found = [(str(f), s) for f in written for s in planted if s.encode() in f.read_bytes()]
    blobs = messages(stack.bootstrap, pipeline.prefix)
    assert len(blobs) > 100, "the run's topics hold no messages: nothing was searched"
    found += [("kafka", s) for s in planted for b in blobs if s.encode() in b]
    assert found == [], found


async def _count(dsn: str, query: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(query))
    finally:
        await conn.close()


async def _rows(dsn: str, query: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(r) for r in await conn.fetch(query)]
    finally:
        await conn.close()
