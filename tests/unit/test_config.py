"""Settings: environment and YAML sources, precedence, clear errors, secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdcpipe.cli import main
from cdcpipe.config import env_name, load_settings
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


@pytest.mark.parametrize("name", ["CDCPIPE_VAULT__URL", "CDCPIPE_VAULT__TOKEN"])
def test_vault_settings_are_refused_not_ignored(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Credentials are not read from Vault: a Vault setting must stop the process with a clear message, not be
    silently ignored while the credentials it was meant to supply are missing."""
    monkeypatch.setenv(name, "https://vault.example:8200" if name.endswith("URL") else "hvs.token")
    with pytest.raises(ConfigError, match=r"vault\.(url|token) .*not read from Vault.*Vault Agent"):
        load_settings()
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hvs.token" not in err


def test_cli_reports_bad_settings_in_one_line_with_status_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CDCPIPE_KAFKA__SECURITY_PROTOCOL", "CARRIER_PIGEON")
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "kafka.security_protocol (CDCPIPE_KAFKA__SECURITY_PROTOCOL)" in err
    assert "Traceback" not in err

