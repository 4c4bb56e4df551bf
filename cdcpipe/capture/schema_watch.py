"""Following schema changes live: Cassandra pushes a ``SCHEMA_CHANGE`` event for every ``CREATE``/``ALTER``/``DROP``
to a connection registered for it; :class:`SchemaWatcher` keeps one such connection (beside the driver's session)
and marks the :class:`~cdcpipe.capture.registry.SchemaRegistry` stale on each event, so the next batch is decoded
with the new schema (a table switched to ``cdc = true`` is captured from the first write after the switch).

While the connection is down the watcher is not ``healthy``: the registry then re-checks its cache before deciding
any mutation of a table it holds as ``cdc = false`` (see :meth:`BatchBuilder`), and every reconnect marks it stale
(events may have been missed)."""

from __future__ import annotations

import threading
import time
from typing import Any

import structlog

log = structlog.get_logger(__name__)
_RETRY_S = 5.0


class SchemaWatcher:
    """One event connection to a node of ``session``'s cluster; ``on_change()`` is called on every schema event
    (from the driver's I/O thread: it must only set a flag)."""

    def __init__(self, session: Any, on_change: Any) -> None:
        self._cluster = getattr(session, "cluster", None)
        self._on_change = on_change
        self._conn: Any = None
        self._lock = threading.Lock()
        self._next_try = 0.0

    @property
    def healthy(self) -> bool:
        conn = self._conn
        return conn is not None and not (conn.is_defunct or conn.is_closed)

    def ensure(self) -> bool:
        """Connect (again) when the connection is gone, at most every few seconds; whether it is up (blocking)."""
        if self.healthy:
            return True
        with self._lock:
            if self.healthy or self._cluster is None or time.monotonic() < self._next_try:
                return self.healthy
            self._next_try = time.monotonic() + _RETRY_S
            try:
                host = next(h for h in self._cluster.metadata.all_hosts() if h.is_up)
                conn = self._cluster.connection_factory(host.endpoint)
                conn.register_watchers({"SCHEMA_CHANGE": self._event}, register_timeout=5)
            except Exception as exc:  # driver errors of every kind: retried later, the re-check covers meanwhile
                log.warning("schema change events unavailable, re-checking the schema instead", error=str(exc))
                return False
            self._conn = conn
            self._on_change()  # events may have been missed while not connected
            log.info("following schema change events", host=str(host.endpoint))
            return True

    def _event(self, event: dict[str, Any]) -> None:
        self._on_change()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
