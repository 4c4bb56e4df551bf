"""Capture never deletes what it did not ship: every kind of unreadable segment is reported once, marked, and moved
to the quarantine (not deleted); reading blocked on durable data reports ``stalled``; skipped entries become
capture dead letters with their bytes and a cause."""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from cdcpipe.capture.batches import BatchBuilder, TableFilter
from cdcpipe.capture.cdc_index import SegmentFollower, damage_cause, damage_record
from cdcpipe.capture.events import Origin
from cdcpipe.capture.quarantine import Quarantine
from cdcpipe.capture.registry import SchemaRegistry
from cdcpipe.capture.segment import Position
from cdcpipe.capture.segment_gc import SegmentCollector
from cdcpipe.errors import DamagedEntryError, SegmentError
from cdcpipe.schema import TableSchema
from cdcpipe.schema_source import parse_cql_schema

SEG1, SEG2 = 1700000000001, 1700000000002
KEY = bytes.fromhex("b7d96fb9b11d829179aeeb0b4e81f97a")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def entries(n: int, tag: bytes) -> list[bytes]:
    return [tag + b"-%03d-payload" % i for i in range(n)]


def put(raw: Path, seg: int, data: bytes, idx: str | None) -> Path:
    log = raw / f"CommitLog-7-{seg}.log"
    log.write_bytes(data)
    if idx is not None:
        (raw / f"CommitLog-7-{seg}_cdc.idx").write_text(idx)
    return log


def setup(tmp_path: Path, clock: Clock | None = None) -> tuple[Path, Quarantine, SegmentFollower]:
    raw = tmp_path / "cdc_raw"
    raw.mkdir()
    q = Quarantine.open(None, raw)
    assert q.directory == tmp_path / "cdc_quarantine"
    follower = SegmentFollower(raw, None, None, q, stall_timeout_s=30, clock=clock or Clock())
    return raw, q, follower


def drain(follower: SegmentFollower, polls: int = 10) -> tuple[list[bytes], list[SegmentError]]:
    got: list[bytes] = []
    errors: list[SegmentError] = []
    for _ in range(polls):
        chunk = follower.poll(1000)
        got += [i.entry.data for i in chunk.items if i.entry is not None]
        errors += [i.error for i in chunk.items if i.error is not None]
    return got, errors


def end_offset(data: bytes) -> int:
    """The durable offset of a plain built segment: where its final zero marker sits."""
    return len(data) - 8


def quarantined(raw: Path, q: Quarantine, follower: SegmentFollower, seg: int) -> None:
    """After the position is committed, the segment is in the quarantine, not deleted and not in cdc_raw."""
    assert follower.position is not None
    SegmentCollector(raw, 1 << 30, q).collect(follower.position)
    name = f"CommitLog-7-{seg}.log"
    assert not (raw / name).exists()
    assert (q.directory / name).exists() and (q.directory / f"{name}.json").exists()
    assert [m.name for m in q.held()] == [name]


