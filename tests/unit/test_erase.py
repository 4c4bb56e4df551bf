"""``cdcpipe erase``'s pure part: a KEY (a JSON object of primary-key values) checked against the table and
serialized as Cassandra serializes it (bytes below were read back from Cassandra 5.0 after ``INSERT ... JSON``)."""

from __future__ import annotations

import pytest

from cdcpipe.errors import EraseKeyError
from cdcpipe.reconcile.canonical import clustering_bytes, partition_bytes
from cdcpipe.reconcile.erasekey import parse_key
from cdcpipe.schema_source import parse_cql_schema

(USERS, EVENTS, WIDE) = parse_cql_schema(
    "CREATE TABLE ks.users (id int PRIMARY KEY, email text) WITH id = 00000000-0000-0000-0000-000000000081;\n"
    "CREATE TABLE ks.events (tenant text, day int, at timestamp, seq smallint, body text, "
    "PRIMARY KEY ((tenant, day), at, seq)) WITH id = 00000000-0000-0000-0000-000000000082;\n"
    "CREATE TABLE ks.w (d decimal, f double, ts timestamp, dt date, tm time, b blob, tp frozen<tuple<int, text>>, "
    "u uuid, i inet, m frozen<map<int, text>>, v text, PRIMARY KEY ((d, f, ts, dt), tm, b, tp, u, i, m)) "
    "WITH id = 00000000-0000-0000-0000-000000000083;")


def test_a_partition_key_is_the_partition() -> None:
    key = parse_key(USERS, '{"id": 42}')
    assert key.partition == (42).to_bytes(4, "big") and key.clustering is None
    assert key.scope == "partition" and key.table == "ks.users" and key.given == '{"id": 42}'
    assert key.where() == ('"id" = fromJson(%s)', ["42"])


def test_a_composite_partition_key_and_a_whole_clustering_is_one_row() -> None:
    key = parse_key(EVENTS, '{"tenant": "acme", "day": 7, "at": "2024-01-01T10:00:00.123Z", "seq": "3"}')
    assert key.partition == partition_bytes([b"acme", (7).to_bytes(4, "big")])
    assert key.clustering == clustering_bytes([(1704103200123).to_bytes(8, "big"), (3).to_bytes(2, "big")])
    assert key.scope == "row"
    assert key.where() == ('"tenant" = fromJson(%s) AND "day" = fromJson(%s) AND "at" = fromJson(%s) AND '
                           '"seq" = fromJson(%s)', ['"acme"', "7", '"2024-01-01T10:00:00.123Z"', '"3"'])
    assert parse_key(EVENTS, '{"tenant": "acme", "day": 7, "at": 1704103200123, "seq": 3}').clustering \
        == key.clustering


def test_every_key_type_is_serialized_as_cassandra_stores_it() -> None:
    key = parse_key(WIDE, '{"d": 1.50, "f": 2.5, "ts": "2024-01-01 10:00:00.123+0000", "dt": "2024-02-03", '
                          '"tm": "10:11:12.123456789", "b": "0x0102", "tp": [1, "a"], '
                          '"u": "6ab09bec-e68e-48d9-a5f8-97e6fb4c9b47", "i": "10.0.0.1", "m": {"1": "x"}}')
    assert key.partition == partition_bytes([b"\x00\x00\x00\x02\x00\x96", b"@\x04\x00\x00\x00\x00\x00\x00",
                                             b"\x00\x00\x01\x8c\xc4wE{", b"\x80\x00M,"])
    assert key.clustering == clustering_bytes([
        b"\x00\x00!Zd\xe4M\x15", b"\x01\x02", b"\x00\x00\x00\x04\x00\x00\x00\x01\x00\x00\x00\x01a",
        b"j\xb0\x9b\xec\xe6\x8eH\xd9\xa5\xf8\x97\xe6\xfbL\x9bG", b"\n\x00\x00\x01",
        b"\x00\x00\x00\x01\x00\x00\x00\x04\x00\x00\x00\x01\x00\x00\x00\x01x"])
    assert key.where()[1][0] == '"1.50"'  # the decimal's scale is kept: 1.5 is another partition


@pytest.mark.parametrize(("table", "text", "message"), [
    (USERS, "{id: 1}", "not JSON"),
    (USERS, "[1]", "a JSON object"),
    (USERS, "{}", "missing partition key column id"),
    (USERS, '{"id": 1, "email": "a@b"}', "email is not a primary-key column"),
    (USERS, '{"id": 1, "nope": 1}', "nope is not a primary-key column"),
    (USERS, '{"id": null}', "id: null"),
    (USERS, '{"id": "abc"}', "id (int)"),
    (USERS, '{"id": true}', "id (int)"),
    (USERS, '{"id": 1.5}', "id (int)"),
    (USERS, '{"id": 3000000000}', "id (int)"),
    (EVENTS, '{"tenant": "acme"}', "missing partition key column day"),
    (EVENTS, '{"tenant": "acme", "day": 7, "at": 0}', "a prefix of the clustering columns"),
    (EVENTS, '{"tenant": "acme", "day": 7, "seq": 1}', "a prefix of the clustering columns"),
    (EVENTS, '{"tenant": "acme", "day": 7, "at": "2024-01-01T10:00:00", "seq": 1}', "time zone"),
    (EVENTS, '{"tenant": 5, "day": 7}', "tenant (text)"),
    (EVENTS, '{"tenant": "acme", "day": 7, "at": 0, "seq": 70000}', "seq (smallint)"),
    (WIDE, '{"d": 1, "f": 1, "ts": 0, "dt": "2024-13-01"}', "dt (date)"),
])
def test_a_wrong_key_is_refused_with_its_coordinates(table: object, text: str, message: str) -> None:
    with pytest.raises(EraseKeyError) as caught:
        parse_key(table, text)  # type: ignore[arg-type]
    assert message in str(caught.value), str(caught.value)
    assert caught.value.table == table.name and caught.value.key == text  # type: ignore[attr-defined]
    assert not caught.value.retriable
