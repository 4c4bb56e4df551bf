"""Error hierarchy for cdcpipe.

Every error carries the coordinates needed to find the offending data again (file, offset, table id)
and says whether retrying the same operation can help (``retriable``). Retry policy is decided by
class and by ``retriable``, never by message text. Stages add their own subclasses here.
"""

from __future__ import annotations

import uuid
from typing import Any


class CdcpipeError(Exception):
    """Base class of all cdcpipe errors.

    ``retriable`` is True when the same operation may succeed later without any change to the input
    (for example a segment that is still being written, or a network failure).
    """

    retriable: bool = False

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class SegmentError(CdcpipeError):
    """A commit log segment cannot be framed: bad header, bad sync marker or CRC, truncation,
    undecompressable or undecryptable section.

    ``offset`` is a physical file offset (for a damaged section: the offset of its sync marker).
    """

    def __init__(self, path: str, offset: int, reason: str, *, retriable: bool = False) -> None:
        super().__init__(f"{path}@{offset}: {reason}", retriable=retriable)
        self.path = path
        self.offset = offset
        self.reason = reason

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SegmentError)
            and type(other) is type(self)
            and (self.path, self.offset, self.reason) == (other.path, other.offset, other.reason)
        )

    def __hash__(self) -> int:
        return hash((self.path, self.offset, self.reason))


class SegmentHeaderError(SegmentError):
    """The descriptor header is unreadable, so nothing in the segment can be read."""


class EncryptionKeyError(SegmentError):
    """An encrypted segment names a key that is not configured or cannot be loaded."""


class MutationDecodeError(CdcpipeError):
    """A CRC-valid entry could not be decoded as a mutation.

    ``segment`` is the segment path or id, ``position`` the entry's position (see
    ``cdcpipe.capture.segment.Position``), ``table_id`` the table of the PartitionUpdate being
    decoded when the error occurred (None if it happened before one was identified).
    """

    def __init__(
        self,
        reason: str,
        *,
        segment: str = "",
        position: int = -1,
        table_id: uuid.UUID | None = None,
        retriable: bool = False,
    ) -> None:
        where = f"{segment}@{position}" if segment else f"@{position}"
        table = f" table {table_id}" if table_id is not None else ""
        super().__init__(f"{where}{table}: {reason}", retriable=retriable)
        self.reason = reason
        self.segment = segment
        self.position = position
        self.table_id = table_id


class SchemaError(CdcpipeError):
    """A schema source is invalid (unparsable CQL, inconsistent system_schema rows, unknown type)."""


class CassandraReadError(CdcpipeError):
    """A read capture needs from Cassandra failed (a server's fault: retriable, the chunk is read again)."""


class UnknownTableError(MutationDecodeError):
    """A mutation names a table id that no schema source knows.

    Retriable: the schema may be refreshed (the table may have been created after the last load).
    """

    retriable = True

    def __init__(
        self, table_id: uuid.UUID, *, segment: str = "", position: int = -1, column: str | None = None
    ) -> None:
        what = f"unknown column {column!r}" if column is not None else "unknown table id"
        super().__init__(what, segment=segment, position=position, table_id=table_id, retriable=True)
        self.column = column


class ConfigError(CdcpipeError):
    """Settings are missing or invalid; the message names each setting and how to set it."""


class CredentialsError(CdcpipeError):
    """Credentials could not be had from Vault: retriable when Vault is unreachable or failing (an outage), not when
    it refused (permission denied, no such path or role: the configuration or Vault's policies must change).  The
    message names the path or role, never a secret."""


class KafkaLocatedError(CdcpipeError):
    """An error located in Kafka: at a record (``topic``, ``partition``, ``offset``), a partition (offset -1) or
    a topic (partition -1); ``reason`` is the message without its coordinates."""

    def __init__(self, message: str, reason: str, *, topic: str = "", partition: int = -1, offset: int = -1,
                 retriable: bool = False) -> None:
        super().__init__(message, retriable=retriable)
        self.reason, self.topic, self.partition, self.offset = reason, topic, partition, offset


