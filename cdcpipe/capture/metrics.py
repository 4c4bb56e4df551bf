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
DEAD_LETTERS_BY_CAUSE = Counter(
    "cdcpipe_capture_dead_letter_records", "Records written to the capture DLQ topic, by cause (undecodable, "
    "unknown_table, entry_crc, section, header, encryption_key, truncated, zero_filled, idx_unreadable)", ["cause"])
SEGMENTS_QUARANTINED = Counter("cdcpipe_capture_segments_quarantined",
                               "Segments marked for quarantine (kept, never deleted), by cause", ["cause"])
SEGMENTS_MOVED = Counter("cdcpipe_capture_segments_moved_to_quarantine",
                         "Marked segments moved out of cdc_raw to capture.quarantine_dir")
QUARANTINE_HELD = Gauge("cdcpipe_capture_quarantine_segments", "Segments held in capture.quarantine_dir")
STALLED = Gauge("cdcpipe_capture_stalled", "1 while reading makes no progress on durable data "
                "(capture.stall_timeout_s), else 0")
CDC_TOTAL_SPACE = Gauge("cdcpipe_capture_cdc_total_space_bytes",
                        "Cassandra's cdc_total_space (the node's setting, or capture.cdc_total_space)")
KAFKA_RETRIES = Counter("cdcpipe_capture_kafka_retries", "Transactions retried after Kafka failed (capture waits "
                        "with capped backoff, never gives up while Kafka is unreachable)")
SCHEMA_RELOADS = Counter("cdcpipe_capture_schema_reloads", "Schema reloads, by trigger", ["trigger"])
PRE_SWITCH_WINDOWS = Counter("cdcpipe_capture_pre_switch_windows", "Times a table's writes were found logged before "
                             "its CDC was switched on in the same log: not captured (a snapshot covers them)")
BACKDATED_DELETIONS = Counter("cdcpipe_capture_backdated_deletions", "Deletions produced for writes older than their "
                              "table's switch that Cassandra shows shadowed by a deletion made before it")
SCHEMA_CHANGES = Counter("cdcpipe_schema_changes", "Schema changes of captured tables this node published to "
                         "<prefix>.schema-changes, by change (cdcpipe.schema_changes.KINDS)", ["table", "change"])
SCHEMA_VERSION = Gauge("cdcpipe_schema_version", "The ordinal (1, 2, ...) of the table's schema version as this node "
                       "published it", ["table"])
