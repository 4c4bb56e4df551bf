"""Where table schemas come from (the model itself is :mod:`cdcpipe.schema`).

Sources: a CQL file of CREATE KEYSPACE / CREATE TYPE / CREATE TABLE statements (``WITH id = <uuid>``
gives the table id the commit log uses), or a live cluster's ``system_schema`` tables read with
cassandra-driver. See reference §9 for how the commit log refers to tables and columns.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cdcpipe.cql import CqlType, identifier, parse_cql_type
from cdcpipe.errors import CdcpipeError, ConfigError, SchemaError
from cdcpipe.schema import (
    CLUSTERING,
    PARTITION_KEY,
    REGULAR,
    STATIC,
    Column,
    DroppedColumn,
    TableSchema,
    system_table_id,
)
from cdcpipe.tls import ssl_context, tls_failure

if TYPE_CHECKING:
    from cdcpipe.config import CassandraSettings


log = logging.getLogger(__name__)


class SchemaSource(Protocol):
    """Where table schemas come from (I/O seam)."""

    def load(self) -> list[TableSchema]:
        """Return every table schema; raise SchemaError (or CdcpipeError with retriable=True)."""
        ...


# ------------------------------------------------------------------------------------------ CQL file

_CQL_TOKEN = re.compile(
    r"""\s+|--[^\n]*|//[^\n]*|/\*.*?\*/
    |(?P<q>"(?:[^"]|"")*")|(?P<s>'(?:[^']|'')*')|(?P<d>\$\$.*?\$\$)
    |(?P<u>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})
    |(?P<w>[A-Za-z0-9_]+(?:\.[0-9]+)?)|(?P<p>[(){}<>,.;=:\[\]+-])""",
    re.VERBOSE | re.DOTALL)


def _cql_statements(text: str) -> list[list[str]]:
    statements: list[list[str]] = [[]]
    pos = 0
    while pos < len(text):
        m = _CQL_TOKEN.match(text, pos)
        if m is None:
            raise SchemaError(f"cannot tokenize CQL at offset {pos}: {text[pos:pos + 30]!r}")
        pos = m.end()
        tok = m.group(m.lastgroup) if m.lastgroup else None
        if tok is None:
            continue
        if tok == ";":
            statements.append([])
        else:
            statements[-1].append(tok)
    return [s for s in statements if s]


class _Stmt:
    def __init__(self, tokens: list[str]) -> None:
        self.t, self.i = tokens, 0

    def peek(self, ahead: int = 0) -> str:
        j = self.i + ahead
        return self.t[j] if j < len(self.t) else ""

    def kw(self, *words: str) -> bool:
        """Consume the keywords if they follow (case-insensitive)."""
        for k, w in enumerate(words):
            tok = self.peek(k)
            if tok.startswith('"') or tok.lower() != w:
                return False
        self.i += len(words)
        return True

    def next(self) -> str:
        if self.i >= len(self.t):
            raise SchemaError(f"unexpected end of statement: {' '.join(self.t)[:200]}")
        self.i += 1
        return self.t[self.i - 1]

    def expect(self, tok: str) -> None:
        got = self.next()
        if got != tok:
            raise SchemaError(f"expected {tok!r}, got {got!r} in: {' '.join(self.t)[:200]}")

    def name(self, default_keyspace: str) -> tuple[str, str]:
        first = identifier(self.next())
        if self.peek() == ".":
            self.next()
            return first, identifier(self.next())
        if not default_keyspace:
            raise SchemaError(f"no keyspace for {first!r} (use a qualified name or USE)")
        return default_keyspace, first

    def type_tokens(self) -> str:
        """Tokens of a type up to a top-level ',' or ')' (or STATIC / PRIMARY KEY)."""
        depth, out = 0, list[str]()
        while True:
            tok = self.peek()
            if tok == "" or (depth == 0 and (tok in (",", ")") or tok.lower() in ("static", "primary"))):
                return " ".join(out)
            depth += {"<": 1, ">": -1}.get(tok, 0)
            out.append(self.next())


def parse_cql_schema(text: str) -> list[TableSchema]:
    """Parse CREATE KEYSPACE / CREATE TYPE / CREATE TABLE / USE statements; other statements are
    ignored. Tables need ``WITH id = <uuid>`` unless they are in a system keyspace (deterministic id).
    Raises SchemaError."""
    keyspace = ""
    udts: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]] = {}
    tables: list[TableSchema] = []
    for tokens in _cql_statements(text):
        st = _Stmt(tokens)
        if st.kw("use"):
            keyspace = identifier(st.next())
        elif st.kw("create", "type"):
            st.kw("if", "not", "exists")
            ks, name = st.name(keyspace)
            st.expect("(")
            names, types = [], []
            while True:
                names.append(identifier(st.next()))
                types.append(st.type_tokens())
                if st.next() == ")":
                    break
            udts[(ks, name)] = (tuple(names), tuple(types))
        elif st.kw("create", "table") or st.kw("create", "columnfamily"):
            tables.append(_create_table(st, keyspace, udts))
    return tables


def _create_table(st: _Stmt, keyspace: str,
                  udts: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]]) -> TableSchema:
    st.kw("if", "not", "exists")
    ks, table = st.name(keyspace)
    st.expect("(")
    defs: list[tuple[str, CqlType, bool]] = []
    pk: list[str] = []
    ck: list[str] = []
    while True:
        if st.kw("primary", "key"):
            st.expect("(")
            if st.peek() == "(":
                st.next()
                while True:
                    pk.append(identifier(st.next()))
                    if st.next() == ")":
                        break
            else:
                pk.append(identifier(st.next()))
            while st.next() == ",":
                ck.append(identifier(st.next()))
        else:
            col = identifier(st.next())
            ctype = parse_cql_type(st.type_tokens(), ks, lambda k, n: udts.get((k, n)))
            is_static = st.kw("static")
            if st.kw("primary", "key"):
                pk = [col]
            defs.append((col, ctype, is_static))
        sep = st.next()
        if sep == ")":
            break
        if sep != ",":
            raise SchemaError(f"unexpected {sep!r} in CREATE TABLE {ks}.{table}")
    table_id: uuid.UUID | None = None
    order: dict[str, bool] = {}
    cdc = False
    if st.kw("with"):
        while st.i < len(st.t):
            if st.kw("clustering", "order", "by"):
                st.expect("(")
                while True:
                    col = identifier(st.next())
                    order[col] = st.next().lower() == "desc"
                    if st.next() == ")":
                        break
            elif st.kw("compact", "storage"):
                raise SchemaError(f"{ks}.{table}: COMPACT STORAGE tables are not supported")
            else:
                opt = st.next().lower()
                st.expect("=")
                value = st.next()
                if opt == "id":
                    try:
                        table_id = uuid.UUID(value.strip("'"))
                    except ValueError as exc:
                        raise SchemaError(f"{ks}.{table}: bad id {value!r}") from exc
                elif opt == "cdc":
                    cdc = value.lower() == "true"
                elif value in ("{", "("):
                    _skip_group(st, value)
            if not st.kw("and"):
                break
    if table_id is None:
        if not ks.startswith("system"):
            raise SchemaError(f"{ks}.{table}: no table id (add WITH id = <uuid>)")
        table_id = system_table_id(ks, table)
    types = {name: t for name, t, _ in defs}
    for name in (*pk, *ck):
        if name not in types:
            raise SchemaError(f"{ks}.{table}: primary key column {name!r} is not defined")
    if not pk:
        raise SchemaError(f"{ks}.{table}: no primary key")
    return TableSchema(
        keyspace=ks, table=table, table_id=table_id, cdc=cdc,
        partition_key=tuple(Column(n, types[n], PARTITION_KEY, i) for i, n in enumerate(pk)),
        clustering=tuple(Column(n, types[n], CLUSTERING, i, order.get(n, False)) for i, n in enumerate(ck)),
        static=tuple(Column(n, t, STATIC) for n, t, s in defs if s),
        regular=tuple(Column(n, t, REGULAR) for n, t, s in defs if not s and n not in pk and n not in ck),
    )


def _skip_group(st: _Stmt, opening: str) -> None:
    closing = {"{": "}", "(": ")"}
    stack = [closing[opening]]
    while stack:
        tok = st.next()
        if tok in closing:
            stack.append(closing[tok])
        elif tok == stack[-1]:
            stack.pop()


@dataclass(frozen=True, slots=True)
class CqlFileSchemaSource:
    """Schema from a CQL file (re-read on every refresh)."""

    path: Path

    def load(self) -> list[TableSchema]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SchemaError(f"cannot read {self.path}: {exc}") from exc
        return parse_cql_schema(text)


# ------------------------------------------------------------------------------------------ live

class CqlSession(Protocol):
    """The part of ``cassandra.cluster.Session`` used here."""

    def execute(self, query: str) -> Iterable[Any]: ...


def _get(row: Any, name: str, default: Any = None) -> Any:
    if isinstance(row, dict):
        return row.get(name, default)
    return getattr(row, name, default)


def schema_from_rows(tables: Iterable[Any], columns: Iterable[Any], types: Iterable[Any],
                     dropped: Iterable[Any], views: Iterable[Any] = ()) -> list[TableSchema]:
    """Build schemas from ``system_schema`` rows (tables, columns, types, dropped_columns, views).
    Rows may be dicts or named tuples. Raises SchemaError."""
    udts = {(_get(r, "keyspace_name"), _get(r, "type_name")):
            (tuple(_get(r, "field_names") or ()), tuple(_get(r, "field_types") or ())) for r in types}
    cols: dict[tuple[str, str], list[Any]] = {}
    for r in columns:
        cols.setdefault((_get(r, "keyspace_name"), _get(r, "table_name")), []).append(r)
    drops: dict[tuple[str, str], list[Any]] = {}
    for r in dropped:
        drops.setdefault((_get(r, "keyspace_name"), _get(r, "table_name")), []).append(r)
    out: list[TableSchema] = []
    entries = [(r, _get(r, "table_name")) for r in tables] + [(r, _get(r, "view_name")) for r in views]
    for row, name in entries:
        ks = _get(row, "keyspace_name")

        def resolve(k: str, n: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
            return udts.get((k, n))

        by_kind: dict[str, list[Column]] = {PARTITION_KEY: [], CLUSTERING: [], STATIC: [], REGULAR: []}
        for c in cols.get((ks, name), []):
            kind = _get(c, "kind")
            if kind not in by_kind:
                raise SchemaError(f"{ks}.{name}: column kind {kind!r}")
            ctype = parse_cql_type(_get(c, "type"), ks, resolve)
            by_kind[kind].append(Column(_get(c, "column_name"), ctype, kind, _get(c, "position", -1),
                                        _get(c, "clustering_order") == "desc"))
        dropped_cols = []
        for d in drops.get((ks, name), []):
            when = _get(d, "dropped_time")
            micros = int(when.timestamp() * 1_000_000) if hasattr(when, "timestamp") else int(when or 0) * 1000
            dropped_cols.append(DroppedColumn(_get(d, "column_name"), parse_cql_type(_get(d, "type"), ks, resolve),
                                              micros, _get(d, "kind") or REGULAR))
        key = lambda c: c.position  # noqa: E731
        out.append(TableSchema(
            keyspace=ks, table=name, table_id=_get(row, "id"), cdc=bool(_get(row, "cdc")),
            partition_key=tuple(sorted(by_kind[PARTITION_KEY], key=key)),
            clustering=tuple(sorted(by_kind[CLUSTERING], key=key)),
            static=tuple(sorted(by_kind[STATIC], key=lambda c: c.name)),
            regular=tuple(sorted(by_kind[REGULAR], key=lambda c: c.name)),
            dropped=tuple(dropped_cols)))
    return out


# dropped_time as milliseconds: system tables carry drop times the driver cannot turn into a datetime
_DROPPED_COLUMNS = ("SELECT keyspace_name, table_name, column_name, kind, type, "
                    "blobAsBigint(timestampAsBlob(dropped_time)) AS dropped_time FROM system_schema.dropped_columns")


@dataclass(frozen=True, slots=True)
class SystemSchemaSource:
    """Schema read live from ``system_schema`` through a cassandra-driver session (blocking)."""

    session: CqlSession

    def load(self) -> list[TableSchema]:
        try:
            q = self.session.execute
            return schema_from_rows(
                q("SELECT * FROM system_schema.tables"), q("SELECT * FROM system_schema.columns"),
                q("SELECT * FROM system_schema.types"), q(_DROPPED_COLUMNS),
                q("SELECT * FROM system_schema.views"))
        except SchemaError:
            raise
        except Exception as exc:  # driver errors: connection, timeout, ...
            raise SchemaError(f"cannot read system_schema: {exc}", retriable=True) from exc


def connect_system_schema(target: str | CassandraSettings) -> SystemSchemaSource:
    """Connect with cassandra-driver for schema reads. ``target`` is the ``cassandra`` settings (hosts,
    credentials, local data center, connect timeout) or a ``host[:port],...`` string (``cdcpipe dump``).
    The port of the first host is used for all. With ``local_dc`` set, queries go to that data center only
    (DCAwareRoundRobinPolicy); otherwise the driver's default policy applies. Raises SchemaError (retriable)."""
    from cassandra.cluster import Cluster

    cfg = _settings(target)
    try:
        session = Cluster(**cluster_options(cfg)).connect()
    except Exception as exc:
        raise cassandra_connect_error(cfg, exc) from exc
    return SystemSchemaSource(session)


