"""Faults mid-stream, each on a PRIVATE stack (its own Cassandra on 127.0.0.31, Kafka on 19092, PostgreSQL on
55440, state in ``<stack dir>/aux/e2e-faults``, purged afterwards) so the shared stack is untouched.

Each test ends like the fidelity test: zero mismatches, zero dead letters, each change once in Kafka and every
offset applied once (the checkpoint audit is one contiguous chain per partition).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.harness import Outcome, Pipeline, run_fidelity
from tests.support.processes import metric_sum
from tests.support.stack import StackEnv, private_stack, stack_cmd, stack_dir

pytestmark = pytest.mark.timeout(900)


def knobs() -> dict[str, str]:
    base = stack_dir()
    return {"CDCPIPE_STACK_DIR": str(base / "aux" / "e2e-faults"), "CDCPIPE_STACK_CACHE": str(base / "cache"),
            "CDCPIPE_STACK_CASSANDRA_FIRST": "31", "CDCPIPE_STACK_KAFKA_PORT": "19092",
            "CDCPIPE_STACK_PG_PORT": "55440", "CDCPIPE_STACK_SERVICES": "cassandra,kafka,postgres"}


@pytest.fixture(scope="module")
def private(stack_env: dict[str, str]) -> Iterator[StackEnv]:
    with private_stack(knobs()) as env:
        yield env


def size(long_run: bool) -> tuple[int, float]:
    """(operations, statements per second): CI size keeps each test well under 3 minutes."""
    return (200_000, 2000.0) if long_run else (3000, 150.0)


def check(outcome: Outcome, *, workload_errors_allowed: bool = False) -> None:
    print(outcome.summary())
    problems = [p for p in outcome.problems() if not (workload_errors_allowed and p.startswith("workload errors"))]
    assert not problems, "\n".join(problems)
    assert outcome.events == outcome.distinct_events


def mid_stream(pipeline: Pipeline, timeout: float = 120) -> None:
    """Wait until capture has produced and apply has applied events: the pipeline is streaming."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        produced = metric_sum(pipeline.captures[0].metrics(), "cdcpipe_capture_events_produced_total")
        applied = metric_sum(pipeline.apply.metrics(), "cdcpipe_apply_events_applied_total")
        if produced > 0 and applied > 0:
            time.sleep(2)
            return
        time.sleep(0.5)
    raise AssertionError("the pipeline did not start streaming")


def restart_service(service: str) -> Callable[[Pipeline, threading.Event], list[str]]:
    """Stop ``service`` of the private stack a few seconds into the workload, and start it again 5 s later."""

    def during(pipeline: Pipeline, done: threading.Event) -> list[str]:
        mid_stream(pipeline)
        down = stack_cmd(knobs(), "down", "--service", service, timeout=120)
        assert down.returncode == 0, down.stderr
        stopped = time.monotonic()
        time.sleep(5)
        up = stack_cmd(knobs(), "up", timeout=400)
        assert up.returncode == 0, up.stderr
        return [f"{service} down for {time.monotonic() - stopped:.1f}s"]

    return during


def test_kill_9_capture_and_apply(private: StackEnv, long_run: bool, tmp_path: Path) -> None:
    ops, rate = size(long_run)
    rng = random.Random(99)
    kills = 5 if not long_run else 20

    def during(pipeline: Pipeline, done: threading.Event) -> list[str]:
        span = ops / rate * 0.8
        moments = sorted(rng.uniform(1.0, span) for _ in range(2 * kills))
        victims = [pipeline.captures[0]] * kills + [pipeline.apply] * kills
        rng.shuffle(victims)
        log, t0 = [], time.monotonic()
        for at, victim in zip(moments, victims, strict=True):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            victim.kill()
            victim.start()
            log.append(f"kill -9 {victim.name} at {at:.1f}s")
        return log

    outcome = run_fidelity(private, tmp_path, ops=ops, seed=31, rate=rate, during=during)
    assert sum(1 for f in outcome.faults if "capture" in f) >= 5 and sum(1 for f in outcome.faults
                                                                      if "apply" in f) >= 5
    check(outcome)


def test_postgres_restart(private: StackEnv, long_run: bool, tmp_path: Path) -> None:
    ops, rate = size(long_run)
    check(run_fidelity(private, tmp_path, ops=ops, seed=32, rate=rate, during=restart_service("postgres")))


def test_kafka_restart(private: StackEnv, long_run: bool, tmp_path: Path) -> None:
    ops, rate = size(long_run)
    check(run_fidelity(private, tmp_path, ops=ops, seed=33, rate=rate, during=restart_service("kafka")))


def test_cassandra_restart(private: StackEnv, long_run: bool, tmp_path: Path) -> None:
    ops, rate = size(long_run)
    # writes attempted while the node is down fail (the client sees it); Cassandra's content is still the truth
    outcome = run_fidelity(private, tmp_path, ops=ops, seed=34, rate=rate, during=restart_service("cassandra"))
    check(outcome, workload_errors_allowed=True)
