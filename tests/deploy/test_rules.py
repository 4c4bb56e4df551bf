"""The alert rules shipped in deploy/prometheus/rules.yml: loaded by prometheus.yml and compose.yaml, every
metric they name is one cdcpipe exports, and reconcile's drift thresholds are the documented ones (warning above
0.1 %, critical above 1 %)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"


def exported() -> set[str]:
    for module in ("cdcpipe.reconcile.metrics", "cdcpipe.apply.metrics", "cdcpipe.capture.metrics",
                   "cdcpipe.snapshot.metrics"):
        importlib.import_module(module)
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        if family.type == "counter":  # a labelled counter has no sample before its first use
            names.add(family.name + "_total")
        names.update(s.name for s in family.samples)
    return names


def test_rules_are_loaded_and_name_exported_metrics() -> None:
    assert "rules.yml" in yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())["rule_files"]
    assert "./deploy/prometheus/rules.yml:/etc/prometheus/rules.yml:ro" in (ROOT / "compose.yaml").read_text()
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    names = exported()
    for rule in rules:
        assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
        for metric in re.findall(r"\bcdcpipe_[a-z_]+", rule["expr"]):
            assert metric in names, (rule["alert"], metric)
    by_name = {r["alert"]: r for r in rules}
    assert by_name["CdcpipeReconcileDriftWarning"]["expr"].endswith("> 0.001")
    assert by_name["CdcpipeReconcileDriftWarning"]["labels"]["severity"] == "warning"
    assert by_name["CdcpipeReconcileDriftCritical"]["expr"].endswith("> 0.01")
    assert by_name["CdcpipeReconcileDriftCritical"]["labels"]["severity"] == "critical"