@pytest.mark.parametrize("damage,cause", [
    ("version", "header"), ("header_crc", "header"), ("truncate", "truncated"), ("zeros", "zero_filled"),
    ("key", "encryption_key"), ("entry_crc", "entry_crc"), ("marker", "section"), ("short_header", "truncated"),
])
def test_a_completed_segment_that_cannot_be_read_fully_is_quarantined(
        tmp_path: Path, segment_builder: Callable[..., bytes], damage: str, cause: str) -> None:
    raw, q, follower = setup(tmp_path)
    sections = [entries(5, b"a"), entries(5, b"b"), entries(5, b"c")]
    data = bytearray(segment_builder(sections, segment_id=SEG1))
    durable = end_offset(bytes(data))
    if damage == "key":
        data = bytearray(segment_builder(sections, segment_id=SEG1, key=KEY))
        durable = 10**6  # never reached: the header cannot be read without the key
    elif damage == "version":
        data[0:4] = struct.pack(">i", 99)
    elif damage == "header_crc":
        data[14] ^= 0x01  # inside the parameters
    elif damage == "truncate":  # the file ends at a section boundary before the durable offset
        data = data[:bytes(data).index(b"c-000-payload") - 16]
    elif damage == "zeros":
        second = bytes(data).index(b"b-000-payload") - 16  # the second section's marker
        data[second:second + 8] = bytes(8)
    elif damage == "entry_crc":
        at = bytes(data).index(b"b-002-payload")
        data[at] ^= 0x20
    elif damage == "marker":
        at = bytes(data).index(b"b-000-payload") - 16  # the second section's marker
        data[at + 5] ^= 0xFF
    elif damage == "short_header":
        data = data[:12]
    put(raw, SEG1, bytes(data), f"{durable}\nCOMPLETED")
    got, errors = drain(follower)
    assert errors and {damage_cause(e) for e in errors} == {cause}, errors
    assert set(got) <= {e for s in sections for e in s}
    assert q.is_marked(f"CommitLog-7-{SEG1}.log")
    [held] = q.held()
    assert held.cause == cause
    if damage == "entry_crc":
        [err] = errors
        assert isinstance(err, DamagedEntryError) and err.data == b"b-002-payload".replace(b"b", b"B", 1)
        origin = {"cluster": "c", "datacenter": "dc", "node": "n"}
        record = json.loads(damage_record("p", str(raw / f"CommitLog-7-{SEG1}.log"), err, 13, origin).value)
        assert bytes.fromhex(record["entry_hex"]) == err.data and record["cause"] == "entry_crc"
        assert record["segment_id"] == SEG1 and record["position"] == f"{SEG1}:{err.logical_offset}"
        # what a replay needs to read it again: the position past the entry, the encoding, the node
        assert record["entry_position"] == f"{SEG1}:{err.logical_offset + 12 + len(err.data)}"
        assert record["messaging_version"] == 13 and record["origin"] == origin
        assert len(got) == 14  # every other entry was read
    quarantined(raw, q, follower, SEG1)


def test_a_clean_segment_is_deleted_not_quarantined(tmp_path: Path, segment_builder: Callable[..., bytes]) -> None:
    raw, q, follower = setup(tmp_path)
    data = segment_builder([entries(3, b"a")], segment_id=SEG1)
    put(raw, SEG1, data, f"{end_offset(data)}\nCOMPLETED")
    got, errors = drain(follower)
    assert len(got) == 3 and not errors and not q.held()
    assert follower.position is not None
    assert SegmentCollector(raw, 1 << 30, q).collect(follower.position) == [SEG1]
    assert not list(q.directory.iterdir())


def test_a_live_unreadable_segment_is_reported_once_and_quarantined_when_completed(
        tmp_path: Path, segment_builder: Callable[..., bytes]) -> None:
    raw, q, follower = setup(tmp_path)
    data = bytearray(segment_builder([entries(3, b"a"), entries(3, b"b")], segment_id=SEG1))
    data[0:4] = struct.pack(">i", 99)
    put(raw, SEG1, bytes(data), "40")
    _, errors = drain(follower)
    assert len(errors) == 1 and q.is_marked(f"CommitLog-7-{SEG1}.log")
    assert follower.position == Position(SEG1, 40)
    (raw / f"CommitLog-7-{SEG1}_cdc.idx").write_text("80")
    _, errors = drain(follower)
    assert not errors and follower.position == Position(SEG1, 80)  # passed, never re-reported
    SegmentCollector(raw, 1 << 30, q).collect(follower.position)
    assert (raw / f"CommitLog-7-{SEG1}.log").exists()  # still live: kept in cdc_raw
    (raw / f"CommitLog-7-{SEG1}_cdc.idx").write_text("80\nCOMPLETED")
    drain(follower)
    quarantined(raw, q, follower, SEG1)


def test_a_live_zero_filled_area_before_the_durable_offset_is_damage(
        tmp_path: Path, segment_builder: Callable[..., bytes]) -> None:
    raw, q, follower = setup(tmp_path)
    data = segment_builder([entries(3, b"a")], segment_id=SEG1, pad_to=4096)
    put(raw, SEG1, data, "2000")  # the idx says more is durable than the data holds
    got, errors = drain(follower)
    assert len(got) == 3 and [damage_cause(e) for e in errors] == ["zero_filled"]
    assert q.is_marked(f"CommitLog-7-{SEG1}.log")


