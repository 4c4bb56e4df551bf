"""Token-range hashing: the Merkle-tree step of a comparison, in the style of Cassandra's own repair.

Each side reduces the rows of a token range ``(lo, hi]`` to a :class:`Tree` of ``leaves`` equal sub-ranges: per
leaf, the count of rows and the exact sum of each row's digest (the first 64 bits of the MD5 of its text,
:mod:`cdcpipe.reconcile.rowtext`, as a signed integer).  The sums do not depend on the order rows come in,
and no row is kept.  Leaves that agree hold the same rows; only the rows of leaves that differ — or that hold a
*dirty* row, one PostgreSQL cannot hold exactly, compared row by row always — are read again from both sides and
compared (:func:`cdcpipe.reconcile.compare.classify`).

- PostgreSQL hashes on the server (:func:`hash_postgres`): one query per range computes every row's text and
  digest and returns one line per leaf.  Its partitions with only static data (``<t>$partition``) are dirty
  (:func:`hash_statics`, one anti-join per table).
- Cassandra has no hash it can compute over a row's values (user-defined functions are off by default), so the
  reconciler pages through ``SELECT token(pk), <columns>`` at the chosen consistency and rate, with the driver's
  own row parsing, and hashes each row as it comes (:func:`hash_cassandra`): Cassandra's rows are read, as a
  validation compaction reads them, but none is kept or sent anywhere.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from cdcpipe.apply.tables import ident
from cdcpipe.reconcile.canonical import Columns, static_row
from cdcpipe.reconcile.rowtext import RowText
from cdcpipe.schema import TableSchema
from cdcpipe.tokens import token

FETCH = 5000


def row_digest(text: str) -> tuple[int, int]:
    """A row text's digest as PostgreSQL computes it (:func:`hash_postgres`): the first 64 bits of its MD5 as a
    signed integer; and the text's length in bytes."""
    data = text.encode()
    return int.from_bytes(hashlib.md5(data, usedforsecurity=False).digest()[:8], "big", signed=True), len(data)


class Tree:
    """The leaves of one token range ``(lo, hi]``: leaf ``i`` holds the tokens ``t`` with
    ``lo + i*W//n < t <= lo + (i+1)*W//n`` (``W = hi - lo``, ``n`` leaves)."""

    def __init__(self, lo: int, hi: int, leaves: int) -> None:
        self.lo, self.hi, self.n = lo, hi, max(1, min(leaves, hi - lo))
        self.counts = [0] * self.n
        self.sums = [0] * self.n
        self.dirty: set[int] = set()  # leaves with a row to compare row by row whatever the digests say
        self.rows = 0
        self.size = 0  # bytes of the rows' texts hashed here (PostgreSQL's side: not counted)

    def leaf(self, tok: int) -> int:
        return ((tok - self.lo) * self.n - 1) // (self.hi - self.lo)

    def bounds(self, i: int) -> tuple[int, int]:
        width = self.hi - self.lo
        return self.lo + i * width // self.n, self.lo + (i + 1) * width // self.n

    def add(self, tok: int, digest: int, size: int) -> None:
        i = ((tok - self.lo) * self.n - 1) // (self.hi - self.lo)  # leaf(), inline: once per row
        self.counts[i] += 1
        self.sums[i] += digest
        self.rows += 1
        self.size += size

    def merge(self, i: int, count: int, digests: int, rows: int, dirty: bool) -> None:
        """A leaf's line as PostgreSQL computed it (:func:`hash_postgres`)."""
        self.counts[i] += count
        self.sums[i] += digests
        self.rows += rows
        if dirty:
            self.dirty.add(i)

    def reset(self) -> None:
        self.counts, self.sums, self.dirty = [0] * self.n, [0] * self.n, set()
        self.rows = self.size = 0

    def taint(self, tok: int) -> None:
        """A dirty row (see :mod:`cdcpipe.reconcile.rowtext`): its leaf is compared row by row."""
        self.dirty.add(self.leaf(tok))
        self.rows += 1

    def differing(self, other: Tree) -> list[int]:
        """The leaves to compare row by row: those whose digests differ from ``other``'s (a tree of the same
        range and leaves), and the dirty ones of either."""
        dirty = self.dirty | other.dirty
        return [i for i in range(self.n) if self.counts[i] != other.counts[i] or self.sums[i] != other.sums[i]
                or i in dirty]


