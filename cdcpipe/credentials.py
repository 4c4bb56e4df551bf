"""Credentials from Vault, merged into the settings, and kept valid while a process runs.

:func:`resolve` logs in (``vault.*``) and reads what is configured — Cassandra's login from KV v2
(``vault.cassandra_path``), Kafka's SASL login from KV v2 (``vault.kafka_path``), a leased PostgreSQL login from the
database secrets engine (``vault.database_role``) — and returns the settings with them in place
(``cassandra.username/password``, ``kafka.sasl_username/sasl_password``, ``postgres.user/password``), so every
part connects as it always does.  Every command resolves once; a long-lived process also runs a :class:`Keeper`:

- the PostgreSQL lease is renewed once ``vault.renew_at`` of its TTL has gone by; when the renewed lease would not
  outlive the next renewal with a margin (the role's max TTL is near) or Vault will not renew it, a new login is
  taken and handed to
  ``on_rotate`` — apply points its pool at it and retires the connections of the old one as they are released, so
  no transaction is cut — and the old lease is revoked a grace period later;
- the KV secrets are re-read every ``vault.kv_refresh_s``; a new version reaches every Kafka client of the process
  (:func:`cdcpipe.kafka_clients.rotate`) or every Cassandra connection opened from then on
  (:func:`cdcpipe.schema_source.rotate_login`), and ``on_rotate``;
- the login token is renewed (or the login done again) before it expires;
- a failure is retried with backoff (1 s → 30 s) and shown as the ``credentials`` readiness condition, with how long
  the current PostgreSQL login has left; ``cdcpipe_credential_*`` metrics count rotations and failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import Counter, Gauge
from pydantic import SecretStr

from cdcpipe import kafka_clients
from cdcpipe.config import Settings
from cdcpipe.errors import CredentialsError
from cdcpipe.schema_source import rotate_login
from cdcpipe.vault import Login, Vault

log = structlog.get_logger(__name__)
ROTATIONS = Counter("cdcpipe_credential_rotations", "Credentials replaced while running, by store", ["store"])
FAILURES = Counter("cdcpipe_credential_failures", "Failed renewals, rotations or reads of credentials, by store",
                   ["store"])
EXPIRES = Gauge("cdcpipe_credential_expiry_seconds", "Seconds left on the current leased login, by store", ["store"])
REVOKE_GRACE_S = 30.0
TICK_S = 1.0
Rotate = Callable[[str, Login, Settings], Awaitable[None]]


@dataclass(slots=True)
class Resolved:
    """What :func:`resolve` read: ``settings`` with the logins in place, the client, and the logins by store
    (``cassandra``, ``kafka``, ``postgres``)."""

    settings: Settings
    vault: Vault
    logins: dict[str, Login] = field(default_factory=dict)

    def close(self) -> None:
        """Revoke the leased logins (a one-shot command is done with them)."""
        for login in self.logins.values():
            self.vault.revoke(login)


def merged(settings: Settings, logins: dict[str, Login]) -> Settings:
    """``settings`` with each store's login from ``logins``."""
    update: dict[str, Any] = {}
    if (c := logins.get("cassandra")) is not None:
        update["cassandra"] = settings.cassandra.model_copy(update={"username": c.username,
                                                                    "password": SecretStr(c.password)})
    if (k := logins.get("kafka")) is not None:
        update["kafka"] = settings.kafka.model_copy(update={"sasl_username": k.username,
                                                            "sasl_password": SecretStr(k.password)})
    if (p := logins.get("postgres")) is not None:
        update["postgres"] = settings.postgres.model_copy(update={"user": p.username,
                                                                  "password": SecretStr(p.password)})
    return settings.model_copy(update=update)


def _read(vault: Vault, settings: Settings) -> dict[str, Login]:
    cfg = settings.vault
    logins: dict[str, Login] = {}
    if cfg.cassandra_path:
        logins["cassandra"] = vault.kv(cfg.cassandra_path)
    if cfg.kafka_path:
        logins["kafka"] = vault.kv(cfg.kafka_path)
    if cfg.database_role:
        logins["postgres"] = vault.database(cfg.database_role)
    return logins


def resolve(settings: Settings) -> Resolved:
    """Log in and read every configured login (blocking); raises CredentialsError."""
    vault = Vault(settings.vault)
    vault.login()
    logins = _read(vault, settings)
    for store, login in logins.items():
        log.info("credentials from Vault", store=store, source=login.source, username=login.username,
                 expires_in_s=None if login.expires_at is None else round(login.remaining_s()))
    return Resolved(merged(settings, logins), vault, logins)


