"""``--repair``: differences fixed through the pipeline, never by writing PostgreSQL.

- A row missing in PostgreSQL or holding other values: its partition's current Cassandra state is produced again
  through the snapshot path (:meth:`cdcpipe.snapshot.pipeline.Snapshot.emit_partitions`: snapshot events with the
  cells' real write times), and apply's merge makes the mirror equal to it.
- A row Cassandra no longer has: a row deletion event at the newest timestamp PostgreSQL's state of the row holds —
  it removes exactly what the mirror has and cannot shadow a write made later.  (A partition with only static data
  is not deleted this way: reported, left to an operator.)
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

from cdcpipe.apply.keys import split_clustering
from cdcpipe.avro import encode
from cdcpipe.config import Settings
from cdcpipe.model import ChangeEvent, Deletion, Op
from cdcpipe.reconcile.compare import MISSING_IN_CASSANDRA, Difference
from cdcpipe.schema import TableSchema
from cdcpipe.snapshot.emit import Batch
from cdcpipe.snapshot.pipeline import Options, Snapshot
from cdcpipe.snapshot.rows import source_of
from cdcpipe.typemap import deserialize


def repair(settings: Settings, table: TableSchema, differences: Sequence[Difference], consistency: str
           ) -> tuple[int, int, int]:
    """Produce the repairs of ``differences`` (blocking); returns (events re-emitted, deletions produced, rows
    left to an operator)."""
    snap = Snapshot(settings, Options(consistency=consistency))
    try:
        parts = {d.key[0] for d in differences if d.kind != MISSING_IN_CASSANDRA}
        emitted = snap.emit_partitions(table, parts) if parts else 0
        gone = [d for d in differences if d.kind == MISSING_IN_CASSANDRA]
        deletable = [d for d in gone if d.key[1] is not None and d.newest is not None]
        if deletable:
            schema, topic = snap.output(table)
            source = source_of(table, snap.cluster_name, snap.datacenter)
            batch = Batch()
            now_s = int(time.time())
            for d in deletable:
                assert d.key[1] is not None and d.newest is not None
                raw_key = tuple(table.partition_key_values(d.key[0]))
                raw_ck = tuple(split_clustering(d.key[1]))
                event = ChangeEvent(
                    hashlib.blake2b(b"reconcile" + d.key[0] + d.key[1] + d.newest.to_bytes(8, "big", signed=True),
                                    digest_size=16).digest(),
                    Op.ROW_DELETE, d.newest, source,
                    tuple(deserialize(c.type, v) for c, v in zip(table.partition_key, raw_key, strict=True)),
                    tuple(deserialize(c.type, v) for c, v in zip(table.clustering, raw_ck, strict=True)),
                    deletion=Deletion(d.newest, now_s))
                snap.emitter.produce(topic, d.key[0], encode(event, schema, raw_key, raw_ck), batch)
            snap.emitter.wait(batch)
        return emitted, len(deletable), len(gone) - len(deletable)
    finally:
        snap.close()
