"""Helpers for capture integration tests: a capture subprocess, a read_committed reader decoding events with
nothing but the ``<prefix>.schemas`` topic, and unique names."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Self

from confluent_kafka import Consumer, KafkaError, TopicPartition

from cdcpipe.avro import SchemaCache, decode
from cdcpipe.model import ChangeEvent

ROOT = Path(__file__).resolve().parents[2]


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


class CdcpipeProcess:
    """``cdcpipe <command>`` as a child process with the given environment, its output appended to ``log``."""

    command = ""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "cdcpipe", self.command], env=self.env, stdout=out,
                                         stderr=out, cwd=ROOT)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self, timeout: float = 10) -> tuple[int, float]:
        """SIGTERM; (exit status, seconds it took)."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        return rc, time.monotonic() - t0


class CaptureProcess(CdcpipeProcess):
    """``cdcpipe capture`` as a child process with its own topic prefix and table include list."""

    command = "capture"

    def __init__(self, prefix: str, include: str, log: Path, **extra: str) -> None:
        super().__init__({**os.environ, "CDCPIPE_KAFKA__TOPIC_PREFIX": prefix,
                          "CDCPIPE_CAPTURE__INCLUDE_TABLES": include, "CDCPIPE_CAPTURE__NODE_ID": "node-1",
                          "CDCPIPE_OBSERVABILITY__HTTP_PORT": "0", "CDCPIPE_CAPTURE__TOPIC_PARTITIONS": "2", **extra},
                         log)


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
