"""One test per numbered rule of ``cassandra-merge-rules.md``, with the rule's own example."""

from __future__ import annotations

import uuid

from cdcpipe.apply import merge, state, view
from cdcpipe.model import Cell
from tests.support.mergekit import (
    NOW,
    TABLES,
    delete_columns,
    delete_partition,
    delete_range,
    delete_row,
    elements,
    insert,
    list_path,
    select,
    statics,
    update,
)


def test_rule_01_identity_by_path_value() -> None:
    evs = [update("col", (1,), 10, whole=False, s=["a"]), update("col", (1,), 11, whole=False, s=["a"])]
    assert select("col", evs)[0]["s"] == ["a"]


def test_rule_02_higher_timestamp_wins() -> None:
    evs = [update("kv", (1,), 20, v="new"), delete_columns("kv", (1,), 10, "v"), update("kv", (1,), 15, v="mid")]
    assert select("kv", evs) == [{"k": 1, "v": "new", "n": None}]


def test_rule_03_ldt_beats_plain_live_at_equal_ts() -> None:
    evs = [insert("kv", (1,), 10, v="x"), delete_columns("kv", (1,), 10, "v"),
           update("kv", (2,), 20, v="zzz"), update("kv", (2,), 20, ttl=3600, v="aaa")]
    assert select("kv", evs) == [{"k": 1, "v": None, "n": None}, {"k": 2, "v": "aaa", "n": None}]
    assert select("kv", evs, now=NOW + 3600) == [{"k": 1, "v": None, "n": None}]


def test_rule_04_tombstone_beats_expiring() -> None:
    evs = [update("kv", (3,), 30, ttl=3600, v="x"), delete_columns("kv", (3,), 30, "v")]
    assert select("kv", evs) == []


def test_rule_05_later_expiry_wins() -> None:
    evs = [update("kv", (4,), 40, ttl=100, now=NOW, v="zzz"), update("kv", (4,), 40, ttl=100, now=NOW + 50, v="aaa")]
    assert select("kv", evs, now=NOW + 120) == [{"k": 4, "v": "aaa", "n": None}]
    assert select("kv", evs, now=NOW + 150) == []


def test_rule_06_larger_serialized_bytes_win() -> None:
    evs = [update("kv", (5,), 50, n=1), update("kv", (5,), 50, n=-1),
           update("kv", (5,), 50, v="B"), update("kv", (5,), 50, v="a"),
           insert("col", (5,), 50, fs=["z"]), insert("col", (5,), 50, fs=["a", "b"])]
    assert select("kv", evs) == [{"k": 5, "v": "a", "n": -1}]
    assert select("col", evs)[0]["fs"] == ["a", "b"]


def test_rule_07_merge_is_a_maximum() -> None:
    a, b = merge.Version(5, None, 0, False, b"\x01"), merge.Version(5, 100, 10, False, b"\x00")
    assert merge.newer(a, b) is b and merge.newer(b, a) is b and merge.newer(b, b) is b


def test_rule_08_deletion_includes_its_timestamp() -> None:
    evs = [insert("t", (1, 1), 10, v="x"), delete_row("t", (1, 1), 10)]
    assert select("t", evs) == []
    assert select("t", [*evs, insert("t", (1, 1), 11, w="y")]) == [{"k": 1, "c": 1, "v": None, "w": "y"}]


def test_rule_09_deletions_merge_by_maximum() -> None:
    evs = [insert("t", (1, 1), 15, v="x"), delete_row("t", (1, 1), 20), delete_row("t", (1, 1), 10)]
    assert select("t", evs) == []
    (row,) = merge.collapse(TABLES["t"], evs).rows.values()
    assert row.deletion is not None and row.deletion.timestamp == 20


def test_rule_10_effective_deletion_static_only_by_partition() -> None:
    evs = [insert("st", (1, 1), 10, s="S", v="x"), delete_range("st", (1,), (0,), False, (), True, 20),
           delete_row("st", (1, 1), 20)]
    assert select("st", evs) == []
    assert statics("st", evs, (1,)) == {"s": "S"}
    assert statics("st", [*evs, delete_partition("st", (1,), 20)], (1,)) == {}


