"""Following cdc_raw: which segments hold CDC data, how far each is durable, and reading their entries in order.

Cassandra hard-links every commit-log segment into cdc_raw when it is created and, once the segment holds CDC data,
rewrites ``<segment>_cdc.idx`` on every sync with the durable offset (a second line ``COMPLETED`` once the segment
is closed).  Reference: ``cassandra-commitlog-format.md`` §10.

Contract of :class:`SegmentFollower`
    - Only segments with both a ``.log`` and a ``_cdc.idx`` are read, strictly in segment-id order: the follower
      does not read segment N+1 before N is COMPLETED and read to its end, so positions only grow.
    - Nothing past the durable offset is read; an empty or half-written idx (Cassandra truncates, then writes)
      is read as "no news" and retried at the next poll — reported as ``stalled`` after ``stall_timeout_s``, and
      the segment quarantined once a later segment holds data (Cassandra will not rewrite it).
    - Damage (data ending before the durable offset included) is reported once and its segment marked for the
      quarantine before the position past it can be committed: it is moved there, never deleted.
    - Resuming from a checkpoint ``Position(s, o)`` skips segments below ``s`` and, in ``s``, the entries that end
      at or before ``o`` (``SegmentReader.read(start=o)``): no entry is read twice, none skipped.
    - Blocking (file I/O, CRCs): call :meth:`SegmentFollower.poll` from a worker thread.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import structlog

from cdcpipe.capture import metrics
from cdcpipe.capture.producer import Record
from cdcpipe.capture.quarantine import Quarantine
from cdcpipe.capture.segment import Entry, KeyProvider, Position, SegmentReader, parse_descriptor, segment_id_of
from cdcpipe.errors import (
    DamagedEntryError,
    DataEndsEarlyError,
    EncryptionKeyError,
    SegmentError,
    SegmentHeaderError,
)
from cdcpipe.topics import capture_dlq_topic

log = structlog.get_logger(__name__)
_HEADER_PEEK = 64 * 1024
_new: Any = tuple.__new__


@dataclass(frozen=True, slots=True)
class IndexState:
    """One segment in cdc_raw.  ``offset`` is None while its idx is empty or unreadable."""

    segment_id: int
    log: Path
    idx: Path
    offset: int | None
    completed: bool
    written_ns: int = 0  # the idx file's modification time (wall clock, ns): when Cassandra last rewrote it


def read_index(idx: Path) -> tuple[int | None, bool]:
    """(durable offset, completed) of a ``_cdc.idx``; (None, False) while it is empty, half-written or gone."""
    offset, completed, _ = _read_index(idx)
    return offset, completed


def _read_index(idx: Path) -> tuple[int | None, bool, int]:
    """:func:`read_index` and the file's modification time, taken before reading (so never later than the
    content read)."""
    try:
        fd = os.open(idx, os.O_RDONLY)
    except OSError:
        return None, False, 0
    try:
        written = os.fstat(fd).st_mtime_ns
        text = os.read(fd, 256).decode("ascii", errors="replace")
    except OSError:
        return None, False, 0
    finally:
        os.close(fd)
    lines = text.split("\n")
    first = lines[0].strip()
    if not first.isdigit():
        return None, False, written
    return int(first), len(lines) > 1 and lines[1].strip() == "COMPLETED", written


def scan(cdc_raw: Path) -> list[IndexState]:
    """Every segment of cdc_raw that has an idx file, by segment id."""
    out: list[IndexState] = []
    try:
        names = os.listdir(cdc_raw)
    except FileNotFoundError:
        return out
    present = set(names)
    for name in names:
        segment_id = segment_id_of(name)
        if segment_id is None:
            continue
        idx_name = name[:-4] + "_cdc.idx"
        if idx_name not in present:
            continue
        offset, completed, written = _read_index(cdc_raw / idx_name)
        out.append(IndexState(segment_id, cdc_raw / name, cdc_raw / idx_name, offset, completed, written))
    out.sort(key=lambda s: s.segment_id)
    return out


def disk_usage(cdc_raw: Path) -> int:
    """Bytes of the files in cdc_raw (allocated size: segments are pre-sized and sparse)."""
    total = 0
    with os.scandir(cdc_raw) as it:
        for e in it:
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            total += getattr(st, "st_blocks", 0) * 512 or st.st_size
    return total


class Item(NamedTuple):
    """An entry read from ``path`` (with the messaging version it was written with) or a framing error
    (a NamedTuple: one is built per entry)."""

    path: str
    messaging_version: int
    entry: Entry | None = None
    error: SegmentError | None = None


@dataclass(frozen=True, slots=True)
class SegmentEnd:
    """Segment ``segment_id`` is COMPLETED and read to ``position``; once that position is committed the segment
    may be deleted."""

    segment_id: int
    position: Position
    state: IndexState


@dataclass(slots=True)
class Chunk:
    """What one poll read: items in log order, then (at most one) finished segment.  ``more`` is False when the
    poll read everything durable in cdc_raw (the caller may commit now instead of waiting for more).
    ``durable_ns`` is when the idx that exposed the entries read was written (0: none read)."""

    items: list[Item] = field(default_factory=list)
    end: SegmentEnd | None = None
    more: bool = False
    durable_ns: int = 0
    # segment id -> (path, its bytes as read, durable offset) of the segments this poll read
    limits: dict[int, tuple[str, bytes, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Blocked:
    """What reading waits for: ``segment_id`` at ``offset`` (the position), durable to ``durable`` (None: its idx is
    unreadable), and why, since ``since`` (monotonic seconds)."""

    segment_id: int
    offset: int
    durable: int | None
    reason: str
    since: float


def damage_cause(err: SegmentError) -> str:
    """The metric and dead-letter ``cause`` of a damage report (by class, never by message text)."""
    if isinstance(err, DamagedEntryError):
        return "entry_crc"
    if isinstance(err, DataEndsEarlyError):
        return "zero_filled" if err.zero_filled else "truncated"
    if isinstance(err, EncryptionKeyError):
        return "encryption_key"
    if isinstance(err, IdxUnreadable):
        return "idx_unreadable"
    if isinstance(err, SegmentHeaderError):
        return "truncated" if err.retriable else "header"
    return "section"


class IdxUnreadable(SegmentError):
    """A segment's ``_cdc.idx`` stayed unreadable for ``capture.stall_timeout_s`` after a later segment had data."""


