"""Evidence for a fidelity mismatch, gathered before the run's keyspace and mirror are dropped: every committed
event of the mismatched row's partition (from Kafka, decoded) and what apply stored for it (its merge state in
PostgreSQL, the partition's state, the dead letters).  Printed by the fault tests with the mismatch itself."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import asyncpg
from confluent_kafka import Consumer, TopicPartition

from cdcpipe.apply.state import decode_row
from cdcpipe.avro import SchemaCache, decode
from cdcpipe.demo.fidelity import Mismatch
from cdcpipe.model import ChangeEvent


def _cell(c: Any) -> str:
    what = "DEL" if c.deleted else repr(c.value)
    path = f"[{c.path!r}]" if c.path is not None else ""
    ttl = f" ttl={c.ttl} exp={c.expires_at}" if c.ttl else ""
    return f"{path}{what}@{c.timestamp}{ttl}"


def describe(partition: int, offset: int, ev: ChangeEvent) -> str:
    parts = [f"{partition}@{offset} {ev.source.node} seg={ev.source.segment_id}:{ev.source.position} "
             f"{ev.op.value} ts={ev.timestamp_micros} ck={ev.clustering!r}"]
    if ev.liveness is not None:
        parts.append(f"live@{ev.liveness.timestamp} ttl={ev.liveness.ttl}")
    if ev.deletion is not None:
        parts.append(f"deletion@{ev.deletion.timestamp} ldt={ev.deletion.local_deletion_time}")
    if ev.range_start is not None or ev.range_end is not None:
        parts.append(f"range {ev.range_start!r}..{ev.range_end!r}")
    for col in ev.columns:
        cd = f" cd@{col.complex_deletion.timestamp}" if col.complex_deletion is not None else ""
        parts.append(f"{'S:' if col.static else ''}{col.name}{cd}=" + ",".join(_cell(c) for c in col.cells))
    return " | ".join(parts)


def partition_history(bootstrap: str, prefix: str, keyspace: str, table: str, key: tuple[Any, ...],
                      schemas: SchemaCache, timeout_s: float = 60) -> list[str]:
    """Every committed event of ``table`` whose partition key is ``key``, in offset order (one Kafka partition
    holds them all)."""
    topic = f"{prefix}.{keyspace}.{table}"
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"e2e-diag-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "isolation.level": "read_committed"})
    out: list[str] = []
    try:
        meta = c.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return [f"no topic {topic}"]
        parts = sorted(meta.partitions)
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1] for p in parts}
        c.assign([TopicPartition(topic, p, -2) for p in parts])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(tp.offset >= ends[tp.partition] or ends[tp.partition] == 0
                   for tp in c.position([TopicPartition(topic, p) for p in parts])):
                break
            for m in c.consume(2000, 0.5):
                if m.error() is not None or not m.value():
                    continue
                ev = decode(m.value(), schemas.get)
                if tuple(ev.partition_key) == tuple(key):
                    out.append(describe(int(m.partition() or 0), int(m.offset() or 0), ev))
    finally:
        c.close()
    return out


async def stored(dsn: str, keyspace: str, table: str, pk_names: list[str], key: tuple[Any, ...],
                 group: str) -> list[str]:
    """Apply's rows for the partition: target and shadow rows with their merge state, the partition state."""
    conn = await asyncpg.connect(dsn)
    try:
        out = []
        where = " AND ".join(f'"{n}" = ${i}' for i, n in enumerate(pk_names, 1))
        target = f'"{keyspace}"."{table}"'
        rows = await conn.fetch(f"SELECT _cdc_partition, _cdc_clustering, _cdc_meta AS m FROM {target} "
                                f"WHERE {where}", *key)
        for r in rows:
            out.append(f"target c={bytes(r['_cdc_clustering']).hex()} meta={decode_row(r['m'])}")
        if rows:
            p = rows[0]["_cdc_partition"]
            for name in (f"{table}$shadow", f"{table}$partition"):
                for r in await conn.fetch(f'SELECT * FROM "{keyspace}"."{name}" WHERE _cdc_partition = $1', p):
                    out.append(f"{name} " + json.dumps({k: (v.hex() if isinstance(v, bytes) else str(v))
                                                        for k, v in dict(r).items()}))
        for r in await conn.fetch("SELECT topic, partition, kafka_offset, error_type, message FROM cdcpipe_dlq "
                                  "WHERE group_id = $1", group):
            out.append(f"dlq {dict(r)}")
        return out
    finally:
        await conn.close()


def evidence(bootstrap: str, dsn: str, prefix: str, group: str, keyspace: str, schemas: SchemaCache,
             pk_names: dict[str, list[str]], mismatches: list[Mismatch], limit: int = 3) -> list[str]:
    """The history and stored state of up to ``limit`` mismatched partitions (never raises: it is evidence)."""
    out: list[str] = []
    seen: set[tuple[str, tuple[Any, ...]]] = set()
    for m in mismatches:
        table = m.table.rpartition(".")[2]
        names = pk_names.get(table, [])
        key = tuple(m.key[:len(names)])
        if (table, key) in seen or not names or len(seen) >= limit:
            continue
        seen.add((table, key))
        out.append(f"--- evidence for {m.table} partition {key!r}")
        try:
            out += partition_history(bootstrap, prefix, keyspace, table, key, schemas)
            out += asyncio.run(stored(dsn, keyspace, table, names, key, group))
        except Exception as exc:  # evidence gathering must not hide the mismatch
            out.append(f"(evidence failed: {type(exc).__name__}: {exc})")
    return out