def test_rule_11_row_delete_without_clustering_is_partition_deletion() -> None:
    ev = delete_row("kv", (1,), 10)
    assert ev.op.value == "partition_delete"
    assert select("kv", [insert("kv", (1,), 9, v="a"), ev]) == []


def test_rule_12_range_tombstone_bounds() -> None:
    evs = [insert("r", (1, 1, 1), 10, v=0), insert("r", (1, 1, 5), 10, v=0), insert("r", (1, 2, 1), 10, v=0),
           insert("r", (1, 3, 1), 10, v=0),
           delete_range("r", (1,), (1, 1), False, (1,), True, 20),
           delete_range("r", (1,), (2,), True, (3,), False, 20),
           insert("r", (1, 2, 7), 20, v=9), insert("r", (1, 2, 8), 21, v=9)]
    assert [(r["c1"], r["c2"], r["v"]) for r in select("r", evs)] == [(1, 1, 0), (2, 8, 9), (3, 1, 0)]


def test_rule_12_desc_clustering_bounds_by_value() -> None:
    # c >= 1 AND c < 3 on a DESC column: in clustering order the slice starts after 3 and ends at 1
    evs = [insert("d", (1, c), 10, v=c) for c in range(5)] + [delete_range("d", (1,), (3,), False, (1,), True, 20)]
    assert sorted(r["c"] for r in select("d", evs)) == [0, 3, 4]


def test_rule_13_delete_before_or_after_reconcile() -> None:
    evs = [update("kv", (1,), 30, v="a"), update("kv", (1,), 10, v="b"), delete_partition("kv", (1,), 20)]
    for order in (evs, evs[::-1], [evs[2], evs[0], evs[1]]):
        assert select("kv", order) == [{"k": 1, "v": "a", "n": None}]


def test_rule_14_delete_and_insert_at_same_ts_lose_the_insert() -> None:
    assert select("t", [delete_row("t", (2, 1), 50), insert("t", (2, 1), 50, v="new")]) == []


def test_rule_15_existence_marker_or_live_cell() -> None:
    evs = [insert("t", (3, 1), 10), update("t", (3, 2), 10, v="a"), delete_columns("t", (3, 2), 20, "v")]
    assert [r["c"] for r in select("t", evs)] == [1]


def test_rule_16_insert_writes_marker_update_does_not() -> None:
    evs = [insert("t", (3, 1), 10, v="a"), update("t", (3, 2), 10, v="a"),
           delete_columns("t", (3, 1), 20, "v"), delete_columns("t", (3, 2), 20, "v"),
           insert("t", (3, 3), 10, v=None), update("t", (3, 4), 10, v=None)]
    assert select("t", evs) == [{"k": 3, "c": 1, "v": None, "w": None}, {"k": 3, "c": 3, "v": None, "w": None}]


def test_rule_17_markers_merge_like_cells() -> None:
    evs = [insert("kv", (6,), 30), insert("kv", (6,), 30, ttl=60), insert("kv", (7,), 40, ttl=60),
           insert("kv", (7,), 35)]
    assert [r["k"] for r in select("kv", evs, now=NOW + 59)] == [6, 7]
    assert select("kv", evs, now=NOW + 60) == []


def test_rule_18_row_deletion_does_not_reset_the_row() -> None:
    evs = [insert("t", (4, 1), 10, v="a", w="b"), update("t", (4, 1), 30, w="c"), delete_row("t", (4, 1), 20)]
    assert select("t", evs) == [{"k": 4, "c": 1, "v": None, "w": "c"}]


def test_rule_19_mirror_matches_select_star() -> None:
    evs = [insert("t", (1, 1), 20, ttl=10, v="a"), update("t", (1, 1), 15, w="old")]
    assert select("t", evs, now=NOW + 11) == [{"k": 1, "c": 1, "v": None, "w": "old"}]


def test_rule_20_expired_at_exactly_ldt() -> None:
    evs = [insert("kv", (1,), 10, ttl=60, v="a")]
    assert select("kv", evs, now=NOW + 59) != [] and select("kv", evs, now=NOW + 60) == []


