"""The stored merge-state format (format 2, ``cdcpipe.apply.state``) and the migration from format 1."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdcpipe.apply import migrate, state
from cdcpipe.apply.merge import ComplexState, PartitionState, RangeTombstone, RowState, Version
from cdcpipe.model import Deletion

I64 = st.integers(-(2**63) + 1, 2**63 - 1)
I32 = st.integers(0, 2**31 - 1)
NAMES = st.text(min_size=1, max_size=20)
deletions = st.builds(Deletion, I64, I64)
versions = st.builds(Version, I64, st.none() | I64, I32, st.booleans(), st.binary(max_size=40))
markers = st.builds(Version, I64, st.none() | I64, I32)
complexes = st.builds(ComplexState, st.none() | deletions,
                      st.dictionaries(st.binary(max_size=20), versions, max_size=4))
rows = st.builds(RowState, st.none() | markers, st.none() | deletions, st.dictionaries(NAMES, versions, max_size=6),
                 st.dictionaries(NAMES, complexes, max_size=3))
prefixes = st.lists(st.binary(max_size=12), max_size=3).map(tuple)
ranges = st.builds(RangeTombstone, prefixes, st.booleans(), prefixes, st.booleans(), deletions)
partitions = st.builds(PartitionState, st.none() | deletions, st.lists(ranges, max_size=3).map(tuple), rows)


@given(rows)
def test_a_row_state_comes_back_as_it_was_stored(row: RowState) -> None:
    data = state.encode_row(row)
    assert isinstance(data, bytes) and data[0] == state.FORMAT
    assert state.decode_row(data) == row
    assert state.columns_of(data) == {*row.cells, *row.complex}


@given(partitions)
def test_a_partition_state_comes_back_as_it_was_stored(part: PartitionState) -> None:
    assert state.decode_partition(state.encode_partition(part)) == part


@given(rows, st.data())
def test_cut_or_foreign_bytes_are_refused_not_misread(row: RowState, data: Any) -> None:
    stored = state.encode_row(row)
    cut = data.draw(st.integers(0, len(stored) - 1))
    with pytest.raises(state.StateFormatError):
        state.decode_row(stored[:cut])
    with pytest.raises(state.StateFormatError):
        state.decode_row(stored + b"\x00")
    with pytest.raises(state.StateFormatError, match="format 123"):
        state.decode_row(bytes([123]) + stored[1:])


def test_format_1_json_converts_to_the_same_state() -> None:
    """What cdcpipe 0.1 stored in ``_cdc_meta jsonb`` (format 1) reads back as the state it was written from."""
    v1_row = {"m": [10, 5, 1700000005], "d": [7, 1700000000],
              "c": {"v": [10, 0, None, 0, "78"], "gone": [11, 0, 1700000001, 1, ""]},
              "x": {"s": {"d": [9, 1700000000], "e": [["61", 12, 0, None, 0, ""]]}}}
    want = RowState(Version(10, 1700000005, 5), Deletion(7, 1700000000),
                    {"v": Version(10, None, 0, False, b"x"), "gone": Version(11, 1700000001, 0, True, b"")},
                    {"s": ComplexState(Deletion(9, 1700000000), {b"a": Version(12)})})
    assert state.decode_row(migrate.convert("t", json.dumps(v1_row))) == want
    assert state.decode_row(migrate.convert("t$shadow", json.dumps(v1_row))) == want
    v1_part = {"d": [3, 1700000000], "r": [[["00000001"], True, [], False, 9, 1700000002]], "s": {"c": {}}}
    got = state.decode_partition(migrate.convert("t$partition", json.dumps(v1_part)))
    assert got == PartitionState(Deletion(3, 1700000000),
                                 (RangeTombstone((b"\x00\x00\x00\x01",), True, (), False, Deletion(9, 1700000002)),),
                                 RowState())


@given(rows)
def test_equal_states_are_stored_as_equal_bytes(row: RowState) -> None:
    """Whatever order a state's cells and columns were merged in (the tests compare stored tables byte for byte)."""
    shuffled = RowState(row.marker, row.deletion, dict(reversed(list(row.cells.items()))),
                        dict(reversed(list(row.complex.items()))))
    assert state.encode_row(shuffled) == state.encode_row(row)
