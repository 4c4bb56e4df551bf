"""Prometheus metrics of ``cdcpipe snapshot`` (served on ``--metrics-port`` when given)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

ROWS = Counter("cdcpipe_snapshot_rows_read", "Rows read from Cassandra by the snapshot", ["table"])
EVENTS = Counter("cdcpipe_snapshot_events_produced", "Snapshot change events delivered to Kafka", ["table"])
RANGES_DONE = Gauge("cdcpipe_snapshot_ranges_done", "Token ranges finished (recorded as done), this run and "
                    "earlier runs it resumes", ["table"])
RANGES_TOTAL = Gauge("cdcpipe_snapshot_ranges_total", "Token ranges of the snapshot", ["table"])
RANGES_SKIPPED = Counter("cdcpipe_snapshot_ranges_resumed", "Token ranges an earlier run finished, not read again",
                         ["table"])
ERRORS = Counter("cdcpipe_snapshot_errors", "Failed reads and deliveries, by cause (each retried unless it "
                 "stops the run)", ["cause"])
ELAPSED = Gauge("cdcpipe_snapshot_elapsed_seconds", "Seconds since the run started: it must stay below "
                "apply.tombstone_grace_s, or a deletion made during the snapshot could be resurrected")
REMAINING = Gauge("cdcpipe_snapshot_remaining_seconds", "Estimated seconds until the run is done")
