"""Writes batches of change events of one table to PostgreSQL, in one transaction per batch.

Steps of :meth:`BatchWriter.write`, all on one connection inside one transaction:

1. one statement locks and reads the checkpoint row and the stored state of every key the batch touches (its
   rows, and every row of a partition whose partition-level state changes), from the table, its shadow table
   and its partition store;
2. events below the stored checkpoint are dropped (another worker applied them), the rest are collapsed
   (:func:`cdcpipe.apply.merge.collapse`), joined with the stored state and viewed at ``now``;
3. visible rows are COPYed into a temporary staging table on this connection and merged into the target table
   with one ``INSERT … ON CONFLICT DO UPDATE``; rows that stopped being visible are deleted, and their tombstones
   kept in the shadow table (set-based statements over arrays: no per-row round trip).  The COPY is in binary
   format written from the cells' serialized bytes (:mod:`cdcpipe.apply.pgbinary`); a table with a column that
   module has no writer for (numeric, inet and arrays of them) COPYs typed records through asyncpg instead;
4. the checkpoint row ``(group, topic, partition, next_offset)`` is upserted if it moves forward (a retried batch
   whose first commit went through writes nothing); then the transaction commits.

A failure raises :class:`cdcpipe.errors.ApplyError` (``retriable`` by SQLSTATE class); nothing is half-applied.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from cdcpipe.apply import checkpoint as ckpt
from cdcpipe.apply import dropped, merge, migrate, pgbinary, truncations, view
from cdcpipe.apply.checkpoint import Checkpoint
from cdcpipe.apply.state import decode_partition, decode_row, encode_partition, encode_row
from cdcpipe.apply.tables import DDL_LOCK, Layout, ident, instant, layout, lock_key
from cdcpipe.errors import ApplyError, TableFaultError, postgres_error
from cdcpipe.model import ChangeEvent, Deletion
from cdcpipe.schema import DroppedColumn, TableSchema
from cdcpipe.tokens import token
from cdcpipe.typemap import converter

_LOCK_BATCH = "SELECT pg_advisory_xact_lock_shared($1), pg_advisory_xact_lock($2)"
_LOCK_TABLE = "SELECT pg_advisory_xact_lock($1)"


class Positioned(NamedTuple):
    """An event (or what it writes, :class:`cdcpipe.apply.merge.Delta`) with the Kafka offset it was read at (a
    NamedTuple: one is built per event)."""

    event: ChangeEvent | merge.Delta
    offset: int


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one committed batch did: events applied and skipped (below the checkpoint), rows written to the
    target, rows removed from it, rows whose stored state the batch did not change, and events that changed
    nothing on top of earlier events of the same batch (duplicates and stale events, ``Changes.redundant``)."""

    applied: int
    already_applied: int
    upserted: int
    removed: int
    unchanged: int
    redundant: int = 0