def test_rule_21_expired_cell_keeps_its_timestamp() -> None:
    evs = [insert("kv", (8,), 10, ttl=60, v="a"), update("kv", (8,), 9, now=NOW + 61, v="old")]
    assert select("kv", evs, now=NOW + 62) == []
    evs.append(update("kv", (8,), 11, now=NOW + 61, n=1))
    assert select("kv", evs, now=NOW + 62) == [{"k": 8, "v": None, "n": 1}]


def test_rule_22_ttl_zero_never_expires() -> None:
    assert select("kv", [insert("kv", (2,), 10, ttl=0, v="b")], now=NOW + 10**6) == [{"k": 2, "v": "b", "n": None}]


def test_rule_23_row_ttl_and_cell_ttl_are_separate() -> None:
    evs = [insert("kv", (9,), 10, ttl=1000, v="a"), update("kv", (9,), 11, ttl=1, v="b")]
    assert select("kv", evs, now=NOW + 2) == [{"k": 9, "v": None, "n": None}]
    assert select("kv", evs, now=NOW + 1000) == []
    evs2 = [insert("t", (5, 1), 10, ttl=100, v="a", w="b"), update("t", (5, 1), 11, v="a2")]
    assert select("t", evs2, now=NOW + 100) == [{"k": 5, "c": 1, "v": "a2", "w": None}]


def test_rule_24_layout_paths() -> None:
    t = TABLES["col"]
    s, m = next(c for c in t.regular if c.name == "s"), next(c for c in t.regular if c.name == "m")
    assert merge.path_bytes(s.type, "a") == b"a" and merge.path_bytes(m.type, "k") == b"k"
    u = uuid.uuid1()
    assert merge.path_bytes(next(c for c in t.regular if c.name == "l").type, u) == u.bytes


def test_rule_25_whole_value_write_deletes_at_ts_minus_one() -> None:
    evs = [update("col", (1,), 10, s=["a"]), update("col", (1,), 10, s=["b"])]
    assert select("col", evs)[0]["s"] == ["a", "b"]
    evs.append(update("col", (1,), 11, s=["c"]))
    evs.append(update("col", (1,), 10, whole=False, s=["d"]))
    assert select("col", evs)[0]["s"] == ["c"]


def test_rule_26_set_null_and_delete_column_differ() -> None:
    evs = [update("col", (2,), 20, whole=False, s=["x"]), update("col", (2,), 20, s=None)]
    assert select("col", evs)[0]["s"] == ["x"]
    assert select("col", [*evs, delete_columns("col", (2,), 20, "s")]) == []


def test_rule_27_empty_versus_null() -> None:
    assert select("col", [update("col", (3,), 10, s=[])]) == []
    rows = select("col", [insert("col", (3,), 11, s=[], fs=[])])
    assert rows[0]["s"] is None and rows[0]["fs"] == []


def test_rule_28_element_operations() -> None:
    evs = [elements("col", (4,), 30, "m", (Cell(1, 30, path="a"),)),
           elements("col", (4,), 30, "m", (Cell(None, 30, deleted=True, local_deletion_time=NOW, path="a"),))]
    assert select("col", evs) == []
    evs += [elements("col", (4,), 31, "m", (Cell(2, 31, path="a"), Cell(5, 31, path="b"))),
            elements("col", (4,), 31, "m", (Cell(7, 31, path="b"),))]
    assert select("col", evs)[0]["m"] == [("a", 2), ("b", 7)]


def test_rule_29_list_order_by_path() -> None:
    p1, p2 = list_path(), list_path()
    evs = [elements("col", (5,), 100, "l", (Cell("x", 100, path=p1),)),
           elements("col", (5,), 50, "l", (Cell("y", 50, path=p2),))]
    assert select("col", evs)[0]["l"] == ["x", "y"]
    p3 = list_path()
    evs.append(elements("col", (5,), 60, "l", (Cell("z", 60, path=p3),), merge.Deletion(59, NOW)))
    assert select("col", evs)[0]["l"] == ["x", "z"]
    p0 = uuid.UUID(fields=(0, 0, 0x1000, 0x80, 0, 1))  # a prepend: earlier time
    evs.append(elements("col", (5,), 70, "l", (Cell("p", 70, path=p0),)))
    assert select("col", evs)[0]["l"] == ["p", "x", "z"]


