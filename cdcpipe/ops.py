"""Operator commands that talk to the real services: connectivity checks; and who an operator is.

``check`` answers "can cdcpipe, with these settings, reach everything it needs?" before any capture or apply
process is started.  Each probe returns a :class:`Probe`; none raises for an unreachable service.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import time
from dataclasses import dataclass

from cdcpipe import kafka_clients
from cdcpipe.config import Settings


@dataclass(frozen=True, slots=True)
class Probe:
    service: str
    ok: bool
    detail: str
    seconds: float


def probe_cassandra(settings: Settings) -> Probe:
    from cassandra.cluster import Cluster

    from cdcpipe.schema_source import cassandra_connect_error, cluster_options

    started = time.monotonic()
    cluster = None
    try:
        cluster = Cluster(**cluster_options(settings.cassandra))
        session = cluster.connect()
        row = session.execute("SELECT release_version, cluster_name, data_center FROM system.local").one()
        detail = f"Cassandra {row.release_version}, cluster {row.cluster_name!r}, dc {row.data_center!r}"
        return Probe("cassandra", True, detail, time.monotonic() - started)
    except Exception as exc:  # report, never raise: check lists every failing service
        err = cassandra_connect_error(settings.cassandra, exc)
        return Probe("cassandra", False, f"{type(err).__name__}: {err}", time.monotonic() - started)
    finally:
        if cluster is not None:
            cluster.shutdown()


def probe_kafka(settings: Settings) -> Probe:

    from cdcpipe.kafka_admin import kafka_reachable

    started = time.monotonic()
    try:
        reason = kafka_reachable(settings.kafka, 10.0)
        if reason is not None:
            return Probe("kafka", False, reason, time.monotonic() - started)
        meta = kafka_clients.admin(settings.kafka.client_config()).list_topics(timeout=10)
        detail = f"cluster {meta.cluster_id}, {len(meta.brokers)} broker(s), {len(meta.topics)} topic(s)"
        return Probe("kafka", True, detail, time.monotonic() - started)
    except Exception as exc:
        return Probe("kafka", False, f"{type(exc).__name__}: {exc}", time.monotonic() - started)


async def _probe_postgres(settings: Settings) -> str:
    from cdcpipe import pgconn

    conn = await pgconn.connect(settings, timeout=10)
    try:
        version = await conn.fetchval("SHOW server_version")
        db = await conn.fetchval("SELECT current_database()")
        tls = await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        return f"PostgreSQL {version}, database {db!r}" + (", TLS" if tls else "")
    finally:
        await conn.close()


def probe_postgres(settings: Settings) -> Probe:
    started = time.monotonic()
    if settings.postgres.dsn is None:
        return Probe("postgres", False, "postgres.dsn is not set (CDCPIPE_POSTGRES__DSN)", 0.0)
    try:
        detail = asyncio.run(_probe_postgres(settings))
        return Probe("postgres", True, detail, time.monotonic() - started)
    except Exception as exc:
        return Probe("postgres", False, f"{type(exc).__name__}: {exc}", time.monotonic() - started)


PROBES = {"cassandra": probe_cassandra, "kafka": probe_kafka, "postgres": probe_postgres}


def check(settings: Settings, services: list[str]) -> list[Probe]:
    """Probe each named service (all when empty), in a fixed order."""
    names = services or list(PROBES)
    return [PROBES[name](settings) for name in names]


def operator_name() -> str:
    """Who runs an operator command (recorded by ``erase`` and ``dlq``): the OS user, or the uid where the
    environment has no login name (a container's user without a passwd entry)."""
    try:
        return getpass.getuser()
    except Exception:  # no login name here
        return f"uid {os.getuid()}"
