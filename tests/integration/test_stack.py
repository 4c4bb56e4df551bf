"""The local stack script: health, memory, idempotence, env output."""

from __future__ import annotations

import json

from tests.support.stack import stack


def test_status_reports_all_healthy_under_4_gb(stack_env: dict[str, str]) -> None:
    out = stack("status", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    status = json.loads(out.stdout)
    assert status["healthy"] is True
    names = {s["service"] for s in status["services"]}
    assert {"kafka", "postgres"} <= names and any(n.startswith("cassandra") for n in names)
    for svc in status["services"]:
        assert svc["pid"] and svc["rss_mb"] > 0, svc
    assert status["total_rss_mb"] < 4096, status


def test_up_on_a_healthy_stack_changes_nothing(stack_env: dict[str, str]) -> None:
    before = json.loads(stack("status", "--json").stdout)
    again = stack("up")
    assert again.returncode == 0, again.stderr
    assert "already healthy" in again.stderr
    after = json.loads(stack("status", "--json").stdout)
    assert [s["pid"] for s in before["services"]] == [s["pid"] for s in after["services"]]


def test_env_names_every_setting_the_tests_use(stack_env: dict[str, str]) -> None:
    for key in ("CDCPIPE_CASSANDRA__HOSTS", "CDCPIPE_CAPTURE__CDC_RAW_DIR",
                "CDCPIPE_KAFKA__BOOTSTRAP_SERVERS", "CDCPIPE_POSTGRES__DSN"):
        assert stack_env[key], key


def test_logs_prints_each_service_log(stack_env: dict[str, str]) -> None:
    out = stack("logs", "kafka", "-n", "5")
    assert out.returncode == 0
    assert "kafka" in out.stdout
    bad = stack("logs", "nosuch")
    assert bad.returncode == 1 and "no service named" in bad.stderr