def test_a_short_header_stalls_then_is_quarantined_once_cassandra_moved_on(
        tmp_path: Path, segment_builder: Callable[..., bytes]) -> None:
    clock = Clock()
    raw, q, follower = setup(tmp_path, clock)
    put(raw, SEG1, b"\0\0\0\x07" + bytes(10), "500")
    assert drain(follower) == ([], [])
    assert follower.stalled() is None and follower.blocked is not None
    clock.now += 31
    reason = follower.stalled()
    assert reason is not None and f"segment {SEG1} at offset 0 (durable offset 500)" in reason
    assert drain(follower) == ([], [])  # no later segment: Cassandra may still write it, keep waiting
    nxt = segment_builder([entries(2, b"n")], segment_id=SEG2)
    put(raw, SEG2, nxt, str(end_offset(nxt)))
    got, errors = drain(follower)
    assert [damage_cause(e) for e in errors] == ["truncated"] and len(got) == 2
    assert follower.stalled() is None
    quarantined(raw, q, follower, SEG1)


def test_an_unreadable_idx_stalls_then_is_quarantined_once_cassandra_moved_on(
        tmp_path: Path, segment_builder: Callable[..., bytes]) -> None:
    clock = Clock()
    raw, q, follower = setup(tmp_path, clock)
    first = segment_builder([entries(2, b"a")], segment_id=SEG1)
    put(raw, SEG1, first, "garbage")
    nxt = segment_builder([entries(2, b"n")], segment_id=SEG2)
    put(raw, SEG2, nxt, str(end_offset(nxt)))
    assert drain(follower) == ([], [])  # never skips ahead of an idx being rewritten ...
    clock.now += 31
    reason = follower.stalled()
    assert reason is not None and "_cdc.idx is empty or unreadable" in reason and str(SEG1) in reason
    got, errors = drain(follower)  # ... until it stays unreadable while Cassandra writes a later segment
    assert [damage_cause(e) for e in errors] == ["idx_unreadable"] and got == entries(2, b"n")
    quarantined(raw, q, follower, SEG1)


def test_quarantine_must_be_on_the_filesystem_of_cdc_raw(tmp_path: Path) -> None:
    from cdcpipe.errors import ConfigError

    raw = tmp_path / "cdc_raw"
    raw.mkdir()
    shm = Path("/dev/shm")
    if shm.is_dir() and shm.stat().st_dev != raw.stat().st_dev:
        with pytest.raises(ConfigError, match="not on the filesystem"):
            Quarantine.open(shm / f"q-{uuid.uuid4().hex}", raw)
    assert Quarantine.open(tmp_path / "elsewhere", raw).directory == tmp_path / "elsewhere"


CFID = "657e5210-7cbb-11ee-9858-c9aa1eb53e69"
STANDARD1 = (f'CREATE TABLE "Keyspace1"."Standard1" (key ascii, col ascii, val blob, val0 blob, '
             f"PRIMARY KEY (key, col)) WITH id = {CFID} AND cdc = true;")


class FlippingSource:
    """A schema source whose tables change between loads."""

    def __init__(self, tables: list[TableSchema]) -> None:
        self.tables = tables
        self.loads = 0

    def load(self) -> list[TableSchema]:
        self.loads += 1
        return self.tables


def builder_for(tmp_path: Path, testdata: Path, registry: SchemaRegistry, topics: list[str] | None = None,
                ) -> BatchBuilder:
    raw = tmp_path / "cdc_raw"
    raw.mkdir()
    src = testdata / "4.0.11-encrypted/CommitLog-7-1699285478684.log"
    (raw / src.name).write_bytes(src.read_bytes()[:75011 + 8])
    (raw / src.name.replace(".log", "_cdc.idx")).write_text("75011\nCOMPLETED")
    follower = SegmentFollower(raw, None, None, Quarantine.open(None, raw))
    sink = topics if topics is not None else []
    return BatchBuilder(follower, registry, TableFilter([], []), Origin("c", "dc", "n"), "p", sink.append)


def test_entries_of_an_unknown_table_become_dead_letters_with_their_bytes(tmp_path: Path, testdata: Path) -> None:
    builder = builder_for(tmp_path, testdata, SchemaRegistry(tables=[]))
    batch = builder.next(100_000)
    assert batch.records and all(r.topic == "p.capture-dlq" for r in batch.records)
    records = [json.loads(r.value) for r in batch.records]
    assert {r["cause"] for r in records} == {"unknown_table"}
    mine = [r for r in records if r["table_id"] == CFID]
    assert mine and all(bytes.fromhex(r["entry_hex"])[1:17] == uuid.UUID(CFID).bytes for r in mine)
    assert len({r["position"] for r in records}) == len(records)  # one record per entry


