"""``cdcpipe erase`` on the real stack (GDPR erasure): rows written to two CDC tables reach PostgreSQL through the
running pipeline; dead letters are made for some keys (a poison record apply itself dead-letters, and real events
stored by apply's dead-letter writer); then

- a partition erase removes that key from Cassandra, PostgreSQL and ``cdcpipe_dlq`` and records an audit row
  ``erased``, while the other keys and their dead letters stay;
- a row erase (the whole clustering given) removes that row and its dead letter only; the partition's other rows
  and dead letters stay; erasing it again is harmless;
- a key naming no partition (a missing partition-key column) is refused before anything is deleted (exit 2);
- with apply stopped, an erase is not confirmed within ``--wait-s`` (exit 1, audited ``not_confirmed``) and is
  confirmed when run again once apply runs;

``--dry-run`` changes nothing, and the mirror still equals Cassandra."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import asyncpg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from cdcpipe.apply.consumer import Record
from cdcpipe.apply.deadletter import DeadLetter, DeadLetterer
from cdcpipe.apply.decode import SchemaReader, decode_record
from cdcpipe.topics import apply_dlq_topic, schemas_topic, table_topic
from tests.e2e.test_schema_changes import running
from tests.support.harness import Pipeline, wait_for, wait_until_equal
from tests.support.processes import unique
from tests.support.stack import ROOT

pytestmark = pytest.mark.timeout(300)


def erase(pipeline: Pipeline, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    cmd = [sys.executable, "-m", "cdcpipe", "erase", *args]
    done = subprocess.run(cmd, env=pipeline.env, cwd=ROOT, capture_output=True, text=True, timeout=200)
    with (pipeline.workdir / "erase.log").open("a") as f:
        f.write(f"==== {' '.join(cmd[3:])} (exit {done.returncode})\n{done.stdout}{done.stderr}")
    return done.returncode, [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")], done.stderr


def pg(dsn: str, query: str, *args: Any) -> list[Any]:
    async def go() -> list[Any]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()
    return asyncio.run(go())


def events_of(bootstrap: str, prefix: str, topic: str, key: bytes) -> dict[tuple[Any, ...], Record]:
    """The newest event of each row of partition ``key`` on ``topic``, by its clustering values."""
    reader = SchemaReader.open({"bootstrap.servers": bootstrap}, schemas_topic(prefix))
    assert reader.catch_up(30)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("e2e-erase", 8), "enable.auto.commit": False,
                  "isolation.level": "read_committed"})
    found: dict[tuple[Any, ...], Record] = {}
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        for p in parts:
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            c.assign([TopicPartition(topic, p, low)])
            deadline = time.monotonic() + 30
            while low < high and time.monotonic() < deadline:  # transaction markers leave gaps: ends by position
                m = c.poll(0.2)
                if m is None:
                    if c.position([TopicPartition(topic, p)])[0].offset >= high:
                        break
                elif m.error() is None and m.key() == key:
                    event, _ = decode_record(m.value(), reader)
                    found[event.clustering] = Record(topic, p, m.offset(), m.key(), m.value(), 0)
    finally:
        c.close()
    return found


async def store_dead_letters(dsn: str, pipeline: Pipeline, table: str, records: list[Record]) -> None:
    """``records`` kept in ``cdcpipe_dlq`` by apply's own dead-letter writer (as if they had failed)."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        letters = DeadLetterer(pool, None, apply_dlq_topic(pipeline.prefix), pipeline.group)
        await letters.ensure()
        for r in records:
            await letters.store(DeadLetter(r, table, ValueError("e2e: a dead letter of a real event"), 0))
    finally:
        await pool.close()


