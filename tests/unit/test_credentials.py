"""The credentials keeper's decisions, with a fake Vault and a fake clock (no I/O): a lease is renewed once
``renew_at`` of its TTL has passed, replaced when Vault grants less than half the TTL (its max TTL is near) or
will not renew it, the old lease revoked a grace period later; a new KV version reaches Kafka's clients; a failure
is retried with the condition failing and the current login kept; nothing secret is in a Login's repr."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from cdcpipe import credentials, kafka_clients, vault
from cdcpipe.config import load_settings
from cdcpipe.credentials import Keeper, Resolved, merged
from cdcpipe.errors import CredentialsError
from cdcpipe.vault import Login


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


class FakeVault:
    def __init__(self, clock: Clock, max_ttl: float) -> None:
        self.clock, self.max_ttl = clock, max_ttl
        self.issued: list[Login] = []
        self.revoked: list[str] = []
        self.kv_version = 1
        self.fail_renewals = False
        self.born: dict[str, float] = {}

    def keep_token(self) -> None:
        pass

    def database(self, role: str) -> Login:
        n = len(self.issued) + 1
        login = Login(f"database:database/{role}", f"v-apply-{n}", f"pw-{n}", f"lease-{n}", f"lease-{n}",
                      self.clock.now + 10, True)
        self.born[f"lease-{n}"] = self.clock.now
        self.issued.append(login)
        return login

    def renew(self, login: Login, increment_s: int) -> Login:
        if self.fail_renewals:
            raise CredentialsError("Vault unreachable for the renewal: ConnectionError", retriable=True)
        assert login.lease_id is not None
        end = min(self.clock.now + increment_s, self.born[login.lease_id] + self.max_ttl)
        return replace(login, expires_at=end)

    def revoke(self, login: Login) -> None:
        assert login.lease_id is not None
        self.revoked.append(login.lease_id)

    def kv(self, path: str) -> Login:
        return Login(f"kv:secret/{path}", "kafka-user", f"kafka-pw-{self.kv_version}", str(self.kv_version))


class Health:
    def __init__(self) -> None:
        self.conditions: dict[str, str] = {}

    def ok(self, name: str) -> None:
        self.conditions[name] = "ok"

    def fail(self, name: str, reason: str) -> None:
        self.conditions[name] = reason


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(credentials, "time", c)
    monkeypatch.setattr(vault, "time", c)
    return c


def keeper(monkeypatch: pytest.MonkeyPatch, clock: Clock, max_ttl: float) -> tuple[Keeper, FakeVault, list[Any]]:
    monkeypatch.setenv("CDCPIPE_VAULT__URL", "http://127.0.0.1:1")
    monkeypatch.setenv("CDCPIPE_VAULT__TOKEN", "s.planted")
    monkeypatch.setenv("CDCPIPE_VAULT__DATABASE_ROLE", "apply")
    monkeypatch.setenv("CDCPIPE_VAULT__KAFKA_PATH", "cdcpipe/kafka")
    monkeypatch.setenv("CDCPIPE_VAULT__KV_REFRESH_S", "5")
    monkeypatch.setenv("CDCPIPE_POSTGRES__DSN", "postgresql://nobody@127.0.0.1/db")
    settings = load_settings()
    fake = FakeVault(clock, max_ttl)
    logins = {"postgres": fake.database("apply"), "kafka": fake.kv("cdcpipe/kafka")}
    rotations: list[Any] = []

    async def on_rotate(store: str, login: Login, s: Any) -> None:
        rotations.append((store, login.username, s.postgres.user, s.kafka.sasl_username))

    resolved = Resolved(merged(settings, logins), fake, logins)  # type: ignore[arg-type]
    return Keeper(resolved, on_rotate), fake, rotations


async def test_leases_are_renewed_then_replaced_and_the_old_one_revoked(monkeypatch: pytest.MonkeyPatch,
                                                                        clock: Clock) -> None:
    k, fake, rotations = keeper(monkeypatch, clock, max_ttl=25)
    monkeypatch.setattr(kafka_clients, "rotate", lambda u, p: 0)
    assert k.resolved.settings.postgres.user == "v-apply-1"
    for _ in range(60):  # one minute, a tick a second
        clock.now += 1
        await k.tick()
    # a 10 s lease renewed at 5 s of its life; once the max TTL (25 s) is too near, replaced before it runs out
    assert [r[1] for r in rotations if r[0] == "postgres"] == [f"v-apply-{n}" for n in range(2, len(fake.issued) + 1)]
    assert len(fake.issued) >= 3
    assert all(fake.born[f"lease-{n + 1}"] < fake.born[f"lease-{n}"] + 25 for n in range(1, len(fake.issued)))
    assert all(r[2] == r[1] for r in rotations if r[0] == "postgres")  # the settings handed over carry the login
    assert fake.revoked[:2] == ["lease-1", "lease-2"]  # each replaced lease revoked after the grace period
    assert k.resolved.logins["postgres"].remaining_s() > 0


async def test_a_new_kv_version_reaches_the_kafka_clients(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> None:
    k, fake, rotations = keeper(monkeypatch, clock, max_ttl=1000)
    handed: list[tuple[str, str]] = []
    monkeypatch.setattr(kafka_clients, "rotate", lambda u, p: handed.append((u, p)) or 0)
    clock.now += 6
    await k.tick()
    assert handed == [] and not [r for r in rotations if r[0] == "kafka"]
    fake.kv_version = 2
    clock.now += 6
    await k.tick()
    assert handed == [("kafka-user", "kafka-pw-2")]
    assert ("kafka", "kafka-user", "v-apply-1", "kafka-user") in rotations
    assert k.resolved.settings.kafka.sasl_password is not None
    assert k.resolved.settings.kafka.sasl_password.get_secret_value() == "kafka-pw-2"


async def test_a_failed_renewal_is_retried_and_shown(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> None:
    k, fake, _ = keeper(monkeypatch, clock, max_ttl=1000)
    health = Health()
    k.health = health
    fake.fail_renewals = True
    clock.now += 6  # past the renewal point, the lease still has 4 s: a failure is reported, not hidden
    stop = asyncio.Event()
    task = asyncio.create_task(k.run(stop))
    await asyncio.sleep(0.05)
    assert "Vault unreachable" in health.conditions["credentials"]
    assert "s.planted" not in health.conditions["credentials"] and "pw-1" not in health.conditions["credentials"]
    assert k.resolved.logins["postgres"].username == "v-apply-1"
    stop.set()
    await task


def test_no_secret_in_a_logins_repr() -> None:
    login = Login("database:database/apply", "v-user", "planted-password", "lease-9", "lease-9", 1.0, True)
    assert "planted-password" not in repr(login) and "lease-9" in login.version