class EventDecodeError(KafkaLocatedError):
    """A Kafka message is not a decodable change event (bad magic, unknown schema fingerprint, bad body).

    Retriable when the schema fingerprint is unknown: the schemas topic may not have been read far enough.
    ``topic``/``partition``/``offset`` are filled in by the consumer that knows them.
    """

    def __init__(self, reason: str, *, topic: str = "", partition: int = -1, offset: int = -1,
                 retriable: bool = False) -> None:
        where = f"{topic}[{partition}]@{offset}: " if topic else ""
        super().__init__(f"{where}{reason}", reason, topic=topic, partition=partition, offset=offset,
                         retriable=retriable)


class CdcIndexError(CdcpipeError):
    """A ``_cdc.idx`` file is unreadable or malformed (``path``); retriable: Cassandra rewrites it in place."""

    def __init__(self, path: str, reason: str, *, retriable: bool = True) -> None:
        super().__init__(f"{path}: {reason}", retriable=retriable)
        self.path = path
        self.reason = reason


class KafkaProduceError(KafkaLocatedError):
    """Producing or committing a Kafka transaction failed.

    ``topic``/``partition`` name the record that failed (empty/-1 for a transaction-level failure), ``position``
    the commit-log position the transaction would have committed.  ``retriable`` follows librdkafka's verdict
    (``KafkaError.retriable()``); a fenced or fatal producer is not retriable: the process must restart.
    """

    def __init__(self, reason: str, *, topic: str = "", partition: int = -1, position: str = "",
                 retriable: bool = False) -> None:
        where = f"{topic}[{partition}]" if topic else "transaction"
        at = f" (position {position})" if position else ""
        super().__init__(f"{where}{at}: {reason}", reason, topic=topic, partition=partition, retriable=retriable)
        self.position = position


class KafkaConsumeError(KafkaLocatedError):
    """Reading ``topic`` from Kafka failed (the broker did not answer a metadata, offsets or fetch request in
    time).  Retriable by default: the broker may be restarting."""

    def __init__(self, topic: str, reason: str, *, partition: int = -1, retriable: bool = True) -> None:
        super().__init__(f"{topic}[{partition}]: {reason}" if partition >= 0 else f"{topic}: {reason}", reason,
                         topic=topic, partition=partition, retriable=retriable)


class CheckpointError(KafkaLocatedError):
    """The capture checkpoint cannot be read from ``topic`` (or a stored record there is malformed)."""

    def __init__(self, topic: str, reason: str, *, partition: int = -1, offset: int = -1,
                 retriable: bool = True) -> None:
        super().__init__(f"{topic}[{partition}]@{offset}: {reason}", reason, topic=topic, partition=partition,
                         offset=offset, retriable=retriable)


class ApplyError(KafkaLocatedError):
    """Applying change events to PostgreSQL failed.  ``table`` is ``keyspace.table``; ``topic``/``partition``/
    ``offset`` locate the event (offset -1: the whole batch); ``sqlstate`` is PostgreSQL's code, if any."""

    def __init__(self, reason: str, *, table: str = "", topic: str = "", partition: int = -1, offset: int = -1,
                 sqlstate: str | None = None, retriable: bool = False) -> None:
        where = f"{topic}[{partition}]@{offset} " if topic else ""
        super().__init__(f"{where}{table}: {reason}", reason, topic=topic, partition=partition, offset=offset,
                         retriable=retriable)
        self.table, self.sqlstate = table, sqlstate


class UnsupportedTableError(ApplyError):
    """A table apply refuses to mirror (counter tables): fatal, the operator must exclude the table."""