class BatchWriter:
    """Writes batches through an asyncpg pool (``pool.acquire()``); one instance serves every table.

    ``grace_s`` is how long tombstones of rows Cassandra no longer returns are remembered (reference rule 38).
    ``clock`` gives seconds since the epoch (tests pin it).  ``binary=False`` COPYs typed records through asyncpg
    for every table (the route binary COPY replaced; the tests compare the two).
    """

    def __init__(self, pool: Any, *, grace_s: int = 864_000, schema_prefix: str = "",
                 clock: Callable[[], float] = time.time, binary: bool = True, drop_columns: bool = False) -> None:
        self._pool = pool
        self._drop_columns = drop_columns  # apply.on_column_drop = drop
        self._grace = grace_s
        self._prefix = schema_prefix
        self._clock = clock
        self._binary = binary
        self._layouts: dict[TableSchema, Layout] = {}
        self._records: dict[TableSchema, pgbinary.RecordWriter | None] = {}
        self._refills: dict[TableSchema, list[DroppedColumn]] = {}
        self._mismatched: dict[TableSchema, dict[str, str]] = {}  # column → message (dropped.mismatched)
        self.truncated: dict[str, int] = {}  # keyspace.table → its latest truncation (µs): set by the pipeline
        self._preparing: dict[TableSchema, asyncio.Lock] = {}

    async def prepare(self, table: TableSchema) -> Layout:
        """Create (or add columns to) the table's PostgreSQL tables once per table schema version.

        One writer task of this process runs the DDL while the others wait; DDL that would take a lock
        (creating, altering) runs only when something is missing, so apply processes already writing the table
        are not blocked (and cannot deadlock with it)."""
        found = self._layouts.get(table)
        if found is not None:
            return found
        async with self._preparing.setdefault(table, asyncio.Lock()):
            found = self._layouts.get(table)
            if found is not None:
                return found
            lay = layout(table, self._prefix)
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", DDL_LOCK)
                    await ckpt.ensure(conn)
                    found_rel = await conn.fetch(
                        "SELECT c.relname, array_agg(a.attname::text) AS cols FROM pg_class c "
                        "JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
                        "WHERE n.nspname = $1 AND c.relname = ANY($2::text[]) GROUP BY c.relname",
                        lay.schema, [table.table, table.table + "$shadow", table.table + "$partition"])
                    rels = {r["relname"]: frozenset(r["cols"]) for r in found_rel}
                    if rels and await migrate.old_format(conn, lay):
                        raise TableFaultError(
                            "its stored merge state is format 1 (_cdc_meta jsonb, written by cdcpipe before 0.2): "
                            "held until `cdcpipe migrate-state` rewrites it (stop apply processes older than 0.2 "
                            "first; docs/operations.md), then resumed", table=table.name, sqlstate="42804")
                    if len(rels) == 3:
                        stmts = lay.column_ddl(rels[table.table])
                        await dropped.by_hand(conn, lay, stmts, rels[table.table])
                    elif rels:
                        missing = sorted({table.table, table.table + "$shadow", table.table + "$partition"}
                                         - set(rels))
                        raise TableFaultError(
                            f"{', '.join(missing)} of {table.name} dropped by hand (the others are there): not "
                            "re-created empty; restore it, or drop all three and re-snapshot the table",
                            table=table.name, sqlstate="42P01")
                    else:
                        stmts = lay.ddl()
                    for stmt in stmts:
                        await conn.execute(stmt)
                    refill = await dropped.mark(conn, lay, rels.get(table.table, frozenset()), self._drop_columns)
                    if refill:
                        self._refills[table] = refill
                    self._mismatched[table] = await dropped.mismatched(conn, lay)
            except TableFaultError:
                raise
            except Exception as exc:
                raise postgres_error(exc, table=table.name) from exc
            self._layouts[table] = lay
            return lay

    async def write(self, table: TableSchema, events: Sequence[Positioned], checkpoint: Checkpoint | None,
                    *, extra_keys: Iterable[merge.RowKey] = (), extra_partitions: Iterable[bytes] = ()
                    ) -> WriteResult:
        """Apply ``events`` (of one topic partition, in offset order) and store ``checkpoint`` atomically.
        ``extra_keys`` are rows to re-view even if no event touches them (TTL expiry), ``extra_partitions``
        partition states to re-write (a truncation).

        Before it reads anything, the transaction takes advisory locks.  A batch (with a ``checkpoint``): the
        table's, shared, and its checkpoint's (group, topic, partition), exclusive (during a rebalance the old and
        the new owner of a Kafka partition may write batches of it at once).  A write without a checkpoint (the
        expiry pass, which may re-view rows of any partition while batches write them): the table's, exclusive.
        So of two transactions that may touch the same rows, the later starts reading only after the earlier
        committed: under READ COMMITTED a read that merely waited for a row lock would miss the rows the other
        inserted (a partition's first static value, a new row) and rewrite them without it."""
        lay = await self.prepare(table)
        coords = {"table": table.name, "topic": checkpoint.topic if checkpoint else "",
                  "partition": checkpoint.partition if checkpoint else -1}
        bad = self._mismatched.get(table)
        if bad:
            dropped.refuse(events, bad, coords)
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                if checkpoint is not None:
                    await conn.execute(_LOCK_BATCH, lock_key(lay.target),
                                       lock_key(checkpoint.group, checkpoint.topic, checkpoint.partition))
                else:
                    await conn.execute(_LOCK_TABLE, lock_key(lay.target))
                return await self._write(conn, lay, events, checkpoint, list(extra_keys), int(self._clock()),
                                         list(extra_partitions))
        except ApplyError:
            raise
        except Exception as exc:
            raise postgres_error(exc, **coords) from exc  # type: ignore[arg-type]

    async def _write(self, conn: Any, lay: Layout, events: Sequence[Positioned], cp: Checkpoint | None,
                     extra: list[merge.RowKey], now: int, extra_parts: list[bytes] | None = None) -> WriteResult:
        table = lay.table
        batch = merge.collapse(table, (p.event for p in events))
        row_keys = set(batch.rows) | set(extra)
        parts = {p for p, _ in row_keys} | set(batch.partitions) | set(extra_parts or ())
        stored = await conn.fetch(
            lay.read_sql(), cp.group if cp else "", cp.topic if cp else "", cp.partition if cp else -1,
            list(parts), list({c for _, c in row_keys}), list(batch.wide))
        next_offset = next((int(r["k"]) for r in stored if r["src"] == "K"), None)
        skipped = 0
        if next_offset is not None and events and events[0].offset < next_offset:
            kept = [p for p in events if p.offset >= next_offset]
            skipped = len(events) - len(kept)
            batch = merge.collapse(table, (p.event for p in kept))
        origin: dict[merge.RowKey, str] = {}
        old_rows: dict[merge.RowKey, merge.RowState] = {}
        old_parts: dict[bytes, merge.PartitionState] = {}
        for r in stored:
            if r["src"] == "P":
                old_parts[r["p"]] = decode_partition(r["m"])
            elif r["src"] in ("T", "S"):
                key = (bytes(r["p"]), bytes(r["c"]))
                if key in row_keys or key[0] in batch.wide:
                    origin[key] = r["src"]
                    old_rows[key] = decode_row(r["m"])
        cut = self.truncated.get(table.name)
        if cut is not None:  # a truncation: a deletion of every partition (cdcpipe.apply.truncations)
            gone = merge.PartitionState(Deletion(cut, cut // 1_000_000))
            for p in parts:
                old_parts[p] = old_parts[p].join(gone) if p in old_parts else gone
        merged = merge.Changes(old_parts, old_rows).join(batch).normalized(table)
        statics: dict[bytes, view.StaticView] = {}
        binary = self._record_writer(lay)
        raw = binary is not None
        simple = raw and view.simple_table(table)
        copy = bytearray(pgbinary.HEADER)
        stamp_field = pgbinary.instant_field(now)
        upserted = 0
        records: list[tuple[Any, ...]] = []
        shadow: list[tuple[bytes, bytes, bytes, datetime.datetime | None]] = []
        drop_target: list[merge.RowKey] = []
        drop_shadow: list[merge.RowKey] = []
        unchanged = 0
        plan = _plan(lay) if binary is None else []
        stamp = instant(now)
        forced = set(extra)
        for key in row_keys | set(origin):
            p, c = key
            row = merged.rows.get(key)
            was = origin.get(key)
            if row is not None and was is not None and row == old_rows[key] and p not in batch.wide \
                    and key not in forced:
                unchanged += 1
                continue
            dest = None
            cells = view.plain_cells(row) if simple and row is not None else None
            if cells is not None and row is not None and binary is not None:
                # the common case, without building the view: visible, nothing expires
                dest = "T"
                upserted += 1
                binary.write(copy, p, c, cells, encode_row(row), None, stamp_field)
            elif row is not None:
                sv = statics.get(p)
                if sv is None:
                    sv = statics[p] = view.static_view(table, merged.partitions.get(p), now, self._grace, raw)
                rv = view.row_view(table, row, sv, now, self._grace, raw)
                if rv.visible:
                    dest = "T"
                    upserted += 1
                    if binary is not None:
                        binary.write(copy, p, c, rv.values, encode_row(row), rv.expires_at, stamp_field)
                    else:
                        records.append(_record(lay, plan, key, rv, row, stamp))
                else:
                    dest = "S"
                    shadow.append((p, c, encode_row(row), instant(rv.purge_after)))
            if was == "T" and dest != "T":
                drop_target.append(key)
            if was == "S" and dest != "S":
                drop_shadow.append(key)
        if upserted:
            copy += pgbinary.TRAILER
            await _upsert(conn, lay, records if binary is None else copy)
        await self._store(conn, lay, shadow, drop_target, drop_shadow)
        await self._store_partitions(conn, lay, [*batch.partitions, *(extra_parts or ())], merged, old_parts, now)
        if cp is not None and events and (next_offset is None or cp.next_offset > next_offset):
            # a batch wholly below the checkpoint (a retry whose first commit went through) writes nothing
            await conn.execute(ckpt.UPSERT, cp.group, cp.topic, cp.partition, cp.next_offset)
        return WriteResult(len(events) - skipped, skipped, upserted, len(drop_target), unchanged,
                           batch.redundant)

    def _record_writer(self, lay: Layout) -> pgbinary.RecordWriter | None:
        """The table's binary record writer; None: typed records (``binary=False``, or a column type
        :mod:`cdcpipe.apply.pgbinary` has no writer for)."""
        if not self._binary:
            return None
        table = lay.table
        if table not in self._records:
            self._records[table] = pgbinary.record_writer(table, lay.columns)
        return self._records[table]

    async def _store(self, conn: Any, lay: Layout, shadow: list[tuple[bytes, bytes, bytes, datetime.datetime | None]],
                     drop_target: list[merge.RowKey], drop_shadow: list[merge.RowKey]) -> None:
        for target, keys in ((lay.target, drop_target), (lay.shadow, drop_shadow)):
            if keys:
                await conn.execute(
                    f"DELETE FROM {target} t USING unnest($1::bytea[], $2::bytea[]) AS d(p, c) "
                    "WHERE t._cdc_partition = d.p AND t._cdc_clustering = d.c",
                    [k[0] for k in keys], [k[1] for k in keys])
        if shadow:
            await conn.execute(
                f"INSERT INTO {lay.shadow} SELECT p, c, m, x FROM unnest($1::bytea[], $2::bytea[], "
                "$3::bytea[], $4::timestamptz[]) AS s(p, c, m, x) ON CONFLICT (_cdc_partition, _cdc_clustering) "
                "DO UPDATE SET _cdc_meta = EXCLUDED._cdc_meta, _cdc_purge_after = EXCLUDED._cdc_purge_after",
                *map(list, zip(*shadow, strict=True)))

    async def _store_partitions(self, conn: Any, lay: Layout, touched: list[bytes], merged: merge.Changes,
                                old: dict[bytes, merge.PartitionState], now: int) -> None:
        upserts: list[tuple[bytes, bytes, datetime.datetime | None]] = []
        drops: list[bytes] = []
        for p in dict.fromkeys(touched):
            part = merged.partitions.get(p)
            if part is None:
                if p in old:
                    drops.append(p)
            elif part != old.get(p):
                sv = view.static_view(lay.table, part, now, self._grace, raw=True)  # only its purge_after
                upserts.append((p, encode_partition(part), instant(sv.purge_after)))
        if upserts:
            await conn.execute(
                f"INSERT INTO {lay.partitions} SELECT p, m, x FROM unnest($1::bytea[], $2::bytea[], "
                "$3::timestamptz[]) AS s(p, m, x) ON CONFLICT (_cdc_partition) DO UPDATE SET "
                "_cdc_meta = EXCLUDED._cdc_meta, _cdc_purge_after = EXCLUDED._cdc_purge_after",
                *map(list, zip(*upserts, strict=True)))
        if drops:
            await conn.execute(f"DELETE FROM {lay.partitions} WHERE _cdc_partition = ANY($1::bytea[])", drops)

    async def probe(self, table: TableSchema, checkpoint: Checkpoint | None) -> None:
        """A known-good write to ``table``, rolled back: the statements of a batch (locks, the locked read, the
        staging COPY and upsert, the checkpoint upsert) re-writing one stored row as it is (none when the table is
        empty: the upsert then merges no row, which still needs the table, its columns and the privileges).
        Raises :class:`ApplyError` as :meth:`write` does when PostgreSQL refuses it: then a record it refused
        is not the record's fault but the table's or the server's."""
        lay = await self.prepare(table)
        try:
            async with self._pool.acquire() as conn:
                tx = conn.transaction()
                await tx.start()
                try:
                    await conn.execute(_LOCK_TABLE, lock_key(lay.target))
                    found = await conn.fetchrow(f"SELECT _cdc_partition, _cdc_clustering FROM {lay.target} LIMIT 1")
                    if found is not None:
                        await self._write(conn, lay, [], None, [(bytes(found[0]), bytes(found[1]))],
                                          int(self._clock()))
                    else:
                        await conn.execute(lay.staging_ddl())
                        await conn.execute(lay.upsert_sql())
                    if checkpoint is not None:
                        await conn.execute(ckpt.UPSERT, checkpoint.group, checkpoint.topic, checkpoint.partition,
                                           checkpoint.next_offset)
                finally:
                    await tx.rollback()
        except ApplyError:
            raise
        except Exception as exc:
            raise postgres_error(exc, table=table.name) from exc

    async def advance(self, checkpoint: Checkpoint) -> None:
        """Store ``checkpoint`` alone: its events are not written (a dropped table's, ``apply.on_table_drop``)."""
        try:
            await self._pool.execute(ckpt.UPSERT, checkpoint.group, checkpoint.topic, checkpoint.partition,
                                     checkpoint.next_offset)
        except Exception as exc:
            raise postgres_error(exc, topic=checkpoint.topic, partition=checkpoint.partition) from exc

    async def ping(self) -> None:
        """Return once PostgreSQL answers a trivial query; else raise :class:`ApplyError`, classified as every
        PostgreSQL error (retriable when the server is unreachable)."""
        try:
            await self._pool.fetchval("SELECT 1", timeout=5)
        except Exception as exc:
            raise postgres_error(exc) from exc

    async def expire(self, table: TableSchema, limit: int = 5000) -> int:
        """Re-view up to ``limit`` rows whose content changed by TTL expiry since they were written; returns
        how many.  Rows that expired completely move to the shadow table."""
        lay = await self.prepare(table)
        try:
            rows = await self._pool.fetch(
                f"SELECT _cdc_partition, _cdc_clustering FROM {lay.target} WHERE _cdc_expires_at <= $1 LIMIT $2",
                instant(int(self._clock())), limit)
        except Exception as exc:
            raise postgres_error(exc, table=table.name) from exc
        if rows:
            await self.write(table, [], None, extra_keys=[(bytes(r[0]), bytes(r[1])) for r in rows])
        return len(rows)

    async def refresh(self, table: TableSchema, chunk: int = 5000) -> int:
        """Re-write every row of the target table from its stored state (``_cdc_meta``), ``chunk`` rows per
        transaction; returns how many.  After a column dropped by hand was added again (empty), this brings its
        values back: the stored state always keeps every cell."""
        lay = await self.prepare(table)
        after: tuple[bytes, bytes] | None = None
        total = 0
        while True:
            try:
                if after is None:
                    rows = await self._pool.fetch(
                        f"SELECT _cdc_partition, _cdc_clustering FROM {lay.target} ORDER BY 1, 2 LIMIT $1", chunk)
                else:
                    rows = await self._pool.fetch(
                        f"SELECT _cdc_partition, _cdc_clustering FROM {lay.target} "
                        "WHERE (_cdc_partition, _cdc_clustering) > ($1, $2) ORDER BY 1, 2 LIMIT $3", *after, chunk)
            except Exception as exc:
                raise postgres_error(exc, table=table.name) from exc
            if not rows:
                return total
            keys = [(bytes(r[0]), bytes(r[1])) for r in rows]
            await self.write(table, [], None, extra_keys=keys)
            after = keys[-1]
            total += len(keys)

    def refill_pending(self, table: TableSchema) -> bool:
        """Whether ``table`` has columns added again after a drop whose rows may still show values from before the
        drop (:mod:`cdcpipe.apply.dropped`): then :meth:`refill`."""
        return table in self._refills

    async def refill(self, table: TableSchema) -> int:
        """Re-write every row of ``table`` from its stored state (see :meth:`refill_pending`), record it; returns
        how many rows."""
        pending = self._refills.pop(table, [])
        try:
            rows = await self.refresh(table)
            lay = await self.prepare(table)
            async with self._pool.acquire() as conn:
                await dropped.refilled(conn, lay, pending)
        except BaseException:
            self._refills.setdefault(table, pending)
            raise
        return rows

    async def truncate(self, table: TableSchema, truncated_at_us: int) -> int:
        """Apply a truncation of ``table`` to what is stored: every row and partition state re-written with it
        (``truncated`` must already hold it), then recorded in ``cdcpipe_truncations``; returns the rows
        re-written."""
        rows = await self.refresh(table)
        lay = await self.prepare(table)
        after: bytes | None = None
        while True:
            try:
                found = await self._pool.fetch(
                    f"SELECT _cdc_partition FROM {lay.partitions} WHERE $1::bytea IS NULL OR _cdc_partition > $1 "
                    "ORDER BY 1 LIMIT 5000", after)
            except Exception as exc:
                raise postgres_error(exc, table=table.name) from exc
            if not found:
                break
            keys = [bytes(r[0]) for r in found]
            await self.write(table, [], None, extra_partitions=keys)
            after = keys[-1]
        try:
            async with self._pool.acquire() as conn:
                await truncations.record(conn, self._prefix + table.name, truncated_at_us)
        except Exception as exc:
            raise postgres_error(exc, table=table.name) from exc
        return rows

    async def purge(self, table: TableSchema) -> int:
        """Forget shadow rows and partition states whose grace period is over (reference rule 38)."""
        lay = await self.prepare(table)
        stamp = instant(int(self._clock()))
        total = 0
        try:
            for target in (lay.shadow, lay.partitions):
                status = await self._pool.execute(f"DELETE FROM {target} WHERE _cdc_purge_after < $1", stamp)
                total += int(status.split()[-1])
        except Exception as exc:
            raise postgres_error(exc, table=table.name) from exc
        return total


async def _upsert(conn: Any, lay: Layout, rows: bytearray | list[tuple[Any, ...]]) -> None:
    """COPY ``rows`` (a binary COPY stream, or typed records) into the staging table; merge them into the target."""
    await conn.execute(lay.staging_ddl())
    if isinstance(rows, bytearray):
        await conn.copy_to_table(lay.staging, source=rows, columns=list(lay.record_columns), format="binary")
    else:
        await conn.copy_records_to_table(lay.staging, records=rows, columns=list(lay.record_columns))
    await conn.execute(lay.upsert_sql())


def _plan(lay: Layout) -> list[tuple[str, bool, Callable[[Any], tuple[Any, bool]] | None]]:
    """Per column of a record: name, whether it is a key column, converter (None: the value passes as is)."""
    keys = set(lay.key_columns)
    return [(c.name, c.name in keys, converter(c.type)) for c in lay.columns]


def _record(lay: Layout, plan: list[tuple[str, bool, Callable[[Any], tuple[Any, bool]] | None]],
            key: merge.RowKey, rv: view.RowView, row: merge.RowState,
            stamp: datetime.datetime | None) -> tuple[Any, ...]:
    values = rv.values
    keys = view.key_values(lay.table, key[0], key[1])
    out: list[Any] = []
    inexact: list[str] | None = None
    for name, is_key, conv in plan:
        v = keys.get(name) if is_key else values.get(name)
        if conv is not None:
            v, exact = conv(v)
            if not exact:
                inexact = [*(inexact or ()), name]
        out.append(v)
    out += [key[0], key[1], encode_row(row), inexact, instant(rv.expires_at), stamp, token(key[0])]
    return tuple(out)


__all__ = ["BatchWriter", "Checkpoint", "Positioned", "WriteResult", "ident"]