class Keeper:
    """Keeps ``resolved``'s logins valid (``run`` until stopped); ``on_rotate(store, login, settings)`` gets each
    replacement with the settings merged again; ``health`` (optional) gets the ``credentials`` condition."""

    def __init__(self, resolved: Resolved, on_rotate: Rotate, health: Any = None) -> None:
        self.resolved = resolved
        self.on_rotate = on_rotate
        self.health = health
        self._ttl = {s: max(1.0, login.remaining_s()) for s, login in resolved.logins.items() if login.lease_id}
        self._renewed = {s: time.time() for s in self._ttl}
        self._kv_read = time.monotonic()
        self._retiring: list[tuple[float, Login]] = []
        self._store = "vault"  # what the step under way is about (the failure metric's label)

    async def run(self, stop: asyncio.Event) -> None:
        delay = 1.0
        if self.health is not None:
            self.health.ok("credentials")
        while not stop.is_set():
            try:
                await self.tick()
                delay = 1.0
                if self.health is not None:
                    self.health.ok("credentials")
                wait = TICK_S
            except CredentialsError as exc:
                FAILURES.labels(self._store).inc()
                left = {s: round(x.remaining_s()) for s, x in self.resolved.logins.items() if x.expires_at}
                log.warning("credentials not kept, retrying", error=str(exc), retry_in_s=delay, expires_in_s=left)
                if self.health is not None:
                    self.health.fail("credentials", f"{exc}; retrying in {delay:.0f} s; current logins expire in "
                                                    f"{left or 'never'} s")
                wait, delay = delay, min(delay * 2, 30.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
        for _, login in self._retiring:
            await asyncio.to_thread(self.resolved.vault.revoke, login)

    async def tick(self) -> None:
        """One round: the token, the leases, the KV secrets, the retired leases due for revocation."""
        vault, cfg = self.resolved.vault, self.resolved.settings.vault
        self._store = "vault"
        await asyncio.to_thread(vault.keep_token)
        now = time.time()
        for store, ttl in list(self._ttl.items()):
            self._store = store
            login = self.resolved.logins[store]
            EXPIRES.labels(store).set(max(0.0, login.remaining_s(now)))
            if now - self._renewed[store] < cfg.renew_at * ttl:
                continue
            renewed = None
            if login.renewable:
                try:
                    renewed = await asyncio.to_thread(vault.renew, login, int(ttl))
                except CredentialsError as exc:
                    if login.remaining_s() > (1 - cfg.renew_at) * ttl / 2:
                        raise
                    log.warning("lease not renewed and running out: replacing it", store=store, error=str(exc))
            # kept only if it outlives the next renewal with a margin (a quarter of the rest of the TTL)
            if renewed is not None and renewed.remaining_s() >= (cfg.renew_at + (1 - cfg.renew_at) / 4) * ttl:
                self.resolved.logins[store] = renewed
                self._renewed[store] = now
                continue
            await self._rotate(store, await asyncio.to_thread(vault.database, str(cfg.database_role)))
            left = login.remaining_s()
            if left > 1:  # revoked once the connections still using it have been retired (or at its end)
                self._retiring.append((time.monotonic() + min(REVOKE_GRACE_S, left - 1), login))
        if time.monotonic() - self._kv_read >= cfg.kv_refresh_s:
            for store, path in (("cassandra", cfg.cassandra_path), ("kafka", cfg.kafka_path)):
                self._store = store
                if path and store in self.resolved.logins:
                    fresh = await asyncio.to_thread(vault.kv, path)
                    if fresh.version != self.resolved.logins[store].version:
                        await self._rotate(store, fresh)
            self._kv_read = time.monotonic()
        self._store = "vault"
        while self._retiring and self._retiring[0][0] <= time.monotonic():
            _, old = self._retiring.pop(0)
            await asyncio.to_thread(vault.revoke, old)

    async def _rotate(self, store: str, login: Login) -> None:
        self.resolved.logins[store] = login
        self.resolved.settings = merged(self.resolved.settings, {store: login})
        if login.lease_id is not None:
            self._ttl[store] = max(1.0, login.remaining_s())
            self._renewed[store] = time.time()
        if store == "kafka":
            kafka_clients.rotate(login.username, login.password)
        elif store == "cassandra":
            rotate_login(login.username, login.password)
        await self.on_rotate(store, login, self.resolved.settings)
        ROTATIONS.labels(store).inc()
        log.info("credentials rotated", store=store, source=login.source, username=login.username,
                 expires_in_s=None if login.expires_at is None else round(login.remaining_s()))
