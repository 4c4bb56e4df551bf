"""Reading token ranges page by page with cassandra-driver, values left serialized (blocking; one reader per
worker thread, one session shared).

Contract
    - :func:`connect` opens a session whose requests answer rows of serialized values (``bytes`` or None per
      column): :class:`RawRows` keeps the driver from decoding them, so the snapshot sees the bytes the node
      stores, and a value the driver cannot decode (an out-of-range date) is no error.
    - :meth:`RangeReader.pages` yields ``(rows, now_s)`` per page of one range, ``now_s`` the whole second the
      page was requested.  A page that fails with a timeout, an unavailable replica or a lost connection is asked
      again (the same paging state) with capped exponential backoff; after ``attempts`` failures it raises a
      retriable :class:`~cdcpipe.errors.SnapshotError` naming the range.  A range is never skipped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import structlog
from cassandra import ConsistencyLevel, DriverException, OperationTimedOut, ReadFailure, ReadTimeout, Unavailable
from cassandra.cluster import Cluster, ExecutionProfile, NoHostAvailable, Session
from cassandra.policies import DCAwareRoundRobinPolicy, RoundRobinPolicy
from cassandra.query import tuple_factory

from cdcpipe.config import CassandraSettings
from cdcpipe.cql_raw import RawProtocolHandler
from cdcpipe.errors import SnapshotError
from cdcpipe.schema_source import cluster_options
from cdcpipe.snapshot import metrics
from cdcpipe.snapshot.ranges import TokenRange
from cdcpipe.snapshot.rows import Layout

log = structlog.get_logger(__name__)
PROFILE = "snapshot"
RETRIABLE = (ReadTimeout, ReadFailure, Unavailable, OperationTimedOut, NoHostAvailable, ConnectionError)


def consistency_level(name: str) -> int:
    """``LOCAL_QUORUM`` (any case) to the driver's constant.  Raises ValueError."""
    value = ConsistencyLevel.name_to_value.get(name.upper())
    if value is None:
        raise ValueError(f"unknown consistency level {name!r}; one of {sorted(ConsistencyLevel.name_to_value)}")
    return int(value)


def connect(cfg: CassandraSettings, consistency: str, timeout_s: float = 30.0) -> tuple[Cluster, Session, Session]:
    """A cluster, a plain session (schema, ``system.local``) and a session for snapshot reads at ``consistency``
    whose client requests answer raw rows."""
    options = cluster_options(cfg)
    policy = DCAwareRoundRobinPolicy(local_dc=cfg.local_dc) if cfg.local_dc else RoundRobinPolicy()
    profile = ExecutionProfile(load_balancing_policy=policy, consistency_level=consistency_level(consistency),
                               row_factory=tuple_factory, request_timeout=timeout_s)
    options.setdefault("execution_profiles", {})[PROFILE] = profile
    try:
        cluster = Cluster(**options)
        plain, raw = cluster.connect(), cluster.connect()
    except Exception as exc:
        raise SnapshotError(f"cannot connect to Cassandra at {','.join(cfg.hosts)}: {exc}", retriable=True) from exc
    raw.client_protocol_handler = RawProtocolHandler
    return cluster, plain, raw


class RateLimit:
    """At most ``rows_per_s`` rows a second over all threads (a token bucket of one second); None: no limit."""

    def __init__(self, rows_per_s: float | None) -> None:
        self.rate = rows_per_s
        self._lock = threading.Lock()
        self._free_at = time.monotonic()

    def take(self, rows: int) -> None:
        if not self.rate or rows <= 0:
            return
        with self._lock:
            now = time.monotonic()
            self._free_at = max(self._free_at, now - 1.0) + rows / self.rate
            wait = self._free_at - now
        if wait > 0:
            time.sleep(wait)


PAGE_BYTES = 8 << 20  # about this many bytes of values a page
FIRST_PAGE_ROWS = 100


def next_fetch_size(fetch: int, rows: list[list[bytes | None]], page_size: int) -> int:
    """The rows to ask for next: what fits :data:`PAGE_BYTES` at the last page's mean row size, at most twice
    ``fetch`` and at most ``page_size``, at least 1."""
    if not rows:
        return fetch
    size = sum(len(v) for row in rows for v in row if v is not None) or 1
    fits = PAGE_BYTES * len(rows) // size
    return max(1, min(page_size, 2 * fetch, fits))


class RangeReader:
    """Pages through token ranges of one table."""

    def __init__(self, session: Session, lay: Layout, *, page_size: int = 1000, attempts: int = 8,
                 max_backoff_s: float = 30.0, limit: RateLimit | None = None,
                 stop: Callable[[], bool] = lambda: False) -> None:
        self.session = session
        self.layout = lay
        self.page_size = page_size
        self.attempts = attempts
        self.max_backoff_s = max_backoff_s
        self.limit = limit or RateLimit(None)
        self.stop = stop
        try:
            self.prepared = session.prepare(lay.select)
        except Exception as exc:
            raise SnapshotError(f"cannot prepare the snapshot query: {exc}", table=lay.table.name,
                                retriable=isinstance(exc, RETRIABLE)) from exc

    def pages(self, r: TokenRange) -> Iterator[tuple[list[list[bytes | None]], int]]:
        """The pages of ``r``.  Pages hold about :data:`PAGE_BYTES` of values whatever the rows' size (memory stays
        bounded with rows of megabytes): the first asks for at most :data:`FIRST_PAGE_ROWS` rows, each next one
        for as many as the last page's row size allows, at most doubling and never above ``page_size``."""
        paging_state: bytes | None = None
        fetch = min(self.page_size, FIRST_PAGE_ROWS)
        while True:
            rows, paging_state, now_s = self._page(r, paging_state, fetch)
            self.limit.take(len(rows))
            fetch = next_fetch_size(fetch, rows, self.page_size)
            yield rows, now_s
            if paging_state is None:
                return

    def _page(self, r: TokenRange, paging_state: bytes | None,
              fetch: int) -> tuple[list[list[bytes | None]], bytes | None, int]:
        name = self.layout.table.name
        for attempt in range(1, self.attempts + 1):
            if self.stop():
                raise SnapshotError("stopped", table=name, token_range=str(r), retriable=True)
            statement = self.prepared.bind((r.start, r.end))
            statement.fetch_size = fetch
            now_s = int(time.time())
            try:
                result = self.session.execute(statement, paging_state=paging_state, execution_profile=PROFILE)
                return list(result.current_rows), result.paging_state, now_s
            except RETRIABLE as exc:
                cause = type(exc).__name__
                metrics.ERRORS.labels(cause).inc()
                if attempt == self.attempts:
                    raise SnapshotError(f"a page failed {attempt} times, last with {cause}: {exc}", table=name,
                                        token_range=str(r), retriable=True) from exc
                wait = min(self.max_backoff_s, 0.5 * 2 ** (attempt - 1))
                log.warning("snapshot page failed, retrying", table=name, token_range=str(r), cause=cause,
                            attempt=attempt, wait_s=wait, error=str(exc))
                time.sleep(wait)
            except DriverException as exc:
                metrics.ERRORS.labels(type(exc).__name__).inc()
                raise SnapshotError(f"read failed: {exc}", table=name, token_range=str(r)) from exc
        raise AssertionError("unreachable")
