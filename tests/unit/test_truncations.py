"""Truncations: the node's ``truncated_at`` record as capture reads it, the published record, and apply's view
of the latest truncation per table."""

from __future__ import annotations

import struct

from cdcpipe.apply.truncations import TruncationReader
from cdcpipe.capture.truncation import parse_record
from cdcpipe.truncated import TruncationRecord


def test_the_nodes_record_is_a_commit_log_position_and_a_time() -> None:
    blob = struct.pack(">qiq", 1_700_000_000_123, 4096, 1_764_900_000_000)
    assert parse_record(blob) == (1_700_000_000_123, 4096, 1_764_900_000_000)
    assert parse_record(b"\x00" * 19) is None


def test_published_records_round_trip_and_apply_keeps_the_latest_per_table() -> None:
    old = TruncationRecord("ks.t", "00000000-0000-0000-0000-000000000001", "n1", 1_000, 7, 8)
    new = TruncationRecord("ks.t", old.table_id, "n2", 2_000, 9, 10)
    assert TruncationRecord.from_value(old.to_value()) == old and old.key == b"ks.t@n1"
    assert TruncationRecord.from_value(b"not json") is None
    reader = TruncationReader(None, "p.truncations")
    for rec in (new, old):  # any order: the latest wins
        reader.take(rec.key, rec.to_value())
    reader.take(b"x", b"{}")
    assert reader.latest == {"ks.t": 2_000_000}
