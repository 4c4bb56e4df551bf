"""Connections to PostgreSQL: every part of cdcpipe opens them here, with ``postgres.dsn`` (its user and password
overridden by ``postgres.user``/``postgres.password`` when set: Vault's leased logins), ``postgres.role`` (the
session's role) and, when
``postgres.tls.enabled``, an SSL context of cdcpipe's own (:func:`cdcpipe.tls.ssl_context`: the CA, the host name
— ``sslmode=verify-full`` — and an optional client certificate).  With TLS off, the DSN's own ``sslmode``,
``sslrootcert`` … apply as libpq defines them.  A handshake that fails because of what is configured raises a
:class:`~cdcpipe.errors.ConfigError` in one line (a process stops at start instead of waiting for an outage to end).
"""

from __future__ import annotations

from typing import Any

from cdcpipe.config import Settings
from cdcpipe.errors import ConfigError
from cdcpipe.tls import ssl_context, tls_failure


def connect_kwargs(settings: Settings) -> dict[str, Any]:
    """``asyncpg.connect``/``create_pool`` keyword arguments: the DSN and, with TLS on, ``ssl``."""
    pg = settings.postgres
    kwargs: dict[str, Any] = {"dsn": settings.require("postgres.dsn").get_secret_value()}
    context = ssl_context(pg.tls, "postgres.tls")
    if context is not None:
        kwargs["ssl"] = context
    if pg.user is not None:
        kwargs["user"] = pg.user
    if pg.password is not None:
        kwargs["password"] = pg.password.get_secret_value()
    if pg.role is not None:
        kwargs["server_settings"] = {"role": pg.role}  # the session's role: survives RESET ALL
    return kwargs


def _config_error(exc: BaseException) -> ConfigError | None:
    tls = tls_failure(exc)
    if tls is None:
        return None
    return ConfigError(f"TLS to PostgreSQL: {tls} (postgres.tls.ca_file, postgres.tls.verify_hostname, the client "
                       "certificate)")


async def connect(settings: Settings, **kwargs: Any) -> Any:
    """One connection (``kwargs`` as ``asyncpg.connect``'s, e.g. ``timeout``)."""
    import asyncpg

    return await _open(asyncpg.connect, settings, kwargs)


async def create_pool(settings: Settings, **kwargs: Any) -> Any:
    """A pool (``kwargs`` as ``asyncpg.create_pool``'s: ``min_size``, ``max_size``, ``timeout`` …)."""
    import asyncpg

    return await _open(asyncpg.create_pool, settings, kwargs)


async def _open(factory: Any, settings: Settings, kwargs: dict[str, Any]) -> Any:
    try:
        return await factory(**connect_kwargs(settings), **kwargs)
    except Exception as exc:
        err = _config_error(exc)
        if err is None:
            raise
        raise err from exc
