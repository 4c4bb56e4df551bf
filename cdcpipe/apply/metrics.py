"""Prometheus metrics of the apply process (names are used by the Grafana dashboard: keep them)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_APPLIED = Counter("cdcpipe_apply_events_applied_total", "Change events applied to PostgreSQL",
                         ["table", "op"])
DLQ_EVENTS = Counter("cdcpipe_apply_dlq_events_total", "Events sent to the dead-letter topic and table", ["table"])
DLQ_REPLAYS = Counter("cdcpipe_dlq_replays_total", "Dead-letter replays by result (applied, already_replayed, "
                      "not_open, failed)", ["result"])
DLQ_RECORDS = Gauge("cdcpipe_dlq_records", "Dead letters in cdcpipe_dlq by status (pending, failed: a replay failed "
                    "too; replayed, resolved), counted every apply.purge_interval_s", ["table", "error_type", "status"])
DUPLICATES = Counter("cdcpipe_apply_duplicates_total",
                     "Duplicates and stale events ignored: kind=in_batch (events that changed nothing on top of "
                     "earlier events of their batch), unchanged_row (rows a batch left unchanged), already_applied "
                     "(events below the stored checkpoint)", ["table", "kind"])
BATCH_SIZE = Histogram("cdcpipe_apply_batch_events", "Events per committed batch",
                       buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000, 10000, 20000))
BATCH_SECONDS = Histogram("cdcpipe_apply_batch_seconds", "Wall time of one batch transaction",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
DELAY = Histogram("cdcpipe_apply_delay_seconds",
                  "From an event's Kafka timestamp (when capture produced it) to the PostgreSQL commit that applied "
                  "it: per batch, its oldest event (apply's share of the end-to-end latency, with capture's commit)",
                  ["table"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
RETRIES = Counter("cdcpipe_apply_retries_total", "Retried batch writes after a transient failure", ["table"])
LAG = Gauge("cdcpipe_apply_consumer_lag", "High watermark minus the next offset to apply", ["topic", "partition"])
PAUSED = Gauge("cdcpipe_apply_paused",
               "1 while writes to a table are held by a fault of the table or the server (read-only, privilege, "
               "table or column dropped, disk full, shutdown), with its SQLSTATE; 0 once resumed",
               ["table", "sqlstate"])
GAPS = Gauge("cdcpipe_apply_gap_offsets",
             "Offsets a stopped partition needs that Kafka no longer has (retention expired or topic recreated); the "
             "partition stays stopped until an operator re-snapshots and moves its checkpoint", ["topic", "partition"])
TRUNCATIONS = Counter("cdcpipe_apply_truncations_total",
                      "Truncations (TRUNCATE in Cassandra) applied to a mirrored table's stored rows", ["table"])
SCHEMA_CHANGES = Counter("cdcpipe_apply_schema_changes_total", "Schema changes recorded in cdcpipe_schema_history "
                         "(from <prefix>.schema-changes, one per node that saw it)", ["table", "change"])
DROPPED_TABLE_EVENTS = Counter("cdcpipe_apply_dropped_table_events_total", "Events of a table dropped in Cassandra "
                               "read after its mirror was dropped (apply.on_table_drop = drop): not written", ["table"])
