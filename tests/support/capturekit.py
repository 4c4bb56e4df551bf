"""Helpers for capture integration tests: ``cdcpipe capture`` as a child process, and a read_committed reader
decoding events with nothing but the ``<prefix>.schemas`` topic."""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

from cdcpipe.avro import SchemaCache, decode
from cdcpipe.capture.cdc_index import scan
from cdcpipe.config import Settings
from cdcpipe.model import ChangeEvent
from tests.support.cassandra import cluster
from tests.support.processes import CdcpipeProcess, unique


class CaptureProcess(CdcpipeProcess):
    """``cdcpipe capture`` as a child process with its own topic prefix and table include list."""

    def __init__(self, prefix: str, include: str, log: Path, **extra: str) -> None:
        super().__init__("capture", {**os.environ, "CDCPIPE_KAFKA__TOPIC_PREFIX": prefix,
                                     "CDCPIPE_CAPTURE__INCLUDE_TABLES": include, "CDCPIPE_CAPTURE__NODE_ID": "node-1",
                                     "CDCPIPE_OBSERVABILITY__HTTP_PORT": "0", "CDCPIPE_CAPTURE__TOPIC_PARTITIONS": "2",
                                     **extra}, log)


class EventReader:
    """Reads a table topic (and the schemas topic) with read_committed and decodes with plain schema JSON."""

    def __init__(self, bootstrap: str, prefix: str, topic: str) -> None:
        self.prefix, self.topic = prefix, topic
        conf = {"bootstrap.servers": bootstrap, "group.id": unique("it"), "enable.auto.commit": False,
                "isolation.level": "read_committed", "auto.offset.reset": "earliest"}
        self.consumer = Consumer(conf)
        self.schemas = SchemaCache()
        self._schema_consumer = Consumer({**conf, "group.id": unique("its")})
        self._subscribed = False
        self.events: list[ChangeEvent] = []
        self.arrivals: list[float] = []
        self.keys: list[bytes] = []
        self.partitions: list[int] = []
        self.raw: list[bytes] = []

    def _load_schemas(self) -> None:
        topic = f"{self.prefix}.schemas"
        meta = self._schema_consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return
        if not self._schema_consumer.assignment():
            self._schema_consumer.assign([TopicPartition(topic, p, -2) for p in meta.partitions])
        while (msg := self._schema_consumer.poll(0.2)) is not None:
            if msg.error() is None and msg.value():
                self.schemas.add(msg.value())

    def poll_until(self, done: Callable[[list[ChangeEvent]], bool], timeout: float) -> list[ChangeEvent]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done(self.events):
            if not self._subscribed:
                meta = self.consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
                if meta is None or meta.error is not None or not meta.partitions:
                    time.sleep(0.1)
                    continue
                self.consumer.assign([TopicPartition(self.topic, p, -2) for p in meta.partitions])
                self._subscribed = True
            msg = self.consumer.poll(0.1)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                assert err.code() == KafkaError._PARTITION_EOF, err
                continue
            value = msg.value() or b""
            if self.schemas.get(value[2:10]) is None:
                self._load_schemas()
            self.events.append(decode(value, self.schemas.get))
            self.arrivals.append(time.time())
            self.keys.append(msg.key() or b"")
            self.partitions.append(msg.partition() or 0)
            self.raw.append(value)
        return self.events

    def close(self) -> None:
        self.consumer.close()
        self._schema_consumer.close()


# ---------------------------------------------------------------------------------------------- ops endpoints

def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(port: int, path: str, want: int, timeout: float) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    last: tuple[int, str] = (0, "")
    while time.monotonic() < deadline:
        try:
            last = get(port, path)
            if last[0] == want:
                return last
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{path} did not answer {want} within {timeout}s; last: {last}")


def ops_env(port: int, **extra: str) -> dict[str, str]:
    return {"CDCPIPE_OBSERVABILITY__HTTP_PORT": str(port), "CDCPIPE_OBSERVABILITY__HTTP_HOST": "127.0.0.1", **extra}


def segment_with_durable_data(settings: Settings, cdc_raw: Path, at_least: int) -> Any:
    """A segment of the shared node holding at least ``at_least`` durable bytes, writing CDC data until one does
    (on a fresh stack nothing may have been written yet)."""

    def found() -> Any:
        return next((s for s in reversed(scan(cdc_raw)) if s.offset is not None and s.offset > at_least), None)

    if (seg := found()) is not None:
        return seg
    c = cluster(settings)
    try:
        session = c.connect()
        session.execute("CREATE KEYSPACE IF NOT EXISTS itops_fill WITH replication = "
                        "{'class': 'SimpleStrategy', 'replication_factor': 1}")
        session.execute("CREATE TABLE IF NOT EXISTS itops_fill.t (k int PRIMARY KEY, v blob) WITH cdc = true")
        insert = session.prepare("INSERT INTO itops_fill.t (k, v) VALUES (?, ?)")
        for i in range(2 * at_least // 1024 + 16):
            session.execute(insert, (i, bytes(1024)))
    finally:
        c.shutdown()
    deadline = time.monotonic() + 10
    while (seg := found()) is None:
        assert time.monotonic() < deadline, f"no segment in {cdc_raw} reached {at_least} durable bytes"
        time.sleep(0.2)
    return seg
