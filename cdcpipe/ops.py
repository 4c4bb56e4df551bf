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

from cdcpipe.config import Settings


@dataclass(frozen=True, slots=True)
class Probe:
    service: str
    ok: bool
    detail: str
    seconds: float


def probe_cassandra(settings: Settings) -> Probe:
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import Cluster

    started = time.monotonic()
    cfg = settings.cassandra
    auth = None
    if cfg.username and cfg.password is not None:
        auth = PlainTextAuthProvider(cfg.username, cfg.password.get_secret_value())
    points = cfg.contact_points()
    cluster = Cluster(
        contact_points=[h for h, _ in points], port=points[0][1], auth_provider=auth,
        connect_timeout=cfg.connect_timeout_s, protocol_version=5,
    )
    try:
        session = cluster.connect()
        row = session.execute("SELECT release_version, cluster_name, data_center FROM system.local").one()
        detail = f"Cassandra {row.release_version}, cluster {row.cluster_name!r}, dc {row.data_center!r}"
        return Probe("cassandra", True, detail, time.monotonic() - started)
    except Exception as exc:  # report, never raise: check lists every failing service
        return Probe("cassandra", False, f"{type(exc).__name__}: {exc}", time.monotonic() - started)
    finally:
        cluster.shutdown()


def probe_kafka(settings: Settings) -> Probe:
    from confluent_kafka.admin import AdminClient

    started = time.monotonic()
    admin = AdminClient(settings.kafka.client_config())
    try:
        meta = admin.list_topics(timeout=10)
        detail = f"cluster {meta.cluster_id}, {len(meta.brokers)} broker(s), {len(meta.topics)} topic(s)"
        return Probe("kafka", True, detail, time.monotonic() - started)
    except Exception as exc:
        return Probe("kafka", False, f"{type(exc).__name__}: {exc}", time.monotonic() - started)


async def _probe_postgres(dsn: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        version = await conn.fetchval("SHOW server_version")
        db = await conn.fetchval("SELECT current_database()")
        return f"PostgreSQL {version}, database {db!r}"
    finally:
        await conn.close()


def probe_postgres(settings: Settings) -> Probe:
    started = time.monotonic()
    dsn = settings.postgres.dsn
    if dsn is None:
        return Probe("postgres", False, "postgres.dsn is not set (CDCPIPE_POSTGRES__DSN)", 0.0)
    try:
        detail = asyncio.run(_probe_postgres(dsn.get_secret_value()))
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
