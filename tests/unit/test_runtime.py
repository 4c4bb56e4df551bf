"""/metrics and /health over real HTTP on loopback."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from prometheus_client import CollectorRegistry, Counter

from cdcpipe.runtime import Health, OpsServer


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_metrics_and_health() -> None:
    registry = CollectorRegistry()
    Counter("cdcpipe_test_things", "things", registry=registry).inc(3)
    health = Health()
    server = OpsServer(health, "127.0.0.1", 0, registry).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        status, body = get(base + "/metrics")
        assert status == 200 and b"cdcpipe_test_things_total 3.0" in body
        health.ok("kafka")
        status, body = get(base + "/health")
        assert status == 200 and json.loads(body)["status"] == "ok"
        health.fail("reader", "cdc_raw not readable")
        status, body = get(base + "/health")
        assert status == 503
        assert json.loads(body)["conditions"] == {"kafka": "ok", "reader": "cdc_raw not readable"}
        assert get(base + "/nope")[0] == 404
    finally:
        server.close()
