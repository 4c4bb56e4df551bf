"""cdcpipe's own connections over the stack's TLS (``deploy/local/stack up --tls``): Cassandra through the driver's
SSL context, Kafka over SSL with a client certificate and over SASL_SSL with SCRAM, PostgreSQL verify-full with and
without a client certificate (the server says the session is TLS); an unrelated CA, or a wrong SCRAM password, is
a ConfigError in one line at once, and capture and apply stop at start with exit 2 and that line — no waiting as
for an outage."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cdcpipe import pgconn
from cdcpipe.config import Settings, load_settings
from cdcpipe.errors import ConfigError
from cdcpipe.kafka_admin import kafka_reachable
from cdcpipe.schema_source import connect_system_schema
from tests.support.processes import free_port
from tests.support.stack import ROOT

pytestmark = pytest.mark.timeout(120)


def stack(name: str) -> str:
    if os.environ.get("CDCPIPE_STACK_TLS") != "on":
        pytest.fail("the stack runs without TLS: deploy/local/stack up --tls", pytrace=False)
    return os.environ[f"CDCPIPE_STACK_{name}"]


def with_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return load_settings()


def test_cassandra(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    s = with_env(monkeypatch, CDCPIPE_CASSANDRA__TLS__ENABLED="true", CDCPIPE_CASSANDRA__TLS__CA_FILE=stack("TLS_CA"))
    source = connect_system_schema(s.cassandra)
    try:
        row = next(iter(source.session.execute("SELECT cluster_name FROM system.local")))
        assert row.cluster_name
    finally:
        source.session.cluster.shutdown()  # type: ignore[attr-defined]
    s = with_env(monkeypatch, CDCPIPE_CASSANDRA__TLS__CA_FILE=stack("TLS_OTHER_CA"))
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"^TLS to Cassandra at .*certificate was not accepted.*cassandra.tls"):
        connect_system_schema(s.cassandra)
    assert time.monotonic() - started < s.cassandra.connect_timeout_s + 5


def test_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    s = with_env(monkeypatch, CDCPIPE_KAFKA__BOOTSTRAP_SERVERS=stack("KAFKA_SASL_SSL"),
                 CDCPIPE_KAFKA__SECURITY_PROTOCOL="SASL_SSL", CDCPIPE_KAFKA__SASL_MECHANISM="SCRAM-SHA-512",
                 CDCPIPE_KAFKA__SASL_USERNAME=stack("KAFKA_SCRAM_USER"),
                 CDCPIPE_KAFKA__SASL_PASSWORD=stack("KAFKA_SCRAM_PASSWORD"),
                 CDCPIPE_KAFKA__TLS__ENABLED="true", CDCPIPE_KAFKA__TLS__CA_FILE=stack("TLS_CA"))
    assert kafka_reachable(s.kafka, 10) is None
    s = with_env(monkeypatch, CDCPIPE_KAFKA__SASL_PASSWORD="not-the-password")
    with pytest.raises(ConfigError, match=r"^SASL to Kafka at .*kafka.sasl_password"):
        kafka_reachable(s.kafka, 10)
    s = with_env(monkeypatch, CDCPIPE_KAFKA__SASL_PASSWORD=stack("KAFKA_SCRAM_PASSWORD"),
                 CDCPIPE_KAFKA__TLS__CA_FILE=stack("TLS_OTHER_CA"))
    with pytest.raises(ConfigError, match=r"^TLS to Kafka at .*kafka.tls.ca_file"):
        kafka_reachable(s.kafka, 10)
    monkeypatch.delenv("CDCPIPE_KAFKA__SASL_MECHANISM")
    monkeypatch.delenv("CDCPIPE_KAFKA__SASL_USERNAME")
    monkeypatch.delenv("CDCPIPE_KAFKA__SASL_PASSWORD")
    s = with_env(monkeypatch, CDCPIPE_KAFKA__BOOTSTRAP_SERVERS=stack("KAFKA_SSL"),
                 CDCPIPE_KAFKA__SECURITY_PROTOCOL="SSL", CDCPIPE_KAFKA__TLS__CA_FILE=stack("TLS_CA"),
                 CDCPIPE_KAFKA__TLS__CERT_FILE=stack("TLS_CLIENT_CERT"),
                 CDCPIPE_KAFKA__TLS__KEY_FILE=stack("TLS_CLIENT_KEY"))
    assert kafka_reachable(s.kafka, 10) is None


async def test_postgres(monkeypatch: pytest.MonkeyPatch) -> None:
    s = with_env(monkeypatch, CDCPIPE_POSTGRES__TLS__ENABLED="true", CDCPIPE_POSTGRES__TLS__CA_FILE=stack("TLS_CA"))
    conn = await pgconn.connect(s)
    try:
        assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is True
        assert await conn.fetchval("SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is None
    finally:
        await conn.close()
    s = with_env(monkeypatch, CDCPIPE_POSTGRES__TLS__CERT_FILE=stack("TLS_CLIENT_CERT"),
                 CDCPIPE_POSTGRES__TLS__KEY_FILE=stack("TLS_CLIENT_KEY"))
    pool = await pgconn.create_pool(s, min_size=1, max_size=1)
    try:
        assert await pool.fetchval("SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    finally:
        await pool.close()
    s = with_env(monkeypatch, CDCPIPE_POSTGRES__TLS__CA_FILE=stack("TLS_OTHER_CA"))
    with pytest.raises(ConfigError, match=r"^TLS to PostgreSQL: the server's certificate was not accepted"):
        await asyncio.wait_for(pgconn.connect(s), 15)


@pytest.mark.parametrize(("process", "store"), [("apply", "POSTGRES"), ("capture", "KAFKA")])
def test_processes_stop_at_start_on_a_wrong_ca(process: str, store: str, tmp_path: Path) -> None:
    env = {**os.environ, f"CDCPIPE_{store}__TLS__ENABLED": "true", f"CDCPIPE_{store}__TLS__CA_FILE":
           stack("TLS_OTHER_CA"), "CDCPIPE_OBSERVABILITY__HTTP_PORT": str(free_port())}
    if store == "KAFKA":
        env.update(CDCPIPE_KAFKA__BOOTSTRAP_SERVERS=stack("KAFKA_SSL"), CDCPIPE_KAFKA__SECURITY_PROTOCOL="SSL")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "cdcpipe", process], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"cdcpipe: TLS to {'PostgreSQL' if store == 'POSTGRES' else 'Kafka'}"), done.stderr
    assert time.monotonic() - started < 45
