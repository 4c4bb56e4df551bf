"""The commit-log reader against a real Cassandra 5.0, in each storage mode and with a compressed commit log.

For each mode a dedicated single-node Cassandra is started on 127.0.0.12 (its own state folder, so the shared
stack and its cdc_raw are untouched); a seeded random workload over every CQL type and every kind of write runs
against it; then the segments in its cdc_raw are decoded up to each ``_cdc.idx`` durable offset and every
write must be there exactly — values (as bytes and as decoded values), timestamps, TTLs, deletions — and
nothing else.
"""

from __future__ import annotations

import datetime
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cassandra.cluster import Cluster

from cdcpipe.capture.mutation import MutationDecoder
from cdcpipe.capture.registry import SchemaRegistry
from cdcpipe.capture.rows import RangeTombstoneMarker
from cdcpipe.capture.segment import SegmentReader
from cdcpipe.cql import decode_counter, decode_value, parse_cql_type
from cdcpipe.errors import MutationDecodeError, SegmentError
from cdcpipe.schema_source import connect_system_schema
from tests.support.live_workload import KEYSPACE, SCALAR_COLUMNS, Expected, Workload, create_schema
from tests.support.stack import stack

AUX_OCTET = 12
MODES = {
    # name: (environment for the node, commit-log descriptor version, compression class or None)
    "descriptor7": ({"CASSANDRA_STORAGE_COMPAT": "CASSANDRA_4"}, 7, None),
    "descriptor8": ({"CASSANDRA_STORAGE_COMPAT": "NONE"}, 8, None),
    "lz4": ({"CASSANDRA_STORAGE_COMPAT": "CASSANDRA_4", "CASSANDRA_COMMITLOG_COMPRESSION": "LZ4Compressor"}, 7,
            "LZ4Compressor"),
}
OPERATIONS = int(os.environ.get("CDCPIPE_LIVE_READER_OPS", "500"))


@dataclass(frozen=True)
class AuxNode:
    host: str
    cdc_raw: Path
    version: int
    compression: str | None


def aux_stack(name: str, stack_env: dict[str, str], extra: dict[str, str], *args: str) -> None:
    state = Path(stack_env["CDCPIPE_STACK_DIR"])
    env = {**os.environ, **extra, "CDCPIPE_STACK_DIR": str(state / "aux" / name),
           "CDCPIPE_STACK_CACHE": str(state / "cache"), "CDCPIPE_STACK_SERVICES": "cassandra",
           "CDCPIPE_STACK_CASSANDRA_FIRST": str(AUX_OCTET)}
    out = stack(*args, env=env, timeout=600)
    assert out.returncode == 0, f"aux Cassandra {name}: stack {' '.join(args)} failed:\n{out.stderr}"


@pytest.fixture(scope="module", params=sorted(MODES))
def aux_node(request: pytest.FixtureRequest, stack_env: dict[str, str]) -> Iterator[AuxNode]:
    name: str = request.param
    env, version, compression = MODES[name]
    aux_stack(name, stack_env, env, "down", "--purge")
    aux_stack(name, stack_env, env, "up")
    state = Path(stack_env["CDCPIPE_STACK_DIR"]) / "aux" / name
    try:
        yield AuxNode(f"127.0.0.{AUX_OCTET}", state / "cassandra" / "cdc_raw", version, compression)
    finally:
        aux_stack(name, stack_env, env, "down", "--purge")


@dataclass
class Observed:
    cells: dict[tuple[Any, ...], tuple[Any, ...]] = field(default_factory=dict)
    list_cells: dict[tuple[Any, ...], list[bytes]] = field(default_factory=lambda: defaultdict(list))
    liveness: dict[tuple[Any, ...], int] = field(default_factory=dict)
    expiries: list[tuple[int, int]] = field(default_factory=list)  # (ttl, local expiration time)
    row_deletions: set[tuple[Any, ...]] = field(default_factory=set)
    partition_deletions: set[tuple[Any, ...]] = field(default_factory=set)
    complex_deletions: set[tuple[Any, ...]] = field(default_factory=set)
    ranges: dict[tuple[Any, ...], tuple[Any, ...]] = field(default_factory=dict)
    counters: dict[bytes, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))
    raw_cells: dict[tuple[Any, ...], bytes] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    versions: set[int] = field(default_factory=set)
    compressions: set[str | None] = field(default_factory=set)


def observe(node: AuxNode, decoder: MutationDecoder) -> Observed:
    """Decode every CDC segment of the node up to its durable offset; keep what concerns our keyspace."""
    seen = Observed()
    for idx in sorted(node.cdc_raw.glob("CommitLog-*_cdc.idx")):
        first = idx.read_text().split("\n", 1)[0].strip()
        if not first.isdigit():
            continue  # being rewritten; the next poll reads it
        segment = idx.with_name(idx.name.replace("_cdc.idx", ".log"))
        reader = SegmentReader(segment)
        seen.versions.add(reader.descriptor.version)
        seen.compressions.add(reader.descriptor.compression)
        version = reader.descriptor.messaging_version
        assert version is not None
        for item in reader.read(limit=int(first)):
            if isinstance(item, SegmentError):
                seen.errors.append(str(item))
                continue
            try:
                mutation = decoder.decode(item.data, version, item.position, str(segment))
            except MutationDecodeError as exc:
                if exc.table_id is None or KEYSPACE in str(exc):
                    seen.errors.append(str(exc))
                continue
            for update in mutation.updates:
                if update.table.keyspace == KEYSPACE:
                    _collect(seen, update)
    return seen


