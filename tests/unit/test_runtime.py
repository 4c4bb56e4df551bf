"""/metrics, /livez, /readyz and /health over real HTTP on loopback, and serve's heartbeat."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import socket
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from cdcpipe.config import ObservabilitySettings, Settings
from cdcpipe.errors import ConfigError
from cdcpipe.runtime import Health, OpsServer, serve


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


def test_readyz_and_health_alias_with_reasons() -> None:
    health = Health()
    server = OpsServer(health, "127.0.0.1", 0, CollectorRegistry()).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        health.ok("kafka")
        health.fail("postgres", "unreachable: connection refused")
        for path in ("/readyz", "/health"):
            status, body = get(base + path)
            assert status == 503, path
            assert json.loads(body) == {"status": "unhealthy",
                                        "conditions": {"kafka": "ok", "postgres": "unreachable: connection refused"}}
        assert get(base + "/livez")[0] == 200  # a dependency's outage is no reason to restart the process
        health.ok("postgres")
        assert get(base + "/readyz")[0] == 200 and get(base + "/health")[0] == 200
    finally:
        server.close()


def test_livez_fails_when_the_heartbeat_is_late() -> None:
    health = Health(liveness_timeout_s=0.3)
    server = OpsServer(health, "127.0.0.1", 0, CollectorRegistry()).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert get(base + "/livez")[0] == 200
        time.sleep(0.5)
        status, body = get(base + "/livez")
        assert status == 503 and "event loop blocked" in json.loads(body)["reason"]
        status, body = get(base + "/readyz")  # a loop that does not run makes no progress either
        assert status == 503 and "no heartbeat" in json.loads(body)["conditions"]["loop"]
        health.beat()
        assert get(base + "/livez")[0] == 200 and get(base + "/readyz")[0] == 200
    finally:
        server.close()


def _settings(port: int, liveness_timeout_s: float = 30.0) -> Settings:
    return Settings(observability=ObservabilitySettings(http_host="127.0.0.1", http_port=port, log_level="WARNING",
                                                        liveness_timeout_s=liveness_timeout_s))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_beats_the_heartbeat_and_livez_sees_a_blocked_loop() -> None:
    """serve's heartbeat keeps /livez 200 while the loop runs; a loop blocked longer than
    observability.liveness_timeout_s turns it 503 (the server answers from its own thread), and it recovers."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    seen: dict[str, list[int]] = {"running": [], "blocked": [], "after": []}

    async def run(settings: Settings, health: Health, stop: asyncio.Event) -> int:
        health.ok("test")
        await asyncio.sleep(1.5)  # longer than the timeout: only the heartbeat keeps /livez up
        seen["running"].append((await asyncio.to_thread(get, base + "/livez"))[0])
        poller = concurrent.futures.ThreadPoolExecutor(1)
        def probe_while_blocked() -> int:
            time.sleep(1.6)
            return get(base + "/livez")[0]

        future = poller.submit(probe_while_blocked)
        time.sleep(2.5)  # blocks the event loop
        seen["blocked"].append(future.result())
        poller.shutdown()
        await asyncio.sleep(1.2)
        seen["after"].append((await asyncio.to_thread(get, base + "/livez"))[0])
        return 7

    assert serve(_settings(port, liveness_timeout_s=1.0), run, process="capture") == 7
    assert seen == {"running": [200], "blocked": [503], "after": [200]}


def test_a_port_in_use_is_a_clear_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def run(settings: Settings, health: Health, stop: asyncio.Event) -> int:
            raise AssertionError("must not start")

        with pytest.raises(ConfigError, match=rf"127\.0\.0\.1:{port}.*CDCPIPE_OBSERVABILITY__HTTP_PORT"):
            serve(_settings(port), run, process="apply")

