#!/usr/bin/env python3
"""The peer of the apply bench: the Debezium JDBC sink connector in Kafka Connect standalone, fed the rows of
``bench/apply.py``'s ``make_rows`` and measured the way apply is.

One run (:func:`run_peer`):

1. the jars: the Kafka Connect worker (``bench/peer/connect/pom.xml``) and the connector as a plugin directory
   (``bench/peer/plugin/pom.xml``), resolved by Maven from Central once into the stack's cache (offline after);
2. a fresh topic of ``partitions`` partitions holding one Debezium change event per row (``JsonConverter`` with
   schemas: the envelope a Debezium source writes, the Cassandra connector's types; keyed by a struct of the
   primary key), then one marker event per partition (a row of key ``-1 - partition``): the sink has written
   everything once it has written the markers.  ``copies=3`` is the duplicate-heavy variant: every event is sent
   three times, as the captures of three replicas (RF=3) would, each copy stream lagging by up to ``SPREAD``
   events, so a row's copies are rarely adjacent;
3. a fresh PostgreSQL schema with the 10-column table of ``bench/apply.py`` (same types, primary key ``id``), and
   ``ConnectStandalone`` with the connector at its defaults (batch.size 500, no reduction buffer) plus what the
   task needs: ``insert.mode=upsert``, ``primary.key.mode=record_key``, ``tasks.max``;
4. measured while it runs (polled every ``POLL_S``): events/s from the first row visible in PostgreSQL to the last
   marker (steady state) and from the JVM's start; CPU seconds of the JVM and of PostgreSQL (all its processes, the
   stack's server is local) per event; the JVM's peak RSS (``VmHWM``).  Then the table must hold exactly the
   generated rows, every value compared;
5. the JVM is stopped, and its schema, topic and consumer group deleted.

``main`` runs it for each ``--tasks`` value and ends with
``RESULT peer_per_s=... peer_from_start_per_s=... peer_jvm_us=... peer_pg_us=... peer_rss_mb=...`` (the
tasks.max 1 run).  Run it with the stack up: ``eval "$(deploy/local/stack env)"; .venv/bin/python
bench/peer_jdbc.py --events 200000 --tasks 1,4`` (``--copies 3`` for the duplicate-heavy variant).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import importlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
PEER = BENCH / "peer"
CACHE = Path(os.environ.get("CDCPIPE_STACK_CACHE", ROOT / ".stack" / "cache")).resolve()
JARS = CACHE / "peer-jdbc"
for _p in (str(ROOT), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import asyncpg  # noqa: E402
from confluent_kafka import KafkaError, KafkaException, Producer  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402
from confluent_kafka.cimpl import NewTopic  # noqa: E402

Row = tuple[Any, ...]
POLL_S = 0.05
SPREAD = 3000  # events a replica's copy stream lags by, at most (copies > 1)
CHUNK = 500  # events that keep one lag (a commit-log segment's worth, roughly)
# Kafka's bin/connect-standalone.sh (KAFKA_HEAP_OPTS, KAFKA_JVM_PERFORMANCE_OPTS)
JVM_OPTS = ("-Xms256M", "-Xmx2G", "-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent", "-XX:MaxInlineLevel=15",
            "-Djava.awt.headless=true")
_EPOCH = datetime.datetime(1970, 1, 1)
_MS = datetime.timedelta(milliseconds=1)


def _bench_module(name: str) -> ModuleType:
    """``bench/apply.py`` (or ``tests.support.topics``), loaded by name: also when ``bench/apply.py`` runs as the
    main script, and without mypy checking those modules (they are not in its ``packages``)."""
    main = sys.modules.get("__main__")
    if name == "apply" and Path(getattr(main, "__file__", "") or "").resolve() == BENCH / "apply.py":
        assert main is not None
        return main
    return importlib.import_module(name)


@dataclass(frozen=True, slots=True)
class PeerResult:
    """One run of the peer.  Rates count events delivered (``rows * copies``; not the markers)."""

    tasks: int
    copies: int
    rows: int
    events: int
    per_s: float  # from the first row visible in PostgreSQL to the last marker
    from_start_per_s: float  # from the JVM's start to the last marker
    jvm_us: float  # CPU µs per event: the JVM
    pg_us: float  # CPU µs per event: PostgreSQL, all its processes
    rss_mb: float  # the JVM's peak RSS

    def line(self) -> str:
        return (f"peer tasks={self.tasks} copies={self.copies}: {self.per_s:.0f}/s steady ({self.from_start_per_s:.0f}"
                f"/s from JVM start), JVM {self.jvm_us:.1f} µs + PostgreSQL {self.pg_us:.1f} µs CPU per event, "
                f"peak RSS {self.rss_mb:.0f} MB; {self.events} events into {self.rows} rows")


# --------------------------------------------------------------------------- jars


def resolve_jars() -> tuple[Path, Path]:
    """(the worker's classpath folder, the ``plugin.path`` folder), copied from Maven Central by ``mvn`` into
    ``JARS`` on first use; offline once a marker there holds the digest of ``bench/peer``'s Maven files."""
    files = (PEER / "settings.xml", PEER / "connect" / "pom.xml", PEER / "plugin" / "pom.xml")
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    worker, plugins, marker = JARS / "connect-lib", JARS / "plugins", JARS / ".resolved"
    if marker.exists() and marker.read_text().strip() == digest:
        return worker, plugins
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("mvn not found on PATH")
    for d in (worker, plugins):
        shutil.rmtree(d, ignore_errors=True)
    JARS.mkdir(parents=True, exist_ok=True)
    log = JARS / "mvn.log"
    print(f"resolving the peer's jars with Maven (first run only; log {log})", flush=True)
    with log.open("w") as out:
        for pom, into in ((files[1], worker), (files[2], plugins / "debezium-jdbc")):
            done = subprocess.run(
                [mvn, "-B", "-q", "-s", str(files[0]), "-f", str(pom), f"-Dmaven.repo.local={CACHE / 'm2'}",
                 "dependency:copy-dependencies", f"-DoutputDirectory={into}", "-DincludeScope=runtime"],
                stdout=out, stderr=subprocess.STDOUT, check=False)
            if done.returncode != 0 or not any(into.glob("*.jar")):
                raise RuntimeError(f"mvn could not resolve {pom}: {_tail(log)}")
    marker.write_text(digest + "\n")
    return worker, plugins


# --------------------------------------------------------------------------- events


def _field(name: str, kind: str, optional: bool = True, logical: str | None = None) -> dict[str, Any]:
    f: dict[str, Any] = {"type": kind, "optional": optional, "field": name}
    if logical is not None:
        f.update(name=logical, version=1)
    return f


# the Debezium Cassandra connector's types: timestamp = io.debezium.time.Timestamp (ms), uuid = io.debezium.data.Uuid
_COLUMNS = [_field("id", "int64", False), _field("c1", "int32"), _field("c2", "string"), _field("c3", "double"),
            _field("c4", "int64"), _field("c5", "boolean"), _field("c6", "int64", logical="io.debezium.time.Timestamp"),
            _field("c7", "string", logical="io.debezium.data.Uuid"), _field("c8", "string"), _field("c9", "int32")]
_ROW_SCHEMA = {"type": "struct", "optional": True, "name": "peer.bench.t10.Value", "fields": _COLUMNS}
_SOURCE = [_field("version", "string", False), _field("connector", "string", False), _field("name", "string", False),
           _field("ts_ms", "int64", False), _field("snapshot", "string"), _field("db", "string", False),
           _field("table", "string", False), _field("cluster", "string", False), _field("file", "string", False),
           _field("pos", "int32", False)]
_VALUE_SCHEMA = {"type": "struct", "optional": False, "name": "peer.bench.t10.Envelope", "version": 1, "fields": [
    {**_ROW_SCHEMA, "field": "before"}, {**_ROW_SCHEMA, "field": "after"},
    {"type": "struct", "optional": False, "name": "io.debezium.connector.cassandra.Source", "field": "source",
     "fields": _SOURCE},
    _field("op", "string", False), _field("ts_ms", "int64")]}
_KEY_SCHEMA = {"type": "struct", "optional": False, "name": "peer.bench.t10.Key", "fields": [_COLUMNS[0]]}
_VALUE_HEAD = '{"schema":' + json.dumps(_VALUE_SCHEMA, separators=(",", ":")) + ',"payload":'
_KEY_HEAD = '{"schema":' + json.dumps(_KEY_SCHEMA, separators=(",", ":")) + ',"payload":{"id":'
_TS_MS = 1_700_000_000_000


def event_key(key: int) -> bytes:
    return f"{_KEY_HEAD}{key}}}}}".encode()


def event_value(row: Row, i: int) -> bytes:
    """The Debezium change event (an insert, ``op`` = c) that writes ``row``; ``i`` = its position in the stream."""
    after = dict(zip(("id", "c1", "c2", "c3", "c4", "c5"), row[:6], strict=True))
    after.update(c6=(row[6] - _EPOCH) // _MS, c7=str(row[7]), c8=row[8], c9=row[9])
    source = {"version": "3.6.0.Final", "connector": "cassandra", "name": "peer", "ts_ms": _TS_MS + i // 100,
              "snapshot": "false", "db": "bench", "table": "t10", "cluster": "bench",
              "file": f"CommitLog-7-{i >> 16}.log", "pos": i & 0xFFFF}
    payload = {"before": None, "after": after, "source": source, "op": "c", "ts_ms": _TS_MS + i // 100}
    return (_VALUE_HEAD + json.dumps(payload, separators=(",", ":")) + "}").encode()


def marker_row(partition: int) -> Row:
    return (-1 - partition, 0, "end", 0.0, 0, False, _EPOCH, uuid.UUID(int=0), "end", 0)


def delivery_order(n: int, copies: int, seed: int = 11) -> list[int]:
    """Row indexes in the order their events reach the topic: each once for ``copies`` = 1.  Else each ``copies``
    times: every copy stream has all events in order, by chunks of ``CHUNK`` events that each lag by a random
    0..``SPREAD`` events (the captures of ``copies`` replicas, each behind the writes by its own varying delay)."""
    if copies == 1:
        return list(range(n))
    rng = random.Random(seed)
    arrivals: list[tuple[float, int]] = []
    for _ in range(copies):
        lag = 0.0
        for i in range(n):
            if i % CHUNK == 0:
                lag = rng.uniform(0, SPREAD)
            arrivals.append((i + lag, i))
    arrivals.sort()
    return [i for _, i in arrivals]


def produce(rows: Sequence[Row], topic: str, partitions: int, kafka: dict[str, Any], copies: int) -> int:
    """Create ``topic`` and send it the events of ``rows`` (``copies`` times each) and one marker per partition.
    Returns the number of row events sent."""
    admin = AdminClient(kafka)
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(30)
    producer = Producer({**kafka, "linger.ms": 50, "batch.size": 1_000_000, "compression.type": "lz4",
                         "queue.buffering.max.messages": 1_000_000})

    def send(key: bytes, value: bytes, partition: int = -1) -> None:
        while True:
            try:
                producer.produce(topic, key=key, value=value, partition=partition)
                return
            except BufferError:
                producer.poll(0.1)

    order = delivery_order(len(rows), copies)
    for seq, i in enumerate(order):
        send(event_key(rows[i][0]), event_value(rows[i], seq))  # same key, same partition
        if seq % 10_000 == 0:
            producer.poll(0)
    for p in range(partitions):
        row = marker_row(p)
        send(event_key(row[0]), event_value(row, len(order) + p), p)
    if producer.flush(120) != 0:
        raise RuntimeError(f"could not deliver every event to {topic}")
    return len(order)


# --------------------------------------------------------------------------- Kafka Connect


def _properties(path: Path, props: dict[str, str | int]) -> Path:
    def esc(v: str | int) -> str:
        return str(v).replace("\\", "\\\\").replace("\n", "\\n")
    path.write_text("".join(f"{k}={esc(v)}\n" for k, v in props.items()))
    return path


def _jdbc(dsn: str) -> tuple[str, str, str]:
    """(JDBC URL, user, password) of a ``postgresql://`` DSN."""
    u = urlsplit(dsn)
    url = f"jdbc:postgresql://{u.hostname}:{u.port or 5432}{u.path}" + (f"?{u.query}" if u.query else "")
    return url, unquote(u.username or ""), unquote(u.password or "")


def connect_files(workdir: Path, *, name: str, topic: str, table: str, tasks: int, kafka: dict[str, Any],
                  dsn: str, plugins: Path) -> tuple[Path, Path]:
    """(worker.properties, connector.properties) of one run."""
    if str(kafka.get("security.protocol", "PLAINTEXT")).upper() != "PLAINTEXT":
        raise ValueError("the peer bench speaks PLAINTEXT to Kafka only")
    worker = _properties(workdir / "worker.properties", {  # Kafka's config/connect-standalone.properties
        "bootstrap.servers": kafka["bootstrap.servers"],
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "key.converter.schemas.enable": "true", "value.converter.schemas.enable": "true",
        "offset.storage.file.filename": str(workdir / "connect.offsets"), "offset.flush.interval.ms": 10000,
        "plugin.path": str(plugins), "listeners": "http://127.0.0.1:0"})
    url, user, password = _jdbc(dsn)
    connector = _properties(workdir / "connector.properties", {
        "name": name, "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector", "tasks.max": tasks,
        "topics": topic, "connection.url": url, "connection.username": user, "connection.password": password,
        "insert.mode": "upsert", "primary.key.mode": "record_key", "schema.evolution": "none",
        "collection.name.format": table, "batch.size": 500})
    return worker, connector


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home, "bin", "java")) if home else shutil.which("java")
    if not found:
        raise RuntimeError("java not found (JAVA_HOME or PATH)")
    return found


def _tail(log: Path, lines: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _delete_group(kafka: dict[str, Any], group: str) -> None:
    admin = AdminClient(kafka)  # kept referenced until every future is done
    for f in admin.delete_consumer_groups([group], request_timeout=30).values():
        try:
            f.result(60)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.GROUP_ID_NOT_FOUND:
                raise


# --------------------------------------------------------------------------- one run


def _expected(rows: Sequence[Row]) -> dict[int, Row]:
    return {r[0]: (*r[:6], r[6].replace(tzinfo=datetime.UTC), *r[7:]) for r in rows}


async def _verify(conn: Any, table: str, rows: Sequence[Row], partitions: int) -> None:
    """The table holds exactly ``rows`` (every value compared) and the markers."""
    got = await conn.fetch(f"SELECT * FROM {table} WHERE id > 0")
    if len(got) != len(rows):
        raise RuntimeError(f"the peer wrote {len(got)} rows for {len(rows)}")
    expected = _expected(rows)
    wrong = [tuple(r) for r in got
             if (*tuple(r)[:7], uuid.UUID(str(r[7])), *tuple(r)[8:]) != expected.get(r[0])]
    if wrong:
        raise RuntimeError(f"the peer wrote {len(wrong)} rows with other values, e.g. {wrong[0]} for "
                           f"{expected.get(wrong[0][0])}")
    markers = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE id < 0")
    if markers != partitions:
        raise RuntimeError(f"{markers} markers in {table} for {partitions} partitions")


async def run_peer(rows: Sequence[Row], *, partitions: int, tasks: int, kafka_conf: dict[str, Any], dsn: str,
                   copies: int = 1, timeout_s: float | None = None, log_dir: Path | None = None) -> PeerResult:
    """Produce ``rows`` (``copies`` times each) into a fresh topic of ``partitions`` partitions and measure the
    Debezium JDBC sink with ``tasks`` tasks writing them into a fresh table; everything it made is removed after.
    Raises RuntimeError if it fails, does not finish within ``timeout_s`` or writes other rows than ``rows``.
    The worker's log is kept in ``log_dir`` if given (and always when the run fails)."""
    bench_apply, topics = _bench_module("apply"), _bench_module("tests.support.topics")
    worker_cp, plugins = await asyncio.to_thread(resolve_jars)
    run = f"peer{uuid.uuid4().hex[:8]}"
    topic, schema, name = f"{run}.bench.t10", f"{run}_bench", f"{run}-jdbc-sink"
    table = f'"{schema}".t10'
    workdir = Path(tempfile.mkdtemp(prefix=f"{run}-"))
    log = workdir / "connect.log"
    conn = await asyncpg.connect(dsn)
    proc: subprocess.Popen[bytes] | None = None
    ok = False
    try:
        t = time.perf_counter()
        events = await asyncio.to_thread(produce, rows, topic, partitions, kafka_conf, copies)
        print(f"  produced {events} events (+{partitions} markers) to {topic} ({partitions} partitions) in "
              f"{time.perf_counter() - t:.1f} s", flush=True)
        cols = ", ".join(f"{c} {ty}" for c, ty in zip(bench_apply.COLUMNS, bench_apply.PG_TYPES, strict=True))
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f"CREATE TABLE {table} ({cols}, PRIMARY KEY (id))")
        worker, connector = connect_files(workdir, name=name, topic=topic, table=f"{schema}.t10", tasks=tasks,
                                          kafka=kafka_conf, dsn=dsn, plugins=plugins)
        postmaster = await bench_apply.postmaster_pid(dsn)
        limit = timeout_s if timeout_s is not None else 90 + events / 2000
        pg0 = bench_apply.pg_cpu_s(postmaster)
        t0 = time.perf_counter()
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [java(), *JVM_OPTS, "-Duser.timezone=UTC", f"-Dlog4j2.configurationFile={PEER / 'log4j2.properties'}",
                 "-cp", f"{worker_cp}/*", "org.apache.kafka.connect.cli.ConnectStandalone", str(worker),
                 str(connector)], stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
        first: tuple[float, int] | None = None
        peak, jvm_cpu = 0, 0.0
        while True:
            await asyncio.sleep(POLL_S)
            if proc.poll() is not None:
                raise RuntimeError(f"Kafka Connect exited with {proc.returncode}:\n{_tail(log)}")
            peak = max(peak, bench_apply._vm(proc.pid, "VmHWM"))
            jvm_cpu = bench_apply._cpu_s(proc.pid)
            now = time.perf_counter()
            if first is None:
                seen = int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
                if seen:
                    first = (now, seen)  # early on nearly all first copies: events ~ rows
            if first is not None and await conn.fetchval(f"SELECT count(*) FROM {table} WHERE id < 0") == partitions:
                break
            if now - t0 > limit:
                raise RuntimeError(f"the peer did not finish within {limit:.0f} s:\n{_tail(log)}")
        pg_cpu = bench_apply.pg_cpu_s(postmaster) - pg0
        assert first is not None
        steady = (events - first[1]) / (now - first[0]) if now > first[0] else events / (now - t0)
        await _verify(conn, table, rows, partitions)
        ok = True
        return PeerResult(tasks, copies, len(rows), events, steady, events / (now - t0), jvm_cpu / events * 1e6,
                          pg_cpu / events * 1e6, peak / 2**20)
    finally:
        if proc is not None:
            _stop(proc)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
        await asyncio.to_thread(lambda: topics.delete_topics(kafka_conf, topics.topics_with_prefix(kafka_conf, [run])))
        await asyncio.to_thread(_delete_group, kafka_conf, f"connect-{name}")
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(log, log_dir / f"{run}-tasks{tasks}-copies{copies}.log")
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"  kept the failed run's files in {workdir}", flush=True)


