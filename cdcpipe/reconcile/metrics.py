"""Reconcile's metrics, for its scheduled mode (``cdcpipe reconcile --every``; served on ``/metrics``) — also set
by a one-shot run, in its own process.  Alert rules on them: ``deploy/prometheus/rules.yml``."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Counter, Gauge, Histogram

from cdcpipe.reconcile.compare import TableResult

DRIFT = Gauge("cdcpipe_reconcile_drift_ratio", "Rows that differ between PostgreSQL and Cassandra, of the larger "
              "side's rows, in the table's last reconcile run (after repair, when repairing)", ["table"])
MISMATCHES = Counter("cdcpipe_reconcile_mismatches_total", "Differing rows found by reconcile runs (each run "
                     "counts what it found)", ["table", "kind"])
DURATION = Histogram("cdcpipe_reconcile_duration_seconds", "Wall time of a reconcile run (every table)",
                     buckets=(1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 43200))
RUNS = Counter("cdcpipe_reconcile_runs_total", "Reconcile runs by outcome (equal, drift, repaired, failed)",
               ["status"])
LAST = Gauge("cdcpipe_reconcile_last_run_timestamp_seconds", "When the last reconcile run of each outcome ended",
             ["status"])
TRANSFERRED = Gauge("cdcpipe_reconcile_transferred_ratio", "What the table's last run read again to compare rows, "
                    "of what it hashed", ["table"])


def observe(results: Sequence[TableResult], seconds: float, status: str) -> None:
    for r in results:
        DRIFT.labels(r.table).set(r.drift_ratio)
        TRANSFERRED.labels(r.table).set(r.transferred_ratio)
        for d in r.differences:
            MISMATCHES.labels(r.table, d.kind).inc()
    DURATION.observe(seconds)
    RUNS.labels(status).inc()
    LAST.labels(status).set_to_current_time()


def failed(seconds: float) -> None:
    DURATION.observe(seconds)
    RUNS.labels("failed").inc()
    LAST.labels("failed").set_to_current_time()
