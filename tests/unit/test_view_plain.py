"""The writer's shortcut for plain rows (``view.plain_cells``) says exactly what ``view.row_view`` says."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cdcpipe.apply import view
from cdcpipe.apply.merge import RowState, Version
from cdcpipe.model import Deletion
from tests.support.mergekit import TABLES

NOW = 1_700_000_000
TS = st.integers(1, 2**62)
plain = st.builds(Version, TS, st.just(None), st.just(0), st.just(False), st.binary(max_size=8))
other = st.builds(Version, TS, st.none() | st.integers(NOW - 5, NOW + 5), st.integers(0, 10), st.booleans(),
                  st.binary(max_size=8))
cells = st.dictionaries(st.sampled_from(["v", "n"]), plain | other, max_size=2)
markers = st.none() | st.builds(Version, TS) | st.builds(Version, TS, st.integers(NOW - 5, NOW + 5), st.integers(1, 9))
rows = st.builds(RowState, markers, st.none() | st.builds(Deletion, TS, st.just(NOW)), cells)


@given(rows)
def test_plain_cells_agree_with_the_view(row: RowState) -> None:
    table = TABLES["kv"]
    assert view.simple_table(table) and not view.simple_table(TABLES["st"]) and not view.simple_table(TABLES["col"])
    found = view.plain_cells(row)
    if found is None:
        return
    rv = view.row_view(table, row, view.static_view(table, None, NOW, 100, raw=True), NOW, 100, raw=True)
    assert rv.visible and rv.expires_at is None
    assert {c.name: found.get(c.name) for c in table.regular} == rv.values


def test_plain_cells_take_the_rows_they_should() -> None:
    live = Version(5, value=b"x")
    assert view.plain_cells(RowState(Version(5), None, {"v": live})) == {"v": live}
    assert view.plain_cells(RowState(Version(5))) == {}  # a marker alone: visible, every column null
    assert view.plain_cells(RowState()) is None
    assert view.plain_cells(RowState(None, None, {"v": Version(5, NOW + 9, 9, False, b"x")})) is None  # TTL
    assert view.plain_cells(RowState(None, None, {"v": Version(5, NOW, 0, True)})) is None  # a tombstone
    assert view.plain_cells(RowState(None, Deletion(4, NOW), {"v": live})) is None
