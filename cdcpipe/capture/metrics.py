"""Prometheus metrics of the capture process (names are part of the operations contract: the Grafana dashboard
in ``deploy/grafana`` uses ``cdcpipe_capture_events_produced_total`` and ``cdcpipe_capture_lag_seconds``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

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
