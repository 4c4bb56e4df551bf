"""PostgreSQL equals Cassandra after a seeded random workload over every kind of write, on the shared stack."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.harness import run_fidelity
from tests.support.stack import StackEnv

pytestmark = pytest.mark.timeout(600)


def test_random_workload_mirrors_exactly(stack_env: dict[str, str], long_run: bool, tmp_path: Path) -> None:
    ops = 200_000 if long_run else 3000
    started = time.monotonic()
    outcome = run_fidelity(StackEnv(stack_env), tmp_path, ops=ops, seed=20261125, rate=None if long_run else 400)
    print(outcome.summary())
    assert not outcome.problems(), "\n".join(outcome.problems())
    kinds = outcome.tally.base_kinds()
    for kind in ("insert", "update", "row_delete", "cell_delete", "partition_delete", "range_delete",
                 "set_remove", "map_delete", "static_update", "batch_logged", "batch_unlogged", "ttl_short",
                 "ts_in_order", "ts_out_of_order", "udt_field"):
        assert kinds[kind] > 0, f"the workload did no {kind}"
    assert sum(t.static_only for t in outcome.report.tables) > 0, "no static-only partition was compared"
    assert outcome.events == outcome.distinct_events  # one node: each change once in Kafka
    applied = sum(v for k, v in outcome.apply_metrics.items() if k.startswith("cdcpipe_apply_events_applied_total{"))
    assert applied == outcome.events, (applied, outcome.events)
    print(f"e2e fidelity: {ops} ops in {time.monotonic() - started:.1f}s")
