"""The table id -> schema registry capture decodes mutations with, reloading its source when the commit log
names a table or column it does not know yet."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable

from cdcpipe.schema import TableSchema
from cdcpipe.schema_source import SchemaSource

log = logging.getLogger(__name__)


class SchemaRegistry:
    """table id -> TableSchema, cached.

    Refresh rule (the guarantee: a table or column created before a mutation was written is found when
    that mutation is decoded): the first time a table id, or a (table id, column) pair, is looked up and
    missing, the registry reloads from the source unless a reload has already completed since that first
    sighting; so each unknown id or column costs at most one reload, regardless of how recently the last
    one ran. An id still unknown after that is logged once and remembered in ``unknown`` (id -> when it
    was last confirmed unknown); it triggers another reload only after ``unknown_recheck_interval``
    seconds (system tables, which have no schema, appear in every segment), and a column still missing
    only after ``min_refresh_interval`` seconds. A table that disappears from the source (dropped while capture
    runs) is kept for the writes made before the drop. ``stale`` (set by a schema change event, from any thread)
    asks the owner to :meth:`refresh` before deciding more mutations. Not thread-safe otherwise."""

    def __init__(self, source: SchemaSource | None = None, tables: Iterable[TableSchema] = (), *,
                 min_refresh_interval: float = 5.0, unknown_recheck_interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._source = source
        self._tables: dict[uuid.UUID, TableSchema] = {t.table_id: t for t in tables}
        self._interval = min_refresh_interval
        self._recheck = unknown_recheck_interval
        self._clock = clock
        self._last_refresh: float | None = None
        self.generation = 0  # completed reloads: changes whenever the tables may have changed
        self.loaded_ns = 0  # wall clock when the last reload began: the cache is at least this recent
        self.stale = False  # set (from any thread) when a schema change event arrived: reload before deciding
        self._dropped: dict[uuid.UUID, TableSchema] = {}  # tables gone from the source: their older writes decode
        self._sightings: dict[tuple[uuid.UUID, bytes | None], int] = {}  # first miss -> reloads done then
        self.unknown: dict[uuid.UUID, float] = {}
        if source is not None and not self._tables:
            self.refresh()

    def mark_stale(self) -> None:
        """A schema change happened (called from any thread): the owner reloads before deciding more mutations."""
        self.stale = True

    def __len__(self) -> int:
        return len(self._tables)

    def tables(self) -> list[TableSchema]:
        return list(self._tables.values())

    def refresh(self) -> bool:
        """Reload from the source (no rate limit). Returns False if there is no source."""
        if self._source is None:
            return False
        self._last_refresh = self._clock()
        self.stale = False  # before loading: an event arriving during the load marks it stale again
        loaded_ns = time.time_ns()
        tables = {t.table_id: t for t in self._source.load()}
        for table_id, t in self._tables.items():
            if table_id not in tables:
                self._dropped[table_id] = t
        self._tables = tables
        self.loaded_ns = loaded_ns
        self.generation += 1
        for table_id in self._tables.keys() & self.unknown.keys():
            del self.unknown[table_id]
        return True

    def _refresh_due(self, table_id: uuid.UUID, missing_column: bytes | None) -> bool:
        if self._source is None:
            return False
        key = (table_id, missing_column)
        seen = self._sightings.get(key)
        if seen is None:
            if len(self._sightings) >= 65536:
                self._sightings.clear()
            self._sightings[key] = self.generation
            return True  # no reload has completed since this first sighting
        now = self._clock()
        if self._last_refresh is not None and now - self._last_refresh < self._interval:
            return False
        marked = self.unknown.get(table_id)
        return marked is None or now - marked >= self._recheck

    def get(self, table_id: uuid.UUID, missing_column: bytes | None = None) -> TableSchema | None:
        """The schema for ``table_id``, reloading (see the class docstring) if the id is unknown or the
        known schema lacks ``missing_column``. None if the table is (still) unknown."""
        table = self._tables.get(table_id)
        if table is not None and (missing_column is None or table.column(missing_column) is not None):
            return table
        if table is None and missing_column is None and table_id in self._dropped:
            return self._dropped[table_id]  # dropped since it was loaded: its earlier writes still decode
        refreshed = self._refresh_due(table_id, missing_column) and self.refresh()
        if refreshed:
            log.info("schema reloaded for table id %s%s", table_id,
                     "" if missing_column is None else f" column {missing_column.decode('utf-8', 'replace')}")
            table = self._tables.get(table_id)
        if table is None:
            if table_id not in self.unknown:
                log.warning("unknown table id %s (not in schema)", table_id)
                self.unknown[table_id] = self._clock()
            elif refreshed:
                self.unknown[table_id] = self._clock()
        return table
