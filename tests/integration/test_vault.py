"""Credentials from the stack's Vault (OpenBao) against its real PostgreSQL: an AppRole login reads a leased
PostgreSQL login and KV secrets; while a pool writes without pause the keeper renews the lease and replaces it
several times (short TTLs) — every write lands, new connections use the new login, what is created is owned by the
owner role, replaced logins are revoked — and a new KV version is picked up; refusals are told in one line that
names the path and holds no secret."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest

from cdcpipe import credentials, kafka_clients, pgconn
from cdcpipe.config import Settings
from cdcpipe.credentials import Keeper
from cdcpipe.errors import CredentialsError
from cdcpipe.vault import Login
from tests.support.vaultkit import Provisioned, provision, settings_with

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def vault(settings: Settings) -> Any:
    made = provision(settings.require("postgres.dsn").get_secret_value(), ttl="4s", max_ttl="8s")
    yield made
    made.drop()


async def test_the_postgres_login_rotates_under_writes(vault: Provisioned, monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings_with(monkeypatch, vault.env(CDCPIPE_VAULT__KAFKA_PATH=f"{vault.tag}/kafka",
                                             CDCPIPE_VAULT__KV_REFRESH_S="1", CDCPIPE_VAULT__RENEW_AT="0.5"))
    monkeypatch.setattr(credentials, "REVOKE_GRACE_S", 3.0)
    handed: list[tuple[str, str]] = []
    monkeypatch.setattr(kafka_clients, "rotate", lambda u, p: handed.append((u, p)) or 0)
    resolved = await asyncio.to_thread(credentials.resolve, s)
    first = resolved.logins["postgres"]
    assert first.username.startswith("v-") and resolved.settings.postgres.user == first.username
    pool = await pgconn.create_pool(resolved.settings, min_size=2, max_size=3)

    async def rotated(store: str, login: Login, settings: Settings) -> None:
        if store == "postgres":
            pool.set_connect_args(**pgconn.connect_kwargs(settings))
            await pool.expire_connections()

    stop = asyncio.Event()
    keeper = asyncio.create_task(Keeper(resolved, rotated).run(stop))
    users: set[str] = set()
    written = 0
    try:
        await pool.execute("CREATE TABLE writes (n int PRIMARY KEY, who text NOT NULL)")
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and len(users) < 4:
            async with pool.acquire() as conn, conn.transaction():
                who = await conn.fetchval("SELECT session_user")
                await conn.execute("INSERT INTO writes VALUES ($1, $2)", written, who)
            written += 1
            users.add(who)
            await asyncio.sleep(0.02)
            if written == 50:
                vault.put_kv("kafka", "kafka-user-2", "kafka-rotated-password")
        assert len(users) >= 4, f"logins seen: {users}"  # the first and three replacements
        assert await pool.fetchval("SELECT count(*) FROM writes") == written  # not one write lost
        assert await pool.fetchval("SELECT tableowner FROM pg_tables WHERE tablename = 'writes'") == vault.owner
        assert ("kafka-user-2", "kafka-rotated-password") in handed
    finally:
        stop.set()
        await keeper
        await pool.close()
    conn = await asyncpg.connect(vault.reader_dsn)
    try:
        deadline = time.monotonic() + 20  # replaced logins are revoked (Vault drops their role)
        while (left := await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1",
                                           first.username)) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert left == 0
    finally:
        await conn.close()


def test_refusals_name_the_path_and_hold_no_secret(vault: Provisioned, monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings_with(monkeypatch, vault.env(CDCPIPE_VAULT__KAFKA_PATH="elsewhere/kafka"))
    with pytest.raises(CredentialsError) as got:
        credentials.resolve(s)
    assert not got.value.retriable and "secret/elsewhere/kafka" in str(got.value)
    assert "permission denied" in str(got.value) and vault.secret_id not in str(got.value)
    s = settings_with(monkeypatch, vault.env(CDCPIPE_VAULT__SECRET_ID="not-the-secret-id"))
    with pytest.raises(CredentialsError) as got:
        credentials.resolve(s)
    assert not got.value.retriable and "approle login" in str(got.value)
    assert "not-the-secret-id" not in str(got.value)
