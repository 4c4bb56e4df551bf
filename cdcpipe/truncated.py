"""The record of one table's truncation on one node, as capture publishes it to ``<prefix>.truncations`` and apply
reads it (``cdcpipe.capture.truncation``, ``cdcpipe.apply.truncations``)."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TruncationRecord:
    """``table`` is ``keyspace.table``; ``truncated_at_ms`` the node's clock at the truncation; ``segment_id`` and
    ``position`` its commit-log position then (what the node's replay skips)."""

    table: str
    table_id: str
    node: str
    truncated_at_ms: int
    segment_id: int
    position: int

    @property
    def key(self) -> bytes:
        return f"{self.table}@{self.node}".encode()

    def to_value(self) -> bytes:
        return json.dumps({"table": self.table, "table_id": self.table_id, "node": self.node,
                           "truncated_at_ms": self.truncated_at_ms, "segment_id": self.segment_id,
                           "position": self.position}, sort_keys=True).encode()

    @classmethod
    def from_value(cls, value: bytes) -> TruncationRecord | None:
        """The record, or None for a value that is not one."""
        try:
            d = json.loads(value)
            return cls(str(d["table"]), str(d["table_id"]), str(d["node"]), int(d["truncated_at_ms"]),
                       int(d["segment_id"]), int(d["position"]))
        except (ValueError, KeyError, TypeError):
            return None
