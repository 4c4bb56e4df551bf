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
import datetime
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from cdcpipe.apply.tables import ident
from cdcpipe.reconcile.canonical import Columns, canon, static_row
from cdcpipe.schema import Column, TableSchema
from cdcpipe.tokens import token
from cdcpipe.typemap import converter

_MASK = (1 << 128) - 1
FETCH = 5000


_DIRTY = object()  # a value whose row is compared row by row, never by its digest
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_US = datetime.timedelta(microseconds=1)
_SAME = ("tinyint", "smallint", "int", "bigint", "counter", "float", "double", "boolean")


def _cass_text(value: Any) -> Any:
    return _DIRTY if "\x00" in value else value  # PostgreSQL text cannot hold NUL (ADR 0002)


def _cass_timestamp(value: Any) -> Any:
    if not isinstance(value, datetime.datetime):
        return _DIRTY  # milliseconds beyond Python's datetime range: held inexactly
    return ((value if value.tzinfo else value.replace(tzinfo=datetime.UTC)) - _EPOCH) // _US


def _pg_timestamp(value: Any) -> Any:
    return (value - _EPOCH) // _US if value.tzinfo else (value.replace(tzinfo=datetime.UTC) - _EPOCH) // _US


def _cass_texts(value: Any) -> Any:
    return _DIRTY if "\x00" in "".join(value) else list(value)


def _cass_sorted_texts(value: Any) -> Any:
    return _DIRTY if "\x00" in "".join(value) else sorted(value)


def _collection(col: Column) -> tuple[Callable[[Any], Any], Callable[[Any], Any]] | None:
    """Lists and sets of integers, floats, booleans or text, as lists (a set's in order; PostgreSQL keeps
    the order :func:`cdcpipe.typemap.to_pg` gave it, which a hand edit may break: then the lists differ)."""
    if col.type.name not in ("list", "set"):
        return None
    elem = col.type.params[0].name
    if elem in ("ascii", "text", "varchar"):
        return (_cass_sorted_texts if col.type.name == "set" else _cass_texts), list
    if elem in _SAME and elem not in ("float", "double"):  # NaN does not sort
        return (sorted if col.type.name == "set" else list), list
    return None


def _fallback(col: Column, pg: str) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    convert = converter(col.type)

    def cass(value: Any) -> Any:
        if convert is None:
            return canon(pg, value)
        mapped, exact = convert(value)
        return canon(pg, mapped) if exact else _DIRTY

    return cass, lambda value: canon(pg, value)


class DigestForm:
    """A row's values in the form both sides hash: a table's typed values (cassandra-driver's on one side,
    asyncpg's on the other) made equal exactly when their canonical texts (:func:`canonical.canon` of
    :func:`cdcpipe.typemap.to_pg`) are — integers, floats, booleans and text as they are, uuids as text,
    timestamps as microseconds since the epoch, blobs as bytes, every other type as its canonical text.  A value
    PostgreSQL cannot hold exactly makes its row *dirty*: compared row by row, never by digest."""

    def __init__(self, cols: Columns) -> None:
        self.width = len(cols.columns)
        cass: list[tuple[int, Callable[[Any], Any]]] = []
        pg: list[tuple[int, Callable[[Any], Any]]] = []
        for i, (col, pg_name) in enumerate(zip(cols.columns, cols.pg_types, strict=True)):
            name = col.type.name
            if name in _SAME:
                continue
            if name in ("ascii", "text", "varchar"):
                cass.append((i, _cass_text))
            elif name in ("uuid", "timeuuid"):
                cass.append((i, str))
                pg.append((i, str))
            elif name == "timestamp":
                cass.append((i, _cass_timestamp))
                pg.append((i, _pg_timestamp))
            elif name in ("blob", "custom"):
                cass.append((i, bytes))
                pg.append((i, bytes))
            else:
                c, p = _collection(col) or _fallback(col, pg_name)
                cass.append((i, c))
                pg.append((i, p))
        self._cass, self._pg = tuple(cass), tuple(pg)
        self._static_only = tuple(range(cols.n_pk, cols.n_pk + cols.n_ck)) if cols.n_ck else ()

    def cassandra(self, row: Sequence[Any]) -> list[Any] | None:
        """A row of typed values (cassandra-driver's, in canonical column order), or None: dirty."""
        out = list(row)
        if self._static_only and all(out[i] is None for i in self._static_only):
            return None  # a partition with only static data: PostgreSQL keeps it apart (``<t>$partition``)
        for i, fn in self._cass:
            v = out[i]
            if v is not None:
                v = fn(v)
                if v is _DIRTY:
                    return None
                out[i] = v
        return out

    def postgres(self, row: Sequence[Any]) -> list[Any]:
        out = list(row)
        for i, fn in self._pg:
            v = out[i]
            if v is not None:
                out[i] = fn(v)
        return out