def test_rule_30_list_set_by_index_competes_on_path() -> None:
    p1 = list_path()
    evs = [elements("col", (5,), 100, "l", (Cell("x", 100, path=p1),)),
           elements("col", (5,), 80, "l", (Cell("X", 80, path=p1),))]
    assert select("col", evs)[0]["l"] == ["x"]
    evs.append(elements("col", (5,), 120, "l", (Cell("X", 120, path=p1),)))
    assert select("col", evs)[0]["l"] == ["X"]


def test_rule_31_static_row_has_no_marker() -> None:
    evs = [insert("st", (2,), 30, s="T")]
    assert select("st", evs) == [] and statics("st", evs, (2,)) == {"s": "T"}
    assert statics("st", [*evs, update("st", (2,), 31, s=None)], (2,)) == {}


def test_rule_32_statics_on_every_row() -> None:
    evs = [insert("st", (1, 1), 10, s="S", v="x"), insert("st", (1, 2), 10, v="y")]
    assert select("st", evs) == [{"k": 1, "c": 1, "s": "S", "v": "x"}, {"k": 1, "c": 2, "s": "S", "v": "y"}]
    evs.append(delete_range("st", (1,), (0,), False, (), True, 20))
    assert select("st", evs) == [] and statics("st", evs, (1,)) == {"s": "S"}
    evs.append(delete_partition("st", (1,), 20))
    assert statics("st", evs, (1,)) == {}


def test_rule_35_lwt_deletions_at_ballot_minus_one() -> None:
    evs = [insert("t", (1, 1), 100, v="a"), delete_row("t", (1, 1), 99)]
    assert select("t", evs) == [{"k": 1, "c": 1, "v": "a", "w": None}]


def test_rule_36_insert_json_tombstones_missing_columns() -> None:
    evs = [update("kv", (1,), 10, n=5), insert("kv", (1,), 11, v="j", n=None)]
    assert select("kv", evs) == [{"k": 1, "v": "j", "n": None}]


def test_rule_38_shadow_rows_are_remembered_for_grace() -> None:
    t = TABLES["t"]
    changes = merge.collapse(t, [delete_row("t", (1, 1), 10, now=NOW)])
    (row,) = changes.rows.values()
    rv = view.row_view(t, row, view.static_view(t, None, NOW, 100), NOW + 1, 100)
    assert not rv.visible and rv.purge_after == NOW + 100


def test_rule_40_replica_duplicates_converge() -> None:
    evs = [insert("kv", (1,), 10, v="a"), update("kv", (1,), 11, n=2)]
    assert select("kv", evs * 3) == select("kv", evs)


def test_state_round_trip() -> None:
    evs = [insert("st", (1, 1), 10, ttl=5, s="S", v="x"), delete_range("st", (1,), (0,), False, (), True, 9),
           delete_row("st", (1, 2), 8), delete_partition("st", (1,), 3)]
    changes = merge.collapse(TABLES["st"], evs)
    for part in changes.partitions.values():
        assert state.decode_partition(state.encode_partition(part)) == part
    for row in changes.rows.values():
        assert state.decode_row(state.encode_row(row)) == row
    col = merge.collapse(TABLES["col"], [insert("col", (1,), 5, s=["a"], l=["x"], m={"k": 1}, fs=["q"])])
    for row in col.rows.values():
        assert state.decode_row(state.encode_row(row)) == row


def test_collapse_counts_events_that_change_nothing() -> None:
    """Replica copies and stale writes inside one batch are counted (``cdcpipe_apply_duplicates_total``
    ``kind="in_batch"``), and do not change the merged state."""
    a = insert("kv", (1,), 10, v="a")
    copies = [a, a, a]
    stale = update("kv", (1,), 9, v="old")
    newer_write = update("kv", (1,), 11, v="b")
    assert merge.collapse(TABLES["kv"], copies).redundant == 2
    assert merge.collapse(TABLES["kv"], [*copies, stale]).redundant == 3
    assert merge.collapse(TABLES["kv"], [*copies, stale, newer_write]).redundant == 3
    assert merge.collapse(TABLES["kv"], [a, stale]) == merge.collapse(TABLES["kv"], [a])
