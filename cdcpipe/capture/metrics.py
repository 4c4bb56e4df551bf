"""Prometheus metrics of the capture process (names are part of the operations contract: the Grafana dashboard
in ``deploy/grafana`` uses ``cdcpipe_capture_events_produced_total`` and ``cdcpipe_capture_lag_seconds``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MUTATIONS_READ = Counter("cdcpipe_capture_mutations_read", "Commit-log entries read from CDC segments")
MUTATIONS_DECODED = Counter("cdcpipe_capture_mutations_decoded", "Entries of captured keyspaces decoded")
EVENTS_PRODUCED = Counter("cdcpipe_capture_events_produced", "Change events committed to Kafka",
                          ["keyspace", "table", "op"])
TRANSACTIONS = Counter("cdcpipe_capture_transactions", "Kafka transactions", ["outcome"])
SECTION_ERRORS = Counter("cdcpipe_capture_section_errors", "Damaged sync sections or entries in segments")
DEAD_LETTERS = Counter("cdcpipe_capture_dead_letters", "Entries that could not be decoded, sent to the DLQ topic")
CDC_RAW_BYTES = Gauge("cdcpipe_capture_cdc_raw_bytes", "Bytes held in cdc_raw")
CDC_RAW_USAGE = Gauge("cdcpipe_capture_cdc_raw_usage_ratio", "cdc_raw bytes / capture.cdc_total_space")
LAG_SECONDS = Gauge("cdcpipe_capture_lag_seconds",
                    "now - newest write timestamp in the last committed transaction (0 when caught up)")
SEGMENTS_DELETED = Counter("cdcpipe_capture_segments_deleted", "Shipped segments deleted from cdc_raw")
POSITION_SEGMENT = Gauge("cdcpipe_capture_position_segment", "Segment id of the last committed position")
POSITION_OFFSET = Gauge("cdcpipe_capture_position_offset", "Offset of the last committed position")
DELAY_SECONDS = Histogram(
    "cdcpipe_capture_delay_seconds",
    "Capture's own share of latency: from the _cdc.idx rewrite that made data durable (file mtime) to the read "
    "of it beginning (stage=read), its records encoded (stage=encoded) and its transaction committed "
    "(stage=committed)",
    ["stage"], buckets=(0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0))
