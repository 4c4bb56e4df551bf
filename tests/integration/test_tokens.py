"""``_cdc_token``: the partition token apply stores with every mirrored row equals Cassandra's ``token()`` for
every kind of partition key (one column, composite, text, uuid, blob), and rows mirrored before the column was
kept get it from :func:`cdcpipe.apply.migrate.fill_tokens`."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from cassandra.cluster import Session

from cdcpipe.apply import migrate
from cdcpipe.apply.checkpoint import Checkpoint
from cdcpipe.apply.tables import layout
from cdcpipe.apply.writer import BatchWriter, Positioned
from cdcpipe.cql import driver_type, parse_cql_type
from cdcpipe.demo.fidelity import partition_bytes
from cdcpipe.tokens import token
from tests.support.applykit import Clock
from tests.support.mergekit import NOW, TABLES, insert
from tests.support.processes import unique

pytestmark = pytest.mark.timeout(120)


def test_token_equals_cassandra_for_every_key_kind(session: Session) -> None:
    ks = unique("ittok")
    session.execute(f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    try:
        session.execute(f"CREATE TABLE {ks}.one (k int PRIMARY KEY, v int)")
        session.execute(f"CREATE TABLE {ks}.comp (a text, b uuid, c blob, v int, PRIMARY KEY ((a, b, c)))")
        ids = [uuid.UUID(int=i * 7919) for i in range(20)]
        for i in range(-50, 50):
            session.execute(f"INSERT INTO {ks}.one (k, v) VALUES (%s, 0)", (i * 104729,))
        for i, u in enumerate(ids):
            session.execute(f"INSERT INTO {ks}.comp (a, b, c, v) VALUES (%s, %s, %s, 0)",
                            (f"é{i}" * i, u, bytes([i]) * i))
        ser = {n: driver_type(parse_cql_type(n, ks, lambda k, t: None)) for n in ("int", "text", "uuid", "blob")}
        one = list(session.execute(f"SELECT token(k) AS t, k FROM {ks}.one"))
        assert len(one) == 100 and token(ser["int"].serialize(1, 4)) == -4069959284402364209
        for r in one:
            assert token(ser["int"].serialize(r.k, 4)) == r.t
        comp = list(session.execute(f"SELECT token(a, b, c) AS t, a, b, c FROM {ks}.comp"))
        assert len(comp) == 20
        for r in comp:
            key = partition_bytes([ser["text"].serialize(r.a, 4), ser["uuid"].serialize(r.b, 4),
                                   ser["blob"].serialize(r.c or b"", 4)])
            assert token(key) == r.t
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {ks}")


@pytest.mark.parametrize("binary", [True, False])
async def test_rows_carry_their_token_and_older_rows_get_it(pool: Any, prefix: str, cleanup: None,
                                                            binary: bool) -> None:
    writer = BatchWriter(pool, schema_prefix=prefix, clock=Clock(NOW + 1), binary=binary)
    events = [insert("t", (k, c), 10, v=f"{k}.{c}") for k in range(30) for c in range(3)]
    await writer.write(TABLES["t"], [Positioned(e, i) for i, e in enumerate(events)],
                       Checkpoint(prefix, "topic.t", 0, len(events)))
    lay = layout(TABLES["t"], prefix)

    async def wrong() -> int:
        rows = await pool.fetch(f"SELECT _cdc_partition, _cdc_token FROM {lay.target}")
        assert len(rows) == 90
        return sum(1 for r in rows if r[1] != token(bytes(r[0])))
    assert await wrong() == 0
    # rows mirrored by a version without the column: NULL until filled (in chunks)
    await pool.execute(f"UPDATE {lay.target} SET _cdc_token = NULL WHERE k % 2 = 0")
    assert await wrong() == 45
    filled = 0
    while (n := await migrate.fill_tokens(pool, lay, limit=4)) > 0:
        filled += n
    assert filled == 15 and await wrong() == 0
