"""The schema changes capture publishes (``<prefix>.schema-changes``), as apply records and mirrors them.

Apply reads the topic from the beginning (as it reads the schemas topic).  Every record, from every node, becomes
rows of ``cdcpipe_schema_history`` (one per change; a record read again adds nothing).  What a change does to
PostgreSQL beyond that, once, when its row is first recorded:

- ``dropped`` (DROP TABLE): the mirror table is kept and its comment says so (``apply.on_table_drop = keep``, the
  default), or its tables are dropped (``drop``); with ``drop``, events of the dropped table (its table id) that
  arrive later are not written (``cdcpipe_apply_dropped_table_events_total``): Cassandra no longer has them.
- ``created`` after a ``dropped`` of the same name (the table created again): everything of the old table still in
  the mirror is older than the new table, so the new table's creation time becomes a floor of the name, applied as
  a truncation (:mod:`cdcpipe.apply.truncations`) — derived again from the topic at every start.
- ``cdc_off``/``cdc_on``: the mirror table's comment says whether it is still followed.

Column changes are mirrored when the first event of the new version is written (:mod:`cdcpipe.apply.dropped`,
:class:`cdcpipe.apply.writer.BatchWriter`); here they are only recorded.
"""

from __future__ import annotations

import contextlib
import datetime
import uuid
from typing import Any

from cdcpipe.apply.decode import SchemaReader
from cdcpipe.apply.tables import ident
from cdcpipe.schema_changes import SchemaChangeRecord

DDL = ("CREATE TABLE IF NOT EXISTS cdcpipe_schema_history (table_name text NOT NULL, node text NOT NULL, "
       "seen_at timestamptz NOT NULL, change text NOT NULL, subject text NOT NULL, detail text NOT NULL, "
       "table_id text NOT NULL, version text NOT NULL, ordinal integer NOT NULL, changed_at timestamptz, "
       "recorded_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (table_name, node, seen_at, change, subject))")
_INSERT = ("INSERT INTO cdcpipe_schema_history (table_name, node, seen_at, change, subject, detail, table_id, "
           "version, ordinal, changed_at) SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], "
           "$5::text[], $6::text[], $7::text[], $8::text[], $9::int[], $10::timestamptz[]) "
           "ON CONFLICT DO NOTHING RETURNING table_name, node, seen_at, change")


def _at_us(us: int | None) -> datetime.datetime | None:
    return None if us is None else datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(
        microseconds=us)


class HistoryReader(SchemaReader):
    """Reads ``<prefix>.schema-changes``.  ``pending``: records not recorded yet; ``gone``: ids of dropped tables;
    ``floors``: per ``keyspace.table`` created again after a drop, the new table's creation time (µs); ``marks``:
    per ``keyspace.table``, the latest change that marks its mirror table (:func:`mirror`), with its record."""

    def __init__(self, consumer: Any, topic: str) -> None:
        super().__init__(consumer, topic)
        self.pending: list[SchemaChangeRecord] = []
        self.gone: set[uuid.UUID] = set()
        self.floors: dict[str, int] = {}
        self.marks: dict[str, tuple[SchemaChangeRecord, str]] = {}
        self._dropped_names: set[str] = set()

    def take(self, key: bytes | None, value: bytes) -> None:
        rec = SchemaChangeRecord.from_value(value)
        if rec is None:
            return
        self.pending.append(rec)
        for ch in rec.changes:
            if ch.change == "dropped":
                self._dropped_names.add(rec.table)
                old = ch.detail or rec.table_id  # a drop seen with the creation again names the old id
                with contextlib.suppress(ValueError):
                    self.gone.add(uuid.UUID(old))
            elif ch.change == "created" and rec.table in self._dropped_names and rec.shape is not None \
                    and rec.shape.created_us is not None:
                self.floors[rec.table] = max(self.floors.get(rec.table, -1), rec.shape.created_us)
                self.gone.discard(uuid.UUID(rec.shape.table_id))
            if ch.change in ("dropped", "cdc_off", "cdc_on") or (
                    ch.change == "created" and rec.table in self._dropped_names):
                self.marks[rec.table] = (rec, ch.change)

    def take_pending(self) -> list[SchemaChangeRecord]:
        out, self.pending = self.pending, []
        return out


async def record(conn: Any, recs: list[SchemaChangeRecord]) -> set[tuple[str, str, int, str]]:
    """Insert the rows of ``recs``; returns (table, node, seen_at_ms, change) of the rows new in the table."""
    rows = [(r.table, r.node, _at_us(r.seen_at_ms * 1000), c.change, c.subject, c.detail, r.table_id, r.version,
             r.ordinal, _at_us(r.changed_at_us)) for r in recs for c in r.changes]
    if not rows:
        return set()
    await conn.execute(DDL)
    found = await conn.fetch(_INSERT, *(list(col) for col in zip(*rows, strict=True)))
    return {(f[0], f[1], round(f[2].timestamp() * 1000), f[3]) for f in found}


async def mirror(conn: Any, schema_prefix: str, rec: SchemaChangeRecord, change: str, drop_tables: bool) -> str:
    """What ``change`` of ``rec`` does to the mirror table (see the module); returns what was done, "" if nothing."""
    ks, _, name = rec.table.partition(".")
    target = f"{ident(schema_prefix + ks)}.{ident(name)}"
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", target)
    if not exists:
        return ""
    seen = _at_us(rec.seen_at_ms * 1000)
    if change == "dropped" and drop_tables:
        for rel in (name, name + "$shadow", name + "$partition"):
            await conn.execute(f"DROP TABLE IF EXISTS {ident(schema_prefix + ks)}.{ident(rel)}")
        return "dropped"
    text = {
        "dropped": f"cdcpipe: table dropped in Cassandra (id {rec.table_id}), seen by {rec.node} at {seen}; the rows "
                   "are kept as they were (apply.on_table_drop = keep)",
        "created": f"cdcpipe: table created again in Cassandra (id {rec.table_id}); rows of the dropped table are "
                   "removed",
        "cdc_off": f"cdcpipe: cdc = false in Cassandra since {seen} (seen by {rec.node}): no longer followed, the rows "
                   "are as they were then",
        "cdc_on": f"cdcpipe: cdc = true again since {seen} (seen by {rec.node}); changes made while it was off are "
                  "not captured (snapshot the table to bring them over)",
    }.get(change)
    if text is None:
        return ""
    await conn.execute(f"COMMENT ON TABLE {target} IS '" + text.replace("'", "''") + "'")
    return "marked"
