"""Where, in this node's commit log, each table's CDC was switched on: writes logged before it are not captured.

Cassandra's CDC works per commit-log *segment*: the segment that is active when ``cdc = true`` takes effect reaches
``cdc_raw`` whole, with the writes made to the table before the switch.  Those are history without its earlier
deletions (a snapshot brings the table's state over); shipping them would leave rows in PostgreSQL that Cassandra
no longer has.  Every schema change is itself a mutation of ``system_schema`` in the same log, and its
``system_schema.tables`` row carries the table's ``cdc`` flag, so the log says where the switch is:

- a table whose row capture has read (in segments read one after another, no id skipped) is captured while its
  last row says ``cdc = true``;
- a table whose row capture has not read yet: its write is not captured when the first row of that table later in
  the same segment says ``cdc = true`` and was written before capture first saw the table with ``cdc = true``
  (``seen_on``: then that row is the switch, or a change made before capture knew the table); otherwise it is.

Both maps are kept with capture's position (``saved``/``CdcLog(saved)``), so a restart decides as the run before
it did.  A segment id skipped (a segment Cassandra never linked into ``cdc_raw``: no CDC write in it) forgets what
the rows said, since a row may have been in it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from cdcpipe.capture.mutation import Mutation, raw_table_id
from cdcpipe.capture.segment import KeyProvider, Position, SegmentReader
from cdcpipe.errors import MutationDecodeError, SegmentError
from cdcpipe.schema import TableSchema, system_table_id

log = structlog.get_logger(__name__)

TABLES_ID = system_table_id("system_schema", "tables")
COLUMNS_ID = system_table_id("system_schema", "columns")
SCHEMA_RAW_IDS = frozenset(system_table_id("system_schema", t).bytes for t in (
    "keyspaces", "tables", "columns", "dropped_columns", "triggers", "views", "types", "functions", "aggregates",
    "indexes", "column_masks"))


@dataclass(frozen=True, slots=True)
class SwitchRow:
    """A ``system_schema.tables`` row read in the log: table ``name`` (``ks.t``) has ``cdc`` (None: the table or
    its keyspace was dropped) from the entry ending at ``offset`` of its segment; ``timestamp`` in microseconds."""

    offset: int
    name: str
    cdc: bool | None
    timestamp: int
    created: bool = False  # the same mutation defines the table's columns: CREATE TABLE (no write precedes it)


def switch_rows(mutation: Mutation, offset: int) -> list[SwitchRow]:
    """The ``system_schema.tables`` rows of a decoded ``system_schema`` mutation ending at ``offset``."""
    rows: list[SwitchRow] = []
    defined = {(u.key, r.clustering[0]) for u in mutation.updates if u.table.table_id == COLUMNS_ID
               for r in u.rows if r.clustering and r.cells}
    for u in mutation.updates:
        if u.table.table_id != TABLES_ID:
            continue
        keyspace = u.key.decode("utf-8", "replace")
        if u.partition_deletion is not None:  # DROP KEYSPACE: every table of it
            rows.append(SwitchRow(offset, keyspace + ".*", None, u.partition_deletion.marked_for_delete_at))
        for r in u.rows:
            if not r.clustering or r.clustering[0] is None:
                continue
            name = f"{keyspace}.{r.clustering[0].decode('utf-8', 'replace')}"
            cdc = next((c for c in r.cells if c.column == "cdc" and not c.deleted), None)
            if cdc is not None:
                rows.append(SwitchRow(offset, name, cdc.value[:1] == b"\x01", cdc.timestamp,
                                      (u.key, r.clustering[0]) in defined))
            elif r.deletion is not None:  # DROP TABLE
                rows.append(SwitchRow(offset, name, None, r.deletion.marked_for_delete_at))
    return rows


class CdcLog:
    """What the log says about each captured table's ``cdc`` flag at the read position (see the module)."""

    def __init__(self, saved: dict[str, Any] | None = None, *, clock: Callable[[], int] = time.time_ns) -> None:
        saved = saved or {}
        self.state: dict[str, bool] = {str(k): bool(v) for k, v in (saved.get("state") or {}).items()}
        self.seen_on: dict[str, int] = {str(k): int(v) for k, v in (saved.get("seen_on") or {}).items()}
        self.segment: int | None = saved.get("segment")
        # "ks.t" -> timestamp of the row that switched it on (writes older than it may be backdated)
        self.switched_at: dict[str, int] = {str(k): int(v) for k, v in (saved.get("switched_at") or {}).items()}
        self._clock = clock
        self._ahead: tuple[int, int, list[SwitchRow]] = (-1, 0, [])  # segment id, scanned to, rows found
        self.version = 0  # changes whenever ``saved()`` would
        self.floor = max(self.switched_at.values(), default=0)  # the newest switch: older writes may be backdated
        self._saved: tuple[int, dict[str, Any]] = (-1, {})

    def _switched(self, name: str, timestamp: int) -> None:
        self.switched_at[name] = timestamp
        self.floor = max(self.switched_at.values())
        self.version += 1

    def saved(self) -> dict[str, Any]:
        """What is kept with capture's position (a new dict only when something changed)."""
        version, saved = self._saved
        if version != self.version:
            saved = {"state": dict(self.state), "seen_on": dict(self.seen_on), "segment": self.segment,
                     "switched_at": dict(self.switched_at)}
            self._saved = (self.version, saved)
        return saved

    def mark(self) -> dict[str, Any]:
        """What :meth:`restore` puts back (a read that is undone is read again)."""
        return self.saved()

    def restore(self, mark: dict[str, Any]) -> None:
        self.state, self.seen_on = dict(mark["state"]), dict(mark["seen_on"])
        self.segment, self.switched_at = mark["segment"], dict(mark["switched_at"])
        self.floor = max(self.switched_at.values(), default=0)
        self.version += 1

    def saw(self, tables: Iterable[TableSchema]) -> None:
        """The schema capture decodes with: note when a table was first seen with ``cdc = true`` (forgotten when
        seen with ``cdc = false``: a later switch on is a new one)."""
        now_us = self._clock() // 1000
        for t in tables:
            name = t.name
            if t.cdc and name not in self.seen_on:
                self.seen_on[name] = now_us
                self.version += 1
            elif not t.cdc and name in self.seen_on:
                del self.seen_on[name]
                self.version += 1

    def enter(self, segment_id: int) -> None:
        """Reading moves on to ``segment_id``: after a gap in segment ids, what the rows said is forgotten."""
        if self.segment is not None and segment_id <= self.segment:
            return
        if self.segment is not None and segment_id > self.segment + 1 and self.state:
            self.state.clear()
        self.segment = segment_id
        self.version += 1

    def apply(self, rows: Iterable[SwitchRow]) -> None:
        """Rows read in log order."""
        for row in rows:
            if row.name.endswith(".*"):
                prefix = row.name[:-1]
                for name in [n for n in self.state if n.startswith(prefix)]:
                    del self.state[name]
            elif row.cdc is None:
                self.state.pop(row.name, None)
            else:
                before = self.state.get(row.name)
                if (before is False and row.cdc and not row.created) or (before is None and self._is_switch(row)):
                    self._switched(row.name, row.timestamp)
                self.state[row.name] = row.cdc
            self.version += 1

    def ahead(self, segment_id: int) -> tuple[int, list[SwitchRow]]:
        """(scanned to, rows found) of the segment scanned ahead of the read (0, [] for another segment)."""
        seg, scanned, rows = self._ahead
        return (scanned, rows) if seg == segment_id else (0, [])

    def found_ahead(self, segment_id: int, scanned_to: int, rows: list[SwitchRow]) -> None:
        self._ahead = (segment_id, scanned_to, rows)

    def pre_switch(self, name: str, offset: int) -> bool:
        """Whether ``name``'s write ending at ``offset`` of the current segment was logged before its CDC was on."""
        known = self.state.get(name)
        if known is not None:
            return not known
        seg, _, rows = self._ahead
        if seg != self.segment:
            return False
        row = next((r for r in rows if r.offset > offset and r.name == name), None)
        if row is None or not self._is_switch(row):
            return False
        if self.switched_at.get(name) != row.timestamp:
            self._switched(name, row.timestamp)
        return True

    def _is_switch(self, row: SwitchRow) -> bool:
        """Whether ``row``, for a table with no row read before it, is its switch on: ``cdc = true``, not its
        creation, and written before capture first saw the table on."""
        seen = self.seen_on.get(row.name)
        return row.cdc is True and not row.created and (seen is None or row.timestamp < seen)


