"""Helpers for capture integration tests: ``cdcpipe capture`` as a child process, and a read_committed reader
decoding events with nothing but the ``<prefix>.schemas`` topic."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, TopicPartition

from cdcpipe.avro import SchemaCache, decode
from cdcpipe.model import ChangeEvent
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