class SegmentFollower:
    """Reads the CDC segments of ``cdc_raw`` in order from ``start`` (exclusive; None = the oldest segment).

    Damage (see :mod:`cdcpipe.capture.segment`) is reported once as an ``Item`` with its error, and its segment is
    marked in ``quarantine`` (before the position past it can be committed), so it is moved there, never deleted.
    A segment it cannot read at all (header, encryption key) is passed once it is COMPLETED; one whose idx stays
    unreadable, or whose header stays incomplete, is passed once a later segment holds data and
    ``stall_timeout_s`` has gone by.  While reading waits, ``blocked`` says for what."""

    def __init__(self, cdc_raw: Path, start: Position | None, keys: KeyProvider | None = None,
                 quarantine: Quarantine | None = None, *, stall_timeout_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cdc_raw = cdc_raw
        self.keys = keys
        self.quarantine = quarantine
        self.stall_timeout_s = stall_timeout_s
        self._clock = clock
        self.position = start  # the last position read (the next entry starts at or after it)
        self.blocked: Blocked | None = None
        self._cache: tuple[int, bytes] | None = None  # bytes of the current COMPLETED segment
        self._ended = -1  # segments up to this id were reported ended
        self._reported: set[tuple[int, int, str]] = set()  # damage already reported: (segment, offset, kind)
        self._added: list[tuple[int, int, str]] = []  # ... by the last poll (undone by ``restore``)

    def mark(self) -> tuple[Position | None, int]:
        """Where reading is, for :meth:`restore` (call it before :meth:`poll`)."""
        self._added = []
        return self.position, self._ended

    def restore(self, mark: tuple[Position | None, int]) -> None:
        """Undo the polls since ``mark``: their chunk was not converted (e.g. Kafka or Cassandra failed), so it is
        read again, damage reports included."""
        self.position, self._ended = mark
        self._cache = None
        self._reported.difference_update(self._added)
        self._added = []

    def pending(self) -> list[IndexState]:
        """Segments with data not yet read (for lag and health)."""
        return [s for s in scan(self.cdc_raw) if self.position is None or s.segment_id >= self.position.segment_id]

    def stalled(self) -> str | None:
        """Why reading has made no progress on durable data for ``stall_timeout_s`` (None: it has not)."""
        b = self.blocked
        if b is None or self._clock() - b.since < self.stall_timeout_s:
            return None
        durable = "unknown" if b.durable is None else str(b.durable)
        return (f"segment {b.segment_id} at offset {b.offset} (durable offset {durable}): {b.reason}, no progress "
                f"for {self._clock() - b.since:.0f}s")

    def _wait(self, state: IndexState, reason: str, finished: bool) -> bool:
        """Record that reading waits on ``state``; True when it should stop waiting (the segment is finished and
        the wait has lasted ``stall_timeout_s``)."""
        pos = self.position
        offset = pos.offset if pos is not None and pos.segment_id == state.segment_id else 0
        b = self.blocked
        if b is None or (b.segment_id, b.offset, b.reason) != (state.segment_id, offset, reason):
            b = self.blocked = Blocked(state.segment_id, offset, state.offset, reason, self._clock())
        return finished and self._clock() - b.since >= self.stall_timeout_s

    def _damage(self, chunk: Chunk, state: IndexState, err: SegmentError, mv: int = 0) -> None:
        """Report ``err`` (once) and mark its segment for quarantine."""
        key = (state.segment_id, err.offset, type(err).__name__)
        if key in self._reported:
            return
        if len(self._reported) >= 65536:
            self._reported.clear()
        self._reported.add(key)
        self._added.append(key)
        if self.quarantine is not None:
            at = err.logical_offset if isinstance(err, DamagedEntryError) else err.offset
            self.quarantine.mark(state.log.name, damage_cause(err), err.reason, f"{state.segment_id}:{at}")
        chunk.items.append(Item(str(state.log), mv, error=err))

    def poll(self, max_items: int) -> Chunk:
        """Read up to ``max_items`` new entries of the oldest unfinished segment; report it as ended when it is
        COMPLETED and read to its end."""
        chunk = Chunk()
        states = scan(self.cdc_raw)
        for i, state in enumerate(states):
            pos = self.position
            if state.segment_id <= self._ended or (pos is not None and state.segment_id < pos.segment_id):
                continue
            finished = state.completed or any(s.offset for s in states[i + 1:])  # Cassandra writes a later one
            if state.offset is None:  # idx being rewritten: wait, never skip ahead of it ...
                if not self._wait(state, "its _cdc.idx is empty or unreadable", finished):
                    return chunk
                # ... unless it stays unreadable though Cassandra has moved on: quarantine it
                self._damage(chunk, state, IdxUnreadable(str(state.idx), 0, "_cdc.idx unreadable while a later "
                                                         "segment holds data"))
                self.position = Position(state.segment_id + 1, 0)  # before anything of the next segments
                return self._end(chunk, state)
            start = pos.offset if pos is not None and pos.segment_id == state.segment_id else 0
            if start < state.offset or pos is None or pos.segment_id != state.segment_id:
                chunk.durable_ns = state.written_ns
                try:
                    if not self._read(state, start, max_items, chunk):
                        chunk.more = True
                        self.blocked = None
                        return chunk
                except (SegmentHeaderError, EncryptionKeyError) as exc:
                    if exc.retriable and not state.completed and not self._wait(state, exc.reason, finished):
                        return chunk  # a header still being written, or a file not readable yet
                    self._damage(chunk, state, exc)  # unreadable: reported, marked, then passed
                    self.position = Position(state.segment_id, state.offset)
                    if not state.completed and finished:
                        return self._end(chunk, state)  # Cassandra writes a later one: this one is over
            if not state.completed:
                if not finished:
                    self.blocked = None
                elif self._wait(state, "read to its durable offset but not COMPLETED while a later segment holds "
                                       "data", True):
                    return self._end(chunk, state)  # e.g. Cassandra restarted: it will not write this one again
                return chunk
            self.blocked = None
            self._cache = None
            self._ended = state.segment_id
            chunk.end = SegmentEnd(state.segment_id, Position(state.segment_id, state.offset), state)
            chunk.more = True  # the next segment may hold data already
            return chunk
        self.blocked = None
        return chunk

    def _end(self, chunk: Chunk, state: IndexState) -> Chunk:
        """Report ``state``'s segment as ended (never read again; deleted or moved once committed past)."""
        assert self.position is not None
        self._cache, self._ended, self.blocked = None, state.segment_id, None
        chunk.end = SegmentEnd(state.segment_id, self.position, state)
        chunk.more = True
        return chunk

    def _read(self, state: IndexState, start: int, max_items: int, chunk: Chunk) -> bool:
        """Append entries from ``start``; True when everything up to the durable offset was read."""
        assert state.offset is not None
        data = self._bytes(state)
        chunk.limits[state.segment_id] = (str(state.log), data, state.offset)
        reader = SegmentReader(state.log, keys=self.keys, data=data)
        mv = reader.descriptor.messaging_version or 0
        path = str(state.log)
        got = 0
        append = chunk.items.append
        for item in reader.read(start=start, limit=state.offset):
            if isinstance(item, SegmentError):
                self._damage(chunk, state, item, mv)
                continue
            append(_new(Item, (path, mv, item, None)))
            self.position = item.position
            got += 1
            if got >= max_items:
                return False
        self.position = Position(state.segment_id, state.offset)
        return True

    def _bytes(self, state: IndexState) -> bytes:
        """The segment's bytes up to what is durable (the whole file once COMPLETED, cached)."""
        if self._cache is not None and self._cache[0] == state.segment_id:
            return self._cache[1]
        assert state.offset is not None
        try:
            with open(state.log, "rb") as f:
                head = f.read(_HEADER_PEEK)
                desc = parse_descriptor(head, str(state.log))
                plain = desc.compression is None and desc.cipher is None
                if plain and not state.completed:
                    want = state.offset + 8
                    data = head[:want] if want <= len(head) else head + f.read(want - len(head))
                else:
                    data = head + f.read()
        except OSError as exc:
            raise SegmentHeaderError(str(state.log), 0, f"cannot read: {exc}", retriable=True) from exc
        if state.completed:
            self._cache = (state.segment_id, data)
        return data


def damage_record(prefix: str, path: str, error: SegmentError, messaging_version: int | None = None,
                  origin: dict[str, str] | None = None) -> Record:
    """The capture dead-letter record of damage met while reading a segment (its segment is kept in the
    quarantine): where (``segment``, ``segment_id``, ``position`` = segment id and logical offset, ``file_offset``),
    why (``cause``, ``error``) and, for an entry whose data failed its CRC, its bytes (``entry_hex``) and the
    position just past it (``entry_position``); what ``cdcpipe dlq replay`` needs to read it again
    (``messaging_version`` of the segment, ``origin``: the node's cluster, datacenter and host id)."""
    cause = damage_cause(error)
    metrics.SECTION_ERRORS.inc()
    metrics.DEAD_LETTERS_BY_CAUSE.labels(cause).inc()
    named = segment_id_of(Path(path).name)
    seg = -1 if named is None else named
    data = error.data if isinstance(error, DamagedEntryError) else None
    at = error.logical_offset if isinstance(error, DamagedEntryError) else error.offset
    log.error("damaged segment data: recorded in the capture dead-letter topic, segment kept for quarantine",
              cause=cause, segment=path, offset=error.offset, reason=error.reason)
    value = json.dumps({"cause": cause, "segment": path, "segment_id": seg, "position": f"{seg}:{at}",
                        "file_offset": error.offset, "error": error.reason, "table_id": None,
                        "entry_hex": data.hex() if data is not None else None,
                        "entry_position": f"{seg}:{at + 12 + len(data)}" if data is not None else None,
                        "messaging_version": messaging_version, "origin": origin}).encode()
    return Record(capture_dlq_topic(prefix), f"{seg}:{at}".encode(), value)
