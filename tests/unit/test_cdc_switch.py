"""Where a table's CDC was switched on in the log (``cdcpipe.capture.cdc_switch``): which writes are left to the
snapshot, without I/O."""

from __future__ import annotations

import dataclasses

from cdcpipe.capture.cdc_switch import CdcLog, SwitchRow
from cdcpipe.schema_source import parse_cql_schema

CQL = """
CREATE TABLE ks.t (k int PRIMARY KEY, v text) WITH cdc = true AND id = 5a1c1d6e-0000-4000-8000-000000000011;
CREATE TABLE ks.off (k int PRIMARY KEY, v text) WITH cdc = false AND id = 5a1c1d6e-0000-4000-8000-000000000012;
"""
T, OFF = parse_cql_schema(CQL)
NOW_US = 1_800_000_000_000_000


def log_at(now_us: int = NOW_US, saved: dict[str, object] | None = None) -> CdcLog:
    log = CdcLog(saved, clock=lambda: now_us * 1000)
    log.saw([T, OFF])
    log.enter(7)
    return log


def test_an_unknown_table_is_captured_when_no_row_of_it_follows_in_the_segment() -> None:
    log = log_at()
    log.found_ahead(7, 1000, [SwitchRow(500, "ks.other", True, NOW_US - 10)])
    assert not log.pre_switch("ks.t", 100)


def test_a_switch_on_later_in_the_segment_hides_the_writes_before_it() -> None:
    log = log_at()
    log.found_ahead(7, 1000, [SwitchRow(500, "ks.t", True, NOW_US - 10)])
    assert log.pre_switch("ks.t", 100)
    assert not log.pre_switch("ks.t", 600)  # after it (no row of it ahead any more)
    log.apply([SwitchRow(500, "ks.t", True, NOW_US - 10)])
    assert not log.pre_switch("ks.t", 600)


def test_a_change_made_after_capture_knew_the_table_captured_hides_nothing() -> None:
    log = log_at()
    log.found_ahead(7, 1000, [SwitchRow(500, "ks.t", True, NOW_US + 10)])  # an ALTER of a captured table
    assert not log.pre_switch("ks.t", 100)


def test_a_switch_off_later_in_the_segment_means_it_was_on_before() -> None:
    log = log_at()
    log.found_ahead(7, 1000, [SwitchRow(500, "ks.t", False, NOW_US - 10)])
    assert not log.pre_switch("ks.t", 100)


def test_rows_read_decide_until_a_segment_id_is_skipped() -> None:
    log = log_at()
    log.apply([SwitchRow(10, "ks.t", False, NOW_US - 20)])
    assert log.pre_switch("ks.t", 100)  # logged while off
    log.enter(8)
    assert log.pre_switch("ks.t", 100)  # the next segment: what the row said still holds
    log.enter(10)  # segment 9 never reached cdc_raw: a switch may have been in it
    assert not log.pre_switch("ks.t", 100)


def test_seen_on_is_forgotten_when_the_table_is_seen_off_and_set_anew() -> None:
    log = log_at()
    assert log.seen_on["ks.t"] == NOW_US and "ks.off" not in log.seen_on
    later = CdcLog(log.saved(), clock=lambda: (NOW_US + 5_000_000) * 1000)
    later.saw([T])
    assert later.seen_on["ks.t"] == NOW_US  # kept from the saved state: the earliest sighting
    later.saw([dataclasses.replace(T, cdc=False)])
    assert "ks.t" not in later.seen_on


def test_a_dropped_keyspace_forgets_its_tables() -> None:
    log = log_at()
    log.apply([SwitchRow(10, "ks.t", False, 1), SwitchRow(20, "other.x", False, 1)])
    log.apply([SwitchRow(30, "ks.*", None, 2)])
    assert log.state == {"other.x": False}


def test_mark_and_restore_undo_a_read() -> None:
    log = log_at()
    mark = log.mark()
    log.apply([SwitchRow(10, "ks.t", True, 1)])
    log.enter(8)
    log.restore(mark)
    assert log.state == {} and log.segment == 7
