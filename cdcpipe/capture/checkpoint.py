"""Reading capture's checkpoint: the last committed position of this node from ``<prefix>.capture-positions``.

Call it after :meth:`EventProducer.start` (``init_transactions`` aborts a crashed instance's open transaction).  It
reads the whole compacted topic with ``isolation.level=read_committed`` up to its end and keeps the last record
keyed by this node: only positions whose events were committed in the same transaction are ever seen.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from cdcpipe import kafka_clients
from cdcpipe.capture.segment import Position
from cdcpipe.config import KafkaSettings
from cdcpipe.errors import CheckpointError


def read_checkpoint(kafka: KafkaSettings, topic: str, node: str, timeout_s: float = 30.0) -> Position | None:
    """The last committed position of ``node`` in ``topic``; None when there is none (blocking)."""
    return read_checkpoint_record(kafka, topic, node, timeout_s)[0]


def read_to_end(config: dict[str, Any], topic: str, timeout_s: float = 30.0) -> Iterator[Any]:
    """Every record of every partition of ``topic``, from the beginning to its end as of the first read, with
    ``isolation.level=read_committed`` (blocking; nothing when the topic does not exist).  Raises
    :class:`CheckpointError`: retriable when the end is not reached within ``timeout_s`` or the broker fails
    retriably."""
    consumer = kafka_clients.consumer({
        **config, "group.id": f"cdcpipe-read-{uuid.uuid4()}", "enable.auto.commit": False,
        "isolation.level": "read_committed", "enable.partition.eof": True, "auto.offset.reset": "earliest",
    })
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return
        consumer.assign([TopicPartition(topic, p, -2) for p in meta.partitions])  # -2: OFFSET_BEGINNING
        pending = set(meta.partitions)
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise CheckpointError(topic, f"end not reached within {timeout_s}s", retriable=True)
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                    continue
                raise CheckpointError(topic, err.str(), partition=msg.partition() or 0, retriable=err.retriable())
            yield msg
    except KafkaException as exc:
        raise CheckpointError(topic, str(exc), retriable=True) from exc
    finally:
        consumer.close()


def read_checkpoint_record(kafka: KafkaSettings, topic: str, node: str,
                           timeout_s: float = 30.0) -> tuple[Position | None, dict[str, Any] | None]:
    """The last committed position of ``node`` and what the log said of its tables' cdc flags there
    (:mod:`cdcpipe.capture.cdc_switch`; None in a record written before it was kept)."""
    found: Position | None = None
    switches: dict[str, Any] | None = None
    for msg in read_to_end(kafka.client_config(), topic, timeout_s):
        if msg.key() != node.encode():
            continue
        try:
            value = json.loads(msg.value() or b"")
            found = Position(int(value["segment_id"]), int(value["offset"]))
            switches = value.get("cdc_log")
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(topic, f"malformed position record: {exc}", partition=msg.partition() or 0,
                                  offset=msg.offset() or -1, retriable=False) from exc
    return found, switches
