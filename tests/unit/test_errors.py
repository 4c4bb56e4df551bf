"""Retry policy of PostgreSQL errors is decided by SQLSTATE, not by message text."""

from __future__ import annotations


def test_lock_timeouts_are_retriable_and_constraint_violations_are_not() -> None:
    import asyncpg

    from cdcpipe.errors import postgres_error

    assert postgres_error(asyncpg.exceptions.LockNotAvailableError("lock timeout")).retriable
    assert postgres_error(asyncpg.exceptions.DeadlockDetectedError("deadlock")).retriable
    assert postgres_error(ConnectionResetError("gone")).retriable
    assert not postgres_error(asyncpg.exceptions.NotNullViolationError("null")).retriable


def test_client_errors_are_retriable_only_when_the_connection_broke() -> None:
    from asyncpg.exceptions import ConnectionDoesNotExistError, InterfaceError, InternalClientError
    from asyncpg.exceptions._base import DataError

    from cdcpipe.errors import postgres_error

    # seen in CI: a pool resetting a connection while PostgreSQL restarts
    broken = InternalClientError("cannot switch to state 15; another operation (2) is in progress")
    assert postgres_error(broken).retriable
    assert postgres_error(InterfaceError("connection is closed")).retriable
    assert postgres_error(ConnectionDoesNotExistError("connection was closed in the middle of operation")).retriable
    assert postgres_error(TimeoutError()).retriable
    # an argument asyncpg cannot encode is the event's fault: retrying cannot help
    assert not postgres_error(DataError("invalid input for query argument $1")).retriable
    assert not postgres_error(ValueError("bad")).retriable
