"""Large rows end to end (issue 13, item 1): a 10 MiB blob, and a row of many cells whose mutation is as large as
the node accepts, reach PostgreSQL exactly, with no dead letter.

Kafka's default message limit (~1 MB) used to make capture fail with MSG_SIZE_TOO_LARGE and restart at the same
position forever.  Now topics, producers and consumers are sized from ``capture.commitlog_segment_size``
(``kafka.max_message_bytes``): the largest mutation is half a segment, its event carries each value twice.

The shared stack's node runs 8 MiB segments (4 MiB mutations), too small for a 10 MiB blob, so this runs on a
PRIVATE single-node Cassandra with Cassandra's default 32 MiB segments (127.0.0.16, state in
``<stack dir>/aux/large-rows``, purged afterwards; ``CASSANDRA_COMMITLOG_SEGMENT_SIZE`` also raises its CQL message
limit to match).  Capture follows that node's cdc_raw with ``capture.commitlog_segment_size`` = 32 MiB; Kafka and
PostgreSQL are the shared stack's.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from cassandra.cluster import Session
from confluent_kafka import Consumer, TopicPartition

from cdcpipe.config import MIB
from cdcpipe.demo import fidelity
from tests.support.harness import connect, dlq_messages, dlq_rows, wait_until_equal
from tests.support.processes import CdcpipeProcess, unique
from tests.support.stack import StackEnv, private_stack, stack_dir

pytestmark = pytest.mark.timeout(600)  # the node's start (about a minute) counts

SEGMENT = 32 * MIB  # the node's commitlog_segment_size: mutations up to 16 MiB
BLOB = 10 * MIB
ROOM = 256 * 1024  # for the rest of the mutation (key, timestamps, cell framing) and of the CQL request
CELLS = 2000
_UNITS = {"B": 1, "KiB": 1024, "MiB": MIB, "GiB": 1024 * MIB}


def knobs() -> dict[str, str]:
    base = stack_dir()
    return {"CDCPIPE_STACK_DIR": str(base / "aux" / "large-rows"), "CDCPIPE_STACK_CACHE": str(base / "cache"),
            "CDCPIPE_STACK_SERVICES": "cassandra", "CDCPIPE_STACK_CASSANDRA_FIRST": "16",
            "CASSANDRA_COMMITLOG_SEGMENT_SIZE": f"{SEGMENT // MIB}MiB"}


@pytest.fixture(scope="module")
def node(stack_env: dict[str, str]) -> Iterator[StackEnv]:
    """The private node, with the shared stack's Kafka and PostgreSQL."""
    with private_stack(knobs()) as cass:
        yield StackEnv({**stack_env, **{k: v for k, v in cass.env.items() if "CASSANDRA" in k or "CDC_RAW" in k}})


def node_setting_bytes(session: Session, name: str) -> int | None:
    row = session.execute("SELECT value FROM system_views.settings WHERE name = %s", (name,)).one()
    if row is None or row.value in (None, "null"):
        return None
    m = re.fullmatch(r"(\d+)\s*(B|KiB|MiB|GiB)", row.value)
    assert m, f"{name} = {row.value!r}"
    return int(m.group(1)) * _UNITS[m.group(2)]


def test_largest_mutations_arrive_exactly(node: StackEnv, tmp_path: Path) -> None:
    cluster, session = connect(node)
    try:
        run(node, session, tmp_path)
    finally:
        cluster.shutdown()