def entry_rows(decode: Callable[[bytes, int, Position, str], Mutation], data: bytes, version: int,
               position: Position, path: str) -> list[SwitchRow]:
    """The ``system_schema.tables`` rows of one ``system_schema`` entry ([] when it does not decode: logged)."""
    try:
        return switch_rows(decode(data, version, position, path), position.offset)
    except (MutationDecodeError, ValueError) as exc:
        log.warning("system_schema entry not decoded", segment=path, position=str(position), error=str(exc))
        return []


_TABLES_RAW = TABLES_ID.bytes


def scan_ahead(cdc_log: CdcLog, segment_id: int, path: str, data: bytes, limit: int, keys: KeyProvider | None,
               decode: Callable[[bytes, int, Position, str], Mutation]) -> None:
    """Find the ``system_schema.tables`` rows of segment ``segment_id`` (``data``: its bytes as the follower read
    them) between what was scanned and ``limit`` (its durable offset).  A plain segment is first searched for the
    table's id, so most scans decode nothing."""
    scanned, rows = cdc_log.ahead(segment_id)
    if limit <= scanned:
        return
    try:
        reader = SegmentReader(path, keys=keys, data=data)
    except SegmentError:
        return  # the follower reports what cannot be read; nothing is decided ahead meanwhile
    if reader.plain and data.find(_TABLES_RAW, max(scanned - len(_TABLES_RAW), 0), limit + 8) < 0:
        cdc_log.found_ahead(segment_id, limit, rows)
        return
    found = list(rows)
    version = reader.descriptor.messaging_version or 0
    for item in reader.read(start=scanned, limit=limit):
        if not isinstance(item, SegmentError) and raw_table_id(item.data) in SCHEMA_RAW_IDS:
            found.extend(entry_rows(decode, item.data, version, item.position, path))
    cdc_log.found_ahead(segment_id, limit, found)
