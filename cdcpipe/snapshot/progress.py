"""What a snapshot has finished, kept in Kafka, and how it shows its progress.

Contract
    - The compacted topic ``<prefix>.snapshot-progress`` (one partition) holds, per table, its latest run
      (key ``run/<ks.table>``: ``{"table", "run", "started_at", "splits"}``) and every token range a run finished
      (key ``range/<ks.table>/<run>/<start>/<end>``: ``{"table", "run", "start", "end", "rows", "done_at"}``).
      A range is recorded only after all of its events are acknowledged by Kafka, so a range recorded as done is
      never read again by ``--resume``, and a range not recorded is read again whole (its events then arrive
      twice, which the merge absorbs).
    - :meth:`ProgressStore.load` reads the topic to its end: the latest run of each table and its done ranges.
    - :class:`Reporter` prints rows, rows/s, ranges done/total and the ETA: one rewritten line on a terminal,
      else a JSON line every ``interval_s``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import IO, Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from cdcpipe import kafka_clients
from cdcpipe.config import KafkaSettings
from cdcpipe.errors import KafkaConsumeError
from cdcpipe.kafka_admin import COMPACTED
from cdcpipe.snapshot import metrics
from cdcpipe.snapshot.emit import Batch, Emitter
from cdcpipe.snapshot.ranges import TokenRange
from cdcpipe.topics import snapshot_progress_topic


@dataclass
class TableProgress:
    """A table's latest run and the ranges it finished."""

    run: str
    started_at: float
    done: dict[TokenRange, int] = field(default_factory=dict)  # range -> rows


class ProgressStore:
    def __init__(self, kafka: KafkaSettings, emitter: Emitter, timeout_s: float = 30.0) -> None:
        self.kafka = kafka
        self.emitter = emitter
        self.topic = snapshot_progress_topic(kafka.topic_prefix)
        self.timeout_s = timeout_s

    def ensure(self) -> None:
        self.emitter.ensure_topic(self.topic, partitions=1, config=COMPACTED)

    def load(self) -> dict[str, TableProgress]:
        """Every table's latest run with its finished ranges (blocking: reads the topic to its end)."""
        self.ensure()
        consumer = kafka_clients.consumer({
            **self.kafka.client_config(), "group.id": f"cdcpipe-snapshot-{uuid.uuid4().hex}",
            "enable.auto.commit": False, "isolation.level": "read_committed"})
        try:
            tp = TopicPartition(self.topic, 0)
            _, high = consumer.get_watermark_offsets(tp, timeout=self.timeout_s)
            consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
            runs: dict[str, TableProgress] = {}
            ranges: list[dict[str, Any]] = []
            deadline = time.monotonic() + self.timeout_s * 4
            position = 0
            while position < high:
                if time.monotonic() > deadline:
                    raise KafkaConsumeError(self.topic, f"not read to its end ({position} of {high})")
                msg = consumer.poll(1.0)
                if msg is None:
                    continue
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaConsumeError(self.topic, error.str(), retriable=error.retriable())
                position = (msg.offset() or 0) + 1
                value, key = msg.value(), msg.key() or b""
                if value is None:
                    continue
                record = json.loads(value)
                if key.startswith(b"run/"):
                    runs[record["table"]] = TableProgress(record["run"], record["started_at"])
                else:
                    ranges.append(record)
        except KafkaException as exc:
            err = exc.args[0]
            raise KafkaConsumeError(self.topic, err.str(), retriable=err.retriable()) from exc
        finally:
            consumer.close()
        for rec in ranges:
            progress = runs.get(rec["table"])
            if progress is not None and progress.run == rec["run"]:
                progress.done[TokenRange(rec["start"], rec["end"])] = rec["rows"]
        return runs

    def begin(self, table: str, splits: int) -> TableProgress:
        """Record a new run of ``table`` (its earlier runs' ranges no longer count)."""
        progress = TableProgress(uuid.uuid4().hex[:12], time.time())
        self._put(f"run/{table}", {"table": table, "run": progress.run, "started_at": progress.started_at,
                                   "splits": splits})
        return progress

    def finished(self, table: str, run: str, r: TokenRange, rows: int) -> None:
        """Record ``r`` as done (call only once all of its events are acknowledged)."""
        self._put(f"range/{table}/{run}/{r.start}/{r.end}", {"table": table, "run": run, "start": r.start,
                                                             "end": r.end, "rows": rows, "done_at": time.time()})

    def _put(self, key: str, value: dict[str, Any]) -> None:
        batch = Batch()
        self.emitter.produce(self.topic, key.encode(), json.dumps(value, sort_keys=True).encode(), batch, headers=None)
        self.emitter.wait(batch)


class Reporter:
    """Live progress of a run over all tables (thread-safe counters, a printing thread)."""

    def __init__(self, total_ranges: int, done_ranges: int, *, out: IO[str] | None = None,
                 mode: str = "auto", interval_s: float | None = None) -> None:
        self.out = out or sys.stderr
        self.tty = mode == "tty" or (mode == "auto" and self.out.isatty())
        self.interval_s = interval_s if interval_s is not None else (1.0 if self.tty else 5.0)
        self.total = total_ranges
        self.done = done_ranges
        self.resumed = done_ranges
        self.rows = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="snapshot-progress", daemon=True)

    def start(self) -> Reporter:
        self._thread.start()
        return self

    def add(self, rows: int = 0, ranges: int = 0) -> None:
        with self._lock:
            self.rows += rows
            self.done += ranges

    def figures(self) -> dict[str, Any]:
        with self._lock:
            elapsed = time.monotonic() - self.started
            read_now = self.done - self.resumed
            left = self.total - self.done
            eta = elapsed / read_now * left if read_now else None
            return {"rows": self.rows, "rows_per_s": round(self.rows / elapsed, 1) if elapsed > 0 else 0.0,
                    "ranges_done": self.done, "ranges_total": self.total, "elapsed_s": round(elapsed, 1),
                    "eta_s": None if eta is None else round(eta, 1)}

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.print()

    def print(self, final: bool = False) -> None:
        s = self.figures()
        metrics.ELAPSED.set(s["elapsed_s"])
        metrics.REMAINING.set(s["eta_s"] or 0)
        if self.tty:
            eta = "-" if s["eta_s"] is None else f"{s['eta_s']:.0f}s"
            line = (f"snapshot: {s['rows']:,} rows  {s['rows_per_s']:,.0f} rows/s  ranges "
                    f"{s['ranges_done']}/{s['ranges_total']}  elapsed {s['elapsed_s']:.0f}s  eta {eta}")
            self.out.write("\r" + line + ("\n" if final else ""))
        else:
            self.out.write(json.dumps({"snapshot": "done" if final else "progress", **s}) + "\n")
        self.out.flush()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        self.print(final=True)
