"""Retry policy of PostgreSQL errors is decided by SQLSTATE, not by message text."""

from __future__ import annotations


def test_lock_timeouts_are_retriable_and_constraint_violations_are_not() -> None:
    import asyncpg

    from cdcpipe.errors import postgres_error

    assert postgres_error(asyncpg.exceptions.LockNotAvailableError("lock timeout")).retriable
    assert postgres_error(asyncpg.exceptions.DeadlockDetectedError("deadlock")).retriable
    assert postgres_error(ConnectionResetError("gone")).retriable
    assert not postgres_error(asyncpg.exceptions.NotNullViolationError("null")).retriable
