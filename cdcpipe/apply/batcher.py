"""Cuts the records of each topic partition into batches: at most ``max_rows`` records, closed ``max_wait_s``
after the first one arrived.  At most one batch per partition is in flight (batches of a partition are applied
in offset order); :meth:`Batcher.done` releases the next one."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cdcpipe.apply.consumer import Record

PartitionKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Batch:
    """Consecutive records of one topic partition, read in one assignment ``generation``."""

    topic: str
    partition: int
    generation: int
    records: tuple[Record, ...]

    @property
    def next_offset(self) -> int:
        return self.records[-1].offset + 1


class Batcher:
    def __init__(self, max_rows: int, max_wait_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_rows = max_rows
        self._max_wait = max_wait_s
        self._clock = clock
        self._buffers: dict[PartitionKey, list[Record]] = {}
        self._since: dict[PartitionKey, float] = {}
        self._in_flight: set[PartitionKey] = set()
        self.buffered = 0

    def add(self, record: Record) -> None:
        key = (record.topic, record.partition)
        buf = self._buffers.setdefault(key, [])
        if buf and buf[-1].generation != record.generation:
            self.buffered -= len(buf)
            buf.clear()  # the partition was reassigned: older records are stale
        if not buf:
            self._since[key] = self._clock()
        buf.append(record)
        self.buffered += 1

    def ready(self, force: bool = False) -> list[Batch]:
        """Batches that may be applied now (``force``: every non-empty buffer whose partition has no batch in
        flight — the consumer has caught up, or shutdown)."""
        now = self._clock()
        out = []
        for key, buf in self._buffers.items():
            if not buf or key in self._in_flight:
                continue
            if force or len(buf) >= self._max_rows or now - self._since[key] >= self._max_wait:
                take = buf[:self._max_rows]
                del buf[:len(take)]
                self._since[key] = now
                self.buffered -= len(take)
                self._in_flight.add(key)
                out.append(Batch(key[0], key[1], take[0].generation, tuple(take)))
        return out

    def done(self, topic: str, partition: int) -> None:
        self._in_flight.discard((topic, partition))

    def drop(self, partitions: Iterable[PartitionKey]) -> None:
        """Forget buffered records of revoked partitions."""
        for key in partitions:
            buf = self._buffers.pop(key, [])
            self.buffered -= len(buf)

    @property
    def idle(self) -> bool:
        return not self._in_flight and self.buffered == 0
