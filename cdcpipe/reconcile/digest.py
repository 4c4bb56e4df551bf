"""Token-range hashing: the Merkle-tree step of a comparison, in the style of Cassandra's own repair.

Each side reads the rows of a token range ``(lo, hi]`` as a stream and reduces them to a :class:`Tree` of
``leaves`` equal sub-ranges: per leaf, the count of rows and the sum (mod 2^128) of each row's 128-bit digest of
its canonical form (:func:`row_digest`: key bytes, canonical values in column order, the columns PostgreSQL
cannot hold exactly and their exact bytes).  The sum does not depend on the order the rows come in (Cassandra
returns a partition's rows in clustering order, PostgreSQL by key bytes), and no row is kept: a side's memory is
its trees.  Two sides whose leaf agrees hold the same rows there; only the rows of leaves that differ are read
again, both sides, and compared row by row (:func:`cdcpipe.reconcile.compare.classify`).

Cassandra's rows come from a paged ``SELECT token(pk), <columns>`` (:meth:`Columns.select`) at the chosen
consistency and rate; PostgreSQL's from a server-side cursor over the ``_cdc_token`` index, and the partitions
whose only live data is static from ``<t>$partition`` (:func:`hash_statics`: one anti-join per table).
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from cdcpipe.apply.state import decode_row
from cdcpipe.apply.tables import ident
from cdcpipe.reconcile.canonical import Columns, Key, canon, static_row
from cdcpipe.schema import TableSchema
from cdcpipe.tokens import token

_MASK = (1 << 128) - 1
FETCH = 5000


def row_digest(key: Key, values: Sequence[str], inexact: Iterable[str], exact: Mapping[str, bytes]) -> int:
    """A row's 128-bit digest of its canonical form (every part length-prefixed, so no two rows share a text)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(len(key[0]).to_bytes(4, "big") + key[0])
    h.update(b"\xff\xff\xff\xff" if key[1] is None else len(key[1]).to_bytes(4, "big") + key[1])
    h.update("".join(f"{len(v)}:{v}" for v in values).encode("utf-8", "surrogatepass"))
    for name in sorted(inexact):
        raw = exact.get(name)
        h.update(f"|{len(name)}:{name}".encode())
        if raw is not None:
            h.update(len(raw).to_bytes(4, "big") + raw)
    return int.from_bytes(h.digest(), "big")


class Tree:
    """The leaves of one token range ``(lo, hi]``: leaf ``i`` holds the tokens ``t`` with
    ``lo + i*W//n < t <= lo + (i+1)*W//n`` (``W = hi - lo``, ``n`` leaves)."""

    def __init__(self, lo: int, hi: int, leaves: int) -> None:
        self.lo, self.hi, self.n = lo, hi, max(1, min(leaves, hi - lo))
        self.counts = [0] * self.n
        self.sums = [0] * self.n
        self.rows = 0
        self.size = 0  # characters of canonical values hashed

    def leaf(self, tok: int) -> int:
        return ((tok - self.lo) * self.n - 1) // (self.hi - self.lo)

    def bounds(self, i: int) -> tuple[int, int]:
        width = self.hi - self.lo
        return self.lo + i * width // self.n, self.lo + (i + 1) * width // self.n

    def add(self, tok: int, digest: int, size: int) -> None:
        i = ((tok - self.lo) * self.n - 1) // (self.hi - self.lo)
        self.counts[i] += 1
        self.sums[i] = (self.sums[i] + digest) & _MASK
        self.rows += 1
        self.size += size

    def differing(self, other: Tree) -> list[int]:
        """The leaves whose rows differ from ``other``'s (a tree of the same range and leaves)."""
        return [i for i in range(self.n) if self.counts[i] != other.counts[i] or self.sums[i] != other.sums[i]]


def hash_cassandra(session: Any, table: TableSchema, tree: Tree, consistency: int | None = None,
                   pace: Callable[[int], None] | None = None, cols: Columns | None = None) -> None:
    """Add every row Cassandra holds in ``tree``'s range (``session`` from :func:`canonical.raw_session`)."""
    from cassandra.query import SimpleStatement

    cols = cols or Columns(table)
    stmt = SimpleStatement(cols.select((tree.lo, tree.hi)), fetch_size=FETCH)
    if consistency is not None:
        stmt.consistency_level = consistency
    convert, add = cols.cassandra, tree.add
    for n, row in enumerate(session.execute(stmt)):
        if pace is not None and n % FETCH == 0:
            pace(FETCH)
        key, values, inexact, exact = convert(row[1:])
        add(int.from_bytes(row[0], "big", signed=True), row_digest(key, values, inexact, exact),
            sum(map(len, values)))


async def hash_postgres(conn: Any, table: TableSchema, schema_prefix: str, tree: Tree,
                        cols: Columns | None = None) -> None:
    """Add every mirrored row in ``tree``'s range (by the indexed ``_cdc_token``); a row's merge state is decoded
    only when it has columns PostgreSQL cannot hold exactly."""
    cols = cols or Columns(table)
    target = f"{ident(schema_prefix + table.keyspace)}.{ident(table.table)}"
    if await conn.fetchval("SELECT to_regclass($1)", target) is None:
        return
    names = ", ".join(ident(n) for n in cols.names)
    query = (f"SELECT _cdc_token, _cdc_partition, _cdc_clustering, _cdc_inexact, CASE WHEN "
             f"cardinality(_cdc_inexact) > 0 THEN _cdc_meta END, {names} FROM {target} "
             "WHERE _cdc_token > $1 AND _cdc_token <= $2")
    types = cols.pg_types
    width = len(types)
    add = tree.add
    async with conn.transaction():
        async for r in conn.cursor(query, tree.lo, tree.hi, prefetch=FETCH):
            values = [canon(types[i], r[5 + i]) for i in range(width)]
            inexact = r[3] or ()
            exact: dict[str, bytes] = {}
            if inexact and r[4] is not None:
                cells = decode_row(r[4]).cells
                for name in inexact:
                    cell = cells.get(name)
                    if cell is not None and cell.value is not None:
                        exact[name] = cell.value
            add(r[0], row_digest((bytes(r[1]), bytes(r[2])), values, inexact, exact), sum(map(len, values)))


async def hash_statics(conn: Any, table: TableSchema, schema_prefix: str, trees: Sequence[Tree],
                       now: int) -> dict[tuple[int, int], set[bytes]]:
    """Add to ``trees`` (sorted, covering the ring) the partitions PostgreSQL holds with only live static data
    (Cassandra's ``SELECT *`` shows each as a row); returns them by (tree, leaf), for reading those leaves again."""
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
            row = static_row(table, p, bytes(r[1]), now)
            if row is None:
                continue
            values, inexact, _ = row
            tok = token(p)
            t = max(0, bisect.bisect_left(los, tok) - 1)
            tree = trees[t]
            tree.add(tok, row_digest((p, None), list(values.values()), inexact, {}), sum(map(len, values.values())))
            found.setdefault((t, tree.leaf(tok)), set()).add(p)
    return found
