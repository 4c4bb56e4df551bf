"""The container deployment files: compose.yaml, deploy/Dockerfile, deploy/k8s/ and deploy/grafana/.

These tests need neither network nor a Docker engine. ``docker compose config`` only parses and validates
the file. They do need a Compose CLI: the v2 plugin (``docker compose``) or Compose 1.29
(``docker-compose``, Debian package ``docker-compose``). If neither is installed the test FAILS, it is not
skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
DEPLOY = ROOT / "deploy"

SERVICES = {"cassandra", "kafka", "postgres", "capture", "apply", "prometheus", "grafana"}
METRICS = {
    "cdcpipe_capture_events_produced_total",
    "cdcpipe_capture_lag_seconds",
    "cdcpipe_apply_events_applied_total",
    "cdcpipe_apply_dlq_events_total",
}
INSTALL_HINT = (
    "neither `docker compose` (Compose v2 plugin) nor `docker-compose` is installed, so compose.yaml "
    "cannot be validated. Install one: `apt-get install -y --no-install-recommends docker-compose` "
    "(Debian/Ubuntu, Compose 1.29), or the `docker-compose-plugin` package from Docker's apt repository."
)


# ----------------------------------------------------------------------------------------------- helpers


def compose_command() -> list[str] | None:
    """``docker compose`` if the v2 plugin works, else ``docker-compose``, else None."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30,
                               check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def env_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, from either the mapping or the list form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def mounts_of(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume of a service, from the short or the long syntax."""
    out = []
    for vol in service.get("volumes") or []:
        if isinstance(vol, dict):
            out.append((str(vol.get("source", "")), str(vol["target"])))
        else:
            parts = str(vol).split(":")
            out.append((parts[0], parts[1]) if len(parts) > 1 else ("", parts[0]))
    return out


def mount_holding(service: dict[str, Any], path: str) -> tuple[str, str]:
    """The (source, target) mount of ``service`` under which the container path ``path`` lies."""
    p = PurePosixPath(path)
    matches = [(s, t) for s, t in mounts_of(service) if p == PurePosixPath(t) or PurePosixPath(t) in p.parents]
    assert matches, f"{path} is on no volume of the service (mounts: {mounts_of(service)})"
    return max(matches, key=lambda m: len(m[1]))


def host_file(source: str) -> Path:
    """A bind-mount source of compose.yaml as a path on this machine."""
    return (ROOT / source).resolve()


def published_ports(service: dict[str, Any]) -> set[int]:
    out = set()
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            out.add(int(port["target"]))
        else:
            out.add(int(str(port).split(":")[-1].split("/")[0]))
    return out


def yaml_files(*dirs: Path) -> list[Path]:
    files = sorted(p for d in dirs for p in d.rglob("*") if p.suffix in {".yaml", ".yml"})
    assert files, f"no YAML files under {dirs}"
    return files


# ----------------------------------------------------------------------------------------------- compose


def test_compose_config_is_valid() -> None:
    cmd = compose_command()
    if cmd is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("COMPOSE_") and k not in {"PYTHONPATH", "PYTHONHOME"}}
    out = subprocess.run([*cmd, "-f", str(COMPOSE), "config", "--quiet"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, f"{' '.join(cmd)} config rejected compose.yaml:\n{out.stdout}{out.stderr}"


def test_compose_has_every_service() -> None:
    services = load_compose()["services"]
    assert set(services) >= SERVICES, f"missing services: {sorted(SERVICES - set(services))}"
    assert services["cassandra"]["image"].startswith("cassandra:5.0")
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert services["postgres"]["image"].startswith("postgres:16")


def test_cassandra_yaml_enables_cdc_with_5_0_names() -> None:
    services = load_compose()["services"]
    sources = [s for s, _ in mounts_of(services["cassandra"])]
    assert "./deploy/cassandra/cassandra.yaml" in sources
    conf = yaml.safe_load((DEPLOY / "cassandra" / "cassandra.yaml").read_text())
    assert conf["cdc_enabled"] is True
    assert conf["cdc_on_repair_enabled"] is False
    assert conf["commitlog_sync"] == "periodic"
    assert conf["commitlog_sync_period"] == "500ms"
    # Old *_in_ms / *_in_mb / *_in_kb spellings are deprecated in 5.0; keep to the new names.
    old = [k for k in conf if k.endswith(("_in_ms", "_in_mb", "_in_kb")) or k == "cdc_free_space_in_mb"]
    assert not old, f"pre-5.0 key names in cassandra.yaml: {old}"


def test_cdc_raw_volume_is_shared_between_cassandra_and_capture() -> None:
    data = load_compose()
    services = data["services"]
    conf = yaml.safe_load((DEPLOY / "cassandra" / "cassandra.yaml").read_text())
    cdc_raw, commitlog = conf["cdc_raw_directory"], conf["commitlog_directory"]

    source, target = mount_holding(services["cassandra"], cdc_raw)
    assert source in (data.get("volumes") or {}), f"cdc_raw is on {source!r}, which is not a named volume"
    # Cassandra hard-links commit-log segments into cdc_raw: both must be on the same volume.
    assert mount_holding(services["cassandra"], commitlog) == (source, target)

    capture = services["capture"]
    capture_dir = env_of(capture)["CDCPIPE_CAPTURE__CDC_RAW_DIR"]
    cap_source, cap_target = mount_holding(capture, capture_dir)
    assert cap_source == source, "capture does not mount the volume that holds Cassandra's cdc_raw"
    # The same directory inside that volume, seen from both containers.
    assert PurePosixPath(cdc_raw).relative_to(target) == PurePosixPath(capture_dir).relative_to(cap_target)


def test_kafka_is_a_single_kraft_node() -> None:
    env = env_of(load_compose()["services"]["kafka"])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert "kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]


@pytest.mark.parametrize(("name", "port"), [("capture", 9400), ("apply", 9401)])
def test_cdcpipe_services(name: str, port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    services = load_compose()["services"]
    svc = services[name]
    assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (ROOT / svc["build"].get("context", ".") / svc["build"]["dockerfile"]).is_file()
    assert svc["command"] == [name]
    assert port in published_ports(svc)
    for dep, cond in svc["depends_on"].items():
        assert cond == {"condition": "service_healthy"}, f"{name} -> {dep}"
        assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy, but it has no healthcheck"

    env = env_of(svc)
    assert env["CDCPIPE_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["CDCPIPE_POSTGRES__DSN"] == "postgresql://cdcpipe:cdcpipe@postgres:5432/cdcpipe"
    assert env["CDCPIPE_CASSANDRA__HOSTS"] == "cassandra:9042"
    # cdcpipe itself accepts this environment (its settings forbid unknown keys).
    from cdcpipe.config import load_settings

    for key in list(os.environ):
        if key.startswith("CDCPIPE_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert load_settings().observability.port_for("capture" if name == "capture" else "apply") == port
    # the healthcheck asks whether the process is alive, not whether Kafka is up (that never needs a restart)
    test = " ".join(svc["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/livez" in test


def test_processes_default_to_the_ports_the_deploy_files_use() -> None:
    """capture, apply and a scheduled reconcile started side by side with default settings do not collide, and
    every deploy file uses those defaults."""
    from cdcpipe.config import DEFAULT_HTTP_PORTS, ObservabilitySettings

    obs = ObservabilitySettings()
    assert obs.http_port is None
    assert {p: obs.port_for(p) for p in DEFAULT_HTTP_PORTS} == DEFAULT_HTTP_PORTS == {
        "capture": 9400, "apply": 9401, "reconcile": 9402}
    # one shared setting would give both the same port: it is never in the shared ConfigMap nor the shared env
    configmap = yaml.safe_load((DEPLOY / "k8s" / "configmap.yaml").read_text())
    assert "CDCPIPE_OBSERVABILITY__HTTP_PORT" not in configmap["data"]
    assert "CDCPIPE_OBSERVABILITY__HTTP_PORT" not in load_compose()["x-cdcpipe-env"]


def test_prometheus_scrapes_capture_and_apply() -> None:
    prom = load_compose()["services"]["prometheus"]
    sources = {t: s for s, t in mounts_of(prom)}
    config_file = host_file(sources["/etc/prometheus/prometheus.yml"])
    assert config_file == DEPLOY / "prometheus" / "prometheus.yml"
    conf = yaml.safe_load(config_file.read_text())
    targets = {
        target
        for job in conf["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    assert {"capture:9400", "apply:9401"} <= targets


def test_grafana_is_provisioned() -> None:
    grafana = load_compose()["services"]["grafana"]
    sources = {t: s for s, t in mounts_of(grafana)}
    assert host_file(sources["/etc/grafana/provisioning"]) == DEPLOY / "grafana" / "provisioning"
    datasources = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")
                                 .read_text())["datasources"]
    assert any(ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090" for ds in datasources)
    providers = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "cdcpipe.yaml")
                               .read_text())["providers"]
    dashboards_dir = providers[0]["options"]["path"]
    assert host_file(sources[dashboards_dir]) == DEPLOY / "grafana" / "dashboards"


# ------------------------------------------------------------------------------------- Dockerfile, k8s


def test_dockerfile_and_dockerignore() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "python:3.11-slim" in text
    assert text.count("FROM ") >= 2, "expected a multi-stage build"
    assert 'ENTRYPOINT ["cdcpipe"]' in text
    assert "EXPOSE 9400 9401" in text
    # the image carries the mypyc build of the per-event modules and proves at build time that it is found fresh
    assert "python -m cdcpipe.build_compiled" in text and "CDCPIPE_COMPILED=require" in text
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and not users[-1].startswith(("root", "0")), "the image must run as a non-root user"
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".stack/", ".venv/", ".git/"} <= ignored


def test_every_k8s_and_grafana_yaml_parses() -> None:
    for path in yaml_files(DEPLOY / "k8s", DEPLOY / "grafana"):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path} is empty"
        for doc in docs:
            assert isinstance(doc, dict), f"{path}: a document is not a mapping"
            assert "apiVersion" in doc, f"{path}: no apiVersion"
            if path.parent.name == "k8s":
                assert doc.get("kind") and doc.get("metadata", {}).get("name"), f"{path}: no kind or name"


def test_k8s_manifests() -> None:
    k8s = DEPLOY / "k8s"
    docs = [d for p in yaml_files(k8s) for d in yaml.safe_load_all(p.read_text()) if d]
    by_kind_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert ("Namespace", "cdcpipe") in by_kind_name
    assert ("ConfigMap", "cdcpipe-config") in by_kind_name
    secret = by_kind_name[("Secret", "cdcpipe-secrets")]
    assert "CDCPIPE_POSTGRES__DSN" in secret["stringData"]
    assert "EXAMPLE" in (k8s / "secret.example.yaml").read_text()

    apply = by_kind_name[("Deployment", "cdcpipe-apply")]
    assert apply["spec"]["replicas"] == 2
    pod = apply["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9401"
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["apply"]
    assert container["ports"][0]["containerPort"] == 9401
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": 9401}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9401}

    sts = by_kind_name[("StatefulSet", "cassandra")]
    containers = {c["name"]: c for c in sts["spec"]["template"]["spec"]["containers"]}
    capture, cassandra = containers["capture"], containers["cassandra"]
    assert capture["args"] == ["capture"]
    assert capture["ports"][0]["containerPort"] == 9400
    assert sts["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9400"
    assert capture["livenessProbe"]["httpGet"] == {"path": "/livez", "port": 9400}
    # A pod is Ready only when every container is: a capture readiness gate would hold the Cassandra pod (and the
    # ordered rollout) NotReady during a Kafka outage.  Either no gate, or pods managed in parallel, with the reason.
    gated = any(k in capture for k in ("readinessProbe", "startupProbe"))
    parallel = sts["spec"].get("podManagementPolicy") == "Parallel"
    assert not gated or parallel, "the capture sidecar must not gate the Cassandra pod's readiness"
    assert "Why the capture sidecar has no readiness probe" in (k8s / "README.md").read_text()
    for c in (capture, cassandra):  # nothing in the pod probes cdcpipe's readiness
        for probe in ("readinessProbe", "startupProbe", "livenessProbe"):
            assert "/readyz" not in str(c.get(probe)) and "/health" not in str(c.get(probe))
    shared = {m["name"]: m["mountPath"] for m in cassandra["volumeMounts"]}
    capture_mounts = {m["name"]: m["mountPath"] for m in capture["volumeMounts"]}
    claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    assert shared[claim] == capture_mounts[claim] == "/var/lib/cassandra"

    cassandra_yaml = yaml.safe_load(by_kind_name[("ConfigMap", "cassandra-cdc-config")]["data"]["cassandra.yaml"])
    assert cassandra_yaml["cdc_enabled"] is True
    capture_env = {e["name"]: e.get("value") for e in capture["env"]}
    assert capture_env["CDCPIPE_CAPTURE__CDC_RAW_DIR"] == cassandra_yaml["cdc_raw_directory"]
    assert PurePosixPath(cassandra_yaml["commitlog_directory"]).parent == PurePosixPath("/var/lib/cassandra")


def test_grafana_dashboard_json() -> None:
    files = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
    assert files, "no dashboard JSON under deploy/grafana/dashboards"
    for path in files:
        dashboard = json.loads(path.read_text())
        assert dashboard["title"] and dashboard["uid"]
        exprs = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", []))
        missing = {m for m in METRICS if m not in exprs}
        assert not missing, f"{path.name} does not chart {sorted(missing)}"


def _size(text: str | None, default: int) -> int:
    """A cassandra.yaml data size (``32MiB``) in bytes; ``default`` when unset."""
    if text is None:
        return default
    number = str(text).rstrip("BKMGi")
    return int(number) * {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}.get(str(text)[len(number):], 1)


def test_message_limit_covers_the_largest_mutation_of_the_deployed_cassandra(monkeypatch: pytest.MonkeyPatch) -> None:
    """capture's commitlog_segment_size (which sizes kafka.max_message_bytes) is at least the node's, in compose and
    in the Kubernetes example, so the largest mutation Cassandra logs fits in one Kafka message."""
    from cdcpipe.config import DEFAULT_COMMITLOG_SEGMENT_SIZE, load_settings

    k8s = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "capture-sidecar.yaml").read_text()) if d]
    k8s_yaml = next(d for d in k8s if d["metadata"]["name"] == "cassandra-cdc-config")["data"]["cassandra.yaml"]
    compose_yaml = (DEPLOY / "cassandra" / "cassandra.yaml").read_text()
    for key in list(os.environ):
        if key.startswith("CDCPIPE_"):
            monkeypatch.delenv(key)
    for key, value in env_of(load_compose()["services"]["capture"]).items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    for text in (compose_yaml, k8s_yaml):
        node = _size(yaml.safe_load(text).get("commitlog_segment_size"), DEFAULT_COMMITLOG_SEGMENT_SIZE)
        assert settings.capture.commitlog_segment_size >= node
        assert settings.kafka.message_bytes() >= node  # half a segment, each value twice
