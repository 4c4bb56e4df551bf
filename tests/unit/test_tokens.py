"""Cassandra's Murmur3 token of a partition key (``cdcpipe.tokens``); the real cluster's ``token()`` is compared in
``tests/integration/test_tokens.py``."""

from __future__ import annotations

from cdcpipe.tokens import MAX_TOKEN, MIN_TOKEN, token


def test_known_tokens() -> None:
    assert token((1).to_bytes(4, "big")) == -4069959284402364209  # token(1) of an int key, as Cassandra gives it
    assert MIN_TOKEN < token(b"a") <= MAX_TOKEN
    assert token(b"abc") == token(b"abc") and token(b"abc") != token(b"abd")