def hash_cassandra(session: Any, table: TableSchema, tree: Tree, consistency: int | None = None,
                   pace: Callable[[int], None] | None = None, cols: Columns | None = None,
                   raw: Any = None) -> None:
    """Add every row Cassandra holds in ``tree``'s range, read with cassandra-driver's own row parsing
    (``session``: tuple rows).  A range holding a value the driver cannot decode (a timestamp beyond year 9999:
    the driver fails the page, and may drop its connection) is read again from ``raw`` (a
    :func:`canonical.raw_session`: serialized bytes, decoded here) when given."""
    from cassandra import DriverException
    from cassandra.cluster import NoHostAvailable

    cols = cols or Columns(table)
    try:
        _hash_rows(session, cols, tree, consistency, pace, serialized=False)
    except (DriverException, NoHostAvailable):
        if raw is None:
            raise
        tree.reset()
        _hash_rows(raw, cols, tree, consistency, pace, serialized=True)


def _hash_rows(session: Any, cols: Columns, tree: Tree, consistency: int | None,
               pace: Callable[[int], None] | None, serialized: bool) -> None:
    from cassandra.query import SimpleStatement

    stmt = SimpleStatement(cols.select((tree.lo, tree.hi)), fetch_size=FETCH)
    if consistency is not None:
        stmt.consistency_level = consistency
    add, taint, typed = tree.add, tree.taint, cols.typed
    text_of = RowText(cols, offset=0 if serialized else 1).cassandra
    n = 0
    for row in session.execute(stmt):
        n += 1
        if n == FETCH and pace is not None:
            pace(FETCH)
            n = 0
        if serialized:
            tok, text = int.from_bytes(row[0], "big", signed=True), text_of(typed(row[1:]))
        else:
            tok, text = row[0], text_of(row)
        if text is None:
            taint(tok)
            continue
        add(tok, *row_digest(text))


async def hash_postgres(conn: Any, table: TableSchema, schema_prefix: str, tree: Tree,
                        cols: Columns | None = None) -> None:
    """Add every mirrored row in ``tree``'s range (by the indexed ``_cdc_token``), hashed by PostgreSQL: one line
    per leaf comes back (count, digest sums, rows, dirty, bytes).  A row with ``_cdc_inexact`` is dirty."""
    cols = cols or Columns(table)
    target = f"{ident(schema_prefix + table.keyspace)}.{ident(table.table)}"
    if await conn.fetchval("SELECT to_regclass($1)", target) is None:
        return
    query = ("SELECT leaf, count(*) FILTER (WHERE NOT d), coalesce(sum(h) FILTER (WHERE NOT d), 0), count(*), "
             "bool_or(d) FROM (SELECT width_bucket(_cdc_token, $3::bigint[]) AS leaf, coalesce(cardinality("
             f"_cdc_inexact), 0) > 0 AS d, ('x' || left(md5({RowText(cols).sql}), 16))::bit(64)::bigint AS h "
             f"FROM {target} WHERE _cdc_token > $1 AND _cdc_token <= $2) AS r GROUP BY leaf")
    thresholds = [tree.bounds(i)[0] + 1 for i in range(1, tree.n)]  # leaf i: bounds(i)[0] < token <= bounds(i)[1]
    for leaf, count, h, rows, dirty in await conn.fetch(query, tree.lo, tree.hi, thresholds):
        tree.merge(int(leaf), count, int(h), rows, bool(dirty))


async def hash_statics(conn: Any, table: TableSchema, schema_prefix: str, trees: Sequence[Tree],
                       now: int) -> dict[tuple[int, int], set[bytes]]:
    """Mark dirty in ``trees`` (sorted, covering the ring) the partitions PostgreSQL holds with only live static
    data (Cassandra's ``SELECT *`` shows each as a row, a dirty one); returns them by (tree,
    leaf), for reading those leaves again."""
    found: dict[tuple[int, int], set[bytes]] = {}
    if not table.clustering:
        return found
    schema = ident(schema_prefix + table.keyspace)
    target, parts = f"{schema}.{ident(table.table)}", f"{schema}.{ident(table.table + '$partition')}"
    if await conn.fetchval("SELECT to_regclass($1)", parts) is None:
        return found
    los = [t.lo for t in trees]
    async with conn.transaction():
        async for r in conn.cursor(f"SELECT p._cdc_partition, p._cdc_meta FROM {parts} p WHERE NOT EXISTS "
                                   f"(SELECT 1 FROM {target} m WHERE m._cdc_partition = p._cdc_partition)",
                                   prefetch=FETCH):
            p = bytes(r[0])
            if static_row(table, p, bytes(r[1]), now) is None:
                continue
            tok = token(p)
            t = max(0, bisect.bisect_left(los, tok) - 1)
            trees[t].taint(tok)
            found.setdefault((t, trees[t].leaf(tok)), set()).add(p)
    return found