def test_erase_a_partition_and_a_row(stack_env: dict[str, str], tmp_path: Any) -> None:
    with running(stack_env, tmp_path, "e2eer", "u (id int PRIMARY KEY, email text, name text)",
                 "m (user_id int, at int, body text, PRIMARY KEY (user_id, at))") as (stack, ks, session, pipeline):
        bootstrap = stack.env["CDCPIPE_KAFKA__BOOTSTRAP_SERVERS"]
        for i in range(1, 21):
            session.execute(f"INSERT INTO {ks}.u (id, email, name) VALUES (%s, %s, %s)", (i, f"u{i}@x.org", f"n{i}"))
        for user in (1, 2, 3):
            for at in range(1, 6):
                session.execute(f"INSERT INTO {ks}.m (user_id, at, body) VALUES (%s, %s, %s)",
                                (user, at, f"message {user}/{at}"))
        wait_until_equal(session, ks, stack.hosts, stack.dsn, pipeline.procs, 120)

        # dead letters: poison records of users 7 and 8 (apply dead-letters them itself) ...
        producer = Producer({"bootstrap.servers": bootstrap})
        for i in (7, 8):
            producer.produce(table_topic(pipeline.prefix, ks, "u"), key=i.to_bytes(4, "big"), value=b"poison %d" % i)
        assert producer.flush(30) == 0
        # ... and the real events of rows (2, 3) and (2, 4) of m, kept by apply's dead-letter writer
        m_topic = table_topic(pipeline.prefix, ks, "m")
        real = events_of(bootstrap, pipeline.prefix, m_topic, (2).to_bytes(4, "big"))
        assert {(3,), (4,)} <= set(real), real.keys()
        asyncio.run(store_dead_letters(stack.dsn, pipeline, f"{ks}.m", [real[(3,)], real[(4,)]]))

        def letters(topic: str) -> list[bytes]:
            return sorted(bytes(r["key"]) + b"@" + str(r["kafka_offset"]).encode() for r in pg(
                stack.dsn, "SELECT key, kafka_offset FROM cdcpipe_dlq WHERE topic = $1", topic))
        u_topic = table_topic(pipeline.prefix, ks, "u")
        wait_for("apply to dead-letter the poison records", lambda: len(letters(u_topic)) == 2, 60, pipeline)
        assert len(letters(m_topic)) == 2

        # 0. --dry-run: what the key holds and would lose; nothing deleted, nothing audited
        rc, out, err = erase(pipeline, f"{ks}.u", '{"id": 7}', "--reason", "look first", "--dry-run")
        assert rc == 0, (out, err)
        assert (out[0]["status"], out[0]["cassandra_rows"], out[0]["postgres_rows"], out[0]["dlq_rows"],
                out[0]["audit_id"]) == ("dry_run", 1, 1, 1, None), out
        assert len(letters(u_topic)) == 2 and list(session.execute(f"SELECT id FROM {ks}.u WHERE id = 7"))

        # 1. a partition: gone from Cassandra, PostgreSQL and cdcpipe_dlq; audited; the others stay
        started = time.monotonic()
        rc, out, err = erase(pipeline, f"{ks}.u", '{"id": 7}', "--reason", "GDPR request 1", "--actor", "e2e-test")
        took = time.monotonic() - started
        assert rc == 0, (out, err)
        (line,) = out
        assert line["status"] == "erased" and line["table"] == f"{ks}.u" and line["key"] == {"id": 7}, line
        assert line["dlq_rows"] == 1 and line["cassandra_rows"] == 1 and line["postgres_rows"] == 1, line
        assert took < 60, took
        assert [r["id"] for r in pg(stack.dsn, f'SELECT id FROM "{ks}"."u" ORDER BY id')] == \
            [i for i in range(1, 21) if i != 7]
        assert list(session.execute(f"SELECT id FROM {ks}.u WHERE id = 7")) == []
        assert [k.split(b"@")[0] for k in letters(u_topic)] == [(8).to_bytes(4, "big")]
        (audit,) = pg(stack.dsn, "SELECT * FROM cdcpipe_audit_log WHERE id = $1", line["audit_id"])
        assert (audit["actor"], audit["action"], audit["table_name"], audit["reason"], audit["status"]) == \
            ("e2e-test", "erase", f"{ks}.u", "GDPR request 1", "erased")
        assert json.loads(audit["key"]) == {"id": 7}
        details = json.loads(audit["details"])
        assert details["dlq_rows"] == 1 and details["scope"] == "partition" and details["waited_s"] >= 0, details

        # 2. one row of a partition: only that row and its dead letter
        rc, out, err = erase(pipeline, f"{ks}.m", '{"user_id": 2, "at": 3}', "--reason", "GDPR request 2",
                             "--actor", "e2e-test")
        assert rc == 0, (out, err)
        assert out[0]["status"] == "erased" and out[0]["scope"] == "row" and out[0]["dlq_rows"] == 1, out
        rows = {(r["user_id"], r["at"]) for r in pg(stack.dsn, f'SELECT user_id, at FROM "{ks}"."m"')}
        assert rows == {(u, a) for u in (1, 2, 3) for a in range(1, 6)} - {(2, 3)}
        assert letters(m_topic) == [(2).to_bytes(4, "big") + b"@" + str(real[(4,)].offset).encode()]
        rc, out, err = erase(pipeline, f"{ks}.m", '{"user_id": 2, "at": 3}', "--reason", "GDPR request 2, again")
        assert rc == 0 and out[0]["status"] == "erased" and out[0]["dlq_rows"] == 0, (out, err)

        # 3. a key that names no partition: refused, nothing deleted, nothing audited
        audited = len(pg(stack.dsn, "SELECT id FROM cdcpipe_audit_log WHERE table_name = $1", f"{ks}.m"))
        rc, out, err = erase(pipeline, f"{ks}.m", '{"at": 4}', "--reason", "bad key")
        assert rc == 2 and "missing partition key column user_id" in err, (out, err)
        assert len(pg(stack.dsn, "SELECT id FROM cdcpipe_audit_log WHERE table_name = $1", f"{ks}.m")) == audited
        rc, out, err = erase(pipeline, f"{ks}.nope", '{"id": 1}', "--reason", "no such table")
        assert rc == 2 and "no table" in err, (out, err)

        # 4. apply not running: not confirmed within --wait-s (exit 1, audited); once apply runs, erased
        pipeline.apply.stop()
        rc, out, err = erase(pipeline, f"{ks}.u", '{"id": 9}', "--reason", "GDPR request 3", "--wait-s", "2")
        assert rc == 1 and out[0]["status"] == "not_confirmed", (out, err)
        assert out[0]["left"]["cassandra_rows"] == 0 and out[0]["left"]["postgres_rows"] == 1, out
        (audit,) = pg(stack.dsn, "SELECT status FROM cdcpipe_audit_log WHERE id = $1", out[0]["audit_id"])
        assert audit["status"] == "not_confirmed"
        pipeline.apply.start()
        rc, out, err = erase(pipeline, f"{ks}.u", '{"id": 9}', "--reason", "GDPR request 3, again")
        assert rc == 0 and out[0]["status"] == "erased", (out, err)

        report = wait_until_equal(session, ks, stack.hosts, stack.dsn, pipeline.procs, 60)
        assert {t.table: t.cassandra_rows for t in report.tables} == {f"{ks}.u": 18, f"{ks}.m": 14}