def row_digest(values: Sequence[Any]) -> tuple[int, int]:
    """A row's 128-bit digest of ``repr`` of its digest form (:class:`DigestForm`), and that text's length."""
    text = repr(values).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(text, digest_size=16).digest(), "big"), len(text)


class Tree:
    """The leaves of one token range ``(lo, hi]``: leaf ``i`` holds the tokens ``t`` with
    ``lo + i*W//n < t <= lo + (i+1)*W//n`` (``W = hi - lo``, ``n`` leaves)."""

    def __init__(self, lo: int, hi: int, leaves: int) -> None:
        self.lo, self.hi, self.n = lo, hi, max(1, min(leaves, hi - lo))
        self.counts = [0] * self.n
        self.sums = [0] * self.n
        self.dirty: set[int] = set()  # leaves with a row to compare row by row whatever the digests say
        self.rows = 0
        self.size = 0  # characters of the rows' text forms hashed

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

    def reset(self) -> None:
        self.counts, self.sums, self.dirty = [0] * self.n, [0] * self.n, set()
        self.rows = self.size = 0

    def taint(self, tok: int) -> None:
        """A dirty row (see :class:`DigestForm`): its leaf is compared row by row."""
        self.dirty.add(((tok - self.lo) * self.n - 1) // (self.hi - self.lo))
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

    form = DigestForm(cols)
    stmt = SimpleStatement(cols.select((tree.lo, tree.hi)), fetch_size=FETCH)
    if consistency is not None:
        stmt.consistency_level = consistency
    add, taint, cassandra, typed = tree.add, tree.taint, form.cassandra, cols.typed
    for n, row in enumerate(session.execute(stmt)):
        if pace is not None and n % FETCH == 0:
            pace(FETCH)
        if serialized:
            tok, values = int.from_bytes(row[0], "big", signed=True), cassandra(typed(row[1:]))
        else:
            tok, values = row[0], cassandra(row[1:])
        if values is None:
            taint(tok)
        else:
            digest, size = row_digest(values)
            add(tok, digest, size)


async def hash_postgres(conn: Any, table: TableSchema, schema_prefix: str, tree: Tree,
                        cols: Columns | None = None) -> None:
    """Add every mirrored row in ``tree``'s range (by the indexed ``_cdc_token``); a row with a column
    PostgreSQL cannot hold exactly (``_cdc_inexact``) is dirty."""
    cols = cols or Columns(table)
    target = f"{ident(schema_prefix + table.keyspace)}.{ident(table.table)}"
    if await conn.fetchval("SELECT to_regclass($1)", target) is None:
        return
    names = ", ".join(ident(n) for n in cols.names)
    query = (f"SELECT _cdc_token, coalesce(cardinality(_cdc_inexact), 0) > 0, {names} FROM {target} "
             "WHERE _cdc_token > $1 AND _cdc_token <= $2")
    postgres = DigestForm(cols).postgres
    add, taint = tree.add, tree.taint
    async with conn.transaction():
        async for r in conn.cursor(query, tree.lo, tree.hi, prefetch=FETCH):
            if r[1]:
                taint(r[0])
                continue
            digest, size = row_digest(postgres(r[2:]))
            add(r[0], digest, size)


async def hash_statics(conn: Any, table: TableSchema, schema_prefix: str, trees: Sequence[Tree],
                       now: int) -> dict[tuple[int, int], set[bytes]]:
    """Mark dirty in ``trees`` (sorted, covering the ring) the partitions PostgreSQL holds with only live static
    data (Cassandra's ``SELECT *`` shows each as a row, a dirty one: :class:`DigestForm`); returns them by (tree,
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
