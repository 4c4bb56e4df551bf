"""One table compared, token range by token range, and its differences classified.

Each range ``(lo, hi]`` is hashed on both sides into leaves (:mod:`cdcpipe.reconcile.digest`: Cassandra with
``token(pk) > lo AND token(pk) <= hi``, paged, rate-limited, at the chosen consistency; PostgreSQL by the indexed
``_cdc_token``); only the leaves whose hashes differ are read again from both sides in the canonical form
(:mod:`cdcpipe.reconcile.canonical`) and their rows compared one by one (:func:`classify`).
A change still on its way (written to Cassandra, not yet applied) looks like drift at first: :func:`settle` reads
the differing partitions again, both sides, until they agree or ``settle_s`` passes — only what still differs then
is drift.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cdcpipe.apply.merge import RowState
from cdcpipe.reconcile.canonical import Columns, Key, Side, read_cassandra, read_postgres
from cdcpipe.reconcile.digest import Tree, hash_cassandra, hash_postgres, hash_statics
from cdcpipe.schema import TableSchema
from cdcpipe.tokens import MAX_TOKEN, MIN_TOKEN

MISSING_IN_POSTGRES = "MISSING_IN_POSTGRES"
MISSING_IN_CASSANDRA = "MISSING_IN_CASSANDRA"
DATA_MISMATCH = "DATA_MISMATCH"


@dataclass(frozen=True, slots=True)
class Difference:
    """One row that differs: its kind, key bytes, typed key values, the differing columns and both sides'
    canonical values (None: the row is absent there)."""

    table: str
    kind: str
    key: Key
    shown: tuple[Any, ...]
    columns: tuple[str, ...]
    cassandra: dict[str, str] | None
    postgres: dict[str, str] | None
    newest: int | None = None  # the newest write or deletion timestamp PostgreSQL's state of the row holds


@dataclass
class TableResult:
    table: str
    cassandra_rows: int = 0
    postgres_rows: int = 0
    ranges: int = 0
    leaves: int = 0
    differing_leaves: int = 0  # leaves whose hashes differed: their rows were read again and compared
    hashed: int = 0  # bytes of the rows' texts Cassandra's side hashed (PostgreSQL's side hashes on its server)
    transferred: int = 0  # characters of canonical values read again to compare rows, both sides
    differences: list[Difference] = field(default_factory=list)
    settled: int = 0  # differences that went away while settling (changes on their way)

    @property
    def drift_ratio(self) -> float:
        return len(self.differences) / max(self.cassandra_rows, self.postgres_rows, 1)

    @property
    def transferred_ratio(self) -> float:
        """What was read again to compare rows (both sides), of what the rows hold (both sides: twice what
        Cassandra's side hashed)."""
        return self.transferred / max(2 * self.hashed, 1)


def newest_timestamp(row: RowState) -> int:
    """The newest timestamp of anything in a row's merge state (marker, deletion, cells, collection elements)."""
    stamps = [v.ts for v in row.cells.values()]
    stamps += [v.ts for c in row.complex.values() for v in c.elements.values()]
    stamps += [c.deletion.timestamp for c in row.complex.values() if c.deletion is not None]
    if row.marker is not None:
        stamps.append(row.marker.ts)
    if row.deletion is not None:
        stamps.append(row.deletion.timestamp)
    return max(stamps, default=0)


def token_ranges(splits: int) -> list[tuple[int, int]]:
    """``splits`` ranges ``(lo, hi]`` covering every Murmur3 token (no key has the token -2^63)."""
    step = (MAX_TOKEN - MIN_TOKEN) // max(1, splits)
    bounds = [MIN_TOKEN + i * step for i in range(max(1, splits))] + [MAX_TOKEN]
    return list(itertools.pairwise(bounds))


def classify(table: TableSchema, cass: Side, pg: Side) -> list[Difference]:
    """The rows that differ between the two sides of the same partitions, one :class:`Difference` per row."""
    by_key: dict[Key, list[str]] = {}
    for key in set(cass.rows) | set(pg.rows):
        a, b = cass.rows.get(key), pg.rows.get(key)
        if a is None or b is None:
            by_key[key] = ["<row>"]
            continue
        cols = [c for c, v in a.items() if b.get(c) != v]
        if cass.inexact.get(key, set()) != pg.inexact.get(key, set()):
            cols.append("_cdc_inexact")
        meta = pg.meta.get(key)
        for col, exact in cass.raw.get(key, {}).items():
            cell = None if meta is None else meta.cells.get(col)
            if cell is not None and cell.value != exact:
                cols.append(f"_cdc_meta.{col}")
        if cols:
            by_key[key] = cols
    out = []
    for key, cols in sorted(by_key.items(), key=lambda kv: (kv[0][0], kv[0][1] or b"")):
        a, b = cass.rows.get(key), pg.rows.get(key)
        kind = MISSING_IN_POSTGRES if b is None else MISSING_IN_CASSANDRA if a is None else DATA_MISMATCH
        shown = cass.keys.get(key) or pg.keys.get(key) or ()
        meta = pg.meta.get(key)
        out.append(Difference(table.name, kind, key, shown, tuple(cols), a, b,
                              None if meta is None else newest_timestamp(meta)))
    return out


async def compare_table(session: Any, conn: Any, table: TableSchema, *, schema_prefix: str, splits: int,
                        consistency: int | None, typed: Any = None, leaves: int = 256,
                        pace: Callable[[int], None] | None = None,
                        progress: Callable[[str, int, int], None] | None = None) -> TableResult:
    """Hash ``splits`` token ranges of ``leaves`` leaves each on both sides (:mod:`cdcpipe.reconcile.digest`,
    the two sides of a range at once), then read and compare the rows of the leaves that differ.  ``session``:
    a :func:`canonical.raw_session`; ``typed``: a plain session with tuple rows, for hashing (default:
    ``session``)."""
    result = TableResult(table.name)
    cols = Columns(table)
    ranges = token_ranges(splits)
    trees: list[tuple[Tree, Tree]] = []
    for i, (lo, hi) in enumerate(ranges):
        cass, pg = Tree(lo, hi, leaves), Tree(lo, hi, leaves)
        await asyncio.gather(asyncio.to_thread(hash_cassandra, typed or session, table, cass, consistency, pace,
                                               cols, session if typed is not None else None),
                             hash_postgres(conn, table, schema_prefix, pg, cols))
        trees.append((cass, pg))
        if progress is not None:
            progress(table.name, i + 1, len(ranges))
    statics = await hash_statics(conn, table, schema_prefix, [pg for _, pg in trees], int(time.time()))
    for t, (cass, pg) in enumerate(trees):
        result.ranges += 1
        result.leaves += cass.n
        result.cassandra_rows += cass.rows
        result.postgres_rows += pg.rows
        result.hashed += cass.size
        for leaf in cass.differing(pg):
            bounds = cass.bounds(leaf)
            a = await asyncio.to_thread(read_cassandra, session, table, consistency, tokens=bounds, pace=pace)
            b = await read_postgres(conn, table, schema_prefix, tokens=bounds,
                                    statics=frozenset(statics.get((t, leaf), ())))
            result.differing_leaves += 1
            result.transferred += a.size + b.size
            result.differences += classify(table, a, b)
    return result


async def settle(session: Any, conn: Any, table: TableSchema, result: TableResult, *, schema_prefix: str,
                 consistency: int | None, settle_s: float, every_s: float = 2.0) -> None:
    """Read the partitions of ``result``'s differences again until they agree or ``settle_s`` passes; what
    still differs stays in ``result.differences``."""
    deadline = time.monotonic() + settle_s
    while result.differences and time.monotonic() < deadline:
        await asyncio.sleep(min(every_s, max(0.0, deadline - time.monotonic())))
        parts = frozenset(d.key[0] for d in result.differences)
        cass = await asyncio.to_thread(read_cassandra, session, table, consistency, partitions=parts)
        pg = await read_postgres(conn, table, schema_prefix, partitions=parts)
        result.transferred += cass.size + pg.size
        now = classify(table, cass, pg)
        result.settled += max(0, len(result.differences) - len(now))
        result.differences = now
