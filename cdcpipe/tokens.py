"""Cassandra's token of a partition (``Murmur3Partitioner``), as both sides compute it: capture-side tools read
``token(pk)`` from Cassandra, apply stores it with every mirrored row (``_cdc_token``) for range comparisons."""

from __future__ import annotations

from cassandra.metadata import Murmur3Token

MIN_TOKEN = -(2**63)
MAX_TOKEN = 2**63 - 1


def token(partition: bytes) -> int:
    """The token of the partition whose key bytes are ``partition`` (the serialized key; CompositeType for
    several key columns): the first 64 bits of Murmur3 x64-128, Long.MIN_VALUE mapped to MAX_VALUE, as
    ``Murmur3Partitioner.getToken`` does."""
    value: int = Murmur3Token.hash_fn(partition)
    return value
