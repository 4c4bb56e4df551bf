"""Apply copies capture's dead letters into ``cdcpipe_dlq`` against the real Kafka and PostgreSQL: each record once
(a second round, or a second process, adds nothing), its cause as the error type; records Kafka removed before
they were copied (retention, here ``delete_records``) leave one ``capture.expired`` row naming the offsets, once."""

from __future__ import annotations

import json
from typing import Any

from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cdcpipe.apply.capture_letters import EXPIRED, GROUP, CaptureLetters
from cdcpipe.apply.deadletter import ensure_table
from cdcpipe.config import Settings
from tests.support.processes import unique


def record(i: int) -> bytes:
    return json.dumps({"cause": "undecodable", "segment": "/raw/CommitLog-8-1.log", "position": f"1:{i}",
                       "table_id": None, "error": f"bad cell {i}", "entry_hex": "00"}).encode()


def produce(kafka: dict[str, Any], topic: str, n: int, start: int) -> None:
    p = Producer(kafka)
    for i in range(start, start + n):
        p.produce(topic, record(i), f"1:{i}".encode())
    assert p.flush(30) == 0


async def test_capture_dead_letters_copied_once_and_expiry_recorded(settings: Settings, pool: Any) -> None:
    kafka = settings.kafka.client_config()
    topic = f"{unique('it')}.capture-dlq"
    admin = AdminClient(kafka)
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    await ensure_table(pool)
    letters, other = CaptureLetters(settings, pool), CaptureLetters(settings, pool)
    letters.topic = other.topic = topic
    try:
        produce(kafka, topic, 3, 0)
        assert await letters.copy() == 3
        assert await letters.copy() == 0 and await other.copy() == 0  # once, whoever copies
        rows = await pool.fetch("SELECT kafka_offset, error_type, message, key, retry_count, status FROM cdcpipe_dlq "
                                "WHERE group_id = $1 AND topic = $2 ORDER BY kafka_offset", GROUP, topic)
        assert [(r[0], r[1], bytes(r[3]), r[4], r[5]) for r in rows] == [
            (i, "capture.undecodable", f"1:{i}".encode(), 0, "pending") for i in range(3)]
        assert rows[1]["message"] == "bad cell 1 (/raw/CommitLog-8-1.log at 1:1)"

        produce(kafka, topic, 3, 3)  # offsets 3, 4, 5; 3 and 4 removed before they are copied
        admin.delete_records([TopicPartition(topic, 0, 5)])[TopicPartition(topic, 0, 5)].result(30)
        assert await letters.copy() == 2
        assert await letters.copy() == 0
        rows = await pool.fetch("SELECT kafka_offset, error_type, message FROM cdcpipe_dlq WHERE group_id = $1 AND "
                                "topic = $2 AND kafka_offset > 2 ORDER BY kafka_offset", GROUP, topic)
        assert [(r[0], r[1]) for r in rows] == [(4, EXPIRED), (5, "capture.undecodable")]
        assert "offsets 3..4" in rows[0]["message"]
    finally:
        await letters.close()
        await other.close()
        await pool.execute("DELETE FROM cdcpipe_dlq WHERE topic = $1", topic)
        admin.delete_topics([topic])
