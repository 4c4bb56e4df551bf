"""TLS settings without a server: each store's ``tls`` section validated (a certificate needs its key, Kafka's TLS
needs an SSL protocol), turned into librdkafka properties and an SSL context (verify-full by default), files that
cannot be loaded refused naming the setting, and a refused handshake told apart from an outage."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from cdcpipe.config import load_settings
from cdcpipe.errors import ConfigError
from cdcpipe.tls import ssl_context, tls_failure


def test_tls_is_off_by_default_and_verifies_when_on(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    for store in (s.cassandra, s.kafka, s.postgres):
        assert not store.tls.enabled and ssl_context(store.tls, "x.tls") is None
    assert "ssl.ca.location" not in s.kafka.client_config()
    monkeypatch.setenv("CDCPIPE_POSTGRES__TLS__ENABLED", "true")
    ctx = ssl_context(load_settings().postgres.tls, "postgres.tls")
    assert ctx is not None and ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    monkeypatch.setenv("CDCPIPE_POSTGRES__TLS__VERIFY_HOSTNAME", "false")
    ctx = ssl_context(load_settings().postgres.tls, "postgres.tls")
    assert ctx is not None and not ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED


def test_kafka_tls_properties(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDCPIPE_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("CDCPIPE_KAFKA__TLS__ENABLED", "true")
    monkeypatch.setenv("CDCPIPE_KAFKA__TLS__CA_FILE", "/etc/ca.pem")
    monkeypatch.setenv("CDCPIPE_KAFKA__TLS__CERT_FILE", "/etc/client.pem")
    monkeypatch.setenv("CDCPIPE_KAFKA__TLS__KEY_FILE", "/etc/client.key")
    monkeypatch.setenv("CDCPIPE_KAFKA__TLS__KEY_PASSWORD", "key-secret-123")
    s = load_settings()
    conf = s.kafka.client_config()
    assert conf["ssl.ca.location"] == "/etc/ca.pem" and conf["ssl.endpoint.identification.algorithm"] == "https"
    assert conf["ssl.certificate.location"] == "/etc/client.pem" and conf["ssl.key.location"] == "/etc/client.key"
    assert conf["ssl.key.password"] == "key-secret-123" and conf["enable.ssl.certificate.verification"] is True
    assert "key-secret-123" not in repr(s) and "key-secret-123" not in str(s.redacted())


def test_inconsistent_tls_settings_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDCPIPE_KAFKA__TLS__ENABLED", "true")
    with pytest.raises(ConfigError, match=r"kafka.tls.enabled needs kafka.security_protocol SSL or SASL_SSL"):
        load_settings()
    monkeypatch.delenv("CDCPIPE_KAFKA__TLS__ENABLED")
    monkeypatch.setenv("CDCPIPE_CASSANDRA__TLS__CERT_FILE", "/etc/client.pem")
    with pytest.raises(ConfigError, match=r"cassandra.tls.*both tls.cert_file and tls.key_file"):
        load_settings()


def test_files_that_cannot_be_loaded_name_the_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CDCPIPE_CASSANDRA__TLS__ENABLED", "true")
    monkeypatch.setenv("CDCPIPE_CASSANDRA__TLS__CA_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match=r"cassandra.tls.ca_file .*missing.pem: cannot load the CA"):
        ssl_context(load_settings().cassandra.tls, "cassandra.tls")
    (tmp_path / "bad.pem").write_text("not a certificate")
    monkeypatch.setenv("CDCPIPE_CASSANDRA__TLS__CA_FILE", str(tmp_path / "bad.pem"))
    with pytest.raises(ConfigError, match="cannot load the CA"):
        ssl_context(load_settings().cassandra.tls, "cassandra.tls")
    monkeypatch.delenv("CDCPIPE_CASSANDRA__TLS__CA_FILE")
    monkeypatch.setenv("CDCPIPE_CASSANDRA__TLS__CERT_FILE", str(tmp_path / "bad.pem"))
    monkeypatch.setenv("CDCPIPE_CASSANDRA__TLS__KEY_FILE", str(tmp_path / "bad.pem"))
    with pytest.raises(ConfigError, match=r"cassandra.tls.cert_file .* cannot load the client certificate"):
        ssl_context(load_settings().cassandra.tls, "cassandra.tls")


def test_a_refused_handshake_is_told_apart_from_an_outage() -> None:
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "unable to get local issuer certificate"
    wrapped = ConnectionError("connect failed")
    wrapped.__cause__ = verify
    assert tls_failure(wrapped) == "the server's certificate was not accepted: unable to get local issuer certificate"

    class NoHostAvailable(Exception):  # the driver's shape: per-host errors in ``errors``
        def __init__(self, errors: dict[str, BaseException]) -> None:
            super().__init__("Unable to connect to any servers", errors)
            self.errors = errors

    assert tls_failure(NoHostAvailable({"127.0.0.1:9042": verify})) is not None
    text = PermissionError(1, "Tried connecting to [('127.0.0.1', 9042)]. Last error: [SSL: CERTIFICATE_VERIFY_FAILED] "
                              "certificate verify failed: self-signed certificate in certificate chain (_ssl.c:1006)")
    assert tls_failure(NoHostAvailable({"127.0.0.1:9042": text})) == (
        "the server's certificate was not accepted: certificate verify failed: self-signed certificate in "
        "certificate chain")
    assert tls_failure(NoHostAvailable({"127.0.0.1:9042": ConnectionRefusedError(111, "refused")})) is None
    assert tls_failure(TimeoutError("timed out")) is None
