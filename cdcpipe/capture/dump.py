"""``cdcpipe dump``: print decoded commit log segments as JSON lines (one per PartitionUpdate).

Exit status: 0 = everything read; 1 = damaged sections or undecodable entries were reported (the
rest was printed); 2 = nothing could be read (bad arguments, schema or header, missing key).
Mutations of tables missing from the schema are counted, not treated as damage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from cdcpipe.capture.mutation import MutationDecoder, PartitionUpdate, first_table_id
from cdcpipe.capture.registry import SchemaRegistry
from cdcpipe.capture.rows import Cell, DeletionTime, RangeTombstoneMarker, Row
from cdcpipe.capture.segment import Entry, KeyProvider, Position, SegmentReader, StaticKeyProvider
from cdcpipe.cql import CqlType, iso_from_micros, render, udt_field_index
from cdcpipe.errors import CdcpipeError, MutationDecodeError, SegmentError, UnknownTableError
from cdcpipe.schema import TableSchema, system_table_id
from cdcpipe.schema_source import CqlFileSchemaSource, SchemaSource, connect_system_schema

HOSTS_ENV = "CDCPIPE_CASSANDRA__HOSTS"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the dump command's arguments to ``parser``."""
    parser.add_argument("segments", nargs="+", type=Path, metavar="SEGMENT", help="CommitLog-*.log files")
    parser.add_argument("--schema-cql", type=Path, metavar="FILE",
                        help=f"CQL schema file (CREATE TABLE ... WITH id = ...); default: live system_schema "
                             f"from ${HOSTS_ENV} (host[:port],..., default 127.0.0.1:9042)")
    parser.add_argument("--from", dest="start", type=Position.parse, metavar="POSITION",
                        help="SEGMENT_ID:OFFSET; print entries starting at or after this position")
    parser.add_argument("--encryption-key", metavar="HEX", help="AES key (hex) for encrypted segments")
    parser.add_argument("--keystore", type=Path, metavar="FILE", help="JKS/JCEKS keystore with the key")
    parser.add_argument("--keystore-password", metavar="PASSWORD")
    parser.add_argument("--key-password", metavar="PASSWORD", help="defaults to the keystore password")
    parser.add_argument("--key-alias", metavar="ALIAS", help="only use this key alias from the keystore")
    parser.add_argument("--summary", action="store_true",
                        help="print counts per table and the errors instead of the mutations")


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the dump command; returns the exit status (see module docstring)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        keys = _keys(args)
        source: SchemaSource = (CqlFileSchemaSource(args.schema_cql) if args.schema_cql is not None
                                else connect_system_schema(os.environ.get(HOSTS_ENV, "127.0.0.1:9042")))
        registry = SchemaRegistry(source)
    except (CdcpipeError, ValueError) as exc:
        print(json.dumps({"error": str(exc)}), file=err)
        return 2
    decoder = MutationDecoder(registry)
    per_table: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    errors: list[dict[str, Any]] = []
    readers = []
    for path in args.segments:
        try:
            readers.append(SegmentReader(path, keys=keys))
        except SegmentError as exc:
            errors.append(_segment_error(exc))
            print(json.dumps(errors[-1]), file=err)
    if not readers:
        return 2
    names: dict[uuid.UUID, str] = {}
    for reader in sorted(readers, key=lambda r: r.descriptor.segment_id):
        seg_id = reader.descriptor.segment_id
        start: int | None = None
        if args.start is not None:
            if seg_id < args.start.segment_id:
                continue
            if seg_id == args.start.segment_id:
                start = args.start.offset
        version = reader.descriptor.messaging_version
        for item in reader.read(start=start):
            if isinstance(item, SegmentError):
                errors.append(_segment_error(item))
                if not args.summary:
                    print(json.dumps(errors[-1]), file=err)
                continue
            totals["entries"] += 1
            line = _decode(decoder, item, version, reader.path, names, per_table, errors, err, args.summary)
            for update in line:
                print(json.dumps(update, ensure_ascii=False), file=out)
        totals["sections"] += reader.stats.sections
    if args.summary:
        summary = {"segments": len(readers), "sections": totals["sections"], "entries": totals["entries"],
                   "tables": dict(sorted(per_table.items())), "errors": errors}
        print(json.dumps(summary, indent=2), file=out)
    return 1 if errors else 0


