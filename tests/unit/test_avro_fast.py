"""The fast encoder writes exactly the bytes of the reference path (events.from_mutation + avro.encode)."""

from __future__ import annotations

import random

import pytest

from cdcpipe import avro
from cdcpipe.capture.encoder import TableEncoder, Unsupported
from cdcpipe.capture.events import from_mutation
from cdcpipe.capture.mutation import Mutation, PartitionUpdate
from cdcpipe.capture.rows import DeletionTime
from tests.support.eventkit import ORIGIN, composite, random_update, reference_messages, table


def test_fast_bytes_equal_reference_bytes_for_random_updates() -> None:
    t = table()
    schema = avro.table_schema(t)
    enc = TableEncoder(t, schema, ORIGIN)
    rng = random.Random(7)
    fast_paths = 0
    for _ in range(3000):
        u = random_update(rng, t)
        expected = reference_messages(u, schema)
        try:
            got: list[bytes] | str = [m for _, _, m in enc.encode(u, 12, 345)]
            fast_paths += 1
        except Unsupported:
            continue  # the caller re-runs the reference path
        assert got == expected
    assert fast_paths > 2500


def test_op_and_timestamp_match_the_events() -> None:
    t = table()
    enc = TableEncoder(t, avro.table_schema(t), ORIGIN)
    rng = random.Random(3)
    for _ in range(300):
        u = random_update(rng, t)
        try:
            got = [(op, ts) for op, ts, _ in enc.encode(u, 1, 2)]
        except Unsupported:
            continue
        events = [c.event for c in from_mutation(Mutation(None, (u,)), ORIGIN, 1, 2)]
        assert got == [(e.op.value, e.timestamp_micros) for e in events]


def test_undecodable_key_needs_the_reference_path() -> None:
    t = table()
    enc = TableEncoder(t, avro.table_schema(t), ORIGIN)
    u = PartitionUpdate(t, composite(b"\1\2", b"k"), DeletionTime(1, 2), None, ())
    with pytest.raises(Unsupported):
        enc.encode(u, 1, 2)


def test_zlong_is_avros_long_encoding_over_the_whole_range() -> None:
    import io

    import fastavro

    from cdcpipe.capture.encoder import zlong

    rng = random.Random(5)
    edges = [0, -1, 1, 63, -64, 64, 8191, -8192, 8192, 2**27, -(2**27) - 1, 2**41, 2**55 - 1, 2**55, -(2**55) - 1,
             2**62, -(2**63), 2**63 - 1]
    for n in edges + [rng.randint(-(2**63), 2**63 - 1) >> rng.randint(0, 63) for _ in range(3000)]:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, "long", n)
        assert zlong(n) == buf.getvalue(), n
    for n in (2**63, -(2**63) - 1):
        with pytest.raises(Unsupported):
            zlong(n)
