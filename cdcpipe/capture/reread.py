"""A capture dead letter read again with the code running now (``cdcpipe dlq replay`` of a ``capture.*`` one).

A capture dead letter (:func:`cdcpipe.capture.cdc_index.damage_record`, ``BatchBuilder._dead_letter``) is either
one entry with its bytes (``entry_hex``: an undecodable entry, an entry of a table unknown then, an entry whose data
failed its CRC) or damage without bytes (a section, header, key or truncation; the segment is kept in the
quarantine directory).  :meth:`Rereader.read` builds the entries to read again — the bytes of the record, or the
damaged part of the segment found again in the quarantine directory (or still in cdc_raw) — and converts them with
capture's own :class:`~cdcpipe.capture.batches.BatchBuilder` (the schema of the tables read from Cassandra now), so
an upgrade that fixes a decoder bug, a table known now, or a key configured now makes them events.
:meth:`Rereader.produce` sends those events to their table topics (same key, same partitioner as capture) after
their Avro schemas: apply merges them by Cassandra's rules, so an old event never overwrites newer data.

Which part of a quarantined segment: the sections from the damaged one (``file_offset``) on, to the durable offset
of its ``_cdc.idx`` if it is there; for damage to one section of an uncompressed segment only that section (capture
read on past it: the rest was shipped).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError

from cdcpipe import kafka_clients
from cdcpipe.avro import EventSchema
from cdcpipe.capture.batches import BatchBuilder, TableFilter
from cdcpipe.capture.cdc_index import Chunk, Item, read_index
from cdcpipe.capture.events import Origin
from cdcpipe.capture.pipeline import key_provider
from cdcpipe.capture.producer import Record
from cdcpipe.capture.registry import SchemaRegistry
from cdcpipe.capture.segment import Entry, Position, SegmentReader
from cdcpipe.config import Settings
from cdcpipe.errors import CdcpipeError, KafkaProduceError, SegmentError
from cdcpipe.kafka_admin import create_topic, topic_replication
from cdcpipe.schema_source import connect_system_schema
from cdcpipe.topics import capture_dlq_topic, schemas_topic

_ENTRY_OVERHEAD = 12  # size, size CRC, data CRC


@dataclass(frozen=True, slots=True)
class Reread:
    """What reading a capture dead letter again gave: ``records`` (events, to their table topics), the Avro
    ``schemas`` they use, and ``failures``: what still cannot be read (empty: everything was)."""

    records: list[Record]
    schemas: list[EventSchema]
    failures: list[str]

    @property
    def topics(self) -> list[str]:
        return sorted({r.topic for r in self.records})


class _Entries:
    """A stand-in for the segment follower that hands the builder one chunk: the entries to read again."""

    def __init__(self, items: list[Item]) -> None:
        self.items = items
        self.position: Position | None = None
        self.keys = None
        self._done = False

    def mark(self) -> tuple[Position | None, bool]:
        return self.position, self._done

    def restore(self, mark: tuple[Position | None, bool]) -> None:
        self.position, self._done = mark

    def poll(self, max_items: int) -> Chunk:
        if self._done:
            return Chunk()
        self._done = True
        ends = [i.entry.position for i in self.items if i.entry is not None]
        if ends:
            self.position = ends[-1]
        return Chunk(items=list(self.items), more=False)


class Rereader:
    """Reads capture dead letters again (blocking): one schema registry, one admin client and one idempotent
    producer; ``segment_dirs`` are searched (after the configured quarantine directory) for quarantined segments."""

    def __init__(self, settings: Settings, segment_dirs: Iterable[Path] = ()) -> None:
        self.settings = settings
        self.prefix = settings.kafka.topic_prefix
        self.segment_dirs = [*segment_dirs, *_configured_dirs(settings)]
        self._source = connect_system_schema(settings.cassandra)
        self.registry = SchemaRegistry(self._source)
        row = next(iter(self._source.session.execute("SELECT cluster_name, data_center, host_id FROM system.local")))
        self._here = Origin(row.cluster_name, row.data_center, str(row.host_id))
        base = settings.kafka.client_config()
        self._admin = kafka_clients.admin(base)
        self._producer = kafka_clients.producer({  # capture's partitioner: a key keeps its partition
            **base, "enable.idempotence": True, "linger.ms": 5, "compression.type": "lz4",
            "partitioner": "murmur2_random"})
        self._replication: int | None = None

    def close(self) -> None:
        self._producer.flush(30)
        cluster = getattr(self._source.session, "cluster", None)  # a driver Session: its connections
        if cluster is not None:
            cluster.shutdown()

    def _ensure_topic(self, topic: str) -> None:
        c = self.settings.capture
        if self._replication is None:
            self._replication = topic_replication(self._admin, c.topic_replication, 30.0)
        create_topic(self._admin, topic, partitions=c.topic_partitions, replication=self._replication,
                     config=self.settings.kafka.topic_config(), timeout_s=30.0)

    def read(self, letter: dict[str, Any]) -> Reread:
        """Read the entries of the capture dead letter ``letter`` (its JSON record) again with the current code."""
        c = self.settings.capture
        origin = letter.get("origin")
        here = (Origin(str(origin["cluster"]), str(origin["datacenter"]), str(origin["node"]))
                if isinstance(origin, dict) else self._here)
        try:
            items = self._items(letter)
        except (CdcpipeError, OSError, ValueError) as exc:
            return Reread([], [], [f"{type(exc).__name__}: {exc}"])
        builder = BatchBuilder(_Entries(items), self.registry,  # type: ignore[arg-type]
                               TableFilter(c.include_tables, c.exclude_tables), here, self.prefix,
                               self._ensure_topic)
        self.registry.refresh()  # the schema of now (a table created or a column added since)
        batch = builder.next(len(items) + 1)
        dlq = capture_dlq_topic(self.prefix)
        failures = [str(json.loads(r.value).get("error")) for r in batch.records if r.topic == dlq]
        records = [r for r in batch.records if r.topic != dlq]
        if not items:
            failures.append("no entry found to read again")
        elif not records and not failures:
            failures.append("the entries decoded to no captured change (is the table still cdc = true and "
                            "matched by capture.include_tables?)")
        return Reread(records, list(batch.schemas.values()), failures)

    def _items(self, letter: dict[str, Any]) -> list[Item]:
        path = str(letter.get("segment") or "")
        if letter.get("entry_hex"):
            data = bytes.fromhex(str(letter["entry_hex"]))
            end = Position.parse(str(letter.get("entry_position") or letter["position"]))
            version = letter.get("messaging_version")
            if not isinstance(version, int):
                found = self._find(path)
                if found is None:
                    raise ValueError(f"the record has no messaging_version and segment {Path(path).name} is not "
                                     f"in {self._where()}")
                version = SegmentReader(found, keys=key_provider(self.settings)).descriptor.messaging_version
                if version is None:
                    raise ValueError(f"segment {found} names no messaging version")
            return [Item(path, version, Entry(end, end.offset - _ENTRY_OVERHEAD - len(data), data))]
        found = self._find(path)
        if found is None:
            raise FileNotFoundError(f"segment {Path(path).name} is not in {self._where()} (run the replay where "
                                    "the capture node's quarantine directory is, or give --segment-dir)")
        return list(self._section_items(found, letter))

    def _section_items(self, found: Path, letter: dict[str, Any]) -> Iterator[Item]:
        reader = SegmentReader(found, keys=key_provider(self.settings))
        version = reader.descriptor.messaging_version
        if version is None:
            raise ValueError(f"segment {found} names no messaging version")
        idx = found.with_name(found.name[:-4] + "_cdc.idx")
        limit = read_index(idx)[0] if idx.exists() else None
        since = int(letter.get("file_offset") or 0)
        one_section = letter.get("cause") == "section" and reader.plain
        first: int | None = None
        for got in reader.read(limit=limit):
            spans = reader.stats.section_spans
            if (got.offset if isinstance(got, SegmentError) else spans[-1][0] if spans else 0) < since:
                continue  # before the damage: shipped already (or another dead letter's)
            if first is None:
                first = reader.stats.sections
            elif one_section and reader.stats.sections > first:
                return  # past the damaged section: capture read on from there
            if isinstance(got, Entry):
                yield Item(str(found), version, got)
            else:
                yield Item(str(found), version, None, got)

    def _find(self, path: str) -> Path | None:
        name = Path(path).name
        if not name:
            return None
        for d in self.segment_dirs:
            if (d / name).is_file():
                return d / name
        return Path(path) if path and os.path.isfile(path) else None

    def _where(self) -> str:
        return ", ".join(str(d) for d in self.segment_dirs) or "no directory (give --segment-dir)"

    def produce(self, reread: Reread) -> None:
        """Send the events after their schemas (awaited); raises KafkaProduceError when any delivery failed."""
        failed: list[str] = []

        def delivered(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                failed.append(f"{msg.topic()}: {err.str()}")

        for s in reread.schemas:
            self._producer.produce(schemas_topic(self.prefix), key=s.fingerprint, value=s.to_json().encode(),
                                   on_delivery=delivered)
        self._flush(failed)
        for topic, key, value in reread.records:
            self._producer.produce(topic, value, key, on_delivery=delivered)
            self._producer.poll(0)
        self._flush(failed)

    def _flush(self, failed: list[str]) -> None:
        if self._producer.flush(60) > 0:
            failed.append("not delivered within 60 s")
        if failed:
            raise KafkaProduceError("; ".join(failed[:5]), retriable=True)


def _configured_dirs(settings: Settings) -> list[Path]:
    """The configured quarantine directory, or its default beside cdc_raw, and cdc_raw itself."""
    c = settings.capture
    out: list[Path] = []
    if c.quarantine_dir is not None:
        out.append(c.quarantine_dir)
    if c.cdc_raw_dir is not None:
        if c.quarantine_dir is None:
            out.append(c.cdc_raw_dir.resolve().parent / "cdc_quarantine")
        out.append(c.cdc_raw_dir)
    return out