def cassandra_connect_error(cfg: CassandraSettings, exc: BaseException) -> CdcpipeError:
    """The error of a failed connection: a TLS handshake that configuration caused (``cassandra.tls``) is a
    ConfigError in one line; anything else a retriable SchemaError."""
    hosts = ",".join(cfg.hosts)
    tls = tls_failure(exc)
    if tls is not None:
        return ConfigError(f"TLS to Cassandra at {hosts}: {tls} (cassandra.tls.ca_file, "
                           "cassandra.tls.verify_hostname, the client certificate)")
    return SchemaError(f"cannot connect to Cassandra at {hosts}: {exc}", retriable=True)


_login: tuple[str, str] | None = None  # the process's Cassandra login once Vault replaced it (rotate_login)


def rotate_login(username: str, password: str) -> None:
    """Use this login for every Cassandra connection opened from now on, by every cluster of the process (those
    already open stay authenticated)."""
    global _login
    _login = (username, password)


def _auth_provider(username: str, password: str) -> Any:
    """The configured login, or the one :func:`rotate_login` set since, read at each new connection."""
    from cassandra.auth import PlainTextAuthenticator, PlainTextAuthProvider

    class RotatingAuth(PlainTextAuthProvider):  # type: ignore[misc]
        def new_authenticator(self, host: Any) -> Any:
            login = _login
            if login is None:
                return super().new_authenticator(host)
            return PlainTextAuthenticator(*login)

    return RotatingAuth(username, password)


