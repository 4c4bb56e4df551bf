"""Settings of cdcpipe: one model, read from ``CDCPIPE_*`` environment variables and an optional YAML file.

Keys mirror the module paths that use them (``capture.cdc_raw_dir`` is the environment variable
``CDCPIPE_CAPTURE__CDC_RAW_DIR``).  Precedence, highest first: environment, YAML file given with ``--config``,
defaults.  Invalid or missing settings raise :class:`ConfigError` with one message that names every bad
setting and the environment variable that sets it; the CLI prints it and exits 2 without a traceback.
Secrets (passwords, tokens, DSNs carrying passwords) are ``SecretStr`` and never printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from cdcpipe.errors import ConfigError

ENV_PREFIX = "CDCPIPE_"
NESTED = "__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CassandraSettings(_Section):
    """How to reach the Cassandra cluster (schema reads, snapshots, reconciliation)."""

    hosts: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["127.0.0.1:9042"], min_length=1)
    local_dc: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    connect_timeout_s: float = Field(default=10.0, gt=0)

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
    """Kafka connection and naming; ``extra`` passes librdkafka properties through unchanged."""

    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = Field(default="cdcpipe", pattern=r"^[A-Za-z0-9._-]+$")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    extra: dict[str, str] = Field(default_factory=dict)

    def client_config(self) -> dict[str, str | int | float | bool]:
        """librdkafka configuration common to producers, consumers and admin clients."""
        conf: dict[str, str | int | float | bool] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        conf.update(self.extra)
        return conf


class PostgresSettings(_Section):
    """The target database.  The DSN is a secret because it usually carries the password."""

    dsn: SecretStr | None = None
    schema_prefix: str = ""
    pool_min_size: int = Field(default=1, ge=1)
    pool_max_size: int = Field(default=8, ge=1)


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
    topic_replication: int = Field(default=1, gt=0)
    cdc_total_space: int = Field(default=4096 * 1024 * 1024, gt=0)  # bytes; Cassandra's cdc_total_space

    @field_validator("include_tables", "exclude_tables", mode="before")
    @classmethod
    def _split_tables(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value


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


class ObservabilitySettings(_Section):
    http_host: str = "0.0.0.0"
    http_port: int = Field(default=9400, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"


class VaultSettings(_Section):
    """Where credentials would come from in HashiCorp Vault.  This version does not read them from Vault, so
    ``url`` and ``token`` are refused when set (a process started with them would otherwise run without the
    credentials they were meant to supply); ``mount`` and ``path`` keep their defaults."""

    url: str | None = None
    token: SecretStr | None = None
    mount: str = "secret"
    path: str = "cdcpipe"

    @field_validator("url", "token")
    @classmethod
    def _not_read_from_vault(cls, value: object) -> object:
        if value is not None:
            raise ValueError("credentials are not read from Vault by this version of cdcpipe: give them as "
                             "settings (postgres.dsn, cassandra.password, kafka.sasl_password), e.g. rendered into "
                             "the environment by the Vault Agent")
        return value


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

    def redacted(self) -> dict[str, Any]:
        """All settings as plain data, secrets replaced by ``'**********'``."""
        redacted: dict[str, Any] = _redact(self.model_dump(mode="python"))
        return redacted


def _redact(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return "**********"
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items()}
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
        dotted = ".".join(str(p) for p in err["loc"])
        source = f"{env_name(dotted)} or {dotted} in --config" if config_file else env_name(dotted)
        problems.append(f"{dotted} ({source}): {err['msg']}")
    return "invalid settings: " + "; ".join(problems)
