"""A Vault (or OpenBao) client for cdcpipe's credentials, over hvac (blocking: call it from a worker thread).

:meth:`Vault.login` authenticates with ``vault.auth_method`` (token, AppRole, Kubernetes); :meth:`Vault.kv` reads a
username/password pair from a KV v2 secret (its version says when it changed); :meth:`Vault.database` asks the
database secrets engine for a leased PostgreSQL login, :meth:`Vault.renew` extends a lease, :meth:`Vault.revoke`
ends one.  Every failure is a :class:`~cdcpipe.errors.CredentialsError` whose message names the path or role and
the kind of failure, never a secret; ``retriable`` tells an outage (Vault unreachable, sealed, 5xx) from a refusal
(403, a path or role that does not exist), which no retry mends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from cdcpipe.config import VaultSettings
from cdcpipe.errors import CredentialsError

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Login:
    """A username and password from Vault: ``source`` (``kv:<mount>/<path>`` or ``database:<mount>/<role>``),
    ``version`` (the KV version, or the lease id: what changes when it is replaced), and for a lease when it ends
    (``expires_at``, wall-clock seconds) and whether it can be extended."""

    source: str
    username: str
    password: str = field(repr=False)
    version: str
    lease_id: str | None = field(default=None, repr=False)
    expires_at: float | None = None
    renewable: bool = False

    def remaining_s(self, now: float | None = None) -> float:
        return float("inf") if self.expires_at is None else self.expires_at - (time.time() if now is None else now)


def _failure(exc: BaseException, what: str) -> CredentialsError:
    """``exc`` (hvac or requests) as a CredentialsError about ``what``: retriable unless Vault refused."""
    import hvac.exceptions as hv

    name = type(exc).__name__
    if isinstance(exc, (hv.Forbidden, hv.Unauthorized)):
        return CredentialsError(f"Vault refused {what}: permission denied ({name})", retriable=False)
    if isinstance(exc, (hv.InvalidPath, hv.InvalidRequest, hv.UnsupportedOperation)):
        errors = getattr(exc, "errors", None) or []
        detail = "; ".join(str(e) for e in errors)[:300] or name
        return CredentialsError(f"Vault refused {what}: {detail}", retriable=False)
    if isinstance(exc, hv.VaultError):
        return CredentialsError(f"Vault failed {what}: {name}", retriable=True)
    return CredentialsError(f"Vault unreachable for {what}: {name}: {str(exc)[:200]}", retriable=True)


class Vault:
    """One authenticated hvac client."""

    def __init__(self, cfg: VaultSettings) -> None:
        import hvac

        assert cfg.url is not None
        self.cfg = cfg
        verify: Any = str(cfg.ca_file) if cfg.ca_file is not None else True
        self._client = hvac.Client(url=cfg.url, verify=verify, timeout=int(cfg.timeout_s), namespace=cfg.namespace)
        self.token_expires_at: float | None = None
        self.token_renewable = False

    def login(self) -> None:
        """Authenticate (again); raises CredentialsError."""
        cfg = self.cfg
        method = cfg.auth_method
        try:
            if method == "token":
                assert cfg.token is not None
                self._client.token = cfg.token.get_secret_value()
                data = self._client.auth.token.lookup_self()["data"]
                ttl, renewable = int(data.get("ttl") or 0), bool(data.get("renewable"))
            elif method == "approle":
                assert cfg.role_id is not None and cfg.secret_id is not None
                auth = self._client.auth.approle.login(role_id=cfg.role_id,
                                                       secret_id=cfg.secret_id.get_secret_value(),
                                                       mount_point=cfg.auth_mount or "approle")["auth"]
                ttl, renewable = int(auth.get("lease_duration") or 0), bool(auth.get("renewable"))
            else:
                assert cfg.kubernetes_role is not None
                jwt = cfg.kubernetes_token_file.read_text().strip()
                auth = self._client.auth.kubernetes.login(role=cfg.kubernetes_role, jwt=jwt,
                                                          mount_point=cfg.auth_mount or "kubernetes")["auth"]
                ttl, renewable = int(auth.get("lease_duration") or 0), bool(auth.get("renewable"))
        except OSError as exc:
            raise CredentialsError(f"vault.kubernetes_token_file {cfg.kubernetes_token_file}: cannot read: "
                                   f"{exc.strerror}", retriable=False) from None
        except Exception as exc:
            raise _failure(exc, f"the {method} login") from None
        self.token_expires_at = time.time() + ttl if ttl else None
        self.token_renewable = renewable
        log.info("logged in to Vault", method=method, ttl_s=ttl or None, renewable=renewable)

    def keep_token(self) -> None:
        """Renew the login token when it is past half its life (log in again when it cannot be renewed)."""
        if self.token_expires_at is None:
            return
        left = self.token_expires_at - time.time()
        if left > 30 and not self.token_renewable:
            return
        try:
            if self.token_renewable:
                auth = self._client.auth.token.renew_self()["auth"]
                ttl = int(auth.get("lease_duration") or 0)
                if ttl > 0:
                    self.token_expires_at = time.time() + ttl
                    return
        except Exception as exc:
            log.warning("Vault token not renewed, logging in again", error=str(_failure(exc, "the token renewal")))
        self.login()

    def kv(self, path: str) -> Login:
        """``username`` and ``password`` of the KV v2 secret ``vault.mount``/``path``."""
        what = f"the secret {self.cfg.mount}/{path}"
        try:
            got = self._client.secrets.kv.v2.read_secret_version(path=path, mount_point=self.cfg.mount,
                                                                  raise_on_deleted_version=True)
        except Exception as exc:
            raise _failure(exc, what) from None
        data, meta = got["data"]["data"] or {}, got["data"]["metadata"] or {}
        if not isinstance(data.get("username"), str) or not isinstance(data.get("password"), str):
            raise CredentialsError(f"{what} has no username and password (keys: "
                                   f"{', '.join(sorted(map(str, data))) or 'none'})", retriable=False)
        return Login(f"kv:{self.cfg.mount}/{path}", data["username"], data["password"], str(meta.get("version")))

    def database(self, role: str) -> Login:
        """A new leased login for ``role`` of the database secrets engine at ``vault.database_mount``."""
        what = f"credentials of the database role {self.cfg.database_mount}/{role}"
        try:
            got = self._client.secrets.database.generate_credentials(name=role,
                                                                     mount_point=self.cfg.database_mount)
        except Exception as exc:
            raise _failure(exc, what) from None
        ttl = int(got.get("lease_duration") or 0)
        return Login(f"database:{self.cfg.database_mount}/{role}", got["data"]["username"], got["data"]["password"],
                     str(got["lease_id"]), str(got["lease_id"]), time.time() + ttl if ttl else None,
                     bool(got.get("renewable")))

    def renew(self, login: Login, increment_s: int) -> Login:
        """``login`` with its lease extended (Vault may grant less than asked: up to the role's max TTL)."""
        try:
            got = self._client.sys.renew_lease(lease_id=login.lease_id, increment=increment_s)
        except Exception as exc:
            raise _failure(exc, f"the renewal of a lease of {login.source}") from None
        ttl = int(got.get("lease_duration") or 0)
        return Login(login.source, login.username, login.password, login.version, login.lease_id,
                     time.time() + ttl, bool(got.get("renewable")))

    def revoke(self, login: Login) -> None:
        """End ``login``'s lease now (a failure is logged: the lease ends at its TTL anyway)."""
        if login.lease_id is None:
            return
        try:
            self._client.sys.revoke_lease(lease_id=login.lease_id)
        except Exception as exc:
            log.warning("lease not revoked (it ends at its TTL)", source=login.source,
                        error=str(_failure(exc, "a revocation")))
