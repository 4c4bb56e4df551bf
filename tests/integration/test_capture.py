"""capture against the real stack: every kind of write becomes the right event on Kafka, within about a second of
the commit-log sync; SIGTERM exits 0 quickly."""

from __future__ import annotations

import io
import json
import time
import uuid
from pathlib import Path

import fastavro
import pytest
from cassandra.cluster import Session

from cdcpipe.config import Settings
from cdcpipe.model import ChangeEvent, Op
from tests.support.capturekit import CaptureProcess, EventReader
from tests.support.processes import unique

pytestmark = pytest.mark.timeout(120)


def make_table(session: Session) -> tuple[str, str]:
    ks, table = unique("itcap"), "t"
    session.execute(f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    session.execute(f"CREATE TABLE {ks}.{table} (k int, c int, s int STATIC, v text, l list<int>, st set<text>, "
                    "m map<text, int>, PRIMARY KEY (k, c)) WITH cdc = true")
    return ks, table


def by(events: list[ChangeEvent], ts: int) -> list[ChangeEvent]:
    return [e for e in events if e.timestamp_micros == ts]


def test_every_kind_of_write_becomes_its_event(session: Session, settings: Settings, tmp_path: Path) -> None:
    ks, table = make_table(session)
    prefix = unique("itcap")
    cap = CaptureProcess(prefix, f"{ks}.*", tmp_path / "capture.log").start()
    reader = EventReader(settings.kafka.bootstrap_servers, prefix, f"{prefix}.{ks}.{table}")
    try:
        q = session.execute
        written: dict[int, float] = {}

        def w(ts: int, cql: str) -> None:
            q(cql.replace("TS", str(ts)))
            written[ts] = time.time()

        w(1000, f"INSERT INTO {ks}.{table} (k, c, s, v, l) VALUES (1, 1, 10, 'a', [1, 2]) USING TIMESTAMP TS")
        w(2000, f"UPDATE {ks}.{table} USING TIMESTAMP TS SET v = 'b' WHERE k = 1 AND c = 2")
        w(3000, f"DELETE FROM {ks}.{table} USING TIMESTAMP TS WHERE k = 1 AND c = 1")
        w(4000, f"DELETE FROM {ks}.{table} USING TIMESTAMP TS WHERE k = 2")
        w(5000, f"DELETE FROM {ks}.{table} USING TIMESTAMP TS WHERE k = 3 AND c > 5 AND c <= 9")
        w(6000, f"UPDATE {ks}.{table} USING TIMESTAMP TS SET l = l + [3], st = st - {{'x'}} WHERE k = 1 AND c = 3")
        w(7000, f"INSERT INTO {ks}.{table} (k, c, v) VALUES (4, 1, 't') USING TTL 100 AND TIMESTAMP TS")
        w(8000, f"UPDATE {ks}.{table} USING TIMESTAMP TS SET s = 5 WHERE k = 5")
        reader.poll_until(lambda ev: len(ev) >= 9, 60)  # capture is up and caught up: now measure latency
        w(9000, f"UPDATE {ks}.{table} USING TIMESTAMP TS SET m['a'] = 1, v = null WHERE k = 1 AND c = 4")
        events = reader.poll_until(lambda ev: len(ev) >= 10, 60)
        assert len(events) == 10, events

        static, row = sorted(by(events, 1000), key=lambda e: e.static, reverse=True)
        assert static.static and static.op is Op.UPSERT and static.clustering == ()
        assert static.columns[0].name == "s" and static.columns[0].static and static.columns[0].cells[0].value == 10
        assert row.op is Op.UPSERT and row.partition_key == (1,) and row.clustering == (1,)
        assert row.liveness is not None and row.liveness.timestamp == 1000
        cols = {c.name: c for c in row.columns}
        assert cols["v"].cells[0].value == "a" and cols["v"].cells[0].timestamp == 1000
        assert cols["l"].complex_deletion is not None and cols["l"].complex_deletion.timestamp == 999
        assert [c.value for c in cols["l"].cells] == [1, 2] and all(isinstance(c.path, uuid.UUID)
                                                                    for c in cols["l"].cells)
        assert "m" not in cols and "st" not in cols  # not written: absent, not null

        [upd] = by(events, 2000)
        assert upd.op is Op.UPSERT and upd.liveness is None and upd.clustering == (2,)
        assert [(c.name, c.cells[0].value) for c in upd.columns] == [("v", "b")]
        [rd] = by(events, 3000)
        assert rd.op is Op.ROW_DELETE and rd.clustering == (1,) and rd.deletion is not None
        [pd] = by(events, 4000)
        assert pd.op is Op.PARTITION_DELETE and pd.partition_key == (2,) and pd.deletion is not None
        assert pd.deletion.timestamp == 4000
        [rg] = by(events, 5000)
        assert rg.op is Op.RANGE_DELETE and rg.partition_key == (3,)
        assert rg.range_start is not None and rg.range_start.values == (5,) and not rg.range_start.inclusive
        assert rg.range_end is not None and rg.range_end.values == (9,) and rg.range_end.inclusive
        [coll] = by(events, 6000)
        cols = {c.name: c for c in coll.columns}
        assert cols["l"].complex_deletion is None and [c.value for c in cols["l"].cells] == [3]
        assert cols["st"].cells[0].deleted and cols["st"].cells[0].path == "x"
        [ttl] = by(events, 7000)
        assert ttl.liveness is not None and ttl.liveness.ttl == 100 and ttl.liveness.expires_at is not None
        assert ttl.columns[0].cells[0].ttl == 100
        assert abs(ttl.columns[0].cells[0].expires_at - (written[7000] + 100)) < 5  # type: ignore[operator]
        [st] = by(events, 8000)
        assert st.static and st.partition_key == (5,) and st.columns[0].static
        [mp] = by(events, 9000)
        cols = {c.name: c for c in mp.columns}
        assert cols["m"].cells[0].path == "a" and cols["m"].cells[0].value == 1
        assert cols["v"].cells[0].deleted and cols["v"].cells[0].value is None

        # every change of a partition lands on one Kafka partition, keyed by the partition key
        parts = {}
        for e, key, part in zip(reader.events, reader.keys, reader.partitions, strict=True):
            assert key == e.partition_key[0].to_bytes(4, "big")
            assert parts.setdefault(key, part) == part
        # latency: commit-log sync every 500 ms, then well under a second to a committed transaction
        latency = [reader.arrivals[i] - written[e.timestamp_micros] for i, e in enumerate(reader.events)
                   if e.timestamp_micros == 9000]
        print(f"LATENCY last write -> committed event: {latency[0]:.3f}s")
        assert latency[0] < 2.0

        # a plain fastavro consumer needs only the JSON published on <prefix>.schemas
        i = next(i for i, e in enumerate(reader.events) if e.timestamp_micros == 2000)
        raw = reader.raw[i]
        schema = reader.schemas.get(raw[2:10])
        assert schema is not None
        plain = fastavro.parse_schema(json.loads(schema.to_json()))
        rec = fastavro.schemaless_reader(io.BytesIO(raw[10:]), plain, None)
        assert (rec["op"], rec["partition_key"], rec["timestamp_micros"]) == ("upsert", {"k": 1}, 2000)
        assert rec["columns"]["v"]["cells"][0]["value"] == "b" and rec["columns"]["l"] is None

        rc, took = cap.terminate()
        assert rc == 0 and took < 10, (rc, took)
    finally:
        cap.kill()
        reader.close()
        session.execute(f"DROP KEYSPACE IF EXISTS {ks}")
