"""The stack's Vault (OpenBao dev server) provisioned for one test: a PostgreSQL database of its own owned by a
NOLOGIN owner role, a database secrets engine whose role makes short-lived logins that are members of that owner
role (issued through the stack's ``vault_admin`` PostgreSQL role, not the superuser), KV v2 secrets, and an AppRole
whose policy grants exactly what cdcpipe reads."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

import asyncpg
import hvac
import pytest

ADDR_ENV, TOKEN_ENV = "CDCPIPE_STACK_VAULT_ADDR", "CDCPIPE_STACK_VAULT_TOKEN"
ADMIN_ENV, ADMIN_PASSWORD_ENV = "CDCPIPE_STACK_VAULT_PG_USER", "CDCPIPE_STACK_VAULT_PG_PASSWORD"


def root_client() -> hvac.Client:
    addr, token = os.environ.get(ADDR_ENV), os.environ.get(TOKEN_ENV)
    if not addr or not token:
        pytest.fail(f"the stack's Vault is not running ({ADDR_ENV} unset): deploy/local/stack up --tls", pytrace=False)
    return hvac.Client(url=addr, token=token)


def policy(tag: str, mount: str) -> str:
    return f'''
path "secret/data/{tag}/*" {{ capabilities = ["read"] }}
path "{mount}/creds/apply" {{ capabilities = ["read"] }}
path "sys/leases/renew" {{ capabilities = ["update"] }}
path "sys/leases/revoke" {{ capabilities = ["update"] }}
path "auth/token/renew-self" {{ capabilities = ["update"] }}
path "auth/token/lookup-self" {{ capabilities = ["read"] }}
'''


class Provisioned:
    """What :func:`provision` made; :meth:`env` gives cdcpipe's settings for it; :meth:`drop` removes it (``dsn``:
    the Vault admin role's, which made the owner role; ``stack_dsn``: the stack's own login, which made the
    database and is a member of the owner role)."""

    def __init__(self, client: hvac.Client, tag: str, dsn: str, database: str, owner: str, mount: str,
                 role_id: str, secret_id: str, stack_dsn: str) -> None:
        self.stack_dsn = stack_dsn
        self.kv_names: set[str] = set()
        self.client, self.tag, self.dsn, self.database = client, tag, dsn, database
        self.owner, self.mount, self.role_id, self.secret_id = owner, mount, role_id, secret_id

    @property
    def database_dsn(self) -> str:
        """The stack's DSN pointed at the test's database, without a login (Vault supplies it)."""
        base = self.dsn.rsplit("/", 1)[0]
        host = base.split("@", 1)[-1]
        return f"postgresql://{host}/{self.database}"

    def env(self, **extra: str) -> dict[str, str]:
        return {"CDCPIPE_VAULT__URL": self.client.url, "CDCPIPE_VAULT__AUTH_METHOD": "approle",
                "CDCPIPE_VAULT__ROLE_ID": self.role_id, "CDCPIPE_VAULT__SECRET_ID": self.secret_id,
                "CDCPIPE_VAULT__DATABASE_MOUNT": self.mount, "CDCPIPE_VAULT__DATABASE_ROLE": "apply",
                "CDCPIPE_POSTGRES__DSN": self.database_dsn, "CDCPIPE_POSTGRES__ROLE": self.owner, **extra}

    def put_kv(self, name: str, username: str, password: str) -> None:
        self.client.secrets.kv.v2.create_or_update_secret(path=f"{self.tag}/{name}", mount_point="secret",
                                                          secret={"username": username, "password": password})
        self.kv_names.add(name)

    @property
    def reader_dsn(self) -> str:
        """The stack's own login on the test's database (a member of the owner role: it reads the mirror)."""
        return f"{self.stack_dsn.rsplit('/', 1)[0]}/{self.database}"

    def drop(self) -> None:
        self.client.sys.disable_secrets_engine(self.mount)  # revokes its leases: drops the logins it made
        self.client.auth.approle.delete_role(self.tag)
        self.client.sys.delete_policy(self.tag)
        for name in self.kv_names:
            self.client.secrets.kv.v2.delete_metadata_and_all_versions(path=f"{self.tag}/{name}",
                                                                       mount_point="secret")
        asyncio.run(_sql(self.stack_dsn, f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))
        asyncio.run(_sql(self.dsn, f"DROP ROLE IF EXISTS {self.owner}"))


async def _sql(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for s in statements:
            await conn.execute(s)
    finally:
        await conn.close()


def provision(dsn: str, *, ttl: str = "6s", max_ttl: str = "14s") -> Provisioned:
    """Everything the test needs; ``dsn`` is the stack's DSN (its host and database name are used)."""
    client = root_client()
    tag = f"it{uuid.uuid4().hex[:10]}"
    database, owner, mount = f"{tag}_db", f"{tag}_owner", f"db-{tag}"
    admin, admin_password = os.environ.get(ADMIN_ENV), os.environ.get(ADMIN_PASSWORD_ENV)
    if not admin or not admin_password:
        pytest.fail(f"the stack exports no Vault PostgreSQL role ({ADMIN_ENV})", pytrace=False)
    host = dsn.rsplit("/", 1)[0].split("@", 1)[-1]
    admin_dsn = f"postgresql://{admin}:{admin_password}@{host}/{dsn.rsplit('/', 1)[1]}"
    login = dsn.split("//", 1)[1].split(":", 1)[0]  # the stack's own login (CREATEDB), the database's maker
    asyncio.run(_sql(admin_dsn, f"CREATE ROLE {owner} NOLOGIN", f"GRANT {owner} TO {login}"))
    asyncio.run(_sql(dsn, f'CREATE DATABASE "{database}" OWNER {owner}'))
    asyncio.run(_sql(admin_dsn, f"GRANT {owner} TO {admin} WITH ADMIN OPTION"))
    client.sys.enable_secrets_engine("database", path=mount)
    client.secrets.database.configure(
        name="pg", plugin_name="postgresql-database-plugin", allowed_roles=["apply"], mount_point=mount,
        connection_url=f"postgresql://{{{{username}}}}:{{{{password}}}}@{host}/{database}?sslmode=disable",
        username=admin, password=admin_password)
    client.secrets.database.create_role(
        name="apply", db_name="pg", mount_point=mount, default_ttl=ttl, max_ttl=max_ttl,
        creation_statements=[f"CREATE ROLE \"{{{{name}}}}\" WITH LOGIN PASSWORD '{{{{password}}}}' "
                             f"VALID UNTIL '{{{{expiration}}}}' IN ROLE {owner};"],
        revocation_statements=['DROP ROLE IF EXISTS "{{name}}";'])  # it owns nothing: postgres.role does
    if "approle/" not in client.sys.list_auth_methods():
        client.sys.enable_auth_method("approle")
    client.sys.create_or_update_policy(name=tag, policy=policy(tag, mount))
    client.auth.approle.create_or_update_approle(role_name=tag, token_policies=[tag], token_ttl="1h")
    role_id = client.auth.approle.read_role_id(role_name=tag)["data"]["role_id"]
    secret_id = client.auth.approle.generate_secret_id(role_name=tag)["data"]["secret_id"]
    out = Provisioned(client, tag, admin_dsn, database, owner, mount, role_id, secret_id, dsn)
    out.put_kv("kafka", "kafka-user", f"kafka-{uuid.uuid4().hex}")
    out.put_kv("cassandra", "cassandra-user", f"cassandra-{uuid.uuid4().hex}")
    return out


def settings_with(monkeypatch: pytest.MonkeyPatch, env: dict[str, Any]) -> Any:
    from cdcpipe.config import load_settings

    for k, v in env.items():
        monkeypatch.setenv(k, str(v))
    return load_settings()
