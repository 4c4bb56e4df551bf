"""Apply's dead letters as an operator sees them: ``cdcpipe_dlq`` rows (:mod:`cdcpipe.apply.deadletter`) with
what was done about each — its status (``pending``; ``replayed``: applied by a replay; ``resolved``: marked handled
without a replay; ``failed``: its last replay failed too, it stays), who, when, the note and the result."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PENDING, REPLAYED, RESOLVED, FAILED = "pending", "replayed", "resolved", "failed"
STATUSES = (PENDING, REPLAYED, RESOLVED, FAILED)
OPEN = (PENDING, FAILED)  # what a replay or a resolve may act on
_COLUMNS = ("id, group_id, topic, partition, kafka_offset, table_name, error_type, message, retry_count, key, value, "
            "created_at, status, resolved_at, resolved_by, note, result, replays")


@dataclass(frozen=True, slots=True)
class Letter:
    """One dead letter: its coordinates (consumer group, topic, partition, offset), the table and error, the
    original event's key and bytes, and its resolution."""

    id: int
    group_id: str
    topic: str
    partition: int
    offset: int
    table: str | None
    error_type: str
    message: str
    retry_count: int
    key: bytes | None
    value: bytes | None
    created_at: datetime.datetime
    status: str
    resolved_at: datetime.datetime | None
    resolved_by: str | None
    note: str | None
    result: str | None
    replays: int

    def summary(self) -> dict[str, Any]:
        """Everything but the bytes (their sizes instead), JSON-ready."""
        return {"id": self.id, "group_id": self.group_id, "topic": self.topic, "partition": self.partition,
                "offset": self.offset, "table": self.table, "error_type": self.error_type, "message": self.message,
                "retry_count": self.retry_count, "created_at": self.created_at.isoformat(), "status": self.status,
                "resolved_at": None if self.resolved_at is None else self.resolved_at.isoformat(),
                "resolved_by": self.resolved_by, "note": self.note, "result": self.result, "replays": self.replays,
                "key_bytes": None if self.key is None else len(self.key),
                "value_bytes": None if self.value is None else len(self.value)}

    def detail(self) -> dict[str, Any]:
        """:meth:`summary` with the key and value bytes as hex."""
        return {**self.summary(), "key": None if self.key is None else self.key.hex(),
                "value": None if self.value is None else self.value.hex()}


def _letter(r: Any) -> Letter:
    return Letter(r["id"], r["group_id"], r["topic"], r["partition"], r["kafka_offset"], r["table_name"],
                  r["error_type"], r["message"], r["retry_count"], None if r["key"] is None else bytes(r["key"]),
                  None if r["value"] is None else bytes(r["value"]), r["created_at"], r["status"], r["resolved_at"],
                  r["resolved_by"], r["note"], r["result"], r["replays"])


@dataclass(frozen=True, slots=True)
class Filter:
    """Which dead letters: every given condition holds (``table``, ``error_type`` and ``topic`` exact;
    ``since``/``until`` on when it was dead-lettered, ``until`` exclusive); ``after``: ids above it (the cursor of the
    page before)."""

    table: str | None = None
    error_type: str | None = None
    status: str | None = None
    topic: str | None = None
    since: datetime.datetime | None = None
    until: datetime.datetime | None = None
    ids: tuple[int, ...] = ()
    after: int = 0

    @property
    def chooses(self) -> bool:
        """Whether it names dead letters (ids or a condition): a replay of "every one" is refused."""
        return bool(self.ids) or any(v is not None for v in (self.table, self.error_type, self.status, self.topic,
                                                              self.since, self.until))

    def where(self) -> tuple[str, list[Any]]:
        conds: list[str] = ["id > $1"]
        args: list[Any] = [self.after]
        for column, value in (("table_name", self.table), ("error_type", self.error_type),
                              ("status", self.status), ("topic", self.topic)):
            if value is not None:
                args.append(value)
                conds.append(f"{column} = ${len(args)}")
        if self.since is not None:
            args.append(self.since)
            conds.append(f"created_at >= ${len(args)}")
        if self.until is not None:
            args.append(self.until)
            conds.append(f"created_at < ${len(args)}")
        if self.ids:
            args.append(list(self.ids))
            conds.append(f"id = ANY(${len(args)}::bigint[])")
        return " AND ".join(conds), args


async def find(conn: Any, which: Filter, limit: int = 100) -> list[Letter]:
    """Dead letters matching ``which``, by id, at most ``limit``."""
    where, args = which.where()
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM cdcpipe_dlq WHERE {where} ORDER BY id LIMIT {int(limit)}",
                            *args)
    return [_letter(r) for r in rows]


async def get(conn: Any, letter_id: int, *, lock: bool = False) -> Letter | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM cdcpipe_dlq WHERE id = $1"
                              + (" FOR UPDATE" if lock else ""), letter_id)
    return None if row is None else _letter(row)


async def settle(conn: Any, letter_id: int, status: str, actor: str, note: str | None, result: str) -> None:
    """Record what was done: ``replayed``/``resolved`` close it; ``failed`` (a replay failed) counts a retry."""
    failed = status == FAILED
    await conn.execute(
        "UPDATE cdcpipe_dlq SET status = $2, resolved_at = now(), resolved_by = $3, note = coalesce($4, note), "
        "result = $5, replays = replays + $6, retry_count = retry_count + $7 WHERE id = $1",
        letter_id, status, actor, note, result, 0 if status == RESOLVED else 1, 1 if failed else 0)


async def resolve(conn: Any, letter_id: int, actor: str, note: str) -> str | None:
    """Mark an open dead letter handled without a replay; its status after (None: no such dead letter).  A
    replayed or resolved one is left as it is."""
    async with conn.transaction():
        held = await get(conn, letter_id, lock=True)
        if held is None:
            return None
        if held.status not in OPEN:
            return held.status
        await settle(conn, letter_id, RESOLVED, actor, note, "resolved")
        return RESOLVED


async def counts(conn: Any) -> Sequence[tuple[str, str, str, int]]:
    """(table, error type, status, dead letters) of every combination held."""
    rows = await conn.fetch("SELECT coalesce(table_name, ''), error_type, status, count(*) FROM cdcpipe_dlq "
                            "GROUP BY 1, 2, 3")
    return [(r[0], r[1], r[2], r[3]) for r in rows]
