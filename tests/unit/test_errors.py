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


def test_errors_are_classified_by_whose_fault_they_are() -> None:
    """A record's fault (dead-letter it), transient (retry quietly), or the table's / server's (hold and report)."""
    import asyncpg.exceptions as e

    from cdcpipe.errors import TableFaultError, postgres_error

    record = [e.NotNullViolationError("null"), e.CharacterNotInRepertoireError("\\x00"),
              e.NumericValueOutOfRangeError("range"), e.UniqueViolationError("dup"), e.CheckViolationError("check"),
              e.ProgramLimitExceededError("index row size exceeds maximum")]
    for exc in record:
        err = postgres_error(exc, table="ks.t", topic="p.ks.t", partition=1, offset=7)
        assert not err.retriable and not isinstance(err, TableFaultError), exc
        assert (err.table, err.topic, err.partition, err.offset) == ("ks.t", "p.ks.t", 1, 7)
    for exc in (e.SerializationError("s"), e.DeadlockDetectedError("d"), e.LockNotAvailableError("l"),
                e.QueryCanceledError("statement timeout"), e.ConnectionFailureError("c"),
                e.CannotConnectNowError("the database system is shutting down"), e.CrashShutdownError("crash")):
        err = postgres_error(exc)
        assert err.retriable and not isinstance(err, TableFaultError), exc
    table = {"25006": e.ReadOnlySQLTransactionError("read-only"), "42501": e.InsufficientPrivilegeError("denied"),
             "42P01": e.UndefinedTableError("no table"), "42703": e.UndefinedColumnError("no column"),
             "53100": e.DiskFullError("disk full"), "57P01": e.AdminShutdownError("terminating"),
             "42804": e.DatatypeMismatchError("column altered by hand"), "XX000": e.InternalServerError("internal")}
    for sqlstate, exc in table.items():
        err = postgres_error(exc, table="ks.t")
        assert isinstance(err, TableFaultError) and err.retriable, exc
        assert err.sqlstate == sqlstate and err.table == "ks.t"


def test_an_offset_gap_names_the_offsets_and_the_recovery() -> None:
    from cdcpipe.errors import OffsetGapError

    gap = OffsetGapError("p.ks.t", 2, 10, 14, "deleted by retention", table="ks.t")
    assert str(gap).startswith("offsets 10–14 of p.ks.t/2 are gone (deleted by retention): re-snapshot table ks.t")
    assert (gap.topic, gap.partition, gap.offset, gap.first, gap.last) == ("p.ks.t", 2, 10, 10, 14)
    assert not gap.retriable
    recreated = OffsetGapError("p.ks.t", 0, 20, -1, "the topic was deleted and recreated")
    assert str(recreated).startswith("offsets from 20 on of p.ks.t/0 are gone")