def _collect(seen: Observed, update: Any) -> None:
    table, pk = update.table.table, update.key
    types = {c.name: c.type for c in (*update.table.static, *update.table.regular)}
    if update.partition_deletion is not None:
        seen.partition_deletions.add((table, pk, update.partition_deletion.marked_for_delete_at))
    _collect_ranges(seen, table, pk, update.range_tombstones)
    for row in (*([update.static_row] if update.static_row else []), *update.rows):
        ck = tuple(row.clustering)
        if row.liveness is not None:
            seen.liveness[(table, pk, ck, row.liveness.timestamp)] = row.liveness.ttl
            if row.liveness.ttl:
                seen.expiries.append((row.liveness.ttl, row.liveness.local_expiration_time or 0))
        if row.deletion is not None:
            seen.row_deletions.add((table, pk, ck, row.deletion.marked_for_delete_at))
        for col, dt in row.complex_deletions:
            seen.complex_deletions.add((table, pk, ck, col, dt.marked_for_delete_at))
        for cell in row.cells:
            if table == "counters":
                total = decode_counter(cell.value)
                seen.counters[pk].extend((clock, count) for _, clock, count in total.shards)
                continue
            t = types[cell.column]
            if t.name == "list" and t.multi_cell and not cell.deleted:
                seen.list_cells[(table, pk, ck, cell.column, cell.timestamp)].append(cell.value)
                continue
            key = (table, pk, ck, cell.column, cell.path, cell.timestamp)
            seen.cells[key] = ("tombstone",) if cell.deleted else ("live", cell.value, cell.ttl)
            seen.raw_cells[key] = cell.value
            if cell.ttl:
                seen.expiries.append((cell.ttl, cell.local_deletion_time or 0))


def _collect_ranges(seen: Observed, table: str, pk: bytes, markers: tuple[RangeTombstoneMarker, ...]) -> None:
    opened: RangeTombstoneMarker | None = None
    for m in markers:
        if m.open_deletion is not None and m.close_deletion is None:
            opened = m
        elif m.close_deletion is not None and opened is not None:
            assert opened.open_deletion is not None
            assert opened.open_deletion.marked_for_delete_at == m.close_deletion.marked_for_delete_at
            seen.ranges[(table, pk, m.close_deletion.marked_for_delete_at)] = (
                (opened.kind_name, tuple(opened.bound)), (m.kind_name, tuple(m.bound)))
            opened = None


def mismatches(expected: Expected, seen: Observed) -> list[str]:
    out = []

    def compare(name: str, exp: Any, got: Any) -> None:
        if isinstance(exp, dict):
            missing = {k: v for k, v in exp.items() if k not in got}
            wrong = {k: (v, got[k]) for k, v in exp.items() if k in got and got[k] != v}
            extra = {k: v for k, v in got.items() if k not in exp}
        else:
            missing, wrong, extra = set(exp) - set(got), {}, set(got) - set(exp)
        for label, items in (("missing", missing), ("wrong", wrong), ("unexpected", extra)):
            if items:
                sample = list(items.items() if isinstance(items, dict) else items)[:3]
                out.append(f"{name}: {len(items)} {label}, e.g. {sample}")

    compare("cells", expected.cells, seen.cells)
    compare("list cells", {k: sorted(v) for k, v in expected.list_cells.items()},
            {k: sorted(v) for k, v in seen.list_cells.items()})
    compare("row markers", expected.liveness, seen.liveness)
    compare("row deletions", expected.row_deletions, seen.row_deletions)
    compare("partition deletions", expected.partition_deletions, seen.partition_deletions)
    compare("complex deletions", expected.complex_deletions, seen.complex_deletions)
    compare("range deletions", expected.ranges, seen.ranges)
    for pk, total in expected.counter_totals.items():
        shards = seen.counters.get(pk, [])
        final = max(shards)[1] if shards else None
        if final != total:
            out.append(f"counter {pk.hex()}: decoded total {final}, written {total}")
    return out


def test_every_write_is_decoded_exactly(aux_node: AuxNode) -> None:
    cluster = Cluster([aux_node.host], protocol_version=5)
    session = cluster.connect()
    try:
        create_schema(session)
        workload = Workload(session, seed=aux_node.version * 1000 + (7 if aux_node.compression else 0))
        started = int(time.time())
        for _ in range(OPERATIONS):
            workload.step()
        finished = int(time.time())
    finally:
        cluster.shutdown()

    decoder = MutationDecoder(SchemaRegistry(connect_system_schema(f"{aux_node.host}:9042")))
    deadline = time.monotonic() + 20
    while True:  # the durable offset advances at each commit-log sync (500 ms)
        seen = observe(aux_node, decoder)
        problems = mismatches(workload.expected, seen)
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not seen.errors, seen.errors[:5]
    assert not problems, "\n".join(problems)

    assert seen.versions == {aux_node.version}
    assert seen.compressions == {aux_node.compression}
    for ttl, expiry in seen.expiries:  # expiry = coordinator clock + ttl
        assert started + ttl - 2 <= expiry <= finished + ttl + 2, (ttl, expiry, started)
    decoded = 0
    for key, value in workload.expected.decoded.items():
        table, column = key[0], key[3]
        if table == "scalars" and column in SCALAR_COLUMNS:
            got = decode_value(parse_cql_type(SCALAR_COLUMNS[column]), seen.raw_cells[key])
            if isinstance(value, datetime.datetime):
                value = value.replace(tzinfo=None)
            assert got == value, (key, got, value)
            decoded += 1
    assert decoded > 100
    kinds = (len(workload.expected.cells), len(workload.expected.partition_deletions), len(workload.expected.ranges),
             len(workload.expected.complex_deletions), len(workload.expected.counter_totals))
    assert all(kinds), f"the workload must cover every kind of write: {kinds}"