def test_a_table_switched_to_cdc_is_captured_after_the_schema_change_event(tmp_path: Path, testdata: Path) -> None:
    off = parse_cql_schema(STANDARD1.replace("cdc = true", "cdc = false"))
    source = FlippingSource(off)
    registry = SchemaRegistry(source)
    builder = builder_for(tmp_path, testdata, registry)
    source.tables = parse_cql_schema(STANDARD1)
    registry.mark_stale()  # what SchemaWatcher does on a SCHEMA_CHANGE event
    batch = builder.next(100_000)
    assert any(r.topic == "p.Keyspace1.Standard1" for r in batch.records)
    assert source.loads >= 2 and not registry.stale


def test_a_table_held_as_cdc_false_is_rechecked_when_the_cache_predates_the_data(tmp_path: Path,
                                                                                testdata: Path) -> None:
    off = parse_cql_schema(STANDARD1.replace("cdc = true", "cdc = false"))
    source = FlippingSource(off)
    registry = SchemaRegistry(source)
    registry.loaded_ns = 0  # loaded before the segment's idx was written
    builder = builder_for(tmp_path, testdata, registry)  # no schema watcher: every re-check reloads
    source.tables = parse_cql_schema(STANDARD1)  # switched on; no event seen
    batch = builder.next(100_000)
    assert any(r.topic == "p.Keyspace1.Standard1" for r in batch.records)


def test_a_failed_conversion_reads_the_same_entries_again(tmp_path: Path, testdata: Path) -> None:
    from cdcpipe.errors import KafkaProduceError

    calls: list[str] = []

    def ensure(topic: str) -> None:
        calls.append(topic)
        if len(calls) <= 3:  # the fast path's failure falls back to the reference path, which fails too
            raise KafkaProduceError("create topic: broker down", topic=topic, retriable=True)

    registry = SchemaRegistry(tables=parse_cql_schema(STANDARD1))
    builder = builder_for(tmp_path, testdata, registry)
    builder.ensure_topic = ensure
    with pytest.raises(KafkaProduceError):
        builder.next(100_000)
    assert builder.follower.position is None
    batch = builder.next(100_000)
    assert batch.records and batch.position is not None


def test_a_table_switched_off_keeps_its_writes_from_before_the_switch(tmp_path: Path, testdata: Path) -> None:
    source = FlippingSource(parse_cql_schema(STANDARD1))
    registry = SchemaRegistry(source)
    builder = builder_for(tmp_path, testdata, registry)
    source.tables = parse_cql_schema(STANDARD1.replace("cdc = true", "cdc = false"))
    registry.mark_stale()  # switched off before capture read the writes made while it was on
    batch = builder.next(100_000)
    assert any(r.topic == "p.Keyspace1.Standard1" for r in batch.records)
    assert list(builder._lingering) == [uuid.UUID(CFID)]


def test_node_sizes_are_parsed_as_system_views_shows_them() -> None:
    """The parsing only; reading them from a real node is tests/integration/test_capture_failsafe.py's."""
    from cdcpipe.capture.pipeline import DEFAULT_CDC_TOTAL_SPACE, size_bytes

    assert size_bytes("1024MiB") == 1024 * 1024 * 1024
    assert size_bytes("4096", "MiB") == DEFAULT_CDC_TOTAL_SPACE  # the pre-4.1 ``cdc_total_space_in_mb``
    assert size_bytes("8 MiB") == 8 * 1024 * 1024 and size_bytes("512") == 512
    assert size_bytes("0MiB") is None and size_bytes("null") is None
    assert DEFAULT_CDC_TOTAL_SPACE == 4096 * 1024 * 1024  # Cassandra's default (its cap when not set)


def test_kafka_backoff_is_capped() -> None:
    from cdcpipe.capture.pipeline import _backoff

    assert [_backoff(n, 30.0) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert _backoff(100, 30.0) == 30.0
