"""Settings: environment and YAML sources, precedence, clear errors, secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from cdcpipe.cli import main
from cdcpipe.config import MIB, Settings, env_name, is_secret_key, load_settings, replication_factor
from cdcpipe.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("CDCPIPE_"):
            monkeypatch.delenv(key)


def test_defaults_point_at_loopback() -> None:
    s = load_settings()
    assert s.cassandra.contact_points() == [("127.0.0.1", 9042)]
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert s.postgres.dsn is None


def test_environment_variables_mirror_module_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDCPIPE_CASSANDRA__HOSTS", "10.0.0.1:9043, node2")
    monkeypatch.setenv("CDCPIPE_CAPTURE__CDC_RAW_DIR", "/var/lib/cassandra/cdc_raw")
    monkeypatch.setenv("CDCPIPE_KAFKA__TOPIC_PREFIX", "prod")
    s = load_settings()
    assert s.cassandra.contact_points() == [("10.0.0.1", 9043), ("node2", 9042)]
    assert s.capture.cdc_raw_dir == Path("/var/lib/cassandra/cdc_raw")
    assert s.kafka.topic_prefix == "prod"
    assert env_name("capture.cdc_raw_dir") == "CDCPIPE_CAPTURE__CDC_RAW_DIR"


def test_yaml_file_is_read_and_environment_overrides_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "cdcpipe.yaml"
    cfg.write_text("kafka:\n  bootstrap_servers: broker:9092\n  topic_prefix: fromfile\n"
                   "capture:\n  poll_interval_ms: 50\n")
    monkeypatch.setenv("CDCPIPE_KAFKA__TOPIC_PREFIX", "fromenv")
    s = load_settings(cfg)
    assert s.kafka.bootstrap_servers == "broker:9092"
    assert s.kafka.topic_prefix == "fromenv"
    assert s.capture.poll_interval_ms == 50


def test_invalid_values_name_the_setting_and_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDCPIPE_CAPTURE__POLL_INTERVAL_MS", "500")
    monkeypatch.setenv("CDCPIPE_OBSERVABILITY__HTTP_PORT", "notaport")
    with pytest.raises(ConfigError) as err:
        load_settings()
    text = str(err.value)
    assert "capture.poll_interval_ms (CDCPIPE_CAPTURE__POLL_INTERVAL_MS)" in text
    assert "observability.http_port (CDCPIPE_OBSERVABILITY__HTTP_PORT)" in text


def test_unknown_keys_in_the_file_are_rejected(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kafka:\n  bootstrap_server: typo:9092\n")
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap_server"):
        load_settings(cfg)


def test_bad_yaml_and_missing_file_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read --config"):
        load_settings(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(scalar)


def test_require_names_a_missing_setting() -> None:
    with pytest.raises(ConfigError, match=r"missing setting postgres\.dsn \(set CDCPIPE_POSTGRES__DSN"):
        load_settings().require("postgres.dsn")


def test_secrets_are_never_printed(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CDCPIPE_POSTGRES__DSN", "postgresql://u:hunter2@db/x")
    monkeypatch.setenv("CDCPIPE_KAFKA__SASL_PASSWORD", "s3cret-kafka")
    s = load_settings()
    assert s.postgres.dsn is not None and s.postgres.dsn.get_secret_value().endswith("@db/x")
    for text in (repr(s), str(s.redacted())):
        assert "hunter2" not in text and "s3cret-kafka" not in text
    assert main(["config"]) == 0
    assert main(["config", "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "s3cret-kafka" not in out and "**********" in out


def test_vault_settings_that_cannot_work_are_refused(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A Vault URL without the login its method needs, or with nothing to read, stops the process with one clear
    line (never silently running without the credentials it was meant to supply); the token is never shown."""
    monkeypatch.setenv("CDCPIPE_VAULT__URL", "https://vault.example:8200")
    monkeypatch.setenv("CDCPIPE_VAULT__DATABASE_ROLE", "apply")
    with pytest.raises(ConfigError, match=r"vault.auth_method token needs vault.token"):
        load_settings()
    monkeypatch.setenv("CDCPIPE_VAULT__AUTH_METHOD", "approle")
    with pytest.raises(ConfigError, match=r"vault.auth_method approle needs vault.role_id, vault.secret_id"):
        load_settings()
    monkeypatch.setenv("CDCPIPE_VAULT__AUTH_METHOD", "token")
    monkeypatch.setenv("CDCPIPE_VAULT__TOKEN", "hvs.planted-token")
    monkeypatch.delenv("CDCPIPE_VAULT__DATABASE_ROLE")
    with pytest.raises(ConfigError, match=r"nothing is read from it"):
        load_settings()
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "planted-token" not in err
    monkeypatch.setenv("CDCPIPE_VAULT__KAFKA_PATH", "cdcpipe/kafka")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "planted-token" not in out and "cdcpipe/kafka" in out


def test_cli_reports_bad_settings_in_one_line_with_status_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CDCPIPE_KAFKA__SECURITY_PROTOCOL", "CARRIER_PIGEON")
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "kafka.security_protocol (CDCPIPE_KAFKA__SECURITY_PROTOCOL)" in err
    assert "Traceback" not in err



def test_capture_and_apply_default_to_different_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    obs = load_settings().observability
    assert obs.http_port is None
    assert (obs.port_for("capture"), obs.port_for("apply")) == (9400, 9401)
    monkeypatch.setenv("CDCPIPE_OBSERVABILITY__HTTP_PORT", "9555")
    assert load_settings().observability.port_for("apply") == 9555