def _decode(decoder: MutationDecoder, entry: Entry, version: int | None, path: str, names: dict[uuid.UUID, str],
            per_table: Counter[str], errors: list[dict[str, Any]], err: TextIO, summary: bool,
            ) -> list[dict[str, Any]]:
    if version is None:
        errors.append({"error": "pre-3.0 mutation serialization is not supported", "segment": path,
                       "position": str(entry.position)})
        return []
    try:
        mutation = decoder.decode(entry.data, version, entry.position, path)
    except UnknownTableError as exc:
        if exc.column is not None:
            errors.append(_decode_error(exc, entry))
        table_id = exc.table_id or first_table_id(entry.data)
        per_table[names[table_id] if table_id in names else _unknown_name(table_id)] += 1
        return []
    except MutationDecodeError as exc:
        errors.append(_decode_error(exc, entry))
        if not summary:
            print(json.dumps(errors[-1]), file=err)
        return []
    lines = []
    for update in mutation.updates:
        names[update.table_id] = update.table.name
        per_table[update.table.name] += 1
        if not summary:
            lines.append(update_to_json(update, entry.position))
    return lines


_SYSTEM_TABLES = {
    "system": ("local", "peers", "peers_v2", "peer_events", "peer_events_v2", "batches", "paxos", "IndexInfo",
               "sstable_activity", "sstable_activity_v2", "compaction_history", "size_estimates",
               "table_estimates", "available_ranges", "available_ranges_v2", "transferred_ranges",
               "transferred_ranges_v2", "view_builds_in_progress", "built_views", "prepared_statements",
               "repairs", "top_partitions"),
    "system_schema": ("keyspaces", "tables", "columns", "column_masks", "dropped_columns", "triggers", "views",
                      "types", "functions", "aggregates", "indexes"),
}
_KNOWN_IDS = {system_table_id(ks, t): f"{ks}.{t}" for ks, tables in _SYSTEM_TABLES.items() for t in tables}


def _unknown_name(table_id: uuid.UUID | None) -> str:
    """Summary label of a table without schema: its id, and its name if it is a well-known system table."""
    if table_id is None:
        return "?"
    known = _KNOWN_IDS.get(table_id)
    return f"{table_id} ({known}, no schema)" if known else str(table_id)


def _segment_error(exc: SegmentError) -> dict[str, Any]:
    return {"error": exc.reason, "segment": exc.path, "offset": exc.offset, "kind": type(exc).__name__}


def _decode_error(exc: MutationDecodeError, entry: Entry) -> dict[str, Any]:
    return {"error": exc.reason, "segment": exc.segment, "position": str(entry.position),
            "table_id": None if exc.table_id is None else str(exc.table_id), "kind": type(exc).__name__}


def _keys(args: argparse.Namespace) -> KeyProvider | None:
    if args.encryption_key is not None:
        return StaticKeyProvider.from_hex(args.encryption_key)
    if args.keystore is not None:
        if args.keystore_password is None:
            raise ValueError("--keystore needs --keystore-password")
        return StaticKeyProvider.from_keystore(args.keystore, args.keystore_password, args.key_password,
                                               args.key_alias)
    return None


# ------------------------------------------------------------------------------------------ JSON

def _deletion(dt: DeletionTime | None) -> dict[str, Any] | None:
    if dt is None:
        return None
    return {"marked_for_delete_at": dt.marked_for_delete_at, "local_deletion_time": dt.local_deletion_time}