class SchemaMismatchError(ApplyError):
    """A record writes a column whose PostgreSQL type no longer holds the column's Cassandra type (the column was
    dropped and added again with another type, the PostgreSQL column kept): the record's fault, not retriable — it
    is dead-lettered with error type ``SCHEMA_MISMATCH`` while the table's other records flow.  Replay it once the
    PostgreSQL column has the mapped type (``ALTER TABLE ... ALTER COLUMN ... TYPE``)."""

    code = "SCHEMA_MISMATCH"


# SQLSTATE classes where the same statement may succeed later: connection exception, transaction rollback
# (serialization failure, deadlock), insufficient resources, operator intervention (shutdown, restart),
# system error.
RETRIABLE_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
# Single states of otherwise permanent classes that clear up by themselves: lock_not_available (lock_timeout).
RETRIABLE_SQLSTATES = frozenset({"55P03"})
# Whose fault a PostgreSQL error is.  The record's: data exception (22), integrity constraint (23), program limit
# (54: e.g. a row too large for an index): those rows are isolated and dead-lettered.  Transient: the classes and
# states above that clear up by themselves (statement timeout 57014, a server starting or crashed 57P02/57P03
# included) are retried quietly.  Every other
# SQLSTATE (read-only transaction 25006, insufficient privilege 42501, undefined table/column 42P01/42703, disk
# full 53100, admin shutdown 57P01, ...) is the table's or the server's: the batch is held, retried with backoff
# and reported until someone fixes the cause (:class:`TableFaultError`).
RECORD_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40"})
TRANSIENT_SQLSTATES = frozenset({"55P03", "57014", "57P02", "57P03"})


def postgres_error(exc: BaseException, *, table: str = "", topic: str = "", partition: int = -1,
                   offset: int = -1) -> ApplyError:
    """An :class:`ApplyError` for an exception raised by asyncpg, classified by SQLSTATE class.  Without a
    SQLSTATE the error is the client's: a lost connection (``OSError``, timeout, "connection is closed") or a
    connection whose protocol state broke when the server went away mid-operation (asyncpg's
    ``InternalClientError``, raised e.g. while a pool resets a connection during a restart) is retriable; an
    argument that cannot be encoded (``DataError``) or a client/server feature mismatch is not."""
    from asyncpg.exceptions import InterfaceError, InternalClientError
    from asyncpg.exceptions._base import (
        ClientConfigurationError,
        DataError,
        UnsupportedClientFeatureError,
        UnsupportedServerFeatureError,
    )

    sqlstate = getattr(exc, "sqlstate", None)
    coords: dict[str, Any] = {"table": table, "topic": topic, "partition": partition, "offset": offset}
    message = f"{type(exc).__name__}: {exc}"
    if isinstance(sqlstate, str) and sqlstate:
        if sqlstate[:2] in RECORD_SQLSTATE_CLASSES:
            return ApplyError(message, sqlstate=sqlstate, retriable=False, **coords)
        if sqlstate[:2] in TRANSIENT_SQLSTATE_CLASSES or sqlstate in TRANSIENT_SQLSTATES:
            return ApplyError(message, sqlstate=sqlstate, retriable=True, **coords)
        return TableFaultError(message, sqlstate=sqlstate, **coords)
    if isinstance(exc, DataError | ClientConfigurationError | UnsupportedClientFeatureError
                  | UnsupportedServerFeatureError):
        retriable = False
    else:
        retriable = isinstance(exc, OSError | TimeoutError | InterfaceError | InternalClientError)
    return ApplyError(message, retriable=retriable, **coords)


class TableFaultError(ApplyError):
    """PostgreSQL refuses every write to ``table``, not one record: the server is read-only (25006), a privilege
    was revoked (42501), a table or column was dropped by hand (42P01, 42703), the disk is full (53100), the server
    is shutting down (57P01), or a record PostgreSQL refused was refused again for a known-good probe write.

    Retriable (the same write succeeds once someone fixes the cause): apply holds the partition at its checkpoint,
    retries with capped backoff and reports it not ready (:mod:`cdcpipe.apply.applier`); nothing is dead-lettered.
    """

    def __init__(self, reason: str, *, table: str = "", topic: str = "", partition: int = -1, offset: int = -1,
                 sqlstate: str | None = None) -> None:
        super().__init__(reason, table=table, topic=topic, partition=partition, offset=offset, sqlstate=sqlstate,
                         retriable=True)