# --------------------------------------------------------------------------- main


async def amain(args: argparse.Namespace) -> int:
    from cdcpipe.config import load_settings

    settings = load_settings()
    dsn = settings.require("postgres.dsn").get_secret_value()
    kafka = settings.kafka.client_config()
    rows = _bench_module("apply").make_rows(args.events)
    results: list[PeerResult] = []
    for tasks in args.tasks:
        results.append(await run_peer(rows, partitions=args.partitions, tasks=tasks, kafka_conf=kafka, dsn=dsn,
                                      copies=args.copies, log_dir=args.log_dir))
        print(results[-1].line(), flush=True)
    main_run = next((r for r in results if r.tasks == 1), results[0])
    print(f"RESULT peer_per_s={main_run.per_s:.0f} peer_from_start_per_s={main_run.from_start_per_s:.0f} "
          f"peer_jvm_us={main_run.jvm_us:.1f} peer_pg_us={main_run.pg_us:.1f} peer_rss_mb={main_run.rss_mb:.0f}"
          + (f" tasks={main_run.tasks}" if main_run.tasks != 1 else "")
          + (f" copies={main_run.copies}" if main_run.copies != 1 else ""))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=500_000, help="rows (distinct keys) to write")
    parser.add_argument("--tasks", type=lambda s: [int(t) for t in s.split(",")], default=[1, 4],
                        help="tasks.max of each run, comma-separated (default 1,4)")
    parser.add_argument("--copies", type=int, choices=(1, 3), default=1,
                        help="events per row: 3 = every change delivered three times (RF=3 replicas)")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the event topic")
    parser.add_argument("--log-dir", type=Path, help="keep the Kafka Connect worker's log of each run here")
    return asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
