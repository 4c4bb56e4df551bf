"""Deleting shipped segments from cdc_raw, and watching how full it is.

A segment (its ``.log`` hard link and its ``_cdc.idx``) is deleted only when its idx says COMPLETED and the
committed capture position is at or past its end ``(segment id, durable offset)``: then every entry of it is in
Kafka.  A segment marked in the quarantine (capture met damage in it, :mod:`cdcpipe.capture.quarantine`) is moved
there instead, never deleted — also one whose idx stayed unreadable, once the committed position is past it.
The ``.log`` goes first, so a crash in between leaves only a tiny orphan idx, swept later.  A full cdc_raw
makes Cassandra reject writes to CDC tables, so usage is a gauge and a warning at 50 % and 80 % of
``capture.cdc_total_space``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import structlog

from cdcpipe.capture import metrics
from cdcpipe.capture.cdc_index import disk_usage, scan
from cdcpipe.capture.quarantine import Quarantine
from cdcpipe.capture.segment import Position

log = structlog.get_logger(__name__)
WARN_AT = (0.5, 0.8)


class SegmentCollector:
    """Deletes the segments a committed position covers; reports cdc_raw usage."""

    def __init__(self, cdc_raw: Path, total_space: int, quarantine: Quarantine | None = None) -> None:
        self.cdc_raw = cdc_raw
        self.total_space = total_space
        self.quarantine = quarantine
        self._warned = 0.0
        metrics.CDC_TOTAL_SPACE.set(total_space)

    def collect(self, committed: Position) -> list[int]:
        """Delete every COMPLETED segment whose end is at or before ``committed``; their ids."""
        deleted = []
        present = set()
        for s in scan(self.cdc_raw):
            present.add(s.segment_id)
            marked = self.quarantine is not None and self.quarantine.is_marked(s.log.name)
            if marked and self.quarantine is not None and (s.segment_id < committed.segment_id or (
                    s.completed and s.offset is not None and Position(s.segment_id, s.offset) <= committed)):
                self.quarantine.move(s.log, s.idx, str(committed))
                continue
            if marked or not s.completed or s.offset is None or Position(s.segment_id, s.offset) > committed:
                continue
            with contextlib.suppress(FileNotFoundError):
                s.log.unlink()
            with contextlib.suppress(FileNotFoundError):
                s.idx.unlink()
            deleted.append(s.segment_id)
            metrics.SEGMENTS_DELETED.inc()
            log.info("segment deleted", segment=s.segment_id, position=str(committed))
        self._sweep_orphans(committed, present)
        return deleted

    def _sweep_orphans(self, committed: Position, present: set[int]) -> None:
        for idx in self.cdc_raw.glob("CommitLog-*_cdc.idx"):
            seg = int(idx.name.rsplit("-", 1)[1].split("_", 1)[0])
            if seg < committed.segment_id and seg not in present and not idx.with_name(
                    idx.name.replace("_cdc.idx", ".log")).exists():
                with contextlib.suppress(FileNotFoundError):
                    idx.unlink()

    def usage(self) -> int:
        """Bytes in cdc_raw; updates the gauges and warns when crossing 50 % / 80 % of cdc_total_space."""
        used = disk_usage(self.cdc_raw)
        ratio = used / self.total_space
        metrics.CDC_RAW_BYTES.set(used)
        metrics.CDC_RAW_USAGE.set(ratio)
        level = max((w for w in WARN_AT if ratio >= w), default=0.0)
        if level > self._warned:
            log.warning("cdc_raw filling up: Cassandra rejects CDC writes when it is full", used_bytes=used,
                        cdc_total_space=self.total_space, ratio=round(ratio, 3))
        self._warned = level
        return used