def _path(t: CqlType, path: bytes) -> Any:
    if t.name in ("list", "set"):
        return render(CqlType("timeuuid") if t.name == "list" else t.params[0], path)
    if t.name == "map":
        return render(t.params[0], path)
    if t.name == "udt":
        try:
            return t.field_names[udt_field_index(path)]
        except (ValueError, IndexError):
            return {"undecodable": path.hex()}
    return path.hex()


def _cell(cell: Cell, t: CqlType | None) -> dict[str, Any]:
    out: dict[str, Any] = {"column": cell.column}
    if cell.path is not None:
        out["path"] = _path(t, cell.path) if t is not None else cell.path.hex()
    if cell.deleted:
        out["value"] = None
    elif t is None:
        out["value"] = cell.value.hex()
    else:
        value_type = t.params[-1] if t.multi_cell and t.name in ("list", "map") else t
        if t.multi_cell and t.name == "udt" and cell.path is not None:
            try:
                value_type = t.params[udt_field_index(cell.path)]
            except (ValueError, IndexError):
                value_type = CqlType("blob")
        out["value"] = None if t.multi_cell and t.name == "set" else render(value_type, cell.value)
    out["timestamp"] = cell.timestamp
    out["time"] = iso_from_micros(cell.timestamp)
    if cell.ttl:
        out["ttl"] = cell.ttl
    if cell.local_deletion_time is not None:
        out["local_expiry" if not cell.deleted else "local_deletion_time"] = cell.local_deletion_time
    out["deleted"] = cell.deleted
    return out


def _clustering(table: TableSchema, values: tuple[bytes | None, ...]) -> dict[str, Any]:
    return {c.name: (None if v is None else render(c.type, v))
            for c, v in zip(table.clustering, values, strict=False)}


def _row(table: TableSchema, row: Row) -> dict[str, Any]:
    types = {c.name: c.type for c in (*table.static, *table.regular)}
    types.update({d.name: d.type for d in table.dropped if d.name not in types})
    out: dict[str, Any] = {}
    if not row.static:
        out["clustering"] = _clustering(table, row.clustering)
    lv = row.liveness
    out["liveness"] = None if lv is None else {
        "timestamp": lv.timestamp, "ttl": lv.ttl, "local_expiration_time": lv.local_expiration_time}
    out["deletion"] = _deletion(row.deletion)
    if row.shadowable:
        out["shadowable"] = True
    if row.complex_deletions:
        out["complex_deletions"] = {name: _deletion(dt) for name, dt in row.complex_deletions}
    out["cells"] = [_cell(c, types.get(c.column)) for c in row.cells]
    return out


def _marker(table: TableSchema, m: RangeTombstoneMarker) -> dict[str, Any]:
    return {"kind": m.kind_name, "bound": _clustering(table, m.bound),
            "close_deletion": _deletion(m.close_deletion), "open_deletion": _deletion(m.open_deletion)}


def update_to_json(update: PartitionUpdate, position: Position | None) -> dict[str, Any]:
    """JSON-compatible rendering of one PartitionUpdate (one dump line)."""
    table = update.table
    try:
        key: Any = {c.name: render(c.type, v)
                    for c, v in zip(table.partition_key, table.partition_key_values(update.key), strict=True)}
    except ValueError:
        key = {"undecodable": update.key.hex()}
    return {
        "table": table.name, "table_id": str(table.table_id),
        "position": None if position is None else str(position),
        "partition_key": key,
        "partition_deletion": _deletion(update.partition_deletion),
        "static_row": None if update.static_row is None else _row(table, update.static_row),
        "rows": [_row(table, r) for r in update.rows],
        "range_tombstones": [_marker(table, m) for m in update.range_tombstones],
    }


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m cdcpipe.capture.dump``)."""
    parser = argparse.ArgumentParser(prog="cdcpipe dump", description=__doc__)
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except BrokenPipeError:  # output piped into head & co.
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