def test_topic_replication_defaults_to_min_3_brokers_and_1_only_when_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().capture.topic_replication is None
    assert [replication_factor(None, n) for n in (1, 2, 3, 5)] == [1, 2, 3, 3]
    assert replication_factor(1, 5) == 1  # an explicit choice is kept
    with pytest.raises(ConfigError, match="CDCPIPE_CAPTURE__TOPIC_REPLICATION"):
        replication_factor(None, 0)
    monkeypatch.setenv("CDCPIPE_CAPTURE__TOPIC_REPLICATION", "1")
    assert load_settings().capture.topic_replication == 1


@pytest.mark.parametrize(("key", "secret"), [
    ("ssl.key.password", True), ("ssl.key.pem", True), ("ssl.keystore.password", True),
    ("sasl.password", True), ("sasl.oauthbearer.client.secret", True), ("sasl.oauthbearer.config", True),
    ("sasl.oauthbearer.assertion.private.key.passphrase", True), ("api_key", True), ("vault.token", True),
    ("ssl.key.location", False), ("ssl.keystore.location", False), ("ssl.ca.location", False),
    ("sasl.oauthbearer.token.endpoint.url", False), ("sasl.oauthbearer.assertion.private.key.file", False),
    ("sasl.oauthbearer.client.id", False), ("sasl.mechanism", False), ("sasl.username", False),
    ("client.id", False), ("linger.ms", False), ("keystore", False), ("topic_prefix", False),
])
def test_which_keys_name_a_secret(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_every_setting_that_names_a_secret_is_a_secret_str() -> None:
    """A field whose name names a secret must be SecretStr, or it would be shown (fields added later included)."""
    def walk(model: type[BaseModel], prefix: str) -> list[str]:
        bad = []
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                bad += walk(ann, f"{prefix}{name}.")
            elif is_secret_key(name) and "SecretStr" not in str(ann):
                bad.append(prefix + name)
        return bad

    assert walk(Settings, "") == []


def test_kafka_extra_secrets_are_hidden_everywhere_settings_are_shown(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CDCPIPE_KAFKA__EXTRA", '{"ssl.key.password": "pl4nted-keypw", "ssl.key.location": '
                       '"/etc/kafka/client.key", "sasl.oauthbearer.client.secret": "pl4nted-oauth"}')
    s = load_settings()
    assert s.kafka.client_config()["ssl.key.password"] == "pl4nted-keypw"  # the client still gets it
    shown = s.redacted()["kafka"]["extra"]
    assert shown == {"ssl.key.password": "**********", "ssl.key.location": "/etc/kafka/client.key",
                     "sasl.oauthbearer.client.secret": "**********"}
    for text in (repr(s), str(s), repr(s.kafka), str(s.kafka)):
        assert "pl4nted" not in text and "/etc/kafka/client.key" in text
    assert main(["config"]) == 0 and main(["config", "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert "pl4nted" not in out and "/etc/kafka/client.key" in out


def test_message_size_follows_the_commit_log_segment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The largest mutation is half a segment; its event carries each value twice, plus an envelope."""
    s = load_settings()
    assert s.capture.commitlog_segment_size == 32 * MIB
    assert s.kafka.max_message_bytes == 33 * MIB
    conf = s.kafka.client_config()
    assert s.kafka.topic_config() == {"max.message.bytes": str(33 * MIB)}
    assert int(conf["message.max.bytes"]) >= 33 * MIB
    fetch = s.kafka.fetch_config()
    assert fetch["max.partition.fetch.bytes"] >= 33 * MIB and fetch["fetch.max.bytes"] >= 33 * MIB
    assert int(conf["receive.message.max.bytes"]) >= fetch["fetch.max.bytes"] + 512  # librdkafka's rule
    monkeypatch.setenv("CDCPIPE_CAPTURE__COMMITLOG_SEGMENT_SIZE", str(64 * MIB))
    assert load_settings().kafka.max_message_bytes == 65 * MIB
    monkeypatch.setenv("CDCPIPE_KAFKA__MAX_MESSAGE_BYTES", str(70 * MIB))
    assert load_settings().kafka.max_message_bytes == 70 * MIB  # set explicitly: kept
    # below what the largest mutation needs: refused, naming both settings (it would stop capture at that mutation)
    monkeypatch.setenv("CDCPIPE_KAFKA__MAX_MESSAGE_BYTES", str(5 * MIB))
    with pytest.raises(ConfigError, match=r"^invalid settings: kafka\.max_message_bytes \(CDCPIPE_KAFKA__MAX_MESSAGE_"
                       r"BYTES\) is 5242880, below the 68157440 bytes .*CDCPIPE_CAPTURE__COMMITLOG_SEGMENT_SIZE"):
        load_settings()
    monkeypatch.setenv("CDCPIPE_CAPTURE__COMMITLOG_SEGMENT_SIZE", str(4 * MIB))
    assert load_settings().kafka.max_message_bytes == 5 * MIB  # enough for 4 MiB segments


def test_status_looks_for_the_default_ports(tmp_path: Path) -> None:
    """``cdcpipe status`` without a demo run folder reads capture and apply on their default ports."""
    from cdcpipe.status import ports

    assert ports(tmp_path) == ("http://127.0.0.1:9400/metrics", "http://127.0.0.1:9401/metrics")