def run(node: StackEnv, session: Session, tmp_path: Path) -> None:
    segment = node_setting_bytes(session, "commitlog_segment_size")
    assert segment == SEGMENT
    limits = [segment // 2, node_setting_bytes(session, "max_mutation_size"),
              node_setting_bytes(session, "native_transport_max_message_size")]
    assert all(x is not None for x in limits), limits
    largest = min(x for x in limits if x is not None) - ROOM
    assert largest >= BLOB, f"the node accepts mutations of {largest} bytes only (limits {limits})"
    print(f"node: commitlog_segment_size {segment}, limits {limits}; blob of {BLOB} bytes, wide row of {largest}")

    prefix = unique("e2ebig", 8)
    ks = prefix.lower()
    rng = random.Random(13)
    blob = rng.randbytes(BLOB)
    cell = (largest - CELLS * 64) // CELLS
    cells = {i: rng.randbytes(cell) for i in range(CELLS)}

    session.execute(f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    session.execute(f"CREATE TABLE {ks}.big (k int PRIMARY KEY, note text, b blob) WITH cdc = true")
    session.execute(f"CREATE TABLE {ks}.wide (k int PRIMARY KEY, m map<int, blob>) WITH cdc = true")
    base = {**os.environ, **node.env, "CDCPIPE_KAFKA__TOPIC_PREFIX": prefix,
            "CDCPIPE_OBSERVABILITY__LOG_FORMAT": "json",
            # the node's segment size: what sizes kafka.max_message_bytes (capture's and apply's)
            "CDCPIPE_CAPTURE__COMMITLOG_SEGMENT_SIZE": str(segment)}
    cap = CdcpipeProcess("capture", {**base, "CDCPIPE_CAPTURE__INCLUDE_TABLES": f"{ks}.*",
                                     "CDCPIPE_CAPTURE__NODE_ID": "node-big"}, tmp_path / "capture.log", http=True)
    app = CdcpipeProcess("apply", {**base, "CDCPIPE_APPLY__GROUP_ID": prefix}, tmp_path / "apply.log", http=True)
    try:
        cap.start()
        app.start()
        session.execute(f"INSERT INTO {ks}.big (k, note, b) VALUES (1, 'small', 0x00)")
        # prepared: the values travel as bytes (a simple statement would inline the blob as hex, twice its size)
        big = session.prepare(f"INSERT INTO {ks}.big (k, note, b) VALUES (?, ?, ?)")
        session.execute(big, (2, "large", blob), timeout=60)
        session.execute(session.prepare(f"INSERT INTO {ks}.wide (k, m) VALUES (?, ?)"), (1, cells), timeout=60)
        session.execute(f"INSERT INTO {ks}.big (k, note, b) VALUES (3, 'after', 0x01)")  # the stream goes on

        wait_until_equal(session, ks, node.hosts, node.dsn, [cap, app], 240)
        assert asyncio.run(_bytes(node.dsn, f'SELECT b FROM "{ks}".big WHERE k = 2')) == blob
        assert asyncio.run(_count(node.dsn, f'SELECT count(*) FROM "{ks}".big')) == 3
        assert asyncio.run(_count(node.dsn, f'SELECT count(*) FROM "{ks}".wide')) == 1
        assert dlq_messages(node.bootstrap, prefix) == {f"{prefix}.dlq": 0, f"{prefix}.capture-dlq": 0}
        # the node is this test's own: its capture DLQ holds nothing at all (not even entries of unknown tables)
        assert _records(node.bootstrap, f"{prefix}.capture-dlq") == []
        assert asyncio.run(dlq_rows(node.dsn, prefix)) == 0
        assert cap.starts == 1 and "MSG_SIZE_TOO_LARGE" not in cap.log.read_text()
        assert app.starts == 1 and "MSG_SIZE_TOO_LARGE" not in app.log.read_text()
    finally:
        cap.stop()
        app.stop()
        session.execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=120)
        asyncio.run(fidelity.drop_mirror(node.dsn, ks))


async def _bytes(dsn: str, query: str) -> bytes:
    conn = await asyncpg.connect(dsn)
    try:
        return bytes(await conn.fetchval(query))
    finally:
        await conn.close()


async def _count(dsn: str, query: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(query))
    finally:
        await conn.close()


def _records(bootstrap: str, topic: str) -> list[bytes]:
    """Every record of ``topic`` (key, value and headers), to its end."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("e2ebig-read"),
                         "enable.partition.eof": True, "isolation.level": "read_uncommitted"})
    out: list[bytes] = []
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return out
        consumer.assign([TopicPartition(topic, p, -2) for p in meta.partitions])
        pending, deadline = set(meta.partitions), time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                pending.discard(msg.partition() or 0)
                continue
            out.append((msg.key() or b"") + (msg.value() or b"") + repr(msg.headers()).encode())
        assert not pending, f"{topic} not read to its end"
    finally:
        consumer.close()
    return out
