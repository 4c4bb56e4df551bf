"""``cdcpipe dlq``'s pure parts: filters become one parameterised WHERE (never values in the SQL), times need a
time zone, a replay needs ids or a filter, and a capture dead-letter record becomes a ``cdcpipe_dlq`` row with its
cause as the error type (a record that is not JSON kept as it is)."""

from __future__ import annotations

import argparse
import datetime
import io

import pytest

from cdcpipe.apply.capture_letters import row_of
from cdcpipe.apply.dlqstore import Filter
from cdcpipe.dlq import pipeline


def test_filter_where() -> None:
    since = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    where, args = Filter(table="ks.t'; DROP TABLE x; --", status="pending", since=since, ids=(3, 4), after=7).where()
    assert where == "id > $1 AND table_name = $2 AND status = $3 AND created_at >= $4 AND id = ANY($5::bigint[])"
    assert args == [7, "ks.t'; DROP TABLE x; --", "pending", since, [3, 4]]
    assert Filter().where() == ("id > $1", [0])


def test_times_need_a_zone() -> None:
    assert pipeline._time("2026-12-05T10:00:00+00:00").tzinfo is not None
    with pytest.raises(ValueError, match="time zone"):
        pipeline._time("2026-12-05T10:00:00")


def test_arguments() -> None:
    parser = argparse.ArgumentParser()
    pipeline.add_arguments(parser)
    args = parser.parse_args(["replay", "1", "2", "--note", "n"])
    assert (args.dlq_command, args.ids, args.note) == ("replay", [1, 2], "n")
    with pytest.raises(SystemExit):
        parser.parse_args(["resolve", "1"])  # a resolve needs its note
    with pytest.raises(SystemExit):
        parser.parse_args(["list", "--status", "gone"])


def test_replay_refuses_without_ids_or_filter(capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    parser = argparse.ArgumentParser()
    pipeline.add_arguments(parser)
    args = parser.parse_args(["replay"])
    code = asyncio.run(pipeline._replay(None, None, args, pipeline._Out(io.StringIO(), "json")))  # type: ignore[arg-type]
    assert code == pipeline.COULD_NOT_RUN and "give dead letter ids" in capsys.readouterr().err


def test_capture_records_become_rows() -> None:
    value = (b'{"cause": "entry_crc", "segment": "/raw/CommitLog-8-5.log", "position": "5:120", '
             b'"error": "bad entry data CRC at logical offset 120", "entry_hex": "00ff"}')
    row = row_of(0, 41, b"5:120", value)
    assert (row.partition, row.offset, row.error_type, row.table, row.key, row.value) == (
        0, 41, "capture.entry_crc", None, b"5:120", value)
    assert row.message == "bad entry data CRC at logical offset 120 (/raw/CommitLog-8-5.log at 5:120)"
    assert row_of(0, 1, None, b'{"cause": "unknown_table", "table": "ks.t"}').table == "ks.t"
    for bad in (b"not json", b"[1, 2]", None):
        kept = row_of(0, 2, b"k", bad)
        assert kept.error_type == "capture.unreadable_record" and kept.value == bad
