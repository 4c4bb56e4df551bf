"""``cdcpipe snapshot`` on tables that held data before CDC was switched on, while a random workload (updates,
deletes of every kind, TTLs, ``USING TIMESTAMP`` in the past) writes to the same rows: the snapshot is killed
(-9) part way and resumed, and PostgreSQL must still equal Cassandra exactly, with the finished ranges not read
again."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdcpipe.demo import workload
from tests.support.harness import run_fidelity
from tests.support.snapshotkit import SnapshotRun, snapshot_during
from tests.support.stack import StackEnv

pytestmark = pytest.mark.timeout(1800)

# key spaces of about 21,000 rows (users 8,000, readings 150 x 6 x 12, wide 40 x 50); 30,000 random statements
# with CDC off leave about 8,000 rows before CDC; --long: key spaces of about 1,060,000 rows, 3,000,000 statements
CI_SIZES = workload.Sizes(users=8000, devices=150, days=6, seqs=12, wide_k=40, wide_c=50)
LONG_SIZES = workload.Sizes(users=600_000, devices=5000, days=6, seqs=12, wide_k=400, wide_c=250)
SPLITS = 48


def check_runs(runs: list[SnapshotRun]) -> None:
    assert len(runs) == 2 and runs[0].killed, [r.output[-2000:] for r in runs]
    resumed = runs[1]
    assert resumed.returncode == 0, resumed.output[-3000:]
    total = resumed.ranges_read + resumed.ranges_resumed
    # one run per table: each table is cut into about SPLITS ranges
    assert total >= 3 * SPLITS // 2, resumed.output[-2000:]
    assert resumed.ranges_resumed >= 1, f"the killed run finished no range:\n{resumed.output[-2000:]}"
    assert resumed.ranges_read < total, "the resumed run read again the ranges the killed run finished"


def test_snapshot_under_load_killed_and_resumed(stack_env: dict[str, str], long_run: bool, tmp_path: Path) -> None:
    runs: list[SnapshotRun] = []
    rate = "20000" if long_run else "4000"
    outcome = run_fidelity(
        StackEnv(stack_env), tmp_path, ops=40_000 if long_run else 3000, seed=41, rate=None if long_run else 150,
        sizes=LONG_SIZES if long_run else CI_SIZES, preload_ops=3_000_000 if long_run else 30_000,
        during=snapshot_during(runs, kill_after_s=60.0 if long_run else 3.0,
                               args=("--splits", str(SPLITS), "--concurrency", "2", "--rate", rate)))
    print(outcome.summary())
    print(*(r.output[-600:] for r in runs), sep="\n")
    check_runs(runs)
    assert not outcome.problems(), "\n".join(outcome.problems())
