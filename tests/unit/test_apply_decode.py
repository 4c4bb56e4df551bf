"""Apply's event decoder gives exactly what :func:`cdcpipe.avro.decode` gives, for every kind of event."""

from __future__ import annotations

import pytest

from cdcpipe import avro
from cdcpipe.apply.decode import decode_record
from cdcpipe.errors import EventDecodeError
from tests.support.eventkit import all_changes, random_update, reference_messages, table


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


def test_decode_delta_matches_the_delta_of_the_decoded_event() -> None:
    """The fast path (Avro record → Delta, no event objects) agrees with ``merge.delta`` of the full event on
    random updates of every kind — malformed values, empty keys, collections, statics, deletions included."""
    import io
    import random

    import fastavro

    from cdcpipe.apply import merge
    from cdcpipe.apply.decode import _Plan, decode_delta

    t = table()
    schema = avro.table_schema(t)
    cache = avro.SchemaCache()
    cache.add(schema.to_json())
    reader = _Reader(cache)
    plan = _Plan(schema)
    rng = random.Random(11)
    fast = total = 0
    for _ in range(1500):
        messages = reference_messages(random_update(rng, t), schema)
        if isinstance(messages, str):
            continue
        for data in messages:
            try:
                event, tab = decode_record(data, reader)  # type: ignore[arg-type]
            except EventDecodeError:
                continue  # e.g. a UDT field index beyond the type: only the typed decoder looks at values
            try:
                expected = merge.delta(tab, event)
            except (TypeError, ValueError):  # a key value that does not decode: no bytes to key the row by
                with pytest.raises(EventDecodeError):
                    decode_delta(data, reader)  # type: ignore[arg-type]
                continue
            got, tab2 = decode_delta(data, reader)  # type: ignore[arg-type]
            assert got == expected and tab2 is tab
            total += 1
            fast += plan.delta(fastavro.schemaless_reader(io.BytesIO(data[10:]), schema.plain, None)) is not None
    assert total > 1000 and fast > total // 2, (fast, total)
