"""Settings of cdcpipe: one model, read from ``CDCPIPE_*`` environment variables and an optional YAML file.

Keys mirror the module paths that use them (``capture.cdc_raw_dir`` is the environment variable
``CDCPIPE_CAPTURE__CDC_RAW_DIR``).  Precedence, highest first: environment, YAML file given with ``--config``,
defaults.  Invalid or missing settings raise :class:`ConfigError` with one message that names every bad
setting and the environment variable that sets it; the CLI prints it and exits 2 without a traceback.
Secrets (passwords, tokens, DSNs carrying passwords) are ``SecretStr`` and never printed; ``kafka.extra``
properties whose name names a secret (:func:`is_secret_key`) are hidden the same way wherever settings are shown.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from cdcpipe.errors import ConfigError

ENV_PREFIX = "CDCPIPE_"
NESTED = "__"
HIDDEN = "**********"

# The long-lived processes and their default HTTP ports (observability.http_port unset).
Process = Literal["capture", "apply", "reconcile"]
DEFAULT_HTTP_PORTS: dict[Process, int] = {"capture": 9400, "apply": 9401, "reconcile": 9402}

MIB = 1024 * 1024
# Cassandra's default commitlog_segment_size; the largest mutation it logs is half a segment (max_mutation_size).
DEFAULT_COMMITLOG_SEGMENT_SIZE = 32 * MIB
MESSAGE_OVERHEAD = 1 * MIB  # an event's key, envelope and metadata beyond its cells' values


def max_message_bytes_for(commitlog_segment_size: int) -> int:
    """The Kafka message size that holds the event of the largest mutation a node logs: that mutation is at most
    half a segment, and an event carries each value twice (typed and raw), plus its envelope."""
    return 2 * (commitlog_segment_size // 2) + MESSAGE_OVERHEAD


_SECRET_WORDS = frozenset({"password", "passwd", "passphrase", "secret", "token", "key", "pem", "jaas",
                           "credential", "credentials", "apikey"})
_NOT_SECRET_LAST = frozenset({"location", "file", "path", "dir", "directory", "url", "endpoint", "id", "name",
                              "type", "size", "algorithm", "mechanism", "mechanisms"})


def is_secret_key(name: str) -> bool:
    """Whether a setting or librdkafka property named ``name`` holds a secret: one of its words (split at
    ``.``, ``_``, ``-``) is password, passphrase, secret, token, key, pem, jaas or credential(s) — unless its last
    word says it names where or what the secret is (location, file, path, url, id, …): ``ssl.key.password`` and
    ``ssl.key.pem`` are secrets, ``ssl.key.location`` and ``sasl.oauthbearer.token.endpoint.url`` are not."""
    words = [w for w in re.split(r"[._\-]+", name.lower()) if w]
    if not words or words[-1] in _NOT_SECRET_LAST:
        return False
    return any(w in _SECRET_WORDS for w in words) or name.lower() == "sasl.oauthbearer.config"


def hide_secrets(props: dict[str, Any]) -> dict[str, Any]:
    """``props`` (e.g. a librdkafka configuration) with the value of every secret key (:func:`is_secret_key`)
    replaced by ``'**********'``: what may be logged or shown."""
    return {k: HIDDEN if is_secret_key(k) or isinstance(v, SecretStr) else v for k, v in props.items()}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsSettings(_Section):
    """TLS to one store (``cassandra.tls``, ``kafka.tls``, ``postgres.tls``): off by default; on, the server's
    certificate is verified against ``ca_file`` (unset: the system's trust store) and, unless ``verify_hostname`` is
    turned off, its name against the host connected to.  ``cert_file`` and ``key_file`` (PEM; ``key_password`` if the
    key is encrypted) present a client certificate to a server that asks for one."""

    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    key_password: SecretStr | None = None
    verify_hostname: bool = True

    @model_validator(mode="after")
    def _pair(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give both tls.cert_file and tls.key_file (a client certificate and its key), or neither")
        return self


class CassandraSettings(_Section):
    """How to reach the Cassandra cluster (schema reads, snapshots, reconciliation)."""

    hosts: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["127.0.0.1:9042"], min_length=1)
    local_dc: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    connect_timeout_s: float = Field(default=10.0, gt=0)
    tls: TlsSettings = Field(default_factory=TlsSettings)

    @field_validator("hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [h.strip() for h in value.split(",") if h.strip()]
        return value

    @field_validator("hosts")
    @classmethod
    def _check_hosts(cls, value: list[str]) -> list[str]:
        for host in value:
            _, _, port = host.rpartition(":")
            if ":" in host and not port.isdigit():
                raise ValueError(f"{host!r} is not host or host:port")
        return value

    def contact_points(self) -> list[tuple[str, int]]:
        """``hosts`` as (host, port) pairs, port 9042 when not given."""
        out = []
        for host in self.hosts:
            name, sep, port = host.rpartition(":")
            out.append((name, int(port)) if sep else (host, 9042))
        return out


class KafkaSettings(_Section):
    """Kafka connection and naming; ``extra`` passes librdkafka properties through unchanged (those whose name
    names a secret are hidden wherever settings are shown, see :func:`is_secret_key`).

    ``max_message_bytes`` is the largest event message, used for the topics capture and apply create
    (``max.message.bytes``), the producers (``message.max.bytes``) and the consumers (fetch and receive sizes);
    unset, it is :func:`max_message_bytes_for` ``capture.commitlog_segment_size`` (33 MiB for Cassandra's default
    32 MiB segments)."""

    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = Field(default="cdcpipe", pattern=r"^[A-Za-z0-9._-]+$")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    extra: dict[str, str] = Field(default_factory=dict)
    max_message_bytes: int | None = Field(default=None, ge=1_000_000, le=1_000_000_000)
    tls: TlsSettings = Field(default_factory=TlsSettings)

    @model_validator(mode="after")
    def _tls_protocol(self) -> KafkaSettings:
        if self.tls.enabled and self.security_protocol not in ("SSL", "SASL_SSL"):
            raise ValueError(f"kafka.tls.enabled needs kafka.security_protocol SSL or SASL_SSL, not "
                             f"{self.security_protocol}")
        return self

    def __repr_args__(self) -> Any:  # repr/str (and so logs) never show a secret of ``extra``
        for name, value in super().__repr_args__():
            yield name, hide_secrets(value) if name == "extra" and isinstance(value, dict) else value

    def message_bytes(self) -> int:
        """``max_message_bytes``, or its default for Cassandra's default segment size when unset."""
        return self.max_message_bytes or max_message_bytes_for(DEFAULT_COMMITLOG_SEGMENT_SIZE)

    def topic_config(self) -> dict[str, str]:
        """Topic configuration of every topic cdcpipe creates: messages up to :meth:`message_bytes`."""
        return {"max.message.bytes": str(self.message_bytes())}

    def client_config(self) -> dict[str, str | int | float | bool]:
        """librdkafka configuration common to producers, consumers and admin clients: a request or response may
        carry one message of :meth:`message_bytes` (consumers add :meth:`fetch_config`)."""
        size = self.message_bytes()
        conf: dict[str, str | int | float | bool] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
            "message.max.bytes": size + MESSAGE_OVERHEAD,
            "receive.message.max.bytes": max(100 * MIB, size + 2 * MESSAGE_OVERHEAD),
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.tls.enabled:
            tls = self.tls
            conf["enable.ssl.certificate.verification"] = True
            conf["ssl.endpoint.identification.algorithm"] = "https" if tls.verify_hostname else "none"
            if tls.ca_file is not None:
                conf["ssl.ca.location"] = str(tls.ca_file)
            if tls.cert_file is not None and tls.key_file is not None:
                conf["ssl.certificate.location"] = str(tls.cert_file)
                conf["ssl.key.location"] = str(tls.key_file)
            if tls.key_password is not None:
                conf["ssl.key.password"] = tls.key_password.get_secret_value()
        conf.update(self.extra)
        return conf

    def fetch_config(self) -> dict[str, int]:
        """Consumer-only sizes: one fetch may return a message of :meth:`message_bytes` (within
        ``receive.message.max.bytes``)."""
        size = self.message_bytes()
        return {"max.partition.fetch.bytes": size + MESSAGE_OVERHEAD,
                "fetch.max.bytes": max(50 * MIB, size + MESSAGE_OVERHEAD)}


class PostgresSettings(_Section):
    """The target database.  The DSN is a secret because it usually carries the password."""

    dsn: SecretStr | None = None
    user: str | None = None  # these two override the DSN's (credentials from Vault fill them)
    password: SecretStr | None = None
    schema_prefix: str = ""
    pool_min_size: int = Field(default=1, ge=1)
    pool_max_size: int = Field(default=8, ge=1)
    # on: verify-full (the CA, the host name) with an SSL context of cdcpipe's own; off: the DSN's sslmode decides
    tls: TlsSettings = Field(default_factory=TlsSettings)
    # SET ROLE on every connection: what apply creates is owned by this role, not by a login that rotates (Vault)
    role: str | None = None


class CaptureSettings(_Section):
    """The capture process beside one Cassandra node."""

    cdc_raw_dir: Path | None = None
    node_id: str | None = None
    poll_interval_ms: int = Field(default=25, gt=0, le=100)  # idle, without inotify (a poll costs ~1 ms of CPU)
    encryption_key: SecretStr | None = None
    keystore: Path | None = None
    keystore_password: SecretStr | None = None
    key_password: SecretStr | None = None
    # which tables: every table with cdc = true, narrowed by ``keyspace.table`` / ``keyspace.*`` patterns
    include_tables: Annotated[list[str], NoDecode] = Field(default_factory=list)
    exclude_tables: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cluster: str | None = None  # default: system.local cluster_name
    datacenter: str | None = None  # default: system.local data_center
    batch_max_events: int = Field(default=5000, gt=0)  # one Kafka transaction holds at most this many events
    flush_ms: int = Field(default=100, gt=0, le=10_000)  # ... and is committed at least this often
    topic_partitions: int = Field(default=6, gt=0)
    # None: min(3, brokers); 1 on a cluster of several brokers only when set explicitly (see replication_factor)
    topic_replication: int | None = Field(default=None, gt=0)
    # bytes; Cassandra's cdc_total_space.  None: read from the node (system_views.settings), else Cassandra's
    # default 4096 MiB (Cassandra uses min(4096 MiB, 1/8 of the volume) when cassandra.yaml does not set it)
    cdc_total_space: int | None = Field(default=None, gt=0)
    # where unreadable segments are moved (never deleted); default <cdc_raw>/../cdc_quarantine; same filesystem
    quarantine_dir: Path | None = None
    stall_timeout_s: float = Field(default=60.0, gt=0)  # no progress on durable data this long: /readyz "stalled"
    schema_recheck_s: float = Field(default=5.0, gt=0)  # re-check a cdc = false table's flag at most this often
    # a table switched to cdc = false stays captured until what was durable this long after the switch is read
    # (> Cassandra's commitlog_sync_period, 10 s by default): its writes made before the switch are not lost
    schema_off_grace_s: float = Field(default=15.0, ge=0)
    # writes older than their table's switch to cdc = true, logged within this long after it, are read back
    backdated_check_s: float = Field(default=3600.0, ge=0)
    kafka_retry_max_wait_s: float = Field(default=30.0, gt=0)  # the cap of the backoff while Kafka fails
    # bytes; the node's commitlog_segment_size: its largest mutation is half of it (sizes kafka.max_message_bytes)
    commitlog_segment_size: int = Field(default=DEFAULT_COMMITLOG_SEGMENT_SIZE, ge=MIB, le=1024 * MIB)

    @field_validator("include_tables", "exclude_tables", mode="before")
    @classmethod
    def _split_tables(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value


def replication_factor(configured: int | None, brokers: int) -> int:
    """The replication factor of a topic cdcpipe creates: ``capture.topic_replication`` when set (1 included:
    an explicit choice), else min(3, ``brokers``) — never 1 on a cluster of several brokers by default."""
    if configured is not None:
        return configured
    if brokers < 1:
        raise ConfigError("cannot choose a topic replication factor: the Kafka cluster reported no brokers; "
                          f"set capture.topic_replication ({env_name('capture.topic_replication')})")
    return min(3, brokers)


class ApplyBatchSettings(_Section):
    """When apply closes a batch of one topic partition: at ``max_rows`` events, ``max_wait_ms`` after its first,
    or as soon as the consumer has read everything there was (waiting longer would only add latency)."""

    max_rows: int = Field(default=5000, gt=0)
    max_wait_ms: int = Field(default=200, gt=0)


class ApplySettings(_Section):
    """The apply worker pool."""

    group_id: str = "cdcpipe-apply"
    batch: ApplyBatchSettings = Field(default_factory=ApplyBatchSettings)
    tombstone_grace_s: int = Field(default=864_000, ge=0)
    purge_interval_s: float = Field(default=60.0, gt=0)
    concurrency: int = Field(default=4, gt=0)
    dlq_topic: str | None = None  # default: <kafka.topic_prefix>.dlq
    circuit_failures: int = Field(default=5, gt=0)
    # the cap of the backoff between retries of a held batch (PostgreSQL unreachable, or a table's fault)
    retry_max_wait_s: float = Field(default=60.0, gt=0)
    # DROP TABLE in Cassandra: keep the mirror table (marked by a comment) or drop it (docs/delivery.md)
    on_table_drop: Literal["keep", "drop"] = "keep"
    # a column dropped in Cassandra: keep its PostgreSQL column (marked, no longer written) or drop it
    on_column_drop: Literal["keep", "drop"] = "keep"


class ObservabilitySettings(_Section):
    http_host: str = "0.0.0.0"
    http_port: int | None = Field(default=None, ge=0, le=65535)  # None: 9400 capture, 9401 apply, 9402 reconcile
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    liveness_timeout_s: float = Field(default=30.0, gt=0)  # /livez fails when the event loop stalls this long

    def port_for(self, process: Process) -> int:
        """The HTTP port of ``process``: ``http_port`` when set, else its default (:data:`DEFAULT_HTTP_PORTS`)."""
        return DEFAULT_HTTP_PORTS[process] if self.http_port is None else self.http_port


class AdminSettings(_Section):
    """The admin HTTP API apply serves (dead letters, status; docs/operations.md).  Off by default; when on, it
    needs at least one token: ``token`` (read and write), ``read_token`` (read only) or ``tokens_file`` (lines
    ``read <token>`` / ``write <token>``, re-read when the file changes: rotation without a restart).  Tokens have
    at least 16 characters."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=9411, ge=0, le=65535)
    token: SecretStr | None = None
    read_token: SecretStr | None = None
    tokens_file: Path | None = None
    max_auth_failures: int = Field(default=10, gt=0)  # per client and minute; then 429 for the rest of the minute

    @model_validator(mode="after")
    def _tokens(self) -> AdminSettings:
        for name in ("token", "read_token"):
            value = getattr(self, name)
            if value is not None and len(value.get_secret_value()) < 16:
                raise ValueError(f"admin.{name} must have at least 16 characters")
        if self.enabled and self.token is None and self.read_token is None and self.tokens_file is None:
            raise ValueError("admin.enabled needs admin.token, admin.read_token or admin.tokens_file")
        return self


class VaultSettings(_Section):
    """Credentials from HashiCorp Vault or OpenBao (:mod:`cdcpipe.credentials`), used when ``url`` is set.

    Log in with ``auth_method``: ``token`` (``token``), ``approle`` (``role_id``, ``secret_id``) or ``kubernetes``
    (``kubernetes_role`` and the pod's service-account token in ``kubernetes_token_file``), at ``auth_mount``
    (default: the method's name).  Then read, each only when its setting is given: Cassandra's username and password
    from the KV v2 secret ``mount``/``cassandra_path``, Kafka's SASL username and password from ``mount``/
    ``kafka_path`` (both re-read every ``kv_refresh_s``), and PostgreSQL's from the database secrets engine
    (``database_mount``, role ``database_role``: dynamic, leased, renewed at ``renew_at`` of the lease and replaced
    before it runs out).  TLS to Vault is verified against ``ca_file`` (unset: the system's trust store)."""

    url: str | None = None
    auth_method: Literal["token", "approle", "kubernetes"] = "token"
    auth_mount: str | None = None
    token: SecretStr | None = None
    role_id: str | None = None
    secret_id: SecretStr | None = None
    kubernetes_role: str | None = None
    kubernetes_token_file: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    namespace: str | None = None
    ca_file: Path | None = None
    mount: str = "secret"
    cassandra_path: str | None = None
    kafka_path: str | None = None
    database_mount: str = "database"
    database_role: str | None = None
    renew_at: float = Field(default=0.5, gt=0.1, lt=0.9)
    kv_refresh_s: float = Field(default=30.0, gt=0)
    timeout_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _login(self) -> VaultSettings:
        if self.url is None:
            return self
        needs = {"token": ("token",), "approle": ("role_id", "secret_id"), "kubernetes": ("kubernetes_role",)}
        missing = [f"vault.{n}" for n in needs[self.auth_method] if getattr(self, n) is None]
        if missing:
            raise ValueError(f"vault.auth_method {self.auth_method} needs {', '.join(missing)}")
        if not (self.cassandra_path or self.kafka_path or self.database_role):
            raise ValueError("vault.url is set but nothing is read from it: set vault.cassandra_path, "
                             "vault.kafka_path or vault.database_role")
        return self


class Settings(BaseSettings):
    """All settings.  Build it with :func:`load_settings`, not directly."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=NESTED, extra="forbid", frozen=True,
        nested_model_default_partial_update=True,
    )

    cassandra: CassandraSettings = Field(default_factory=CassandraSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    capture: CaptureSettings = Field(default_factory=CaptureSettings)
    apply: ApplySettings = Field(default_factory=ApplySettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    vault: VaultSettings = Field(default_factory=VaultSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init_settings carries the YAML file's content: the environment overrides it.
        return (env_settings, init_settings)

    def require(self, dotted: str) -> Any:
        """The value of a setting a command cannot run without; :class:`ConfigError` when it is unset."""
        value: Any = self
        for part in dotted.split("."):
            value = getattr(value, part)
        if value is None or value == "":
            raise ConfigError(f"missing setting {dotted} (set {env_name(dotted)} or {dotted} in --config)")
        return value

    @model_validator(mode="after")
    def _size_messages_for_the_commit_log(self) -> Settings:
        """kafka.max_message_bytes unset: derived from capture.commitlog_segment_size (once, here, so every client
        agrees).  Set below that: refused — the largest mutation the node logs could never be shipped."""
        needed = max_message_bytes_for(self.capture.commitlog_segment_size)
        if self.kafka.max_message_bytes is None:
            kafka = self.kafka.model_copy(update={"max_message_bytes": needed})  # a KafkaSettings given is kept
            object.__setattr__(self, "kafka", kafka)  # frozen: set once, while validating
        elif self.kafka.max_message_bytes < needed:
            raise ValueError(
                f"kafka.max_message_bytes ({env_name('kafka.max_message_bytes')}) is {self.kafka.max_message_bytes}, "
                f"below the {needed} bytes the event of the largest mutation needs (half of "
                f"capture.commitlog_segment_size {self.capture.commitlog_segment_size}, each value twice, and its "
                f"envelope): raise it, or set capture.commitlog_segment_size "
                f"({env_name('capture.commitlog_segment_size')}) to the node's commitlog_segment_size")
        return self

    def redacted(self) -> dict[str, Any]:
        """All settings as plain data, secrets (``SecretStr`` fields and every key that names a secret,
        :func:`is_secret_key`, e.g. in ``kafka.extra``) replaced by ``'**********'``."""
        redacted: dict[str, Any] = _redact(self.model_dump(mode="python"))
        return redacted


def _redact(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return HIDDEN
    if isinstance(value, dict):
        return {k: HIDDEN if is_secret_key(str(k)) and value[k] is not None else _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def env_name(dotted: str) -> str:
    """``capture.cdc_raw_dir`` -> ``CDCPIPE_CAPTURE__CDC_RAW_DIR``."""
    return ENV_PREFIX + NESTED.join(p.upper() for p in dotted.split("."))


def load_settings(config_file: Path | None = None) -> Settings:
    """Read the YAML file (if any) and the environment; raise :class:`ConfigError` naming each bad setting."""
    file_values: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = yaml.safe_load(config_file.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read --config {config_file}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {config_file} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"--config {config_file} must hold a mapping of settings, not {type(loaded).__name__}")
        file_values = loaded or {}
    try:
        return Settings(**file_values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, config_file)) from None
    except SettingsError as exc:  # an environment value that is not valid JSON for a structured setting
        raise ConfigError(f"invalid settings: {exc}") from None


def _describe(exc: ValidationError, config_file: Path | None) -> str:
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        if not err["loc"]:  # a rule across settings: its message names them
            problems.append(err["msg"].removeprefix("Value error, "))
            continue
        dotted = ".".join(str(p) for p in err["loc"])
        source = f"{env_name(dotted)} or {dotted} in --config" if config_file else env_name(dotted)
        problems.append(f"{dotted} ({source}): {err['msg']}")
    return "invalid settings: " + "; ".join(problems)