class DamagedEntryError(SegmentError):
    """A commit-log entry whose size is intact (its CRC matched) but whose data fails its CRC: the entry is not
    decoded; ``data`` holds its bytes as read (for the capture dead-letter record) and ``logical_offset`` where its
    size field begins (``offset`` is the sync marker of its section, as for every :class:`SegmentError`)."""

    def __init__(self, path: str, offset: int, reason: str, *, data: bytes, logical_offset: int) -> None:
        super().__init__(path, offset, reason)
        self.data = data
        self.logical_offset = logical_offset


class SegmentQuarantineError(CdcpipeError):
    """A segment could not be moved to the quarantine directory (``path``: where it is; retriable: capture keeps
    it in cdc_raw, never deletes it, and tries again)."""

    def __init__(self, path: str, reason: str, *, retriable: bool = True) -> None:
        super().__init__(f"{path}: {reason}", retriable=retriable)
        self.path = path
        self.reason = reason


class DataEndsEarlyError(SegmentError):
    """A segment's data ends (a zero-filled area, or the end of a truncated file) before the durable offset its
    ``_cdc.idx`` gives: what lies between cannot be read.  ``zero_filled`` tells which."""

    def __init__(self, path: str, offset: int, reason: str, *, zero_filled: bool) -> None:
        super().__init__(path, offset, reason)
        self.zero_filled = zero_filled


class OffsetGapError(KafkaLocatedError):
    """Offsets apply still needs are gone from ``topic[partition]``: ``first``..``last`` (inclusive; ``last`` -1:
    unknown, the topic was deleted and recreated) were deleted by retention while apply was behind, or went with the
    old topic.  Not retriable: apply stops the partition (never resets it) until an operator re-snapshots ``table``
    and moves the checkpoint (``cdcpipe_checkpoints``) on."""

    def __init__(self, topic: str, partition: int, first: int, last: int, cause: str, *, table: str = "") -> None:
        gone = f"offsets {first}–{last}" if last >= first else f"offsets from {first} on"
        what = f"table {table}" if table else "the table it carries"
        super().__init__(f"{gone} of {topic}/{partition} are gone ({cause}): re-snapshot {what}, then set its "
                         f"checkpoint (cdcpipe_checkpoints: next_offset = the first offset to apply, topic_id = NULL) "
                         "and restart apply", cause, topic=topic, partition=partition, offset=first, retriable=False)
        self.first, self.last, self.table = first, last, table


class SnapshotError(CdcpipeError):
    """A snapshot cannot go on: a table it cannot read (``table``), or a token range that kept failing
    (``token_range``, printed so an operator can read it by hand); ``retriable`` when ``--resume`` may finish it
    once the cause (a node down, Kafka unreachable) is gone."""

    def __init__(self, message: str, *, table: str = "", token_range: str = "", retriable: bool = False) -> None:
        where = " ".join(x for x in (table, f"range {token_range}" if token_range else "") if x)
        super().__init__(f"{where}: {message}" if where else message, retriable=retriable)
        self.table = table
        self.token_range = token_range


class EraseKeyError(CdcpipeError):
    """A KEY given to ``cdcpipe erase`` does not name one partition or one row of ``table``: not a JSON object,
    a missing partition-key column, a prefix of the clustering columns, a value its column's type cannot hold
    (``column``).  ``key`` is the text as given.  Not retriable: the key must be corrected."""

    def __init__(self, table: str, key: str, reason: str, *, column: str = "") -> None:
        super().__init__(f"{table} key {key}: {reason}", retriable=False)
        self.table = table
        self.key = key
        self.column = column
        self.reason = reason
