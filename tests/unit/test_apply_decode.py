"""Apply's event decoder gives exactly what :func:`cdcpipe.avro.decode` gives, for every kind of event."""

from __future__ import annotations

from cdcpipe import avro
from cdcpipe.apply.decode import decode_record
from tests.unit.test_avro import all_changes, table


class _Reader:
    def __init__(self, cache: avro.SchemaCache) -> None:
        self.cache = cache

    def lookup(self, fingerprint: bytes) -> avro.EventSchema | None:
        return self.cache.get(fingerprint)


def test_decode_record_matches_avro_decode() -> None:
    schema = avro.table_schema(table())
    cache = avro.SchemaCache()
    cache.add(schema.to_json())
    for c in all_changes():
        data = avro.encode(c.event, schema, c.raw_key, c.raw_clustering, c.raw_bounds)
        event, t = decode_record(data, _Reader(cache))  # type: ignore[arg-type]
        assert event == avro.decode(data, cache.get) == c.event
        assert (t.keyspace, t.table) == ("ks", "Things")