def cluster_options(cfg: CassandraSettings) -> dict[str, Any]:
    """Keyword arguments of ``cassandra.cluster.Cluster`` for ``cfg`` (contact points, port, credentials,
    connect timeout, load-balancing policy, TLS).  Raises ConfigError when a TLS file cannot be loaded."""
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy

    points = cfg.contact_points()
    options: dict[str, Any] = {"contact_points": [h for h, _ in points], "port": points[0][1],
                               "protocol_version": 5, "connect_timeout": cfg.connect_timeout_s}
    if cfg.username:
        password = cfg.password.get_secret_value() if cfg.password is not None else ""
        options["auth_provider"] = _auth_provider(cfg.username, password)
    if cfg.local_dc:
        profile = ExecutionProfile(load_balancing_policy=DCAwareRoundRobinPolicy(local_dc=cfg.local_dc))
        options["execution_profiles"] = {EXEC_PROFILE_DEFAULT: profile}
    context = ssl_context(cfg.tls, "cassandra.tls")
    if context is not None:
        options["ssl_context"] = context  # the driver checks each node's name (its address) when check_hostname
    return options


def _settings(target: str | CassandraSettings) -> CassandraSettings:
    from cdcpipe.config import CassandraSettings

    if not isinstance(target, str):
        return target
    try:
        return CassandraSettings(hosts=target or "127.0.0.1:9042")  # type: ignore[arg-type]  # split by validator
    except ValueError as exc:
        raise SchemaError(f"bad Cassandra hosts {target!r}: {exc}") from exc
