"""Metrics of dead-letter replays (``cdcpipe dlq replay``, in its own process)."""

from __future__ import annotations

from prometheus_client import Counter

REPLAYS = Counter("cdcpipe_dlq_replays_total", "Dead-letter replays by result (applied, already_replayed, "
                  "not_open, failed)", ["result"])
