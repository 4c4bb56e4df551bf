"""``cdcpipe dlq``: the dead letters of apply and capture listed, shown, replayed and resolved by an operator.

- ``list [--table T] [--topic T] [--error-type E] [--status S] [--since T] [--until T] [--after ID] [--limit N]``:
  one line per dead letter (its coordinates, table, error and status; JSON lines when not a terminal); the last
  line gives the cursor (``--after``) of the next page.
- ``show ID``: everything about one, with its key and event bytes (hex).
- ``replay (ID...|--table/--topic/--error-type/--status/--since/--until) [--note TEXT]``: each open one (``pending`` or
  ``failed``) through apply's own path (:mod:`cdcpipe.apply.replay`: the merge decides, so an old event never
  overwrites newer data); ``replayed`` ones are left alone (a second replay is a no-op); one that fails again
  stays, ``failed``, its retry count increased.  A capture dead letter (``capture.*`` error types: copied into
  ``cdcpipe_dlq`` by apply, :mod:`cdcpipe.apply.capture_letters`) is read again with capture's code
  (:mod:`cdcpipe.dlq.capture`; ``--segment-dir`` where its quarantined segment is) and its events produced to
  their table topics for apply to merge.
- ``resolve ID --note TEXT``: mark handled without a replay.

Who acted is ``--actor`` (default: the OS user); every action is kept on the dead letter (status, who, when,
note, result).  Exit code: 0 — done; 1 — a replay failed (the dead letter stays); 2 — could not run.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import sys
from pathlib import Path
from typing import IO, Any

from cdcpipe import pgconn
from cdcpipe.apply import dlqstore as store
from cdcpipe.apply.capture_letters import GROUP as CAPTURE_GROUP
from cdcpipe.apply.deadletter import ensure_table
from cdcpipe.apply.dlqstore import Filter
from cdcpipe.apply.replay import APPLIED, FAILED, Outcome, Replayer
from cdcpipe.config import Settings
from cdcpipe.dlq.capture import PRODUCED, CaptureReplayer
from cdcpipe.ops import operator_name

OK, REPLAY_FAILED, COULD_NOT_RUN = 0, 1, 2


def _time(text: str) -> datetime.datetime:
    value = datetime.datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"{text!r}: give a time zone (e.g. 2026-12-05T10:00:00+00:00)")
    return value


def _filter(args: Any, after: int = 0) -> Filter:
    return Filter(table=args.table, error_type=args.error_type, status=args.status, topic=args.topic,
                  since=None if args.since is None else _time(args.since),
                  until=None if args.until is None else _time(args.until),
                  ids=tuple(getattr(args, "ids", ()) or ()), after=after)


class _Out:
    def __init__(self, out: IO[str], mode: str) -> None:
        self.out = out
        self.tty = mode == "tty" or (mode == "auto" and out.isatty())

    def line(self, record: dict[str, Any], text: str) -> None:
        self.out.write((text if self.tty else json.dumps(record, default=str)) + "\n")


async def run(settings: Settings, args: Any, out: IO[str]) -> int:

    show = _Out(out, args.output)
    pool = await pgconn.create_pool(settings, min_size=1, max_size=2)
    try:
        await ensure_table(pool)
        if args.dlq_command == "list":
            async with pool.acquire() as conn:
                letters = await store.find(conn, _filter(args, args.after), args.limit)
            for letter in letters:
                show.line(letter.summary(), f"{letter.id:>8} {letter.status:<8} {letter.table or '-'} "
                          f"{letter.topic}[{letter.partition}]@{letter.offset} {letter.error_type}: "
                          f"{letter.message[:100]}")
            cursor = letters[-1].id if len(letters) == args.limit else None
            show.line({"listed": len(letters), "next_after": cursor},
                      f"{len(letters)} dead letters" + (f"; next page: --after {cursor}" if cursor else ""))
            return OK
        if args.dlq_command == "show":
            async with pool.acquire() as conn:
                found = await store.get(conn, args.id)
            if found is None:
                print(f"cdcpipe dlq: no dead letter {args.id}", file=sys.stderr)
                return COULD_NOT_RUN
            show.line(found.detail(), "\n".join(f"{k}: {v}" for k, v in found.detail().items()))
            return OK
        if args.dlq_command == "resolve":
            async with pool.acquire() as conn:
                status = await store.resolve(conn, args.id, args.actor or operator_name(), args.note)
            if status is None:
                print(f"cdcpipe dlq: no dead letter {args.id}", file=sys.stderr)
                return COULD_NOT_RUN
            result = "resolved" if status == store.RESOLVED else "not_open"
            show.line({"id": args.id, "result": result, "status": status},
                      f"{args.id}: resolved" if result == "resolved" else f"{args.id}: already {status}, left as it is")
            return OK
        return await _replay(settings, pool, args, show)
    finally:
        await pool.close()


async def _replay(settings: Settings, pool: Any, args: Any, show: _Out) -> int:
    which = _filter(args)
    if not which.chooses:
        print("cdcpipe dlq replay: give dead letter ids or a filter (--table, --topic, --error-type, --status, "
              "--since, --until)", file=sys.stderr)
        return COULD_NOT_RUN
    async with pool.acquire() as conn:
        letters = await store.find(conn, which, limit=1_000_000)
    replayer = await Replayer.open(settings, pool)
    captured = CaptureReplayer(settings, pool, args.segment_dir or ())
    actor = args.actor or operator_name()
    outcomes: list[Outcome] = []
    try:
        for letter in letters:
            if letter.group_id == CAPTURE_GROUP:
                outcome = await captured.replay(letter, args.note, actor)
            else:
                outcome = await replayer.replay(letter.id, args.note, actor)
            outcomes.append(outcome)
            show.line({"id": outcome.id, "table": outcome.table, "result": outcome.result, "error": outcome.error},
                      f"{outcome.id}: {outcome.result}" + (f" ({outcome.error})" if outcome.error else ""))
    finally:
        await replayer.close()
        await captured.close()
    counted = {r: sum(o.result == r for o in outcomes) for r in {o.result for o in outcomes}}
    show.line({"replayed": counted.get(APPLIED, 0) + counted.get(PRODUCED, 0), "outcomes": counted},
              f"{len(outcomes)} dead letters: {counted or 'none matched'}")
    return REPLAY_FAILED if counted.get(FAILED) else OK


def main(settings: Settings, args: Any, out: IO[str] | None = None) -> int:
    """The ``cdcpipe dlq`` command (see the module for the exit codes); logs go to stderr."""
    from cdcpipe.observability import configure_logging

    configure_logging(settings.observability.log_level, settings.observability.log_format)
    try:
        return asyncio.run(run(settings, args, out or sys.stdout))
    except Exception as exc:  # cannot connect, a bad time, a server refusing: could not run
        print(f"cdcpipe dlq: could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return COULD_NOT_RUN


def _filters(parser: Any) -> None:
    parser.add_argument("--table", help="keyspace.table")
    parser.add_argument("--topic", help="the topic it was read from (a table's, or <prefix>.capture-dlq)")
    parser.add_argument("--error-type", help="e.g. SCHEMA_MISMATCH, ApplyError")
    parser.add_argument("--status", choices=store.STATUSES)
    parser.add_argument("--since", help="dead-lettered at or after this time (ISO 8601 with a time zone)")
    parser.add_argument("--until", help="dead-lettered before this time (ISO 8601 with a time zone)")


def add_arguments(parser: Any) -> None:
    parser.add_argument("--output", choices=["auto", "tty", "json"], default="auto",
                        help="lines for a person (tty) or JSON lines (json); auto: tty on a terminal")
    parser.add_argument("--actor", help="who acts (recorded; default: the OS user)")
    sub = parser.add_subparsers(dest="dlq_command", required=True)
    listing = sub.add_parser("list", help="dead letters, oldest first")
    _filters(listing)
    listing.add_argument("--after", type=int, default=0, help="only ids above this (the cursor of a page)")
    listing.add_argument("--limit", type=int, default=100)
    one = sub.add_parser("show", help="one dead letter, with its key and event bytes")
    one.add_argument("id", type=int)
    replay = sub.add_parser("replay", help="send dead letters through apply's path again (the merge decides)")
    replay.add_argument("ids", type=int, nargs="*")
    _filters(replay)
    replay.add_argument("--note", help="why (recorded)")
    replay.add_argument("--segment-dir", type=Path, action="append",
                        help="where to look for a capture dead letter's quarantined segment (repeatable; then "
                             "capture.quarantine_dir and its default beside capture.cdc_raw_dir)")
    resolve = sub.add_parser("resolve", help="mark a dead letter handled without a replay")
    resolve.add_argument("id", type=int)
    resolve.add_argument("--note", required=True, help="why (recorded)")
