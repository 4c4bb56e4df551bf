"""Token ranges of a snapshot: the ring cut once, split proportionally, and what is left after finished ranges
(also when the finished ones were cut differently)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from cdcpipe.snapshot.ranges import MAX_TOKEN, MIN_TOKEN, TokenRange, ring_ranges, split, subtract

tokens = st.integers(MIN_TOKEN + 1, MAX_TOKEN - 1)


def covered(ranges: list[TokenRange]) -> int:
    return sum(r.width for r in ranges)


def disjoint_sorted(ranges: list[TokenRange]) -> bool:
    return all(a.end <= b.start for a, b in itertools.pairwise(ranges))


@given(st.lists(tokens, max_size=40), st.integers(1, 300))
def test_the_ring_is_covered_once(ts: list[int], pieces: int) -> None:
    ring = split(ring_ranges(ts), pieces)
    assert ring[0].start == MIN_TOKEN and ring[-1].end == MAX_TOKEN
    assert disjoint_sorted(ring) and covered(ring) == MAX_TOKEN - MIN_TOKEN
    assert len(ring) >= max(len(set(ts)) + 1, 1)


def test_no_tokens_is_the_whole_ring() -> None:
    assert ring_ranges([]) == [TokenRange(MIN_TOKEN, MAX_TOKEN)]
    assert len(split(ring_ranges([]), 16)) == 16


@given(st.lists(tokens, max_size=10), st.integers(1, 64), st.integers(1, 64), st.sets(st.integers(0, 200)))
def test_subtract_leaves_exactly_what_is_not_done(ts: list[int], a: int, b: int, picks: set[int]) -> None:
    planned = split(ring_ranges(ts), a)
    other = split(ring_ranges(ts[:3]), b)  # finished by a run cut differently
    done = [r for i, r in enumerate(other) if i in picks]
    left = subtract(planned, done)
    assert disjoint_sorted(left)
    assert covered(left) == covered(planned) - covered(done)
    for r in left:
        assert not any(d.start < r.end and r.start < d.end for d in done)


def test_subtract_nothing_and_everything() -> None:
    ring = split(ring_ranges([0]), 8)
    assert subtract(ring, []) == ring
    assert subtract(ring, [TokenRange(MIN_TOKEN, MAX_TOKEN)]) == []
    assert subtract(ring, ring[:3]) == ring[3:]


def test_pages_hold_about_a_fixed_number_of_bytes() -> None:
    from cdcpipe.snapshot.reader import PAGE_BYTES, next_fetch_size

    small = [[b"x" * 100]] * 100
    assert next_fetch_size(100, small, 1000) == 200  # at most doubling
    assert next_fetch_size(800, small, 1000) == 1000  # never above the page size
    big = [[b"x" * (4 << 20)]] * 2  # two 4 MiB rows fill a page
    assert next_fetch_size(100, big, 1000) == 2
    assert next_fetch_size(2, [[b"x" * (3 * PAGE_BYTES)]], 1000) == 1
    assert next_fetch_size(7, [], 1000) == 7
