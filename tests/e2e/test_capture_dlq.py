"""Capture's dead letters through ``cdcpipe dlq`` on the real stack (issue 18, item 2): a copy of a real segment,
doctored two ways, is read by capture — one entry whose data CRC was broken (its bytes intact: a reader that
refused good data, as a decoder bug would) and one section whose sync marker was broken (the segment kept in the
quarantine directory).  Apply copies both capture dead letters into ``cdcpipe_dlq``; ``dlq list`` and the admin
API show them; ``dlq replay`` reads the entry again from its bytes with the current code and its row appears; the
section, still unreadable, fails again and stays (retry counted) until the quarantined file reads (the marker
restored, as an upgraded reader would accept it), then its rows appear: PostgreSQL equals Cassandra."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from cdcpipe.capture.cdc_index import scan
from cdcpipe.capture.mutation import MutationDecoder, raw_table_id
from cdcpipe.capture.registry import SchemaRegistry
from cdcpipe.capture.segment import Entry, SegmentReader
from cdcpipe.schema_source import connect_system_schema
from tests.e2e.test_dlq import dlq
from tests.e2e.test_erase import pg
from tests.support.harness import Pipeline, connect, drop_keyspace, wait_for
from tests.support.processes import free_port, unique
from tests.support.stack import StackEnv

pytestmark = pytest.mark.timeout(300)
TOKEN = "e2e-capture-dlq-token-" + "q" * 12
ROWS_PER_WAVE = 40


def entries_of(path: Path, limit: int, table_id: uuid.UUID, registry: SchemaRegistry) -> list[tuple[int, int, Entry]]:
    """(section's sync marker offset, k, entry) of each entry of ``table_id`` in the segment."""
    reader = SegmentReader(path)
    assert reader.plain, "the stack's commit log is expected uncompressed"
    version = reader.descriptor.messaging_version
    assert version is not None
    decoder = MutationDecoder(registry)
    out = []
    for got in reader.read(limit=limit):
        assert isinstance(got, Entry), got
        if raw_table_id(got.data) != table_id.bytes:
            continue
        for u in decoder.decode(got.data, version, got.position, str(path)).updates:
            if u.table.table_id == table_id:
                out.append((reader.stats.section_spans[-1][0], int.from_bytes(u.key, "big", signed=True), got))
    return out


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_capture_dead_letters_listed_and_replayed(stack_env: dict[str, str], tmp_path: Path) -> None:
    stack = StackEnv(stack_env)
    ks = unique("e2ecd", 8)
    cluster, session = connect(stack)
    port = free_port()
    pipeline = Pipeline(stack, ks, tmp_path, partitions=1, extra={
        "CDCPIPE_ADMIN__ENABLED": "true", "CDCPIPE_ADMIN__TOKEN": TOKEN, "CDCPIPE_ADMIN__PORT": str(port)})
    source = connect_system_schema(f"{stack.hosts[0]}:9042")
    try:
        session.execute(f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', "
                        "'replication_factor': 1}", timeout=60)
        session.execute(f"CREATE TABLE {ks}.t (k int PRIMARY KEY, v text) WITH cdc = true", timeout=60)
        insert = session.prepare(f"INSERT INTO {ks}.t (k, v) VALUES (?, ?)")
        for wave in range(3):  # the commit log syncs every 500 ms: the waves land in different sections
            for i in range(ROWS_PER_WAVE):
                k = wave * ROWS_PER_WAVE + i
                session.execute(insert, (k, f"row {k} " + "x" * 200))
            time.sleep(1.5)
        want = ROWS_PER_WAVE * 3
        registry = SchemaRegistry(source)
        table_id = next(iter(session.execute("SELECT id FROM system_schema.tables WHERE keyspace_name = %s AND "
                                             "table_name = 't'", (ks,)))).id
        raw = Path(stack.cdc_raw_dirs[0])

        def located() -> list[tuple[Any, list[tuple[int, int, Entry]]]]:
            found = [(s, entries_of(s.log, s.offset, table_id, registry)) for s in scan(raw) if s.offset]
            return [(s, e) for s, e in found if e]

        wait_for("every insert durable in cdc_raw", lambda: sum(len(e) for _, e in located()) == want, 60)
        private = tmp_path / "cdc_raw"
        private.mkdir()
        segments = located()
        for seg, _ in segments:
            shutil.copy(seg.log, private / seg.log.name)
            (private / seg.idx.name).write_text(f"{seg.offset}\nCOMPLETED")
        # the segment with the most of our sections: one entry's CRC broken, a later section's marker broken
        seg, mine = max(segments, key=lambda x: len({m for m, _, _ in x[1]}))
        sections = sorted({m for m, _, _ in mine})
        assert len(sections) >= 2, f"the waves landed in one section: {sections}"
        copy = private / seg.log.name
        victim_marker, victim_k, victim = next(x for x in mine if x[0] == sections[0])
        flip(copy, victim.position.offset - 1)  # the last byte of the entry's data CRC: its data is intact
        broken = sections[-1]
        flip(copy, broken + 4)  # the sync marker's CRC: the whole section is unreadable
        lost = {k for m, k, _ in mine if m == broken} | {victim_k}
        assert victim_marker != broken and len(lost) > 1

        pipeline.captures[0].env["CDCPIPE_CAPTURE__CDC_RAW_DIR"] = str(private)
        pipeline.start()
        target = f'"{ks}"."t"'

        def mirrored() -> set[int]:
            if not pg(stack.dsn, "SELECT to_regclass($1) IS NOT NULL AS x", target)[0]["x"]:
                return set()
            return {r["k"] for r in pg(stack.dsn, f"SELECT k FROM {target}")}

        wait_for("every readable row mirrored", lambda: mirrored() == set(range(want)) - lost, 90, pipeline)
        wait_for("capture's two dead letters copied by apply", lambda: len(pg(
            stack.dsn, "SELECT id FROM cdcpipe_dlq WHERE topic = $1", f"{pipeline.prefix}.capture-dlq")) == 2,
            60, pipeline)

        # listed by the command and the API, with coordinates and error
        topic = f"{pipeline.prefix}.capture-dlq"
        rc, out = dlq(pipeline, "list", "--topic", topic, "--error-type", "capture.entry_crc")
        assert rc == 0 and len(out) == 2, out
        entry = out[0]
        assert entry["group_id"] == "capture" and entry["status"] == "pending" and "CRC" in entry["message"], entry
        rc, out = dlq(pipeline, "show", str(entry["id"]))
        assert rc == 0 and bytes.fromhex(out[0]["value"]).find(victim.data.hex().encode()) > 0, out
        rc, out = dlq(pipeline, "list", "--topic", topic, "--error-type", "capture.section")
        assert rc == 0 and len(out) == 2, out
        section = out[0]
        auth = {"Authorization": f"Bearer {TOKEN}"}
        listed = httpx.get(f"http://127.0.0.1:{port}/dlq/records", headers=auth, timeout=10,
                           params={"error_type": "capture.section", "topic": topic}).json()
        assert [x["id"] for x in listed["records"]] == [section["id"]], listed
        answer = httpx.post(f"http://127.0.0.1:{port}/dlq/replay", json={"ids": [section["id"]]}, headers=auth,
                            timeout=30).json()
        assert answer["outcomes"][0]["result"] == "needs_capture_code", answer

        # the entry read again from its bytes: its row appears; a second replay is a no-op
        rc, out = dlq(pipeline, "replay", str(entry["id"]), "--note", "reader fixed")
        assert rc == 0 and out[0]["result"] == "produced", out
        wait_for("the replayed entry's row", lambda: victim_k in mirrored(), 60, pipeline)
        rc, out = dlq(pipeline, "replay", str(entry["id"]))
        assert rc == 0 and out[0]["result"] == "already_replayed", out

        # the section, read again from the quarantined segment: still unreadable, it fails and stays
        quarantined = tmp_path / "cdc_quarantine" / seg.log.name
        wait_for("the damaged segment moved to the quarantine", quarantined.exists, 60, pipeline)
        qdir = ["--segment-dir", str(quarantined.parent)]
        rc, out = dlq(pipeline, "replay", str(section["id"]), *qdir)
        assert rc == 1 and out[0]["result"] == "failed" and "marker" in out[0]["error"], out
        rc, out = dlq(pipeline, "list", "--status", "failed", "--topic", topic)
        assert [(x["id"], x["retry_count"]) for x in out[:-1]] == [(section["id"], 1)], out
        flip(quarantined, broken + 4)  # the file reads now, as an upgraded reader would read it
        rc, out = dlq(pipeline, "replay", str(section["id"]), *qdir, "--note", "reader upgraded")
        assert rc == 0 and [(x["id"], x["result"]) for x in out[:-1]] == [(section["id"], "produced")], out
        wait_for("PostgreSQL equal to Cassandra", lambda: mirrored() == set(range(want)), 60, pipeline)
        values = {r["k"]: r["v"] for r in pg(stack.dsn, f"SELECT k, v FROM {target}")}
        assert values == {r.k: r.v for r in session.execute(f"SELECT k, v FROM {ks}.t")}
        for letter in (entry, section):
            rc, out = dlq(pipeline, "show", str(letter["id"]))
            assert out[0]["status"] == "replayed" and out[0]["result"].startswith("produced "), out
    finally:
        pipeline.stop()
        source.session.cluster.shutdown()  # type: ignore[attr-defined]
        drop_keyspace(session, stack.dsn, ks)
        cluster.shutdown()
